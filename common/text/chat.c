/* common/text/chat: chat-template families, recognised and rendered. See chat.h. */
#include "chat.h"

#include "errf.h"
#include "pyjson.h"
#include "tokenizer.h"
#include "utf8.h"

#include <errno.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PD_STR_(x) #x
#define PD_STR(x) PD_STR_(x)

struct pd_chat_template {
    enum pd_chat_family family;
    enum pd_chat_calls calls;
    char bos[PD_TOK_MAX_PIECE + 1]; /* text the template prints as bos_token */
    char eos[PD_TOK_MAX_PIECE + 1];
    char system[PD_CHAT_MAX_SYSTEM + 1]; /* ChatML default system prompt, "" if none */
};

static const char *const family_names[PD_CHAT_FAMILIES] = {"chatml",  "llama2",  "llama3",
                                                            "qwen3",   "llama31", "mistral"};
static const char *const role_names[] = {"system", "user", "assistant", "tool"};

const char *pd_chat_family_name(enum pd_chat_family f)
{
    return (unsigned)f < PD_CHAT_FAMILIES ? family_names[f] : "?";
}

const char *pd_chat_role_name(enum pd_chat_role role)
{
    return (unsigned)role < 4 ? role_names[role] : "?";
}

int pd_chat_role_parse(const char *s, size_t len, enum pd_chat_role *role)
{
    for (int i = 0; i < 4; i++)
        if (strlen(role_names[i]) == len && memcmp(s, role_names[i], len) == 0) {
            *role = (enum pd_chat_role)i;
            return 0;
        }
    return -EINVAL;
}

/* The token text the template prints for bos_token / eos_token. */
static void special_text(const struct pd_tokenizer *tok, int32_t id, const char *dflt, char *out)
{
    size_t n = 0;
    const char *s = tok && id >= 0 ? pd_tok_text(tok, id, &n) : NULL;
    if (!s) {
        s = dflt;
        n = strlen(dflt);
    }
    memcpy(out, s, n);
    out[n] = '\0';
}

static struct pd_chat_template *tmpl_new(enum pd_chat_family f, const struct pd_tokenizer *tok)
{
    struct pd_chat_template *ct = calloc(1, sizeof(*ct));
    if (!ct)
        return NULL;
    ct->family = f;
    /* the names of families whose only templates have tools */
    ct->calls = f == PD_CHAT_QWEN3 ? PD_CHAT_CALLS_HERMES
        : f == PD_CHAT_LLAMA31     ? PD_CHAT_CALLS_LLAMA
                                   : PD_CHAT_CALLS_NONE;
    const bool l3 = f == PD_CHAT_LLAMA3 || f == PD_CHAT_LLAMA31;
    special_text(tok, tok ? pd_tok_bos(tok) : -1, l3 ? "<|begin_of_text|>" : "<s>", ct->bos);
    special_text(tok, tok ? pd_tok_eos(tok) : -1, l3 ? "<|eot_id|>" : "</s>", ct->eos);
    return ct;
}

static const char *find(const char *h, size_t hn, const char *needle)
{
    return memmem(h, hn, needle, strlen(needle));
}

/* A default system prompt is a string literal in the template that opens a
 * whole system turn: '<|im_start|>system\n...<|im_end|>' (SmolLM, Qwen).
 * A literal that stops after "system\n" (the conversation's own system
 * message is concatenated there) is not one. Jinja unescapes the literal
 * like Python does. Returns 1 found, 0 not, -E2BIG too long. */
static int chatml_default_system(const char *s, size_t n, char *out)
{
    static const char open[] = "<|im_start|>system";
    const char *p = s;
    while ((p = find(p, n - (size_t)(p - s), open))) {
        const char *at = p;
        p += sizeof(open) - 1;
        if (at == s || (at[-1] != '\'' && at[-1] != '"'))
            continue;
        char q = at[-1];
        const char *e = s + n;
        if (e - p >= 1 && *p == '\n')
            p += 1;
        else if (e - p >= 2 && p[0] == '\\' && p[1] == 'n')
            p += 2;
        else
            continue;
        size_t o = 0;
        for (const char *c = p; c < e; c++) {
            if ((size_t)(e - c) >= 10 && memcmp(c, "<|im_end|>", 10) == 0) {
                out[o] = '\0';
                return 1;
            }
            if (*c == q)
                break; /* the literal ends before the turn does */
            char ch = *c;
            if (ch == '\\' && c + 1 < e) {
                c++;
                ch = *c == 'n' ? '\n' : *c == 't' ? '\t' : *c == 'r' ? '\r' : *c;
            }
            if (o == PD_CHAT_MAX_SYSTEM)
                return -E2BIG;
            out[o++] = ch;
        }
    }
    return 0;
}

