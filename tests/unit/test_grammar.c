/* common/text/grammar: the byte-level JSON matcher on hand-written corpora
 * (valid objects accepted byte by byte and whole, done exactly at their last
 * byte; invalid ones refused at their first bad byte, the state untouched,
 * never done), on every UTF-8 lead and continuation, and against a JSON
 * validator written here without it (random documents and their mutations:
 * the same verdict at the same byte); the vocabulary's masks against a brute
 * force over every token (the committed SentencePiece vocabulary, and the
 * default model's, which skips without the model); the mask cache; random
 * walks of allowed tokens that end in one JSON object. */
#include "grammar.h"
#include "tok_fixture.h"

#include <errno.h>

/* ---- an independent validator: RFC 8259 JSON, one object at the top,
 * strings valid UTF-8 (RFC 3629), and the grammar's caps ---- */

#define JV_DEPTH 32
#define JV_WS 16
#define JV_NUMBER 64

struct jv {
    const uint8_t *b;
    size_t n, i;
    int depth;
    size_t bad; /* the first byte no document can go on from; n: the input ended first */
    bool failed;
};

static bool jv_fail(struct jv *v)
{
    if (!v->failed)
        v->failed = true, v->bad = v->i;
    return false;
}

static int jv_peek(const struct jv *v) { return v->i < v->n ? v->b[v->i] : -1; }

static bool jv_digit(int c) { return c >= '0' && c <= '9'; }

/* a run of whitespace, at most JV_WS bytes */
static bool jv_ws(struct jv *v)
{
    unsigned run = 0;
    for (int c; (c = jv_peek(v)) == ' ' || c == '\t' || c == '\n' || c == '\r'; v->i++)
        if (++run > JV_WS)
            return jv_fail(v);
    return true;
}

static bool jv_lit(struct jv *v, const char *lit)
{
    for (; *lit; lit++, v->i++)
        if (jv_peek(v) != (uint8_t)*lit)
            return jv_fail(v);
    return true;
}

/* one more byte of the number that started at start (JV_NUMBER at most);
 * more: a byte after which a digit must come ('.', 'e', the exponent's
 * sign), so that it needs room for two */
static bool jv_num_take_more(struct jv *v, size_t start, bool more)
{
    if (v->i - start + more >= JV_NUMBER)
        return jv_fail(v);
    v->i++;
    return true;
}

static bool jv_num_take(struct jv *v, size_t start) { return jv_num_take_more(v, start, false); }

static bool jv_number(struct jv *v)
{
    const size_t start = v->i;
    if (jv_peek(v) == '-')
        v->i++;
    if (jv_peek(v) == '0') {
        if (!jv_num_take(v, start))
            return false;
    } else if (jv_digit(jv_peek(v))) {
        while (jv_digit(jv_peek(v)))
            if (!jv_num_take(v, start))
                return false;
    } else {
        return jv_fail(v);
    }
    if (jv_peek(v) == '.') {
        if (!jv_num_take_more(v, start, true))
            return false;
        if (!jv_digit(jv_peek(v)))
            return jv_fail(v);
        while (jv_digit(jv_peek(v)))
            if (!jv_num_take(v, start))
                return false;
    }
    if (jv_peek(v) == 'e' || jv_peek(v) == 'E') {
        if (!jv_num_take_more(v, start, true))
            return false;
        if ((jv_peek(v) == '+' || jv_peek(v) == '-') && !jv_num_take_more(v, start, true))
            return false;
        if (!jv_digit(jv_peek(v)))
            return jv_fail(v);
        while (jv_digit(jv_peek(v)))
            if (!jv_num_take(v, start))
                return false;
    }
    return true;
}

static bool jv_hex(int c)
{
    return jv_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A string; a UTF-8 character is decoded as it comes, each byte refused as
 * soon as no code point of its sequence can be a scalar value: the lead's
 * bits (C0, C1: overlong; F5..FF: past U+10FFFF), then the bits the second
 * byte adds (overlong 3- and 4-byte forms, the surrogates, past U+10FFFF) */
static bool jv_string(struct jv *v)
{
    static const char esc[8] = {'"', '\\', '/', 'b', 'f', 'n', 'r', 't'};
    v->i++;
    for (;;) {
        int c = jv_peek(v);
        if (c < 0)
            return jv_fail(v);
        if (c == '"') {
            v->i++;
            return true;
        }
        if (c == '\\') {
            v->i++;
            c = jv_peek(v);
            if (c == 'u') {
                v->i++;
                for (int k = 0; k < 4; k++, v->i++)
                    if (!jv_hex(jv_peek(v)))
                        return jv_fail(v);
            } else if (c >= 0 && memchr(esc, c, sizeof(esc))) {
                v->i++;
            } else {
                return jv_fail(v);
            }
            continue;
        }
        if (c < 0x20)
            return jv_fail(v);
        if (c < 0x80) {
            v->i++;
            continue;
        }
        int len;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0)
            len = 2, cp = (uint32_t)c & 0x1F;
        else if ((c & 0xF0) == 0xE0)
            len = 3, cp = (uint32_t)c & 0x0F;
        else if ((c & 0xF8) == 0xF0)
            len = 4, cp = (uint32_t)c & 0x07;
        else
            return jv_fail(v); /* a continuation byte, or F8..FF */
        if ((len == 2 && cp < 2) || (len == 4 && cp > 4))
            return jv_fail(v);
        v->i++;
        for (int k = 1; k < len; k++) {
            c = jv_peek(v);
            if (c < 0 || (c & 0xC0) != 0x80)
                return jv_fail(v);
            cp = cp << 6 | ((uint32_t)c & 0x3F);
            /* after the second byte cp is the code point >> 6 (3 bytes) or >> 12 (4) */
            if (k == 1 && len == 3 && (cp < (0x800 >> 6) || (cp >= (0xD800 >> 6) && cp <= (0xDFFF >> 6))))
                return jv_fail(v);
            if (k == 1 && len == 4 && (cp < (0x10000 >> 12) || cp > (0x10FFFF >> 12)))
                return jv_fail(v);
            v->i++;
        }
    }
}

static bool jv_value(struct jv *v);

static bool jv_container(struct jv *v, bool object)
{
    const int close = object ? '}' : ']';
    if (v->depth == JV_DEPTH)
        return jv_fail(v);
    v->depth++;
    v->i++;
    if (!jv_ws(v))
        return false;
    if (jv_peek(v) == close) {
        v->i++;
        v->depth--;
        return true;
    }
    for (;;) {
        if (object) {
            if (jv_peek(v) != '"')
                return jv_fail(v);
            if (!jv_string(v) || !jv_ws(v))
                return false;
            if (jv_peek(v) != ':')
                return jv_fail(v);
            v->i++;
            if (!jv_ws(v))
                return false;
        }
        if (!jv_value(v) || !jv_ws(v))
            return false;
        const int c = jv_peek(v);
        if (c == ',') {
            v->i++;
            if (!jv_ws(v))
                return false;
            continue;
        }
        if (c != close)
            return jv_fail(v);
        v->i++;
        v->depth--;
        return true;
    }
}

static bool jv_value(struct jv *v)
{
    const int c = jv_peek(v);
    if (c == '{' || c == '[')
        return jv_container(v, c == '{');
    if (c == '"')
        return jv_string(v);
    if (c == '-' || jv_digit(c))
        return jv_number(v);
    if (c == 't')
        return jv_lit(v, "true");
    if (c == 'f')
        return jv_lit(v, "false");
    if (c == 'n')
        return jv_lit(v, "null");
    return jv_fail(v);
}

/* -1: b is one JSON object (leading whitespace allowed, nothing after it);
 * else the first byte no such document continues with (n: it ended early) */
static long jv_check(const uint8_t *b, size_t n)
{
    struct jv v = {.b = b, .n = n};
    if (jv_ws(&v) && (jv_peek(&v) == '{' ? jv_container(&v, true) : jv_fail(&v)) &&
        (v.i == n || jv_fail(&v)))
        return -1;
    return (long)v.bad;
}

/* ---- the matcher, byte by byte ---- */

/* The same answer from the grammar: fed one byte at a time, each refusal
 * leaving the state as it was; -1 when every byte went and the object is
 * done, else the refused byte (n: all went, not done). */
