/* common/text/nfc: see nfc.h. */
#include "nfc.h"

#include "nfc_table.h"
#include "utf8.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Hangul (Unicode 3.12): syllables are composed and decomposed by arithmetic */
#define S_BASE 0xAC00u
#define L_BASE 0x1100u
#define V_BASE 0x1161u
#define T_BASE 0x11A7u
#define L_COUNT 19u
#define V_COUNT 21u
#define T_COUNT 28u
#define N_COUNT (V_COUNT * T_COUNT)
#define S_COUNT (L_COUNT * N_COUNT)

size_t pd_nfc_max(size_t n) { return 3 * n + 4; }

const char *pd_nfc_unicode_version(void) { return PD_NFC_UNICODE_VERSION; }

/* The entry of a table of sorted [lo, hi] ranges (each entry's first two
 * uint32_t) that holds cp, or NULL. */
static const void *range_find(const void *table, size_t n, size_t size, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint8_t *e = (const uint8_t *)table + mid * size;
        uint32_t r[2];
        memcpy(r, e, sizeof(r));
        if (cp < r[0])
            hi = mid;
        else if (cp > r[1])
            lo = mid + 1;
        else
            return e;
    }
    return NULL;
}

static uint8_t ccc(uint32_t cp)
{
    const struct pd_nfc_ccc *c = range_find(pd_nfc_ccc, sizeof(pd_nfc_ccc) / sizeof(pd_nfc_ccc[0]),
                                            sizeof(pd_nfc_ccc[0]), cp);
    return c ? c->ccc : 0;
}

static const struct pd_nfc_decomp *decomp(uint32_t cp)
{
    size_t lo = 0, hi = sizeof(pd_nfc_decomp) / sizeof(pd_nfc_decomp[0]);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < pd_nfc_decomp[mid].cp)
            hi = mid;
        else if (cp > pd_nfc_decomp[mid].cp)
            lo = mid + 1;
        else
            return &pd_nfc_decomp[mid];
    }
    return NULL;
}

/* the primary composite of (a, b), or 0 */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE &&
        b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    size_t lo = 0, hi = sizeof(pd_nfc_comp) / sizeof(pd_nfc_comp[0]);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const struct pd_nfc_comp *c = &pd_nfc_comp[mid];
        if (a < c->first || (a == c->first && b < c->second))
            hi = mid;
        else if (a > c->first || b > c->second)
            lo = mid + 1;
        else
            return c->composite;
    }
    return 0;
}

static bool qc_not_yes(uint32_t cp)
{
    return range_find(pd_nfc_qc_not_yes, sizeof(pd_nfc_qc_not_yes) / sizeof(pd_nfc_qc_not_yes[0]),
                      sizeof(pd_nfc_qc_not_yes[0]), cp) != NULL;
}

bool pd_nfc_quick(const uint8_t *s, size_t n)
{
    /* conservative: any mark (its order might need fixing) or any code
     * point whose NFC quick check is not Yes sends the text to pd_nfc */
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int32_t cp;
        bool cut;
        size_t k = pd_utf8_next(s + i, n - i, &cp, &cut);
        if (cp >= 0 && (qc_not_yes((uint32_t)cp) || ccc((uint32_t)cp)))
            return false;
        i += k;
    }
    return true;
}

/* One well-formed run: decompose, order, compose, into out. */
static int nfc_run(const uint8_t *s, size_t n, uint8_t *out, size_t *len)
{
    /* at most 4 code points per decomposed one (Hangul: 3; tables: <= 4) */
    uint32_t *d = malloc((4 * n + 4) * sizeof(*d));
    if (!d)
        return -ENOMEM;
    size_t nd = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        bool cut;
        i += pd_utf8_next(s + i, n - i, &cp, &cut);
        uint32_t c = (uint32_t)cp;
        const struct pd_nfc_decomp *x;
        if (c >= S_BASE && c < S_BASE + S_COUNT) {
            uint32_t si = c - S_BASE;
            d[nd++] = L_BASE + si / N_COUNT;
            d[nd++] = V_BASE + (si % N_COUNT) / T_COUNT;
            if (si % T_COUNT)
                d[nd++] = T_BASE + si % T_COUNT;
        } else if ((x = decomp(c))) {
            for (uint8_t k = 0; k < x->len; k++)
                d[nd++] = pd_nfc_decomp_data[x->off + k];
        } else {
            d[nd++] = c;
        }
    }
    /* canonical ordering: a stable sort of each run of nonzero classes */
    for (size_t i = 1; i < nd; i++) {
        uint8_t ci = ccc(d[i]);
        if (!ci)
            continue;
        for (size_t j = i; j > 0 && ccc(d[j - 1]) > ci; j--) {
            uint32_t t = d[j];
            d[j] = d[j - 1];
            d[j - 1] = t;
        }
    }
    /* composition: each character with the last starter unless blocked (a
     * character between them of class 0 or of a class not lower than its) */
    size_t no = 0, starter = SIZE_MAX;
    int last_cc = -1; /* class of the last character kept after the starter; -1: none */
    for (size_t i = 0; i < nd; i++) {
        uint32_t c = d[i];
        int cc = ccc(c);
        uint32_t p;
        if (starter != SIZE_MAX && (last_cc == -1 || (last_cc != 0 && last_cc < cc)) &&
            (p = compose(d[starter], c))) {
            d[starter] = p;
            continue;
        }
        if (cc == 0)
            starter = no, last_cc = -1;
        else
            last_cc = cc;
        d[no++] = c;
    }
    size_t o = 0;
    for (size_t i = 0; i < no; i++)
        o += pd_utf8_put(d[i], out + o);
    free(d);
    *len = o;
    return 0;
}

int pd_nfc(const uint8_t *s, size_t n, uint8_t *out, size_t *len)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t v = pd_utf8_valid_prefix(s + i, n - i);
        if (v) {
            size_t m;
            if (pd_nfc_quick(s + i, v)) {
                memcpy(out + o, s + i, v);
                m = v;
            } else if (nfc_run(s + i, v, out + o, &m) < 0) {
                return -ENOMEM;
            }
            o += m;
            i += v;
            continue;
        }
        int32_t cp;
        bool cut;
        size_t k = pd_utf8_next(s + i, n - i, &cp, &cut); /* an ill-formed stretch */
        memcpy(out + o, s + i, k);
        o += k;
        i += k;
    }
    *len = o;
    return 0;
}