/* The models' own templates, byte for byte (tests/golden/chat/hf/, from the
 * model repositories by way of llama.cpp's copies): SHA-256 -> family. */
static const struct {
    const char *sha256, *model;
    enum pd_chat_family family;
    enum pd_chat_calls calls;
} known[] = {
#include "chat_known.h"
};

static bool known_template(const char *text, size_t len, enum pd_chat_family *f,
                           enum pd_chat_calls *calls)
{
    uint8_t h[crypto_hash_sha256_BYTES];
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    crypto_hash_sha256(h, (const uint8_t *)text, len);
    sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(hex, known[i].sha256) == 0) {
            *f = known[i].family;
            *calls = known[i].calls;
            return true;
        }
    return false;
}

/* Failing an exact match, the markers (docs/internals/text.md):
 *   <|start_header_id|> and <|end_header_id|>: llama31 when the template
 *     writes "Cutting Knowledge Date", else llama3;
 *   <|im_start|> and <|im_end|>: qwen3 when it handles </think>, else chatml;
 *   [INST] and [/INST]: llama2 when it has <<SYS>> or "[INST] " (a space
 *     after: Llama-2 and Mistral's first instruct models), else mistral
 *     (v3: [INST] directly against the content). */
static bool marked_template(const char *text, size_t len, enum pd_chat_family *f)
{
    if (find(text, len, "<|start_header_id|>") && find(text, len, "<|end_header_id|>"))
        *f = find(text, len, "Cutting Knowledge Date") ? PD_CHAT_LLAMA31 : PD_CHAT_LLAMA3;
    else if (find(text, len, "<|im_start|>") && find(text, len, "<|im_end|>"))
        *f = find(text, len, "</think>") ? PD_CHAT_QWEN3 : PD_CHAT_CHATML;
    else if (find(text, len, "[INST]") && find(text, len, "[/INST]"))
        *f = find(text, len, "<<SYS>>") || find(text, len, "[INST] ") ? PD_CHAT_LLAMA2
                                                                      : PD_CHAT_MISTRAL;
    else
        return false;
    return true;
}

int pd_chat_template_parse(const char *text, size_t len, const struct pd_tokenizer *tok,
                           struct pd_chat_template **out, char *err, size_t errlen)
{
    enum pd_chat_family f;
    enum pd_chat_calls calls = PD_CHAT_CALLS_NONE; /* a template only marked has none */

    if (!text || !out)
        return pd_errf(err, errlen, -EINVAL, "no template");
    if (len > PD_CHAT_MAX_FILE)
        return pd_errf(err, errlen, -E2BIG, "chat template is %zu bytes (cap %u)", len,
                       PD_CHAT_MAX_FILE);
    if (!known_template(text, len, &f, &calls) && !marked_template(text, len, &f))
        return pd_errf(err, errlen, -ENOTSUP,
                       "chat template not recognised (supported families: chatml, llama2, llama3, "
                       "qwen3, llama31, mistral); choose one with --chat-template NAME|FILE");
    struct pd_chat_template *ct = tmpl_new(f, tok);
    if (!ct)
        return pd_errf(err, errlen, -ENOMEM, "out of memory");
    ct->calls = calls;
    if (f == PD_CHAT_CHATML && chatml_default_system(text, len, ct->system) < 0) {
        pd_chat_template_free(ct);
        return pd_errf(err, errlen, -E2BIG,
                       "chat template's default system prompt is over %u bytes",
                       PD_CHAT_MAX_SYSTEM);
    }
    *out = ct;
    return 0;
}

int pd_chat_template_from_tok(const struct pd_tokenizer *tok, struct pd_chat_template **out,
                              char *err, size_t errlen)
{
    size_t n;
    const char *s = tok ? pd_tok_chat_template(tok, &n) : NULL;
    if (!s)
        return pd_errf(err, errlen, -ENOENT,
                       "the model has no chat template (tokenizer.chat_template); "
                       "choose one with --chat-template NAME|FILE");
    return pd_chat_template_parse(s, n, tok, out, err, errlen);
}

int pd_chat_template_by_name(const char *name, const struct pd_tokenizer *tok,
                             struct pd_chat_template **out, char *err, size_t errlen)
{
    for (int i = 0; i < PD_CHAT_FAMILIES; i++)
        if (name && strcmp(name, family_names[i]) == 0) {
            if (!(*out = tmpl_new((enum pd_chat_family)i, tok)))
                return pd_errf(err, errlen, -ENOMEM, "out of memory");
            return 0;
        }
    return pd_errf(err, errlen, -ENOTSUP,
                   "unknown chat template '%s' (names: chatml, llama2, llama3, qwen3, llama31, "
                   "mistral)",
                   name ? name : "");
}