static long gram_check(const uint8_t *b, size_t n)
{
    struct pd_gstate s, before;
    pd_gstate_json_object(&s);
    for (size_t i = 0; i < n; i++) {
        before = s;
        if (pd_gstate_feed(&s, b + i, 1) < 0) {
            CHECK(memcmp(&before, &s, sizeof(s)) == 0);
            return (long)i;
        }
    }
    return pd_gstate_done(&s) ? -1 : (long)n;
}

/* b printed for a failure message (escaped, cut) */
static const char *show(const uint8_t *b, size_t n)
{
    static char out[400];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 8 < sizeof(out); i++)
        k += (size_t)snprintf(out + k, sizeof(out) - k, b[i] >= 0x20 && b[i] < 0x7f ? "%c" : "\\x%02x",
                              b[i]);
    if (k + 8 >= sizeof(out))
        snprintf(out + k, sizeof(out) - k, "...");
    return out;
}

/* ---- the corpora ---- */

static const char *const valid_docs[] = {
    "{}",
    "  {}",
    "\t\n\r {}",
    "{ }",
    "{\"a\":1}",
    "{\"a\": 1, \"b\": [true, false, null]}",
    "{ \"nested\" : { \"deeper\" : { \"deepest\" : [ [ [ ] ] ] } } }",
    "{\"\":\"\"}",
    "{\"a\":[]}",
    "{\"a\":{}}",
    "{\"escapes\":\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"}",
    "{\"u\":\"\\u0041\\u00e9\\u4E2D\\uD83D\\uDE00\\uFFFF\\u0000\"}",
    "{\"\\u00e9t\\u00C9\":\"key escapes\"}",
    "{\"raw\":\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\"}",
    /* each UTF-8 edge: U+0080, U+07FF, U+0800, U+D7FF, U+E000, U+FFFF, U+10000, U+10FFFF */
    "{\"edges\":\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80"
    "\xf4\x8f\xbf\xbf\"}",
    "{\"k\xc3\xa9y\xe2\x82\xac\":\"raw in a key\"}",
    "{\"a\":0}",
    "{\"a\":-0}",
    "{\"a\":0.0}",
    "{\"a\":-0.5}",
    "{\"a\":123456789}",
    "{\"a\":1e5}",
    "{\"a\":1E+5}",
    "{\"a\":-1.5e-5}",
    "{\"a\":0e0}",
    "{\"a\":-0E-0}",
    "{\"a\":123.456e+789}",
    "{\"n\":[0,-0,1,-1,10,0.5,1.25e10,1E10,1e+10,1e-10,9.99,-12.5E3]}",
    "{\"a\":1 , \"b\" :2 }",
    "{ \n\t\"a\" \r\n: \t 1 , \"b\" : [ 1 , 2 ] \n}",
    "{\"a\":true}",
    "{\"a\":false}",
    "{\"a\":null}",
    "{\"a\":[1,\"two\",3.0,{\"four\":4},[5],null,true,false]}",
    "{\"a\":1,\"a\":2}",
    "{\"a\":\"}\",\"b\":\"]\",\"c\":\"{[,:\"}",
    "{\"a\":\"[{\\\"x\\\":1}]\"}",
    "{\"a\":\"\\\\\"}",
    "{\"lone\":\"\\uDEAD\"}",
    "{\"del\":\"\x7f\"}",
    "{\"spaces\":\"                                        \"}",
    "{\"a\":[[],[[]],{},{\"b\":{}}]}",
    "{\"a\":{\"b\":{\"c\":{\"d\":[1,{\"e\":null}]}}}}",
    "{\"a\" : \"b\" }",
    "\n{\"a\":1}",
    "{\"a\":[-1,-2,-3.5]}",
    "{\"a\":[\"x\" ,\"y\"\t,\"z\"]}",
    "{\"a\":[1 ,2 ]}",
    "{\"t\":[true ,false\t,null\n]}",
};
#define N_VALID (sizeof(valid_docs) / sizeof(*valid_docs))

/* Valid documents at the caps, built: k selects one; 0 when there are no more. */
static size_t capped_valid(int k, uint8_t *b)
{
    size_t n = 0;
    switch (k) {
    case 0: /* 32 containers: the object and 31 arrays */
        n += (size_t)sprintf((char *)b, "{\"a\":");
        for (int i = 0; i < 31; i++)
            b[n++] = '[';
        for (int i = 0; i < 31; i++)
            b[n++] = ']';
        b[n++] = '}';
        return n;
    case 1: /* 32 objects */
        for (int i = 0; i < 31; i++)
            n += (size_t)sprintf((char *)b + n, "{\"k%d\":", i);
        b[n++] = '{';
        for (int i = 0; i < 32; i++)
            b[n++] = '}';
        return n;
    case 2: { /* 16 whitespace bytes in every run: before the object, after each token */
        static const char *const tok[] = {"{", "\"a\"", ":", "1", "}"};
        for (int run = 0; run < 5; run++) {
            for (int i = 0; i < 16; i++)
                b[n++] = (uint8_t)" \t\n\r"[(i + run) % 4];
            n += (size_t)sprintf((char *)b + n, "%s", tok[run]);
        }
        return n;
    }
    case 3: /* a number of 64 bytes */
        n += (size_t)sprintf((char *)b, "{\"a\":");
        for (int i = 0; i < 64; i++)
            b[n++] = (uint8_t)('1' + i % 9);
        b[n++] = '}';
        return n;
    case 4: /* 64 bytes with a sign, a fraction and an exponent */
        n += (size_t)sprintf((char *)b, "{\"a\":[-1.");
        for (int i = 0; i < 64 - 7; i++)
            b[n++] = '5';
        n += (size_t)sprintf((char *)b + n, "e+10]}");
        return n;
    default: return 0;
    }
}

/* An invalid document: pre is accepted (done only where pre_done says so),
 * the first byte of rest is refused. */
struct bad {
    const char *pre, *rest;
    size_t rest_n; /* 0: strlen(rest) */
    bool pre_done;
};

