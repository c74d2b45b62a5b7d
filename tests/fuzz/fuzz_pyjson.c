/* libFuzzer target: Python's json.dumps of a JSON text (common/text/pyjson.c)
 * and the array and object readers that share its walk, on the same bytes.
 * A refusal is -EINVAL and says why. A dump that succeeds is itself JSON
 * that dumps to the same bytes again (indent 0, and indent 4), and its
 * indent-4 form dumps back to the indent-0 one; the one exception is a
 * number past a double, written "Infinity" as Python writes it, which no
 * JSON reader takes back. The readers agree with the dump: an array's
 * elements, each dumped and joined by ", ", are its dump; a member found
 * dumps on its own; where the dump refuses the text, so do they. */
#include "pyjson.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    MAX_ITEMS = 16
};

struct dump {
    int rc;
    char *p;
    size_t n;
};

static struct dump dump(const char *s, size_t n, int indent)
{
    struct dump d = {0};
    char err[128] = "";
    d.rc = pd_pyjson_dump(s, n, indent, &d.p, &d.n, err, sizeof(err));
    if (d.rc == 0 && (!d.p || d.p[d.n] != '\0' || strlen(d.p) > d.n))
        abort(); /* NUL-terminated; a NUL byte inside only as \u0000 */
    if (d.rc < 0 && (d.rc != -EINVAL || !err[0]))
        abort(); /* a refusal says why; nothing here is out of memory */
    return d;
}

static bool same(const struct dump *a, const struct dump *b)
{
    return a->rc == 0 && b->rc == 0 && a->n == b->n && memcmp(a->p, b->p, a->n) == 0;
}

static bool has_infinity(const struct dump *d) { return memmem(d->p, d->n, "Infinity", 8) != NULL; }

/* a dump's own dump gives it back (or, with an overflowed number, is refused) */
static void check_again(const struct dump *d, int indent)
{
    struct dump again = dump(d->p, d->n, indent);
    if (again.rc < 0 ? !has_infinity(d) : !same(d, &again))
        abort();
    free(again.p);
}

static const char *skip_ws(const char *s, const char *end)
{
    while (s < end && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r'))
        s++;
    return s;
}

static bool inside(const struct pd_pyjson_span *sp, const char *s, size_t n)
{
    return sp->p >= s && sp->n > 0 && sp->n <= n && sp->p + sp->n <= s + n;
}

/* the elements dumped one by one and joined are the array's dump */
static void check_items(const char *s, size_t n, const struct dump *d0)
{
    struct pd_pyjson_span items[MAX_ITEMS];
    size_t k = 0;
    char err[128] = "";
    int rc = pd_pyjson_items(s, n, items, MAX_ITEMS, &k, err, sizeof(err));
    const char *first = skip_ws(s, s + n);
    if (first == s + n || *first != '[') {
        if (rc != -EINVAL)
            abort();
        return;
    }
    /* -E2BIG comes at the element past max, before the rest is read */
    if ((rc == 0 && d0->rc < 0) || (rc == -EINVAL && d0->rc == 0) ||
        (rc < 0 && rc != -EINVAL && rc != -E2BIG) || (rc < 0 && !err[0]))
        abort();
    if (rc < 0)
        return;
    if (k > MAX_ITEMS)
        abort();
    size_t at = 0;
    bool ok = d0->n >= 2 && d0->p[at++] == '[';
    for (size_t i = 0; i < k && ok; i++) {
        if (!inside(&items[i], s, n))
            abort();
        struct dump e = dump(items[i].p, items[i].n, 0);
        if (e.rc < 0)
            abort(); /* an element the array took */
        if (i) {
            ok = at + 2 <= d0->n && memcmp(d0->p + at, ", ", 2) == 0;
            at += 2;
        }
        ok = ok && at + e.n <= d0->n && memcmp(d0->p + at, e.p, e.n) == 0;
        at += e.n;
        free(e.p);
    }
    if (!ok || at + 1 != d0->n || d0->p[at] != ']')
        abort();
}

static void check_member(const char *s, size_t n, const char *key, const struct dump *d0)
{
    struct pd_pyjson_span v;
    int rc = pd_pyjson_member(s, n, key, &v);
    const char *first = skip_ws(s, s + n);
    if (first == s + n || *first != '{') {
        if (rc != -EINVAL)
            abort();
        return;
    }
    if ((d0->rc == 0) != (rc == 0 || rc == -ENOENT))
        abort();
    if (rc < 0)
        return;
    if (!inside(&v, s, n))
        abort();
    struct dump e = dump(v.p, v.n, 0);
    if (e.rc < 0 || !memmem(d0->p, d0->n, e.p, e.n))
        abort(); /* the member's value, and its dump is part of the object's */
    free(e.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct dump d0 = dump(s, size, 0), d4 = dump(s, size, 4);
    if ((d0.rc == 0) != (d4.rc == 0))
        abort(); /* the indent changes the writing, never what is taken */
    if (d0.rc == 0) {
        if (memchr(d0.p, '\n', d0.n))
            abort(); /* indent 0: one line, control characters escaped */
        check_again(&d0, 0);
        check_again(&d4, 4);
        struct dump back = dump(d4.p, d4.n, 0);
        if (back.rc < 0 ? !has_infinity(&d4) : !same(&back, &d0))
            abort();
        free(back.p);
    }
    check_items(s, size, &d0);
    check_member(s, size, "name", &d0);
    check_member(s, size, "a", &d0);
    check_member(s, size, "", &d0);
    free(d0.p);
    free(d4.p);
    return 0;
}