int pd_chat_template_load(const char *arg, const struct pd_tokenizer *tok,
                          struct pd_chat_template **out, char *err, size_t errlen)
{
    struct stat st;
    if (!arg)
        return pd_errf(err, errlen, -EINVAL, "no chat template given");
    if (stat(arg, &st) != 0 || !S_ISREG(st.st_mode)) {
        int rc = pd_chat_template_by_name(arg, tok, out, err, errlen);
        if (rc == -ENOTSUP)
            pd_errf(err, errlen, rc,
                    "--chat-template '%s': no such file, and not a template name "
                    "(chatml, llama2, llama3, qwen3, llama31, mistral)",
                    arg);
        return rc;
    }
    if ((uint64_t)st.st_size > PD_CHAT_MAX_FILE)
        return pd_errf(err, errlen, -E2BIG, "%s: %lld bytes (cap %u)", arg, (long long)st.st_size,
                       PD_CHAT_MAX_FILE);
    FILE *f = fopen(arg, "rb");
    if (!f)
        return pd_errf(err, errlen, -errno, "%s: %s", arg, strerror(errno));
    char *buf = malloc(PD_CHAT_MAX_FILE + 1);
    size_t n = buf ? fread(buf, 1, PD_CHAT_MAX_FILE + 1, f) : 0;
    fclose(f);
    if (!buf)
        return pd_errf(err, errlen, -ENOMEM, "out of memory");
    int rc;
    if (n > PD_CHAT_MAX_FILE) {
        rc = pd_errf(err, errlen, -E2BIG, "%s: over %u bytes", arg, PD_CHAT_MAX_FILE);
    } else {
        size_t b = 0, e = n; /* a name may come with a newline */
        while (b < e && (buf[b] == ' ' || buf[b] == '\n' || buf[b] == '\t' || buf[b] == '\r'))
            b++;
        while (e > b && (buf[e - 1] == ' ' || buf[e - 1] == '\n' || buf[e - 1] == '\t' ||
                         buf[e - 1] == '\r'))
            e--;
        /* compared in place: a template is parsed from its bytes as they are
         * (its hash covers a final newline) */
        rc = -ENOTSUP;
        for (int i = 0; i < PD_CHAT_FAMILIES; i++)
            if (strlen(family_names[i]) == e - b && memcmp(buf + b, family_names[i], e - b) == 0)
                rc = pd_chat_template_by_name(family_names[i], tok, out, err, errlen);
        if (rc == -ENOTSUP)
            rc = pd_chat_template_parse(buf, n, tok, out, err, errlen);
    }
    free(buf);
    return rc;
}

struct pd_chat_template *pd_chat_template_free(struct pd_chat_template *ct)
{
    free(ct);
    return NULL;
}

enum pd_chat_family pd_chat_template_family(const struct pd_chat_template *ct)
{
    return ct->family;
}

const char *pd_chat_template_default_system(const struct pd_chat_template *ct)
{
    return ct->system;
}

enum pd_chat_calls pd_chat_template_calls(const struct pd_chat_template *ct) { return ct->calls; }

/* --- rendering ---------------------------------------------------------- */

/* Output that keeps counting past the buffer, so -E2BIG can say how much. */
struct wr {
    char *out;
    size_t cap, n;
};

static void put(struct wr *w, const char *s, size_t n)
{
    if (w->n < w->cap && n)
        memcpy(w->out + w->n, s, n <= w->cap - w->n ? n : w->cap - w->n);
    w->n += n;
}

static void puts_(struct wr *w, const char *s)
{
    put(w, s, strlen(s));
}

/* Python's str.strip() (Jinja's trim and .strip()): characters for which
 * str.isspace() is true. The list is Python's definition (White_Space plus
 * the four information separators U+001C..U+001F). */
static bool py_space(int32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 ||
           cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

static void py_strip(const char *s, size_t n, size_t *b, size_t *e)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, end = 0, first = n;
    /* forward once: the first non-space and the end of the last non-space */
    while (i < n) {
        int32_t cp;
        bool cut;
        size_t k = pd_utf8_next(u + i, n - i, &cp, &cut);
        if (!py_space(cp)) {
            if (first == n)
                first = i;
            end = i + k;
        }
        i += k;
    }
    *b = first == n ? 0 : first;
    *e = first == n ? 0 : end;
}