static const struct bad invalid_docs[] = {
    /* leading zeros */
    {"{\"a\":0", "1}", 0, false},
    {"{\"a\":-0", "1}", 0, false},
    {"{\"a\":[0", "0]}", 0, false},
    {"{\"a\":0", "x10}", 0, false},
    /* trailing and doubled commas */
    {"{\"a\":1,", "}", 0, false},
    {"{\"a\":[1,", "]}", 0, false},
    {"{", ",}", 0, false},
    {"{\"a\":1,", ",\"b\":2}", 0, false},
    /* missing colons, values, separators */
    {"{\"a\" ", "1}", 0, false},
    {"{\"a\"", "}", 0, false},
    {"{\"a\":", "}", 0, false},
    {"{\"a\":1 ", "2}", 0, false},
    {"{\"a\":[1 ", "2]}", 0, false},
    /* unquoted keys, single quotes, comments */
    {"{", "a:1}", 0, false},
    {"{\"a\":1,", "b:2}", 0, false},
    {"{", "'a':1}", 0, false},
    {"{\"a\":", "'b'}", 0, false},
    {"{", "/*x*/}", 0, false},
    /* the top value is not an object */
    {"", "[1,2]", 0, false},
    {"", "\"str\"", 0, false},
    {"", "123", 0, false},
    {"", "true", 0, false},
    {"  ", "null", 0, false},
    {"", "}", 0, false},
    {"", "\xef\xbb\xbf{}", 0, false}, /* a byte-order mark */
    /* bad escapes */
    {"{\"a\\", "x\":1}", 0, false},
    {"{\"a\":\"\\", "a\"}", 0, false},
    {"{\"a\":\"\\u12", "g4\"}", 0, false},
    {"{\"a\":\"\\", "U0041\"}", 0, false},
    {"{\"a\":\"\\u", "\"}", 0, false},
    {"{\"a\":\"\\", "'\"}", 0, false},
    {"{\"a\":\"\\", "\0\"}", 3, false},
    {"{\"a\":\"\\", "x41\"}", 0, false},
    /* raw control characters in strings */
    {"{\"a\":\"", "\n\"}", 0, false},
    {"{\"a\":\"", "\t\"}", 0, false},
    {"{\"", "\x01\":1}", 0, false},
    {"{\"a\":\"x", "\x1f\"}", 0, false},
    {"{\"a\":\"", "\0\"}", 3, false},
    /* invalid UTF-8 */
    {"{\"a\":\"", "\xc0\xaf\"}", 0, false}, /* overlong '/' */
    {"{\"a\":\"", "\xc1\xbf\"}", 0, false},
    {"{\"a\":\"\xe0", "\x80\x80\"}", 0, false}, /* overlong 3-byte */
    {"{\"a\":\"\xe0", "\x9f\xbf\"}", 0, false},
    {"{\"a\":\"\xed", "\xa0\x80\"}", 0, false}, /* U+D800 */
    {"{\"a\":\"\xed", "\xbf\xbf\"}", 0, false}, /* U+DFFF */
    {"{\"a\":\"\xf0", "\x80\x80\x80\"}", 0, false}, /* overlong 4-byte */
    {"{\"a\":\"\xf0", "\x8f\xbf\xbf\"}", 0, false},
    {"{\"a\":\"\xf4", "\x90\x80\x80\"}", 0, false}, /* U+110000 */
    {"{\"a\":\"", "\xf5\x80\x80\x80\"}", 0, false},
    {"{\"a\":\"", "\xff\"}", 0, false},
    {"{\"a\":\"", "\x80\"}", 0, false}, /* a lone continuation byte */
    {"{\"a\":\"\xc3\xa9", "\xa9\"}", 0, false}, /* one continuation too many */
    {"{\"a\":\"\xe2\x82", "\"}", 0, false}, /* a sequence cut by the quote */
    {"{\"a\":\"\xf0\x9f\x98", "A\"}", 0, false},
    {"{\"\xc3", "(\":1}", 0, false},
    /* numbers */
    {"{\"a\":", ".5}", 0, false},
    {"{\"a\":", "+1}", 0, false},
    {"{\"a\":-", "}", 0, false},
    {"{\"a\":1.", "}", 0, false},
    {"{\"a\":1.", "e5}", 0, false},
    {"{\"a\":1e", "}", 0, false},
    {"{\"a\":1e+", "}", 0, false},
    {"{\"a\":1.5", ".3}", 0, false},
    {"{\"a\":", "NaN}", 0, false},
    {"{\"a\":", "Infinity}", 0, false},
    {"{\"a\":-", "Infinity}", 0, false},
    /* literals */
    {"{\"a\":tru", "x}", 0, false},
    {"{\"a\":nul", "L}", 0, false},
    {"{\"a\":", "True}", 0, false},
    {"{\"a\":fals", "}", 0, false},
    /* brackets that do not match */
    {"{\"a\":[", "}}", 0, false},
    {"{\"a\":{", "]}", 0, false},
    {"{\"a\":1", "]", 0, false},
    /* anything after the closing brace */
    {"{}", " ", 0, true},
    {"{}", "{}", 0, true},
    {"{\"a\":1}", "\n", 0, true},
    {"{}", "x", 0, true},
    {"{}", "}", 0, true},
    {"{}", "\0", 1, true},
};
#define N_INVALID (sizeof(invalid_docs) / sizeof(*invalid_docs))

/* Invalid documents at the caps, built: the pre part in b[0, *pre), the
 * refused byte and a tail after it; returns the whole length, 0 past the last. */
static size_t capped_invalid(int k, uint8_t *b, size_t *pre)
{
    size_t n = 0;
    switch (k) {
    case 0: /* 33 containers */
        b[n++] = '{', b[n++] = '"', b[n++] = 'a', b[n++] = '"', b[n++] = ':';
        for (int i = 0; i < 31; i++)
            b[n++] = '[';
        *pre = n;
        b[n++] = '[', b[n++] = ']';
        return n;
    case 1: /* 33 objects */
        for (int i = 0; i < 32; i++)
            n += (size_t)sprintf((char *)b + n, "{\"k\":");
        *pre = n; /* 32 objects open, a key given: the 33rd '{' is refused */
        b[n++] = '{', b[n++] = '}';
        return n;
    case 2: /* 17 whitespace bytes before the object */
        for (int i = 0; i < 16; i++)
            b[n++] = ' ';
        *pre = n;
        b[n++] = ' ', b[n++] = '{', b[n++] = '}';
        return n;
    case 3: /* 17 inside */
        b[n++] = '{', b[n++] = '"', b[n++] = 'a', b[n++] = '"', b[n++] = ':';
        for (int i = 0; i < 16; i++)
            b[n++] = (uint8_t)"\r\n\t "[i % 4];
        *pre = n;
        b[n++] = '\n', b[n++] = '1', b[n++] = '}';
        return n;
    case 4: /* 17 after a value */
        n += (size_t)sprintf((char *)b, "{\"a\":[1");
        for (int i = 0; i < 16; i++)
            b[n++] = ' ';
        *pre = n;
        b[n++] = ' ', b[n++] = ']', b[n++] = '}';
        return n;
    case 5: /* a number of 65 bytes */
        n += (size_t)sprintf((char *)b, "{\"a\":");
        for (int i = 0; i < 64; i++)
            b[n++] = '7';
        *pre = n;
        b[n++] = '7', b[n++] = '}';
        return n;
    case 6: /* 65 with a fraction: the 65th a digit of it */
        n += (size_t)sprintf((char *)b, "{\"a\":-0.");
        for (int i = 0; i < 61; i++)
            b[n++] = '0';
        *pre = n;
        b[n++] = '1', b[n++] = '}';
        return n;
    case 7: /* an exponent as the 64th byte: a digit must follow, the 65th */
        n += (size_t)sprintf((char *)b, "{\"a\":");
        for (int i = 0; i < 63; i++)
            b[n++] = '2';
        *pre = n;
        b[n++] = 'e', b[n++] = '1', b[n++] = '}';
        return n;
    default: return 0;
    }
}

/* A valid document fed byte by byte (done only after its last byte, and
 * then nothing more taken), then whole: the same state. */
static void check_valid(const uint8_t *b, size_t n)
{
    struct pd_gstate s, whole;
    pd_gstate_json_object(&s);
    for (size_t i = 0; i < n; i++) {
        if (pd_gstate_feed(&s, b + i, 1) < 0)
            PD_TEST_FAIL_("byte %zu of %s refused", i, show(b, n));
        if (pd_gstate_done(&s) != (i + 1 == n))
            PD_TEST_FAIL_("done %d after byte %zu of %zu: %s", pd_gstate_done(&s), i, n,
                          show(b, n));
    }
    pd_gstate_json_object(&whole);
    CHECK_EQ_INT(pd_gstate_feed(&whole, b, n), 0);
    CHECK(pd_gstate_done(&whole));
    CHECK(memcmp(&whole, &s, sizeof(s)) == 0);
    /* and after it, no byte at all: whitespace and end-of-text included */
    for (int c = 0; c < 256; c++) {
        const uint8_t x = (uint8_t)c;
        struct pd_gstate t = s;
        CHECK_EQ_INT(pd_gstate_feed(&t, &x, 1), -EINVAL);
        CHECK(memcmp(&t, &s, sizeof(s)) == 0);
    }
    CHECK_EQ_INT(pd_gstate_feed(&whole, b, 0), 0); /* nothing is fine */
    if (jv_check(b, n) != -1)
        PD_TEST_FAIL_("the test's validator refuses byte %ld of %s", jv_check(b, n), show(b, n));
}

/* An invalid one: pre accepted byte by byte (done only at its end if
 * pre_done), byte `pre` refused with the state unchanged; whole, refused
 * with the state unchanged. */
static void check_invalid(const uint8_t *b, size_t n, size_t pre, bool pre_done)
{
    struct pd_gstate s, start, before;
    pd_gstate_json_object(&s);
    for (size_t i = 0; i < pre; i++) {
        if (pd_gstate_feed(&s, b + i, 1) < 0)
            PD_TEST_FAIL_("byte %zu of %s refused, want %zu", i, show(b, n), pre);
        if (pd_gstate_done(&s) && !(pre_done && i + 1 == pre))
            PD_TEST_FAIL_("done after byte %zu of %s", i, show(b, n));
    }
    CHECK_EQ_INT(pd_gstate_done(&s), pre_done);
    before = s;
    if (pd_gstate_feed(&s, b + pre, 1) != -EINVAL)
        PD_TEST_FAIL_("byte %zu (0x%02x) of %s accepted", pre, b[pre], show(b, n));
    CHECK(memcmp(&before, &s, sizeof(s)) == 0);
    CHECK_EQ_INT(pd_gstate_done(&s), pre_done);
    /* the whole text, and every longer prefix: refused, nothing changed */
    for (size_t m = pre + 1; m <= n; m++) {
        pd_gstate_json_object(&s);
        start = s;
        CHECK_EQ_INT(pd_gstate_feed(&s, b, m), -EINVAL);
        CHECK(memcmp(&start, &s, sizeof(s)) == 0);
    }
    CHECK_EQ_INT(gram_check(b, n), (long)pre);
    if (jv_check(b, n) != (long)pre)
        PD_TEST_FAIL_("the test's validator stops at byte %ld of %s, want %zu", jv_check(b, n),
                      show(b, n), pre);
}

