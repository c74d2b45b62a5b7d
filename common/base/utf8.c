/* common/base/utf8: see utf8.h. */
#include "utf8.h"

#include <string.h>

/* The allowed range of the second byte after each lead byte (Unicode Table
 * 3-7); every later byte is 80..BF. lo > hi marks a byte that cannot lead. */
static void second_range(uint8_t lead, uint8_t *lo, uint8_t *hi, int *need)
{
    *lo = 0x80, *hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF)
        *need = 1;
    else if (lead == 0xE0)
        *need = 2, *lo = 0xA0;
    else if (lead == 0xED)
        *need = 2, *hi = 0x9F; /* no surrogates */
    else if (lead >= 0xE1 && lead <= 0xEF)
        *need = 2;
    else if (lead == 0xF0)
        *need = 3, *lo = 0x90;
    else if (lead == 0xF4)
        *need = 3, *hi = 0x8F; /* nothing past U+10FFFF */
    else if (lead >= 0xF1 && lead <= 0xF3)
        *need = 3;
    else
        *need = -1; /* 80..C1 and F5..FF never start a character */
}

size_t pd_utf8_next(const uint8_t *s, size_t n, int32_t *cp, bool *cut)
{
    uint8_t lo, hi;
    int need;

    *cut = false;
    *cp = -1;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    second_range(s[0], &lo, &hi, &need);
    if (need < 0)
        return 1;
    uint32_t v = s[0] & (0x3F >> need);
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) {
            *cut = true;
            return (size_t)i;
        }
        if (s[i] < lo || s[i] > hi)
            return (size_t)i; /* the lead and the good bytes so far: one subpart */
        v = (v << 6) | (s[i] & 0x3F);
        lo = 0x80, hi = 0xBF;
    }
    *cp = (int32_t)v;
    return (size_t)need + 1;
}

size_t pd_utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) { /* ASCII runs are most text: skip the general path */
            i++;
            continue;
        }
        int32_t cp;
        bool cut;
        size_t k = pd_utf8_next(s + i, n - i, &cp, &cut);
        if (cp < 0)
            break;
        i += k;
    }
    return i;
}

size_t pd_utf8_lossy(const uint8_t *s, size_t n, uint8_t *out)
{
    static const uint8_t fffd[3] = {0xEF, 0xBF, 0xBD};
    size_t i = 0, o = 0;
    while (i < n) {
        int32_t cp;
        bool cut;
        size_t k = pd_utf8_next(s + i, n - i, &cp, &cut);
        if (cp < 0) {
            if (out)
                memcpy(out + o, fffd, 3);
            o += 3;
        } else {
            if (out)
                memcpy(out + o, s + i, k);
            o += k;
        }
        i += k;
    }
    return o;
}

size_t pd_utf8_put(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF)
        return 0;
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp > 0x10FFFF)
        return 0;
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

int pd_hex_digit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}