static void put_stripped(struct wr *w, const char *s, size_t n)
{
    size_t b, e;
    py_strip(s, n, &b, &e);
    put(w, s + b, e - b);
}

/* meta-llama/Llama-2-7b-chat-hf's template */
static int render_llama2(const struct pd_chat_template *ct, const struct pd_chat_msg *m, size_t n,
                         struct wr *w, char *err, size_t errlen)
{
    const struct pd_chat_msg *sys = NULL;
    if (n && m[0].role == PD_CHAT_SYSTEM)
        sys = &m[0], m++, n--;
    for (size_t i = 0; i < n; i++) {
        if ((m[i].role == PD_CHAT_USER) != (i % 2 == 0))
            return pd_errf(err, errlen, -EINVAL,
                           "Conversation roles must alternate user/assistant/user/assistant/...");
        if (m[i].role == PD_CHAT_USER) {
            puts_(w, ct->bos);
            puts_(w, "[INST] ");
            if (i == 0 && sys) {
                /* the template strips "<<SYS>>\n" + system + "\n<</SYS>>\n\n" +
                 * content as one string: empty content eats the last newlines */
                static const char a[] = "<<SYS>>\n", b[] = "\n<</SYS>>\n\n";
                size_t tl = sizeof(a) - 1 + sys->len + sizeof(b) - 1 + m[i].len;
                char *tmp = malloc(tl);
                if (!tmp)
                    return pd_errf(err, errlen, -ENOMEM, "out of memory");
                memcpy(tmp, a, sizeof(a) - 1);
                if (sys->len) /* content may be NULL when empty */
                    memcpy(tmp + sizeof(a) - 1, sys->content, sys->len);
                memcpy(tmp + sizeof(a) - 1 + sys->len, b, sizeof(b) - 1);
                if (m[i].len)
                    memcpy(tmp + tl - m[i].len, m[i].content, m[i].len);
                put_stripped(w, tmp, tl);
                free(tmp);
            } else {
                put_stripped(w, m[i].content, m[i].len);
            }
            puts_(w, " [/INST]");
        } else if (m[i].role == PD_CHAT_ASSISTANT) {
            puts_(w, " ");
            put_stripped(w, m[i].content, m[i].len);
            puts_(w, " ");
            puts_(w, ct->eos);
        }
        /* a system message later on is printed by neither branch */
    }
    return 0;
}

/* ChatML and Llama-3 print each turn as open + role + sep + content + close;
 * the generation prompt is the opening of an assistant turn. */
struct turn_fmt {
    const char *open, *sep, *close;
    bool trim; /* Llama-3's template trims the content */
    bool bos; /* and starts with BOS */
};

static const struct turn_fmt fmt_chatml = {"<|im_start|>", "\n", "<|im_end|>\n", false, false};
/* meta-llama/Meta-Llama-3-8B-Instruct's template */
static const struct turn_fmt fmt_llama3 = {"<|start_header_id|>", "<|end_header_id|>\n\n",
                                           "<|eot_id|>", true, true};

static void put_turn(struct wr *w, const struct turn_fmt *f, const char *role,
                     const char *content, size_t len)
{
    puts_(w, f->open);
    puts_(w, role);
    puts_(w, f->sep);
    if (f->trim)
        put_stripped(w, content, len);
    else
        put(w, content, len);
    puts_(w, f->close);
}

static void render_turns(const struct pd_chat_template *ct, const struct turn_fmt *f,
                         const struct pd_chat_msg *m, size_t n, bool gen, struct wr *w)
{
    if (f->bos)
        puts_(w, ct->bos);
    /* ChatML's default system prompt (empty for the other families) */
    if (ct->system[0] && m[0].role != PD_CHAT_SYSTEM)
        put_turn(w, f, "system", ct->system, strlen(ct->system));
    for (size_t i = 0; i < n; i++)
        put_turn(w, f, pd_chat_role_name(m[i].role), m[i].content, m[i].len);
    if (gen) {
        puts_(w, f->open);
        puts_(w, "assistant");
        puts_(w, f->sep);
    }
}

/* ---- tools (Qwen2.5, Qwen3, Llama-3.1) ---------------------------------- */

/* the tools, each element of the API's array */
struct tools {
    const struct pd_pyjson_span *t;
    size_t n;
};

/* A JSON text as the template's tojson prints its value. */
static int put_json(struct wr *w, const char *s, size_t n, int indent, const char *what, char *err,
                    size_t errlen)
{
    char *o, e[128];
    size_t on;
    int rc = pd_pyjson_dump(s, n, indent, &o, &on, e, sizeof(e));
    if (rc == -ENOMEM)
        return pd_errf(err, errlen, rc, "out of memory");
    if (rc < 0)
        return pd_errf(err, errlen, rc, "%s is not JSON: %s", what, e);
    put(w, o, on);
    free(o);
    return 0;
}