static void grammar_accepts_valid_objects_byte_by_byte_and_whole(void)
{
    uint8_t b[4096];
    size_t count = 0;
    for (size_t i = 0; i < N_VALID; i++, count++)
        check_valid((const uint8_t *)valid_docs[i], strlen(valid_docs[i]));
    for (int k = 0; capped_valid(k, b); k++, count++)
        check_valid(b, capped_valid(k, b));
    printf("  %zu valid objects\n", count);
    CHECK(count >= 40);
}

static void grammar_refuses_invalid_at_the_first_bad_byte(void)
{
    uint8_t b[4096];
    size_t count = 0, pre;
    for (size_t i = 0; i < N_INVALID; i++, count++) {
        const struct bad *d = &invalid_docs[i];
        const size_t np = strlen(d->pre), nr = d->rest_n ? d->rest_n : strlen(d->rest);
        memcpy(b, d->pre, np);
        memcpy(b + np, d->rest, nr);
        check_invalid(b, np + nr, np, d->pre_done);
    }
    for (int k = 0; capped_invalid(k, b, &pre); k++, count++)
        check_invalid(b, capped_invalid(k, b, &pre), pre, false);
    printf("  %zu invalid documents\n", count);
    CHECK(count >= 40);
}

/* The caps at their edges, alone: 32 containers, 16 whitespace bytes, 64
 * bytes of number go; one more does not */
static void grammar_caps_at_their_edges(void)
{
    CHECK_EQ_INT(PD_GRAMMAR_MAX_DEPTH, 32);
    CHECK_EQ_INT(PD_GRAMMAR_MAX_WS, 16);
    CHECK_EQ_INT(PD_GRAMMAR_MAX_NUMBER, 64);
    struct pd_gstate s;
    pd_gstate_json_object(&s);
    const uint8_t open = '[', sp = ' ', seven = '7', brace = '{';
    CHECK_EQ_INT(pd_gstate_feed(&s, &brace, 1), 0);
    CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)"\"a\":", 4), 0);
    for (int d = 2; d <= 32; d++)
        CHECK_EQ_INT(pd_gstate_feed(&s, &open, 1), 0);
    CHECK_EQ_INT(pd_gstate_feed(&s, &open, 1), -EINVAL);
    CHECK_EQ_INT(pd_gstate_feed(&s, &brace, 1), -EINVAL);
    for (int i = 0; i < 16; i++)
        CHECK_EQ_INT(pd_gstate_feed(&s, &sp, 1), 0);
    CHECK_EQ_INT(pd_gstate_feed(&s, &sp, 1), -EINVAL);
    for (int i = 0; i < 64; i++)
        CHECK_EQ_INT(pd_gstate_feed(&s, &seven, 1), 0);
    CHECK_EQ_INT(pd_gstate_feed(&s, &seven, 1), -EINVAL);
    /* the number ends, its whitespace is a new run: 16 more */
    for (int i = 0; i < 16; i++)
        CHECK_EQ_INT(pd_gstate_feed(&s, &sp, 1), 0);
    CHECK_EQ_INT(pd_gstate_feed(&s, &sp, 1), -EINVAL);
    /* whitespace inside a string is not a run */
    CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)",\"", 2), 0);
    for (int i = 0; i < 100; i++)
        CHECK_EQ_INT(pd_gstate_feed(&s, &sp, 1), 0);
    CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)"\"", 1), 0);
    /* close the 31 arrays and the object: done */
    for (int d = 2; d <= 32; d++)
        CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)"]", 1), 0);
    CHECK(!pd_gstate_done(&s));
    CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)"}", 1), 0);
    CHECK(pd_gstate_done(&s));
}

/* Every pair of bytes after a string's start, and every third byte after
 * each lead of a 3- or 4-byte form and a second byte near the continuation
 * range, the fourth after boundary third bytes: the grammar stops where the
 * test's validator does (RFC 3629's table, from the code points) */
static void grammar_utf8_every_lead_and_continuation(void)
{
    uint8_t b[32];
    const size_t head = (size_t)sprintf((char *)b, "{\"a\":\"");
    uint64_t docs = 0, good = 0;
    for (int b1 = 0; b1 < 256; b1++)
        for (int b2 = 0; b2 < 256; b2++) {
            size_t n = head;
            b[n++] = (uint8_t)b1, b[n++] = (uint8_t)b2, b[n++] = '"', b[n++] = '}';
            const long want = jv_check(b, n), got = gram_check(b, n);
            if (got != want)
                PD_TEST_FAIL_("%02x %02x: grammar %ld, validator %ld", b1, b2, got, want);
            docs++, good += got < 0;
        }
    for (int b1 = 0xE0; b1 <= 0xF7; b1++)
        for (int b2 = 0x7F; b2 <= 0xC0; b2++)
            for (int b3 = 0; b3 < 256; b3++) {
                size_t n = head;
                b[n++] = (uint8_t)b1, b[n++] = (uint8_t)b2, b[n++] = (uint8_t)b3;
                b[n++] = '"', b[n++] = '}';
                const long want = jv_check(b, n), got = gram_check(b, n);
                if (got != want)
                    PD_TEST_FAIL_("%02x %02x %02x: grammar %ld, validator %ld", b1, b2, b3, got,
                                  want);
                docs++, good += got < 0;
            }
    static const uint8_t b2s[] = {0x80, 0x8F, 0x90, 0xBF}, b3s[] = {0x7F, 0x80, 0xBF, 0xC0};
    for (int b1 = 0xF0; b1 <= 0xF4; b1++)
        for (size_t i = 0; i < sizeof(b2s); i++)
            for (size_t j = 0; j < sizeof(b3s); j++)
                for (int b4 = 0; b4 < 256; b4++) {
                    size_t n = head;
                    b[n++] = (uint8_t)b1, b[n++] = b2s[i], b[n++] = b3s[j], b[n++] = (uint8_t)b4;
                    b[n++] = '"', b[n++] = '}';
                    const long want = jv_check(b, n), got = gram_check(b, n);
                    if (got != want)
                        PD_TEST_FAIL_("%02x %02x %02x %02x: grammar %ld, validator %ld", b1,
                                      b2s[i], b3s[j], b4, got, want);
                    docs++, good += got < 0;
                }
    /* the validator's own answers at known points */
    const uint8_t *ok[] = {(const uint8_t *)"{\"a\":\"\xf4\x8f\xbf\xbf\"}",
                           (const uint8_t *)"{\"a\":\"\xed\x9f\xbf\"}",
                           (const uint8_t *)"{\"a\":\"\xc2\x80\"}"};
    for (size_t i = 0; i < 3; i++)
        CHECK_EQ_INT(gram_check(ok[i], strlen((const char *)ok[i])), -1);
    printf("  %llu strings, %llu valid\n", (unsigned long long)docs, (unsigned long long)good);
    CHECK(good > 0);
}

/* ---- random documents ---- */

static uint64_t rs;

static uint32_t rn(uint32_t n)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return n ? (uint32_t)(rs % n) : 0;
}

struct out {
    uint8_t b[16384];
    size_t n;
};

static void put(struct out *o, const char *s)
{
    for (; *s && o->n < sizeof(o->b); s++)
        o->b[o->n++] = (uint8_t)*s;
}

static void put1(struct out *o, uint8_t c)
{
    if (o->n < sizeof(o->b))
        o->b[o->n++] = c;
}

static void gen_ws(struct out *o)
{
    uint32_t k = rn(3) ? 0 : rn(12) == 0 ? 14 + rn(4) : 1 + rn(3);
    for (uint32_t i = 0; i < k; i++)
        put1(o, (uint8_t)" \t\n\r"[rn(4)]);
}

