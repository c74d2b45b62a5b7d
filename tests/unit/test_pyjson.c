/* common/text/pyjson: Python's json.dumps (ensure_ascii=False, indent None or
 * 4) of JSON texts against what Python printed (tests/golden/pyjson_golden.jsonl,
 * make_pyjson_golden.py): numbers as int or float repr, escapes, key order,
 * white space; refusals; the array and member spans; a float repr sweep
 * against strtod round trips. */
#include "pyjson.h"
#include "tok_fixture.h"

#include <errno.h>
#include <math.h>

static void pyjson_dump_matches_python(void)
{
    struct jl gold;
    size_t ok = 0, refused = 0;
    jl_load(&gold, "pyjson_golden.jsonl");
    for (size_t i = 0; i < gold.n; i++) {
        const char *in = jl_str(gold.row[i], "in"), *want = jl_str(gold.row[i], "out");
        const cJSON *ind = cJSON_GetObjectItemCaseSensitive(gold.row[i], "indent");
        CHECK(in && cJSON_IsNumber(ind));
        char *out = NULL, err[128] = "";
        size_t n = 0;
        int rc = pd_pyjson_dump(in, strlen(in), (int)ind->valuedouble, &out, &n, err, sizeof(err));
        if (want) {
            if (rc != 0 || n != strlen(want) || memcmp(out, want, n) != 0)
                PD_TEST_FAIL_("line %zu: %s (indent %d): rc %d, got \"%s\", want \"%s\"", i + 1, in,
                              (int)ind->valuedouble, rc, rc == 0 ? out : err, want);
            CHECK_EQ_INT(out[n], '\0');
            ok++;
        } else {
            if (rc != -EINVAL)
                PD_TEST_FAIL_("line %zu: %s: rc %d, want -EINVAL", i + 1, in, rc);
            CHECK(err[0] != '\0');
            refused++;
        }
        free(out);
    }
    jl_free(&gold);
    printf("  %zu dumps, %zu refusals\n", ok, refused);
    CHECK(ok >= 100 && refused >= 20);
}

static void pyjson_items_and_members_point_into_the_text(void)
{
    const char *a = " [ {\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}} , \"s\",3 ]";
    struct pd_pyjson_span it[4], v;
    size_t n = 0;
    char err[128];
    CHECK_EQ_INT(pd_pyjson_items(a, strlen(a), it, 4, &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, 3);
    CHECK(it[1].n == 3 && memcmp(it[1].p, "\"s\"", 3) == 0);
    CHECK(it[2].n == 1 && it[2].p[0] == '3');
    CHECK_EQ_INT(pd_pyjson_member(it[0].p, it[0].n, "arguments", &v), 0);
    CHECK(v.n == strlen("{\"x\": [1, 2]}") && memcmp(v.p, "{\"x\": [1, 2]}", v.n) == 0);
    CHECK_EQ_INT(pd_pyjson_member(it[0].p, it[0].n, "name", &v), 0);
    CHECK(v.n == 3 && memcmp(v.p, "\"f\"", 3) == 0);
    CHECK_EQ_INT(pd_pyjson_member(it[0].p, it[0].n, "nam", &v), -ENOENT);
    /* caps, shapes and broken texts */
    n = 0; /* past the cap: the first max elements, and the count says so */
    CHECK_EQ_INT(pd_pyjson_items(a, strlen(a), it, 2, &n, err, sizeof(err)), -E2BIG);
    CHECK_EQ_INT(n, 2);
    CHECK(it[1].n == 3 && memcmp(it[1].p, "\"s\"", 3) == 0);
    /* a key that repeats, even written another way, is refused */
    static const char rep1[] = "{\"a\": 1, \"\\u0061\": 2}",
                      rep2[] = "{\"a\": {\"b\": 1, \"b\": 2}}";
    CHECK_EQ_INT(pd_pyjson_member(rep1, strlen(rep1), "a", &v), -EINVAL);
    CHECK_EQ_INT(pd_pyjson_member(rep2, strlen(rep2), "a", &v), -EINVAL);
    CHECK_EQ_INT(pd_pyjson_member(rep2 + 6, strlen(rep2) - 7, "b", &v), -EINVAL);
    CHECK_EQ_INT(pd_pyjson_items("[]", 2, it, 4, &n, err, sizeof(err)), 0);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(pd_pyjson_items("{}", 2, it, 4, &n, err, sizeof(err)), -EINVAL);
    CHECK_EQ_INT(pd_pyjson_items("[1,]", 4, it, 4, &n, err, sizeof(err)), -EINVAL);
    CHECK_EQ_INT(pd_pyjson_items("[1] x", 5, it, 4, &n, err, sizeof(err)), -EINVAL);
    CHECK_EQ_INT(pd_pyjson_member("[1]", 3, "a", &v), -EINVAL);
    CHECK_EQ_INT(pd_pyjson_member("{\"a\":}", 6, "a", &v), -EINVAL);
    /* a key written with escapes is not the plain key */
    CHECK_EQ_INT(pd_pyjson_member("{\"n\\u0061me\": 1}", 16, "name", &v), -ENOENT);
}

static void pyjson_str_escapes_as_python(void)
{
    char *out;
    size_t n;
    const char s[] = "a\"b\\c\n\x01\x7f\xc3\xa9/";
    CHECK_EQ_INT(pd_pyjson_str(s, sizeof(s) - 1, &out, &n), 0);
    CHECK_STR(out, "\"a\\\"b\\\\c\\n\\u0001\x7f\xc3\xa9/\"");
    CHECK_EQ_INT(n, strlen(out));
    free(out);
    CHECK_EQ_INT(pd_pyjson_str("", 0, &out, &n), 0);
    CHECK_STR(out, "\"\"");
    free(out);
}

/* repr's digits read back, and no fewer would: random doubles of every
 * magnitude (xorshift, fixed seed) */
static void pyjson_repr_is_shortest_round_trip(void)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double v;
        memcpy(&v, &x, sizeof(v));
        if (!isfinite(v))
            continue;
        char buf[40];
        pd_pyjson_repr(v, buf, sizeof(buf));
        if (strtod(buf, NULL) != v)
            PD_TEST_FAIL_("%.17g printed as %s", v, buf);
        /* significant digits: leading and trailing zeros aside */
        char d[40];
        size_t nd = 0;
        for (const char *p = buf; *p && *p != 'e'; p++)
            if ((*p >= '1' && *p <= '9') || (*p == '0' && nd))
                d[nd++] = *p;
        while (nd && d[nd - 1] == '0')
            nd--;
        char fewer[40];
        snprintf(fewer, sizeof(fewer), "%.*e", (int)nd - 2, v);
        if (nd > 1 && strtod(fewer, NULL) == v)
            PD_TEST_FAIL_("%s: %s reads back with fewer digits", buf, fewer);
    }
    char buf[40];
    pd_pyjson_repr(-0.0, buf, sizeof(buf));
    CHECK_STR(buf, "-0.0");
    pd_pyjson_repr(INFINITY, buf, sizeof(buf));
    CHECK_STR(buf, "inf");
}

static const struct pd_test tests[] = {
    PD_TEST(pyjson_dump_matches_python),
    PD_TEST(pyjson_items_and_members_point_into_the_text),
    PD_TEST(pyjson_str_escapes_as_python),
    PD_TEST(pyjson_repr_is_shortest_round_trip),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