static int put_tools(struct wr *w, const struct tools *t, int indent, const char *sep, char *err,
                     size_t errlen)
{
    for (size_t i = 0; i < t->n; i++) {
        char what[32];
        snprintf(what, sizeof(what), "tool %zu", i);
        if (indent == 0)
            puts_(w, sep);
        int rc = put_json(w, t->t[i].p, t->t[i].n, indent, what, err, errlen);
        if (rc < 0)
            return rc;
        if (indent)
            puts_(w, sep);
    }
    return 0;
}

/* Qwen's: the tools block of the system turn, after its text */
static int put_hermes_tools(struct wr *w, const struct tools *t, char *err, size_t errlen)
{
    puts_(w,
          "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
          "You are provided with function signatures within <tools></tools> XML tags:\n"
          "<tools>");
    int rc = put_tools(w, t, 0, "\n", err, errlen);
    puts_(w,
          "\n</tools>\n\nFor each function call, return a json object with function name and "
          "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
          "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
          "</tool_call><|im_end|>\n");
    return rc;
}

/* one call, {"name": ..., key: arguments} (the arguments as tojson prints them) */
static int put_call(struct wr *w, const struct pd_chat_call *c, const char *key, size_t msg,
                    size_t k, char *err, size_t errlen)
{
    char what[64];
    snprintf(what, sizeof(what), "message %zu: tool call %zu's arguments", msg, k);
    puts_(w, "{\"name\": \"");
    put(w, c->name, c->name_len);
    puts_(w, "\", \"");
    puts_(w, key);
    puts_(w, "\": ");
    int rc = put_json(w, c->args, c->args_len, 0, what, err, errlen);
    puts_(w, "}");
    return rc;
}

static int put_hermes_call(struct wr *w, const struct pd_chat_call *c, size_t msg, size_t k,
                           char *err, size_t errlen)
{
    puts_(w, "<tool_call>\n");
    int rc = put_call(w, c, "arguments", msg, k, err, errlen);
    puts_(w, "\n</tool_call>");
    return rc;
}

/* Qwen's calls after an assistant's content, each block after a newline
 * (the first too when nl_first), then the turn's end */
static int put_hermes_calls(struct wr *w, const struct pd_chat_msg *m, size_t i, bool nl_first,
                            char *err, size_t errlen)
{
    int rc = 0;
    for (size_t k = 0; k < m[i].n_calls && rc == 0; k++) {
        if (k || nl_first)
            puts_(w, "\n");
        rc = put_hermes_call(w, &m[i].calls[k], i, k, err, errlen);
    }
    puts_(w, "<|im_end|>\n");
    return rc;
}

/* Qwen's tool results: a run of them is one user turn */
static void put_tool_response(struct wr *w, const struct pd_chat_msg *m, size_t n, size_t i)
{
    if (i == 0 || m[i - 1].role != PD_CHAT_TOOL)
        puts_(w, "<|im_start|>user");
    puts_(w, "\n<tool_response>\n");
    put(w, m[i].content, m[i].len);
    puts_(w, "\n</tool_response>");
    if (i == n - 1 || m[i + 1].role != PD_CHAT_TOOL)
        puts_(w, "<|im_end|>\n");
}

/* Qwen/Qwen2.5-7B-Instruct's template: ChatML with its default system prompt;
 * with tools, the system turn (the first system message or the default)
 * carries them. An assistant message's calls follow its content. */
static int render_qwen25(const struct pd_chat_template *ct, const struct pd_chat_msg *m, size_t n,
                         const struct tools *t, bool gen, struct wr *w, char *err, size_t errlen)
{
    const bool sys = m[0].role == PD_CHAT_SYSTEM;
    int rc = 0;
    if (t->n) {
        puts_(w, "<|im_start|>system\n");
        if (sys)
            put(w, m[0].content, m[0].len);
        else
            puts_(w, ct->system);
        puts_(w, "\n\n");
        rc = put_hermes_tools(w, t, err, errlen);
    } else if (sys) {
        put_turn(w, &fmt_chatml, "system", m[0].content, m[0].len);
    } else {
        put_turn(w, &fmt_chatml, "system", ct->system, strlen(ct->system));
    }
    for (size_t i = sys; i < n && rc == 0; i++) {
        if (m[i].role == PD_CHAT_TOOL) {
            put_tool_response(w, m, n, i);
        } else if (m[i].role != PD_CHAT_ASSISTANT || !m[i].n_calls) {
            put_turn(w, &fmt_chatml, pd_chat_role_name(m[i].role), m[i].content, m[i].len);
        } else {
            puts_(w, "<|im_start|>assistant");
            if (m[i].len) {
                puts_(w, "\n");
                put(w, m[i].content, m[i].len);
            }
            rc = put_hermes_calls(w, m, i, true, err, errlen);
        }
    }
    if (gen)
        puts_(w, "<|im_start|>assistant\n");
    return rc;
}