static void gen_utf8(struct out *o, uint32_t cp)
{
    if (cp < 0x800) {
        put1(o, (uint8_t)(0xC0 | cp >> 6));
    } else if (cp < 0x10000) {
        put1(o, (uint8_t)(0xE0 | cp >> 12));
        put1(o, (uint8_t)(0x80 | (cp >> 6 & 0x3F)));
    } else {
        put1(o, (uint8_t)(0xF0 | cp >> 18));
        put1(o, (uint8_t)(0x80 | (cp >> 12 & 0x3F)));
        put1(o, (uint8_t)(0x80 | (cp >> 6 & 0x3F)));
    }
    put1(o, (uint8_t)(0x80 | (cp & 0x3F)));
}

static void gen_string(struct out *o)
{
    static const uint32_t edges[] = {0x80,   0x7FF,  0x800,   0xFFF,    0x1000,
                                     0xD7FF, 0xE000, 0xFFFD,  0xFFFF,   0x10000,
                                     0x3FFFF, 0x40000, 0xFFFFF, 0x100000, 0x10FFFF};
    static const char *const bad[] = {"\x01", "\x1f", "\x80", "\xc0\xaf", "\xc1", "\xf5",
                                      "\xff", "\xed\xa0\x80", "\xe0\x80\x80", "\xf4\x90\x80\x80",
                                      "\xe2\x82", "\\x", "\\u12"};
    put1(o, '"');
    for (uint32_t k = rn(8); k; k--) {
        switch (rn(9)) {
        case 3: {
            char e[3] = {'\\', "\"\\/bfnrt"[rn(8)], 0};
            put(o, e);
            break;
        }
        case 4: {
            put(o, "\\u");
            for (int i = 0; i < 4; i++)
                put1(o, (uint8_t)"0123456789abcdefABCDEF"[rn(22)]);
            break;
        }
        case 5:
        case 6: {
            uint32_t cp = rn(2) ? edges[rn(sizeof(edges) / sizeof(*edges))] : 0x80 + rn(0x10FF80);
            if (cp >= 0xD800 && cp <= 0xDFFF)
                cp -= 0x800;
            gen_utf8(o, cp);
            break;
        }
        case 7:
            if (rn(25) == 0) { /* a mistake, now and then */
                put(o, bad[rn(sizeof(bad) / sizeof(*bad))]);
                break;
            }
            /* fall through */
        default: {
            uint8_t c;
            do
                c = (uint8_t)(0x20 + rn(95));
            while (c == '"' || c == '\\');
            put1(o, c);
        }
        }
    }
    put1(o, '"');
}

static void gen_digits(struct out *o, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        put1(o, (uint8_t)('0' + rn(10)));
}

static void gen_number(struct out *o)
{
    if (rn(3) == 0)
        put1(o, '-');
    if (rn(4) == 0) {
        put1(o, '0');
    } else {
        put1(o, (uint8_t)('1' + rn(9)));
        gen_digits(o, rn(25) == 0 ? 55 + rn(12) : rn(5)); /* now and then near the cap */
    }
    if (rn(3) == 0) {
        put1(o, '.');
        gen_digits(o, 1 + rn(3));
    }
    if (rn(4) == 0) {
        put1(o, rn(2) ? 'e' : 'E');
        if (rn(2))
            put1(o, rn(2) ? '+' : '-');
        gen_digits(o, 1 + rn(2));
    }
}

static void gen_value(struct out *o, int depth);

static void gen_container(struct out *o, int depth, bool object)
{
    put1(o, object ? '{' : '[');
    gen_ws(o);
    const uint32_t n = o->n > 4000 ? 0 : rn(depth > 6 ? 2 : 5);
    for (uint32_t i = 0; i < n; i++) {
        if (i) {
            put1(o, ',');
            gen_ws(o);
        }
        if (object) {
            gen_string(o);
            gen_ws(o);
            put1(o, ':');
            gen_ws(o);
        }
        gen_value(o, depth + 1);
        gen_ws(o);
    }
    put1(o, object ? '}' : ']');
}

static void gen_value(struct out *o, int depth)
{
    switch (rn(depth > 8 ? 6 : 10)) {
    case 0:
    case 1: gen_string(o); break;
    case 2:
    case 3: gen_number(o); break;
    case 4: put(o, (const char *[]){"true", "false", "null"}[rn(3)]); break;
    case 5: gen_string(o); break;
    case 6:
    case 7: gen_container(o, depth, true); break;
    default: gen_container(o, depth, false); break;
    }
}

/* One random document: mostly valid, sometimes past a cap or with a bad
 * byte; now and then a chain of 30..34 containers. */
static void gen_doc(struct out *o)
{
    o->n = 0;
    gen_ws(o);
    if (rn(15) == 0) {
        const uint32_t k = 29 + rn(6); /* inside the object: 30..35 containers in all */
        char open[40];
        put(o, "{\"deep\":");
        for (uint32_t i = 0; i < k; i++) {
            open[i] = rn(4) ? '[' : '{';
            put(o, open[i] == '[' ? "[" : "{\"k\":");
        }
        gen_value(o, 40); /* a scalar */
        for (uint32_t i = k; i-- > 0;)
            put1(o, open[i] == '[' ? ']' : '}');
        put1(o, '}');
    } else {
        gen_container(o, 1, true);
    }
    if (rn(30) == 0)
        gen_ws(o); /* maybe a trailing run: refused */
}

/* One random edit of d: a byte replaced, inserted or removed, or a cut */
static void mutate(struct out *d)
{
    static const uint8_t alpha[] = {'{', '}', '[', ']', '"', ':', ',', '\\', ' ', '\n', '0',
                                    '1', '9', '-', '+', '.', 'e', 'E', 't', 'u', 'n', 'l', 'x',
                                    '/', 'b', 0x00, 0x1F, 0x7F, 0x80, 0xBF, 0xC0, 0xC2, 0xDF,
                                    0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF};
    if (!d->n)
        return;
    const size_t at = rn((uint32_t)d->n);
    const uint8_t c = alpha[rn(sizeof(alpha))];
    switch (rn(4)) {
    case 0: d->b[at] = c; break;
    case 1:
        if (d->n < sizeof(d->b)) {
            memmove(d->b + at + 1, d->b + at, d->n - at);
            d->b[at] = c;
            d->n++;
        }
        break;
    case 2:
        memmove(d->b + at, d->b + at + 1, d->n - at - 1);
        d->n--;
        break;
    default: d->n = at; break;
    }
}

static void grammar_matches_an_independent_validator(void)
{
    static struct out o, m;
    uint64_t agree = 0, valid = 0, mutants_valid = 0, deep = 0;
    rs = 0x9E3779B97F4A7C15ull;
    for (int doc = 0; doc < 3000; doc++) {
        gen_doc(&o);
        const long want = jv_check(o.b, o.n), got = gram_check(o.b, o.n);
        if (got != want)
            PD_TEST_FAIL_("document %d (%zu bytes): grammar %ld, validator %ld: %s", doc, o.n, got,
                          want, show(o.b + (want > 20 ? want - 20 : 0), 60));
        valid += want < 0;
        deep += memmem(o.b, o.n, "{\"deep\":", 8) != NULL;
        if (want < 0) { /* byte by byte and whole, done at the end only */
            check_valid(o.b, o.n);
        }
        agree++;
        for (int k = 0; k < 6; k++) {
            m = o;
            for (uint32_t e = 1 + rn(2); e; e--)
                mutate(&m);
            const long w2 = jv_check(m.b, m.n), g2 = gram_check(m.b, m.n);
            if (g2 != w2)
                PD_TEST_FAIL_("mutant of document %d: grammar %ld, validator %ld: %s", doc, g2,
                              w2, show(m.b + (w2 > 20 ? w2 - 20 : 0), 60));
            mutants_valid += w2 < 0;
            agree++;
        }
    }
    printf("  %llu documents agree (%llu random ones valid, %llu deep; %llu mutants valid)\n",
           (unsigned long long)agree, (unsigned long long)valid, (unsigned long long)deep,
           (unsigned long long)mutants_valid);
    /* both kinds are exercised */
    CHECK(valid > 1500 && valid < 2990);
    CHECK(mutants_valid > 100);
}

/* ---- the vocabulary ---- */

struct gfix {
    struct tok_fix f;
    struct pd_grammar *g;
    uint32_t V;
    int32_t byte_tok[256]; /* a text token of exactly this byte, or -1 */
    uint8_t *structural; /* (V) the token's bytes hold one of {}[]":, */
};

