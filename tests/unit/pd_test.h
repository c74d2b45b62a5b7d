/* A small test harness: one behaviour per test, named for it.
 *
 *   static void cfg_rejects_unknown_flag(void) { CHECK(x == 1); CHECK_EQ_INT(a, b); }
 *   static const struct pd_test tests[] = { PD_TEST(cfg_rejects_unknown_flag), {0} };
 *   int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
 *
 * `prog NAME...` runs only the named tests; `prog --list` lists them. A failed
 * CHECK ends its test (the others still run). PD_SKIP(reason) ends a test as
 * skipped. Exit: 1 if any test failed, else 77 (meson's "skipped") if any was
 * skipped, else 0 -- a skip is never reported as a pass.
 */
#ifndef PD_TEST_H
#define PD_TEST_H

#include <inttypes.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pd_test {
    const char *name;
    void (*fn)(void);
};
#define PD_TEST(fn) { #fn, fn }

static jmp_buf pd_test_jmp;
static const char *pd_test_skip_reason;

#define PD_TEST_FAIL_(...)                                                     \
    do {                                                                       \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                      \
        fprintf(stderr, __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                   \
        longjmp(pd_test_jmp, 1);                                               \
    } while (0)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            PD_TEST_FAIL_("CHECK(%s) failed", #cond);                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                     \
    do {                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                    \
        if (a_ != b_)                                                          \
            PD_TEST_FAIL_("%s == %s failed: %lld != %lld", #a, #b, a_, b_);    \
    } while (0)

#define CHECK_STR(a, b)                                                        \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                 \
            PD_TEST_FAIL_("%s == %s failed: \"%s\" != \"%s\"", #a, #b,         \
                          a_ ? a_ : "(null)", b_ ? b_ : "(null)");             \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                            \
    do {                                                                       \
        const char *h_ = (hay), *n_ = (needle);                                \
        if (!h_ || !strstr(h_, n_))                                            \
            PD_TEST_FAIL_("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_); \
    } while (0)

#define PD_SKIP(reason)                                                        \
    do {                                                                       \
        pd_test_skip_reason = (reason) ? (reason) : "skipped";                 \
        longjmp(pd_test_jmp, 2);                                               \
    } while (0)

/* 0 passed, 1 failed, 2 skipped. setjmp lives here, away from the counters. */
/* A whole file in memory, NUL-terminated (caller frees); NULL if unreadable. */
static inline char *pd_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static inline int pd_test_run_one(const struct pd_test *t)
{
    if (setjmp(pd_test_jmp) == 0) {
        t->fn();
        return 0;
    }
    return pd_test_skip_reason ? 2 : 1;
}

static inline int pd_test_wanted(const char *name, int argc, char **argv)
{
    if (argc <= 1)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(name, argv[i]) == 0)
            return 1;
    return 0;
}

static inline int pd_test_main(const struct pd_test *tests, int argc, char **argv)
{
    int counts[3] = {0, 0, 0};

    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (const struct pd_test *t = tests; t->name; t++)
            printf("%s\n", t->name);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        int found = 0;
        for (const struct pd_test *t = tests; t->name; t++)
            found |= strcmp(t->name, argv[i]) == 0;
        if (!found) {
            fprintf(stderr, "no test named %s\n", argv[i]);
            return 1;
        }
    }
    for (const struct pd_test *t = tests; t->name; t++) {
        if (!pd_test_wanted(t->name, argc, argv))
            continue;
        pd_test_skip_reason = NULL;
        int r = pd_test_run_one(t);
        if (r == 0)
            printf("ok %s\n", t->name);
        else if (r == 2)
            printf("skip %s: %s\n", t->name, pd_test_skip_reason ? pd_test_skip_reason : "");
        else
            printf("FAIL %s\n", t->name);
        counts[r]++;
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", counts[0], counts[1], counts[2]);
    return counts[1] ? 1 : counts[2] ? 77 : 0;
}

#endif