static bool is_tool_response(const struct pd_chat_msg *m)
{
    static const char open[] = "<tool_response>", close[] = "</tool_response>";
    const size_t no = sizeof(open) - 1, nc = sizeof(close) - 1;
    return m->len >= no && memcmp(m->content, open, no) == 0 && m->len >= nc &&
        memcmp(m->content + m->len - nc, close, nc) == 0;
}

/* Qwen/Qwen3-0.6B's template: ChatML, the first system message as its own
 * turn (with tools: with them after it), no default one. The last query is
 * the last user message that is not a tool result wrapped in
 * <tool_response> tags. An assistant turn after it that is the last message
 * (or that carries reasoning) is written with its <think> block, any other
 * with the reasoning cut: the content after the last </think>, its leading
 * newlines stripped. Calls follow the content, a newline between. */
static int render_qwen3(const struct pd_chat_msg *m, size_t n, const struct tools *t, bool gen,
                        struct wr *w, char *err, size_t errlen)
{
    int rc = 0;
    if (t->n) {
        puts_(w, "<|im_start|>system\n");
        if (m[0].role == PD_CHAT_SYSTEM) {
            put(w, m[0].content, m[0].len);
            puts_(w, "\n\n");
        }
        rc = put_hermes_tools(w, t, err, errlen);
    } else if (m[0].role == PD_CHAT_SYSTEM) {
        put_turn(w, &fmt_chatml, "system", m[0].content, m[0].len);
    }
    size_t last_query = n - 1;
    for (size_t i = n; i-- > 0;)
        if (m[i].role == PD_CHAT_USER && !is_tool_response(&m[i])) {
            last_query = i;
            break;
        }
    for (size_t i = m[0].role == PD_CHAT_SYSTEM; i < n && rc == 0; i++) {
        if (m[i].role == PD_CHAT_TOOL) {
            put_tool_response(w, m, n, i);
            continue;
        }
        if (m[i].role != PD_CHAT_ASSISTANT) {
            put_turn(w, &fmt_chatml, pd_chat_role_name(m[i].role), m[i].content, m[i].len);
            continue;
        }
        const char *c = m[i].content, *close = c ? memmem(c, m[i].len, "</think>", 8) : NULL;
        size_t cl = m[i].len;
        const char *r = "";
        size_t rl = 0;
        if (close) {
            /* content: after the last </think>, lstrip('\n') */
            const char *last = close, *p;
            while ((p = memmem(last + 8, cl - (size_t)(last + 8 - c), "</think>", 8)))
                last = p;
            const char *body = last + 8, *end = c + cl;
            while (body < end && *body == '\n')
                body++;
            /* reasoning: before the first </think>, rstrip('\n'), after the
             * last <think> there, lstrip('\n') */
            const char *rb = c, *re_ = close, *o;
            while (re_ > rb && re_[-1] == '\n')
                re_--;
            while ((o = memmem(rb, (size_t)(re_ - rb), "<think>", 7)))
                rb = o + 7;
            while (rb < re_ && *rb == '\n')
                rb++;
            r = rb, rl = (size_t)(re_ - rb);
            c = body, cl = (size_t)(end - body);
        }
        const bool content = cl != 0; /* the template's test, before any strip below */
        puts_(w, "<|im_start|>assistant\n");
        if (i > last_query && (i == n - 1 || rl)) {
            /* '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') */
            while (rl && r[0] == '\n')
                r++, rl--;
            while (rl && r[rl - 1] == '\n')
                rl--;
            puts_(w, "<think>\n");
            put(w, r, rl);
            puts_(w, "\n</think>\n\n");
            while (cl && c[0] == '\n')
                c++, cl--;
        }
        put(w, c, cl);
        rc = put_hermes_calls(w, m, i, content, err, errlen);
    }
    if (gen)
        puts_(w, "<|im_start|>assistant\n");
    return rc;
}