static void gfix_up(struct gfix *x, bool spm)
{
    char err[256];
    memset(x, 0, sizeof(*x));
    if (spm)
        tok_fix_spm(&x->f);
    else
        tok_fix_default(&x->f, PD_TOK_PRE_HF_GGUF);
    x->V = pd_tok_n_vocab(x->f.tok);
    if (pd_grammar_new(x->f.tok, pd_tok_n_vocab(x->f.tok), &x->g, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    CHECK_EQ_INT(pd_grammar_mask_words(x->g), (x->V + 31) / 32);
    CHECK((x->structural = calloc(x->V, 1)) != NULL);
    for (int c = 0; c < 256; c++)
        x->byte_tok[c] = -1;
    for (uint32_t t = 0; t < x->V; t++) {
        size_t n = 0;
        const uint8_t *p = pd_tok_piece(x->f.tok, (int32_t)t, &n);
        if (!p || pd_tok_is_special(x->f.tok, (int32_t)t) || pd_tok_is_eog(x->f.tok, (int32_t)t))
            continue;
        if (n == 1 && x->byte_tok[p[0]] < 0)
            x->byte_tok[p[0]] = (int32_t)t;
        for (size_t i = 0; i < n; i++)
            if (memchr("{}[]\":,", p[i], 7) && p[i])
                x->structural[t] = 1;
    }
}

static void gfix_down(struct gfix *x)
{
    CHECK(pd_grammar_free(x->g) == NULL);
    free(x->structural);
    tok_fix_done(&x->f);
}

static bool bit(const uint32_t *m, uint32_t t) { return m[t / 32] >> (t % 32) & 1u; }

/* The mask of s against every token: its bit is set exactly when the token
 * may come -- an end-of-generation token when s is done, else a text token
 * (not a control one, not empty) whose bytes the matcher takes from s -- and
 * pd_gstate_advance agrees, to the state; bits past the vocabulary are clear.
 * Returns how many tokens are allowed. */
static uint32_t check_mask(struct gfix *x, const struct pd_gstate *s)
{
    const uint32_t *m = pd_grammar_mask(x->g, s);
    uint32_t allowed = 0;
    CHECK(m != NULL);
    for (uint32_t t = 0; t < x->V; t++) {
        size_t n = 0;
        const uint8_t *p = pd_tok_piece(x->f.tok, (int32_t)t, &n);
        struct pd_gstate fed = *s, adv = *s;
        bool want;
        if (pd_tok_is_eog(x->f.tok, (int32_t)t))
            want = pd_gstate_done(s);
        else if (pd_tok_is_special(x->f.tok, (int32_t)t) || !p || !n)
            want = false;
        else
            want = pd_gstate_feed(&fed, p, n) == 0;
        const int rc = pd_gstate_advance(x->g, &adv, (int32_t)t);
        if ((rc == 0) != want || (rc != 0 && rc != -EINVAL))
            PD_TEST_FAIL_("token %u (%s): advance %d, want %s", t, show(p, n), rc,
                          want ? "allowed" : "refused");
        CHECK(memcmp(&adv, want ? &fed : s, sizeof(adv)) == 0);
        if (bit(m, t) != want)
            PD_TEST_FAIL_("token %u (%s): mask bit %d, want %d (state done %d)", t, show(p, n),
                          bit(m, t), want, pd_gstate_done(s));
        allowed += want;
    }
    for (uint32_t t = x->V; t < 32 * pd_grammar_mask_words(x->g); t++)
        CHECK(!bit(m, t));
    return allowed;
}

/* The states of a few documents walked byte by byte, each once */
struct states {
    struct pd_gstate *s;
    size_t n, cap;
};

static void states_add(struct states *l, const struct pd_gstate *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (!memcmp(&l->s[i], s, sizeof(*s)))
            return;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        CHECK((l->s = realloc(l->s, l->cap * sizeof(*l->s))) != NULL);
    }
    l->s[l->n++] = *s;
}

static void states_of(struct states *l, const uint8_t *b, size_t n)
{
    struct pd_gstate s;
    pd_gstate_json_object(&s);
    states_add(l, &s);
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ_INT(pd_gstate_feed(&s, b + i, 1), 0);
        states_add(l, &s);
    }
}

/* the documents whose every state is checked: each mode and sub-state,
 * partial UTF-8 of each length, \u digits, literals, numbers at 63 and 64
 * bytes, 15 and 16 whitespace bytes, depth 31 and 32, done */
static void mask_states(struct states *l)
{
    static const char *const docs[] = {
        "{\"key\": \"v\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00aF\", \"n\": [-0.5e+3, 10E-2, 0, -0], "
        "\"t\": true, \"f\": false, \"z\": null, \"o\": {}, \"a\": []}",
        "{\"\xc3\xa9\": \"\xe0\xa0\x80\xed\x9f\xbf\xe2\x82\xac\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"
        "\xf3\xa0\x80\x80\"}",
        "  \t\n\r   \t\n\r    {  \"a\"\t:\n1\r,\"b\"  :  [ 1 , 2 ] }",
        "{\"a\":[{\"b\":[{\"c\":\"d\"}]}],\"e\":1.0e1}",
    };
    uint8_t b[4096];
    for (size_t i = 0; i < sizeof(docs) / sizeof(*docs); i++)
        states_of(l, (const uint8_t *)docs[i], strlen(docs[i]));
    for (int k = 0; capped_valid(k, b); k++)
        states_of(l, b, capped_valid(k, b));
}

static void check_masks(bool spm)
{
    struct gfix x;
    struct states l = {0};
    gfix_up(&x, spm);
    mask_states(&l);
    uint64_t allowed = 0;
    for (size_t i = 0; i < l.n; i++)
        allowed += check_mask(&x, &l.s[i]);
    printf("  %zu states x %u tokens: %llu allowed\n", l.n, x.V, (unsigned long long)allowed);
    CHECK(l.n > 200);
    free(l.s);
    gfix_down(&x);
}

static void grammar_masks_match_brute_force_spm(void) { check_masks(true); }

static void grammar_masks_match_brute_force_default(void) { check_masks(false); }

/* The ends: at the start only whitespace and '{'-led tokens, never an
 * end-of-generation or control token; once done, exactly the
 * end-of-generation tokens; ids outside the vocabulary refused */
static void grammar_eog_only_when_done_and_specials_never(void)
{
    struct gfix x;
    struct pd_gstate s, done, t;
    gfix_up(&x, false);
    pd_gstate_json_object(&s);
    const uint32_t *m = pd_grammar_mask(x.g, &s);
    uint32_t n_eog = 0, n_special = 0, n_allowed = 0;
    for (uint32_t i = 0; i < x.V; i++) {
        size_t n = 0;
        const uint8_t *p = pd_tok_piece(x.f.tok, (int32_t)i, &n);
        if (pd_tok_is_eog(x.f.tok, (int32_t)i) || pd_tok_is_special(x.f.tok, (int32_t)i)) {
            n_eog += pd_tok_is_eog(x.f.tok, (int32_t)i);
            n_special++;
            CHECK(!bit(m, i));
            continue;
        }
        if (!bit(m, i))
            continue;
        n_allowed++;
        size_t k = 0;
        while (k < n && strchr(" \t\n\r", p[k]) && p[k])
            k++;
        CHECK(k == n || p[k] == '{'); /* whitespace, then the object */
    }
    printf("  %u end-of-generation tokens, %u control tokens, %u allowed first\n", n_eog,
           n_special, n_allowed);
    CHECK(n_eog >= 2 && n_special >= n_eog && n_allowed > 10);
    CHECK(bit(m, (uint32_t)x.byte_tok['{']) && bit(m, (uint32_t)x.byte_tok[' ']));
    CHECK(!bit(m, (uint32_t)x.byte_tok['}']) && !bit(m, (uint32_t)x.byte_tok['"']));
    const int32_t eos = pd_tok_eos(x.f.tok);
    CHECK(eos >= 0 && pd_tok_is_eog(x.f.tok, eos));
    t = s;
    CHECK_EQ_INT(pd_gstate_advance(x.g, &t, eos), -EINVAL);
    CHECK(memcmp(&t, &s, sizeof(s)) == 0);
    /* done: exactly the end-of-generation tokens, and taking one keeps it done */
    pd_gstate_json_object(&done);
    CHECK_EQ_INT(pd_gstate_feed(&done, (const uint8_t *)"{\"a\":[1]}", 9), 0);
    CHECK(pd_gstate_done(&done));
    m = pd_grammar_mask(x.g, &done);
    for (uint32_t i = 0; i < x.V; i++)
        if (bit(m, i) != pd_tok_is_eog(x.f.tok, (int32_t)i))
            PD_TEST_FAIL_("token %u: bit %d once done", i, bit(m, i));
    t = done;
    CHECK_EQ_INT(pd_gstate_advance(x.g, &t, eos), 0);
    CHECK(pd_gstate_done(&t) && memcmp(&t, &done, sizeof(t)) == 0);
    CHECK_EQ_INT(pd_gstate_advance(x.g, &t, x.byte_tok[' ']), -EINVAL);
    CHECK_EQ_INT(pd_gstate_advance(x.g, &t, x.byte_tok['}']), -EINVAL);
    /* a control token that is not an end: never, even where its text would fit */
    const int32_t im_start = 1; /* <|im_start|> */
    CHECK(pd_tok_is_special(x.f.tok, im_start) && !pd_tok_is_eog(x.f.tok, im_start));
    pd_gstate_json_object(&t);
    CHECK_EQ_INT(pd_gstate_feed(&t, (const uint8_t *)"{\"a\":\"", 6), 0);
    struct pd_gstate in_str = t;
    CHECK_EQ_INT(pd_gstate_advance(x.g, &t, im_start), -EINVAL);
    CHECK(memcmp(&t, &in_str, sizeof(t)) == 0);
    CHECK(!bit(pd_grammar_mask(x.g, &in_str), (uint32_t)im_start));
    /* ids outside the vocabulary */
    const int32_t bad[] = {-1, INT32_MIN, (int32_t)x.V, (int32_t)x.V + 31, INT32_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        t = in_str;
        CHECK_EQ_INT(pd_gstate_advance(x.g, &t, bad[i]), -EINVAL);
        CHECK(memcmp(&t, &in_str, sizeof(t)) == 0);
        t = done;
        CHECK_EQ_INT(pd_gstate_advance(x.g, &t, bad[i]), -EINVAL);
    }
    gfix_down(&x);
}

