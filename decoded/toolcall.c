/* decoded/toolcall: tool calls read out of a choice's text. See toolcall.h. */
#include "toolcall.h"

#include "pyjson.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static const char open_tag[] = "<tool_call>", close_tag[] = "</tool_call>";
#define OPEN_N (sizeof(open_tag) - 1)
#define CLOSE_N (sizeof(close_tag) - 1)

struct dec_toolcall {
    enum dec_tool_choice choice;
    enum pd_chat_calls how;
    char name[DEC_API_MAX_TOOL_NAME + 1];
    char *buf; /* every byte fed */
    size_t len, cap;
    size_t released; /* bytes of buf out as content */
    size_t scan; /* HERMES: where the next block may start */
    bool opened; /* HERMES: a <tool_call> was seen (content ended there) */
    int json; /* LLAMA: -1 undecided, 1 an object (held), 0 content */
    uint32_t n_calls;
};

struct dec_toolcall *dec_toolcall_new(enum dec_tool_choice choice, enum pd_chat_calls how,
                                      const char *name)
{
    struct dec_toolcall *tc = calloc(1, sizeof(*tc));
    if (!tc)
        return NULL;
    tc->choice = choice;
    tc->how = how;
    tc->json = -1;
    if (name)
        snprintf(tc->name, sizeof(tc->name), "%s", name);
    return tc;
}

struct dec_toolcall *dec_toolcall_free(struct dec_toolcall *tc)
{
    if (tc)
        free(tc->buf);
    free(tc);
    return NULL;
}

void dec_toolcall_out_done(struct dec_toolcall_out *out)
{
    free(out->content);
    cJSON_Delete(out->calls);
    memset(out, 0, sizeof(*out));
}

bool dec_toolcall_called(const struct dec_toolcall *tc) { return tc && tc->n_calls > 0; }

static int release(struct dec_toolcall *tc, size_t upto, struct dec_toolcall_out *out)
{
    if (upto <= tc->released)
        return 0;
    size_t n = upto - tc->released;
    char *c = realloc(out->content, out->len + n + 1);
    if (!c)
        return -ENOMEM;
    memcpy(c + out->len, tc->buf + tc->released, n);
    out->len += n;
    c[out->len] = '\0';
    out->content = c;
    tc->released = upto;
    return 0;
}

/* A call's first delta: {"index", "id", "type", "function": {"name", "arguments"}} */
static int add_call(struct dec_toolcall *tc, const char *name, const char *args, size_t args_len,
                    struct dec_toolcall_out *out)
{
    unsigned char rnd[12];
    char id[5 + 2 * sizeof(rnd) + 1] = "call_";
    randombytes_buf(rnd, sizeof(rnd));
    sodium_bin2hex(id + 5, sizeof(id) - 5, rnd, sizeof(rnd));
    char *a = strndup(args, args_len);
    cJSON *c = cJSON_CreateObject(), *f = NULL;
    if (a && c && (out->calls || (out->calls = cJSON_CreateArray())) &&
        cJSON_AddNumberToObject(c, "index", tc->n_calls) && cJSON_AddStringToObject(c, "id", id) &&
        cJSON_AddStringToObject(c, "type", "function") &&
        (f = cJSON_AddObjectToObject(c, "function")) && cJSON_AddStringToObject(f, "name", name) &&
        cJSON_AddStringToObject(f, "arguments", a) && cJSON_AddItemToArray(out->calls, c)) {
        free(a);
        tc->n_calls++;
        return 0;
    }
    free(a);
    cJSON_Delete(c);
    return -ENOMEM;
}

/* {"name": string, key: any JSON} (or alt for key) -> a call, its
 * arguments as json.dumps writes them. 0 read, 1 not a call, -ENOMEM. */
static int read_call(struct dec_toolcall *tc, const char *s, size_t n, const char *key,
                     const char *alt, struct dec_toolcall_out *out)
{
    struct pd_pyjson_span name, args;
    if (pd_pyjson_member(s, n, "name", &name) < 0 ||
        (pd_pyjson_member(s, n, key, &args) < 0 &&
         (!alt || pd_pyjson_member(s, n, alt, &args) < 0)))
        return 1;
    cJSON *nm = cJSON_ParseWithLength(name.p, name.n);
    char *dump = NULL;
    size_t dn;
    int rc = 1;
    if (cJSON_IsString(nm) && nm->valuestring[0] &&
        pd_pyjson_dump(args.p, args.n, 0, &dump, &dn, NULL, 0) == 0)
        rc = add_call(tc, nm->valuestring, dump, dn, out);
    free(dump);
    cJSON_Delete(nm);
    return rc;
}

static bool room_for_calls(const struct dec_toolcall *tc)
{
    return tc->n_calls < PD_CHAT_MAX_CALLS;
}

static int feed_hermes(struct dec_toolcall *tc, bool last, struct dec_toolcall_out *out)
{
    int rc = 0;
    if (!tc->opened) {
        const char *o = memmem(tc->buf, tc->len, open_tag, OPEN_N);
        if (o) {
            tc->opened = true;
            tc->scan = (size_t)(o - tc->buf);
            rc = release(tc, tc->scan, out);
        } else {
            /* hold back what could be the start of the tag */
            size_t hold = 0;
            for (size_t k = OPEN_N - 1; k > 0 && !hold; k--)
                if (tc->len >= k && memcmp(tc->buf + tc->len - k, open_tag, k) == 0)
                    hold = k;
            rc = release(tc, last ? tc->len : tc->len - hold, out);
        }
    }
    while (rc == 0 && tc->opened && room_for_calls(tc)) {
        const char *b = memmem(tc->buf + tc->scan, tc->len - tc->scan, open_tag, OPEN_N);
        if (!b)
            break;
        const char *body = b + OPEN_N;
        const char *e = memmem(body, (size_t)(tc->buf + tc->len - body), close_tag, CLOSE_N);
        if (!e)
            break; /* not closed yet */
        tc->scan = (size_t)(e + CLOSE_N - tc->buf);
        rc = read_call(tc, body, (size_t)(e - body), "arguments", NULL, out);
        rc = rc > 0 ? 0 : rc; /* a block that does not read is dropped */
    }
    if (rc == 0 && last && !tc->n_calls)
        rc = release(tc, tc->len, out); /* nothing read as a call: it was all content */
    return rc;
}