/* meta-llama/Llama-3.1-8B-Instruct's (and 3.3's) template: BOS, a system
 * turn always (the knowledge and date lines, then the first system message
 * trimmed), then each message trimmed as Llama-3 writes it. With tools
 * (tools_in_user_message, the default): "Environment: ipython" in the system
 * turn, and the tools (tojson, indent 4) before the first message after the
 * system one, in a user turn; a call is the whole assistant turn, one per
 * message; a tool result is an ipython turn, tojson'd (a string is iterable
 * to Jinja). */
static int render_llama31(const struct pd_chat_template *ct, const struct pd_chat_msg *m, size_t n,
                          const struct tools *t, bool gen, struct wr *w, char *err, size_t errlen)
{
    int rc = 0;
    const struct pd_chat_msg *first = m; /* message numbers in errors count from here */
    puts_(w, ct->bos);
    puts_(w, "<|start_header_id|>system<|end_header_id|>\n\n");
    if (t->n)
        puts_(w, "Environment: ipython\n");
    puts_(w, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
    if (n && m[0].role == PD_CHAT_SYSTEM) {
        put_stripped(w, m[0].content, m[0].len);
        m++, n--;
    }
    puts_(w, "<|eot_id|>");
    if (t->n) {
        if (n == 0)
            return pd_errf(err, errlen, -EINVAL,
                           "Cannot put tools in the first user message when there's no first "
                           "user message!");
        puts_(w,
              "<|start_header_id|>user<|end_header_id|>\n\n"
              "Given the following functions, please respond with a JSON for a function "
              "call with its proper arguments that best answers the given prompt.\n\n"
              "Respond in the format {\"name\": function name, \"parameters\": dictionary "
              "of argument name and its value}.Do not use variables.\n\n");
        if ((rc = put_tools(w, t, 4, "\n\n", err, errlen)) < 0)
            return rc;
        put_stripped(w, m[0].content, m[0].len);
        puts_(w, "<|eot_id|>");
        m++, n--;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (m[i].role == PD_CHAT_TOOL) {
            char *j;
            size_t jn;
            if (pd_pyjson_str(m[i].content, m[i].len, &j, &jn) < 0)
                return pd_errf(err, errlen, -ENOMEM, "out of memory");
            puts_(w, "<|start_header_id|>ipython<|end_header_id|>\n\n");
            put(w, j, jn);
            free(j);
            puts_(w, "<|eot_id|>");
        } else if (m[i].n_calls) {
            if (m[i].n_calls != 1)
                return pd_errf(err, errlen, -EINVAL,
                               "This model only supports single tool-calls at once!");
            puts_(w, "<|start_header_id|>assistant<|end_header_id|>\n\n");
            rc = put_call(w, &m[i].calls[0], "parameters", (size_t)(m + i - first), 0, err, errlen);
            puts_(w, "<|eot_id|>");
        } else {
            put_turn(w, &fmt_llama3, pd_chat_role_name(m[i].role), m[i].content, m[i].len);
        }
    }
    if (gen)
        puts_(w, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return rc;
}

/* mistralai/Mistral-Nemo-Instruct-2407's template, without tools: after an
 * optional system message the roles alternate user/assistant (checked
 * first, as the template does); BOS, then [INST]user[/INST] (the system
 * message joining the last message when it is a user's) and answer + EOS.
 * The template has no generation prompt. */
static int render_mistral(const struct pd_chat_template *ct, const struct pd_chat_msg *m,
                          size_t n, struct wr *w, char *err, size_t errlen)
{
    const struct pd_chat_msg *sys = NULL;
    if (n && m[0].role == PD_CHAT_SYSTEM)
        sys = &m[0], m++, n--;
    for (size_t i = 0; i < n; i++)
        if ((m[i].role == PD_CHAT_USER) != (i % 2 == 0))
            return pd_errf(err, errlen, -EINVAL,
                           "After the optional system message, conversation roles must alternate "
                           "user/assistant/user/assistant/...");
    for (size_t i = 0; i < n; i++)
        if (m[i].role == PD_CHAT_SYSTEM)
            return pd_errf(err, errlen, -EINVAL,
                           "Only user and assistant roles are supported, with the exception of "
                           "an initial optional system message!");
    puts_(w, ct->bos);
    for (size_t i = 0; i < n; i++) {
        if (m[i].role == PD_CHAT_USER) {
            puts_(w, "[INST]");
            if (i == n - 1 && sys) {
                put(w, sys->content, sys->len);
                puts_(w, "\n\n");
            }
            put(w, m[i].content, m[i].len);
            puts_(w, "[/INST]");
        } else {
            put(w, m[i].content, m[i].len);
            puts_(w, ct->eos);
        }
    }
    return 0;
}

int pd_chat_render(const struct pd_chat_template *ct, const struct pd_chat_msg *msgs, size_t n,
                   bool add_generation_prompt, char *out, size_t cap, size_t *len, char *err,
                   size_t errlen)
{
    return pd_chat_render_tools(ct, msgs, n, NULL, 0, add_generation_prompt, out, cap, len, err,
                                errlen);
}

int pd_chat_render_tools(const struct pd_chat_template *ct, const struct pd_chat_msg *msgs,
                         size_t n, const char *tools, size_t tools_len, bool add_generation_prompt,
                         char *out, size_t cap, size_t *len, char *err, size_t errlen)
{
    if (!ct || (!msgs && n) || !len || (!out && cap))
        return pd_errf(err, errlen, -EINVAL, "bad arguments");
    if (n == 0) /* transformers refuses an empty conversation too */
        return pd_errf(err, errlen, -EINVAL, "no messages");
    if (n > PD_CHAT_MAX_MSGS)
        return pd_errf(err, errlen, -EINVAL, "%zu messages (cap %u)", n, PD_CHAT_MAX_MSGS);
    bool tooling = tools != NULL;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned)msgs[i].role > PD_CHAT_TOOL)
            return pd_errf(err, errlen, -EINVAL, "message %zu: unknown role", i);
        if (msgs[i].len > PD_CHAT_MAX_CONTENT)
            return pd_errf(err, errlen, -EINVAL, "message %zu: %zu bytes of content (cap %u)", i,
                           msgs[i].len, PD_CHAT_MAX_CONTENT);
        if (!msgs[i].content && msgs[i].len)
            return pd_errf(err, errlen, -EINVAL, "message %zu: no content", i);
        if (msgs[i].n_calls && (msgs[i].role != PD_CHAT_ASSISTANT || !msgs[i].calls))
            return pd_errf(err, errlen, -EINVAL, "message %zu: only an assistant makes tool calls",
                           i);
        if (msgs[i].n_calls > PD_CHAT_MAX_CALLS)
            return pd_errf(err, errlen, -EINVAL, "message %zu: %zu tool calls (cap %u)", i,
                           msgs[i].n_calls, PD_CHAT_MAX_CALLS);
        tooling = tooling || msgs[i].n_calls || msgs[i].role == PD_CHAT_TOOL;
    }
    if (tooling && ct->calls == PD_CHAT_CALLS_NONE)
        return pd_errf(err, errlen, -EINVAL,
                       "the chat template (%s) has no tools: tools, tool calls and tool messages "
                       "need Qwen2.5's, Qwen3's or Llama-3.1's own template",
                       family_names[ct->family]);
    struct pd_pyjson_span spans[PD_CHAT_MAX_TOOLS];
    struct tools t = {spans, 0};
    if (tools) {
        char e[128];
        int rc = pd_pyjson_items(tools, tools_len, spans, PD_CHAT_MAX_TOOLS, &t.n, e, sizeof(e));
        if (rc < 0)
            return pd_errf(err, errlen, -EINVAL, "tools: %s%s", e,
                           rc == -E2BIG ? " (cap " PD_STR(PD_CHAT_MAX_TOOLS) ")" : "");
    }
    struct wr w = {out, cap, 0};
    int rc = 0;
    switch (ct->family) {
    case PD_CHAT_CHATML:
        if (ct->calls == PD_CHAT_CALLS_HERMES)
            rc = render_qwen25(ct, msgs, n, &t, add_generation_prompt, &w, err, errlen);
        else
            render_turns(ct, &fmt_chatml, msgs, n, add_generation_prompt, &w);
        break;
    case PD_CHAT_LLAMA3:
        render_turns(ct, &fmt_llama3, msgs, n, add_generation_prompt, &w);
        break;
    case PD_CHAT_LLAMA2:
        rc = render_llama2(ct, msgs, n, &w, err, errlen);
        break;
    case PD_CHAT_QWEN3:
        rc = render_qwen3(msgs, n, &t, add_generation_prompt, &w, err, errlen);
        break;
    case PD_CHAT_LLAMA31:
        rc = render_llama31(ct, msgs, n, &t, add_generation_prompt, &w, err, errlen);
        break;
    case PD_CHAT_MISTRAL:
        rc = render_mistral(ct, msgs, n, &w, err, errlen);
        break;
    case PD_CHAT_FAMILIES:
        break;
    }
    if (rc < 0)
        return rc;
    *len = w.n;
    if (w.n + 1 > cap)
        return pd_errf(err, errlen, -E2BIG, "rendered prompt needs %zu bytes", w.n + 1);
    out[w.n] = '\0';
    return 0;
}