/* The cache: the same state twice is one computation and the same mask; a
 * different state another mask; a state asked for again after a thousand
 * others is computed again, to the same mask */
static void grammar_mask_cache_hits_and_distinct_states(void)
{
    struct gfix x;
    struct pd_grammar_stats st0, st;
    struct pd_gstate start, obj, s;
    gfix_up(&x, false);
    const uint32_t W = pd_grammar_mask_words(x.g);
    uint32_t *first = malloc(W * sizeof(*first)), *other = malloc(W * sizeof(*other));
    CHECK(first && other);
    pd_grammar_stats(x.g, &st0);
    CHECK(st0.masks == 0 && st0.hits == 0 && st0.nodes == 0);
    pd_gstate_json_object(&start);
    const uint32_t *m = pd_grammar_mask(x.g, &start);
    CHECK(m != NULL);
    memcpy(first, m, W * sizeof(*m));
    pd_grammar_stats(x.g, &st);
    CHECK(st.masks == 1 && st.hits == 0 && st.nodes > 0);
    const uint64_t nodes1 = st.nodes;
    m = pd_grammar_mask(x.g, &start);
    CHECK(memcmp(m, first, W * sizeof(*m)) == 0);
    pd_grammar_stats(x.g, &st);
    CHECK(st.masks == 2 && st.hits == 1 && st.nodes == nodes1); /* no walk */
    /* another state: another walk, another mask */
    obj = start;
    CHECK_EQ_INT(pd_gstate_feed(&obj, (const uint8_t *)"{", 1), 0);
    m = pd_grammar_mask(x.g, &obj);
    memcpy(other, m, W * sizeof(*m));
    CHECK(memcmp(other, first, W * sizeof(*m)) != 0);
    CHECK(bit(other, (uint32_t)x.byte_tok['"']) && !bit(first, (uint32_t)x.byte_tok['"']));
    pd_grammar_stats(x.g, &st);
    CHECK(st.masks == 3 && st.hits == 1 && st.nodes > nodes1);
    /* both still cached, in either order */
    m = pd_grammar_mask(x.g, &start);
    CHECK(memcmp(m, first, W * sizeof(*m)) == 0);
    m = pd_grammar_mask(x.g, &obj);
    CHECK(memcmp(m, other, W * sizeof(*m)) == 0);
    pd_grammar_stats(x.g, &st);
    CHECK(st.masks == 5 && st.hits == 3);
    /* a thousand other states: numbers of every length at many depths */
    uint32_t distinct = 0;
    s = start;
    CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)"{\"a\":", 5), 0);
    for (int depth = 0; depth < 20; depth++) {
        struct pd_gstate num = s;
        for (int len = 1; len <= 60; len++, distinct++) {
            CHECK_EQ_INT(pd_gstate_feed(&num, (const uint8_t *)"1", 1), 0);
            CHECK(pd_grammar_mask(x.g, &num) != NULL);
        }
        CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)"[", 1), 0);
    }
    pd_grammar_stats(x.g, &st);
    CHECK_EQ_INT(st.masks, 5 + distinct);
    CHECK_EQ_INT(st.hits, 3);
    const uint64_t nodes2 = st.nodes;
    m = pd_grammar_mask(x.g, &start);
    CHECK(memcmp(m, first, W * sizeof(*m)) == 0);
    pd_grammar_stats(x.g, &st);
    CHECK_EQ_INT(st.hits, 3); /* evicted: computed again */
    CHECK(st.nodes > nodes2);
    /* a number's masks: digits and what may end it, nothing else */
    s = start;
    CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)"{\"a\":12", 7), 0);
    m = pd_grammar_mask(x.g, &s);
    CHECK(bit(m, (uint32_t)x.byte_tok['3']) && bit(m, (uint32_t)x.byte_tok['}']) &&
          bit(m, (uint32_t)x.byte_tok['.']) && bit(m, (uint32_t)x.byte_tok['e']));
    CHECK(!bit(m, (uint32_t)x.byte_tok['"']) && !bit(m, (uint32_t)x.byte_tok[']']) &&
          !bit(m, (uint32_t)x.byte_tok['a']));
    free(first);
    free(other);
    gfix_down(&x);
}

/* ---- random walks ---- */

#define BFS_MAX 400000u
#define BFS_HASH (1u << 20)

struct bfs_node {
    struct pd_gstate s;
    int32_t parent;
    uint8_t byte;
};