static int feed_llama(struct dec_toolcall *tc, bool last, struct dec_toolcall_out *out)
{
    if (tc->json < 0) {
        size_t i = 0;
        while (i < tc->len && strchr(" \t\r\n", tc->buf[i]))
            i++;
        if (i < tc->len)
            tc->json = tc->buf[i] == '{';
    }
    if (tc->json == 1 && last) {
        int rc = read_call(tc, tc->buf, tc->len, "parameters", "arguments", out);
        if (rc <= 0)
            return rc;
    }
    if (tc->json == 0 || last)
        return release(tc, tc->len, out);
    return 0;
}

static int feed_required(struct dec_toolcall *tc, struct dec_toolcall_out *out)
{
    struct pd_pyjson_span items[PD_CHAT_MAX_CALLS];
    size_t n = 0;
    int r = pd_pyjson_items(tc->buf, tc->len, items, PD_CHAT_MAX_CALLS, &n, NULL, 0);
    if (r == 0 || r == -E2BIG) /* past the cap, the first PD_CHAT_MAX_CALLS */
        for (size_t i = 0; i < n; i++) {
            int rc = read_call(tc, items[i].p, items[i].n, "parameters", NULL, out);
            if (rc < 0)
                return rc;
        }
    return tc->n_calls ? 0 : release(tc, tc->len, out); /* cut short: the text as it is */
}

static int feed_named(struct dec_toolcall *tc, const char *text, size_t len,
                      struct dec_toolcall_out *out)
{
    if (!tc->n_calls)
        return add_call(tc, tc->name, text, len, out);
    if (!len)
        return 0;
    char *a = strndup(text, len);
    cJSON *c = cJSON_CreateObject(), *f = NULL;
    if (a && c && (out->calls = cJSON_CreateArray()) && cJSON_AddNumberToObject(c, "index", 0) &&
        (f = cJSON_AddObjectToObject(c, "function")) &&
        cJSON_AddStringToObject(f, "arguments", a) && cJSON_AddItemToArray(out->calls, c)) {
        free(a);
        return 0;
    }
    free(a);
    cJSON_Delete(c);
    return -ENOMEM;
}

int dec_toolcall_feed(struct dec_toolcall *tc, const char *text, size_t len, bool last,
                      struct dec_toolcall_out *out)
{
    memset(out, 0, sizeof(*out));
    if (tc->choice == DEC_TOOL_NAMED) {
        int rc = feed_named(tc, text, len, out);
        if (rc < 0)
            dec_toolcall_out_done(out);
        return rc;
    }
    if (tc->len + len + 1 > tc->cap) {
        size_t cap = tc->cap ? tc->cap : 256;
        while (cap < tc->len + len + 1)
            cap *= 2;
        char *b = realloc(tc->buf, cap);
        if (!b)
            return -ENOMEM;
        tc->buf = b, tc->cap = cap;
    }
    if (len)
        memcpy(tc->buf + tc->len, text, len);
    tc->len += len;
    tc->buf[tc->len] = '\0';
    int rc;
    if (tc->choice == DEC_TOOL_REQUIRED)
        rc = last ? feed_required(tc, out) : 0;
    else if (tc->choice == DEC_TOOL_AUTO && tc->how == PD_CHAT_CALLS_HERMES)
        rc = feed_hermes(tc, last, out);
    else if (tc->choice == DEC_TOOL_AUTO && tc->how == PD_CHAT_CALLS_LLAMA)
        rc = feed_llama(tc, last, out);
    else
        rc = release(tc, tc->len, out);
    if (rc < 0)
        dec_toolcall_out_done(out);
    return rc;
}

struct cJSON *dec_toolcall_whole(struct cJSON *calls)
{
    if (!calls)
        return NULL;
    cJSON *first = calls->child, *c = first ? first->next : NULL;
    /* a named call's later pieces: arguments to append to the first */
    while (c && !cJSON_GetObjectItemCaseSensitive(c, "id")) {
        cJSON *fa = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(first, "function"), "arguments");
        const char *more = cJSON_GetObjectItemCaseSensitive(
                               cJSON_GetObjectItemCaseSensitive(c, "function"), "arguments")
                               ->valuestring;
        size_t a = strlen(fa->valuestring), b = strlen(more);
        char *j = malloc(a + b + 1);
        if (!j) {
            cJSON_Delete(calls);
            return NULL;
        }
        memcpy(j, fa->valuestring, a);
        memcpy(j + a, more, b + 1);
        cJSON_SetValuestring(fa, j);
        free(j);
        cJSON *next = c->next;
        cJSON_Delete(cJSON_DetachItemViaPointer(calls, c));
        c = next;
    }
    for (c = calls->child; c; c = c->next)
        cJSON_DeleteItemFromObjectCaseSensitive(c, "index");
    return calls;
}