static uint32_t state_hash(const struct pd_gstate *s)
{
    const uint8_t *p = (const uint8_t *)s;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < sizeof(*s); i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* The shortest way to done from s in single-byte tokens of a small alphabet
 * (a breadth-first search over the matcher's states): the bytes into path,
 * their count returned (-1: none within BFS_MAX states). */
static long bfs_close(const struct gfix *x, const struct pd_gstate *s0, uint8_t *path, size_t cap)
{
    static const uint8_t alpha[] = {'"', '}', ']', ':', ',', '0', '1', '.', 'e', 't', 'r', 'u',
                                    'f', 'a', 'l', 's', 'n', 'x', 0x80, 0x90, 0xA0};
    struct bfs_node *q = malloc(BFS_MAX * sizeof(*q));
    int32_t *seen = malloc(BFS_HASH * sizeof(*seen));
    long found = -1;
    CHECK(q && seen);
    memset(seen, 0xff, BFS_HASH * sizeof(*seen));
    uint32_t head = 0, tail = 0;
    q[tail++] = (struct bfs_node){*s0, -1, 0};
    seen[state_hash(s0) & (BFS_HASH - 1)] = 0;
    while (head < tail && found < 0) {
        const uint32_t at = head++;
        if (pd_gstate_done(&q[at].s)) {
            size_t n = 0;
            for (int32_t i = (int32_t)at; q[i].parent >= 0; i = q[i].parent)
                n++;
            CHECK(n <= cap);
            size_t k = n;
            for (int32_t i = (int32_t)at; q[i].parent >= 0; i = q[i].parent)
                path[--k] = q[i].byte;
            found = (long)n;
            break;
        }
        for (size_t a = 0; a < sizeof(alpha) && tail < BFS_MAX; a++) {
            if (x->byte_tok[alpha[a]] < 0)
                continue;
            struct pd_gstate t = q[at].s;
            if (pd_gstate_feed(&t, &alpha[a], 1) < 0)
                continue;
            uint32_t h = state_hash(&t) & (BFS_HASH - 1);
            bool dup = false;
            for (; seen[h] >= 0; h = (h + 1) & (BFS_HASH - 1))
                if (!memcmp(&q[seen[h]].s, &t, sizeof(t))) {
                    dup = true;
                    break;
                }
            if (dup)
                continue;
            seen[h] = (int32_t)tail;
            q[tail++] = (struct bfs_node){t, (int32_t)at, alpha[a]};
        }
    }
    free(q);
    free(seen);
    return found;
}

/* From the start, a seeded random allowed token at each step (half the time
 * one with a structural byte) until done or max_steps tokens; then, if not
 * done, the shortest way to done in single-byte tokens, each allowed by its
 * mask. Every third state goes to l for the brute-force check. */
static void walk(struct gfix *x, uint64_t seed, uint32_t max_steps, struct out *o,
                 struct states *l, bool *closed, uint32_t *n_tok)
{
    int32_t *all = malloc(x->V * sizeof(*all)), *st = malloc(x->V * sizeof(*st));
    struct pd_gstate s;
    uint32_t step = 0;
    CHECK(all && st);
    rs = seed;
    o->n = 0;
    pd_gstate_json_object(&s);
    for (; step < max_steps && !pd_gstate_done(&s); step++) {
        if (step % 3 == 0)
            states_add(l, &s);
        const uint32_t *m = pd_grammar_mask(x->g, &s);
        uint32_t n_all = 0, n_st = 0;
        CHECK(m != NULL);
        for (uint32_t w = 0; w < pd_grammar_mask_words(x->g); w++)
            for (uint32_t word = m[w]; word; word &= word - 1) {
                const uint32_t t = 32 * w + (uint32_t)__builtin_ctz(word);
                CHECK(t < x->V && !pd_tok_is_eog(x->f.tok, (int32_t)t));
                all[n_all++] = (int32_t)t;
                if (x->structural[t])
                    st[n_st++] = (int32_t)t;
            }
        CHECK(n_all > 0);
        const int32_t t = n_st && rn(2) ? st[rn(n_st)] : all[rn(n_all)];
        size_t n = 0;
        const uint8_t *p = pd_tok_piece(x->f.tok, t, &n);
        CHECK_EQ_INT(pd_gstate_advance(x->g, &s, t), 0);
        CHECK(o->n + n <= sizeof(o->b));
        memcpy(o->b + o->n, p, n);
        o->n += n;
    }
    *n_tok = step;
    *closed = !pd_gstate_done(&s);
    if (*closed) {
        uint8_t path[1024];
        const long k = bfs_close(x, &s, path, sizeof(path));
        CHECK(k > 0);
        for (long i = 0; i < k; i++) {
            const int32_t t = x->byte_tok[path[i]];
            CHECK(bit(pd_grammar_mask(x->g, &s), (uint32_t)t));
            CHECK_EQ_INT(pd_gstate_advance(x->g, &s, t), 0);
            put1(o, path[i]);
            ++*n_tok;
        }
    }
    CHECK(pd_gstate_done(&s));
    states_add(l, &s);
    const uint32_t *m = pd_grammar_mask(x->g, &s);
    for (uint32_t t = 0; t < x->V; t++)
        CHECK(bit(m, t) == pd_tok_is_eog(x->f.tok, (int32_t)t));
    free(all);
    free(st);
}

static void walks(bool spm)
{
    struct gfix x;
    struct states l = {0};
    static struct out o;
    uint32_t own = 0, total_tok = 0;
    uint64_t allowed = 0;
    gfix_up(&x, spm);
    /* 20 walks of up to 400 tokens, then 10 cut short after a few, closed by
     * the search: the bytes are one JSON object (the test's validator) */
    for (int w = 0; w < 30; w++) {
        bool closed;
        uint32_t n_tok;
        walk(&x, 0x5DEECE66Dull * (uint64_t)(w + 1), w < 20 ? 400 : 4 + 2 * (uint32_t)(w - 20),
             &o, &l, &closed, &n_tok);
        own += !closed;
        total_tok += n_tok;
        const long v = jv_check(o.b, o.n);
        if (v != -1)
            PD_TEST_FAIL_("walk %d (%zu bytes): the validator stops at byte %ld: %s", w, o.n, v,
                          show(o.b + (v > 40 ? v - 40 : 0), 80));
        check_valid(o.b, o.n);
        if (w < 2 || w == 25)
            printf("  walk %d: %s\n", w, show(o.b, o.n < 100 ? o.n : 100));
    }
    for (size_t i = 0; i < l.n; i++)
        allowed += check_mask(&x, &l.s[i]);
    printf("  30 walks, %u tokens, %u done on their own; %zu of their states checked (%llu "
           "allowed)\n",
           total_tok, own, l.n, (unsigned long long)allowed);
    CHECK(own < 30); /* the search closed some */
    free(l.s);
    gfix_down(&x);
}

static void grammar_random_walks_end_in_one_object_spm(void) { walks(true); }

static void grammar_random_walks_end_in_one_object_default(void) { walks(false); }

static void grammar_free_accepts_null(void) { CHECK(pd_grammar_free(NULL) == NULL); }

/* The model's vocabulary may differ from its tokenizer's (a checkpoint's
 * config.json vocab_size): masks cover the model's; ids the tokenizer lacks
 * are never allowed, the tokenizer's past the model's never appear. */
static void grammar_masks_cover_the_models_vocabulary(void)
{
    struct tok_fix f;
    char err[256];
    tok_fix_spm(&f);
    const uint32_t T = pd_tok_n_vocab(f.tok);
    const uint32_t sizes[3] = {T + 40, T, 64};
    for (int k = 0; k < 3; k++) {
        const uint32_t V = sizes[k], words = (V + 31) / 32;
        struct pd_grammar *g = NULL, *full = NULL;
        CHECK_EQ_INT(pd_grammar_new(f.tok, V, &g, err, sizeof(err)), 0);
        CHECK_EQ_INT(pd_grammar_new(f.tok, T, &full, err, sizeof(err)), 0);
        CHECK_EQ_INT(pd_grammar_mask_words(g), words);
        struct pd_gstate s;
        pd_gstate_json_object(&s);
        CHECK_EQ_INT(pd_gstate_feed(&s, (const uint8_t *)"{\"a", 3), 0);
        uint32_t *m = malloc(words * sizeof(*m));
        CHECK(m != NULL);
        memcpy(m, pd_grammar_mask(g, &s), words * sizeof(*m));
        const uint32_t *ref = pd_grammar_mask(full, &s);
        uint32_t allowed = 0;
        for (uint32_t t = 0; t < words * 32; t++) {
            const bool bit = m[t / 32] >> (t % 32) & 1u;
            const bool want = t < V && t < T && (ref[t / 32] >> (t % 32) & 1u);
            if (bit != want)
                PD_TEST_FAIL_("V %u: token %u bit %d, want %d", V, t, bit, want);
            allowed += bit;
            struct pd_gstate c = s;
            if (t < V && (pd_gstate_advance(g, &c, (int32_t)t) == 0) != bit)
                PD_TEST_FAIL_("V %u: token %u advance disagrees with the mask", V, t);
        }
        CHECK(allowed > 0);
        CHECK_EQ_INT(pd_gstate_advance(g, &s, (int32_t)V), -EINVAL);
        free(m);
        pd_grammar_free(g);
        pd_grammar_free(full);
    }
    tok_fix_done(&f);
}

static const struct pd_test tests[] = {
    PD_TEST(grammar_accepts_valid_objects_byte_by_byte_and_whole),
    PD_TEST(grammar_refuses_invalid_at_the_first_bad_byte),
    PD_TEST(grammar_caps_at_their_edges),
    PD_TEST(grammar_utf8_every_lead_and_continuation),
    PD_TEST(grammar_matches_an_independent_validator),
    PD_TEST(grammar_masks_match_brute_force_spm),
    PD_TEST(grammar_masks_match_brute_force_default),
    PD_TEST(grammar_eog_only_when_done_and_specials_never),
    PD_TEST(grammar_mask_cache_hits_and_distinct_states),
    PD_TEST(grammar_random_walks_end_in_one_object_spm),
    PD_TEST(grammar_random_walks_end_in_one_object_default),
    PD_TEST(grammar_free_accepts_null),
    PD_TEST(grammar_masks_cover_the_models_vocabulary),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
