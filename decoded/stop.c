#include "stop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void dec_stop_init(struct dec_stop *s, char *const *stops, uint32_t n_stops)
{
    memset(s, 0, sizeof(*s));
    s->stops = stops;
    s->n_stops = n_stops;
    for (uint32_t i = 0; i < n_stops; i++) {
        size_t n = strlen(stops[i]);
        if (n > 0 && n - 1 > s->hold)
            s->hold = n - 1;
    }
}

void dec_stop_done(struct dec_stop *s)
{
    free(s->buf);
    free(s->out);
    memset(s, 0, sizeof(*s));
}

static int reserve(char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    char *q = realloc(*p, c);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

/* Move buf[0..n) to out and keep the rest held. */
static int release(struct dec_stop *s, size_t n, const char **out, size_t *out_len)
{
    if (reserve(&s->out, &s->out_cap, n + 1) < 0)
        return -ENOMEM;
    memcpy(s->out, s->buf, n);
    s->out[n] = '\0';
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
    *out = s->out;
    *out_len = n;
    return 0;
}

int dec_stop_push(struct dec_stop *s, const char *text, size_t n, const char **out,
                  size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (s->hit)
        return 1;
    if (reserve(&s->buf, &s->cap, s->len + n + 1) < 0)
        return -ENOMEM;
    memcpy(s->buf + s->len, text, n);
    s->len += n;

    /* the earliest match of any stop string ends the text */
    size_t best = SIZE_MAX;
    for (uint32_t i = 0; i < s->n_stops; i++) {
        size_t k = strlen(s->stops[i]);
        const char *p = k ? memmem(s->buf, s->len, s->stops[i], k) : NULL;
        if (p && (size_t)(p - s->buf) < best)
            best = (size_t)(p - s->buf);
    }
    if (best != SIZE_MAX) {
        s->hit = true;
        if (release(s, best, out, out_len) < 0)
            return -ENOMEM;
        s->len = 0;
        return 1;
    }
    size_t keep = s->hold < s->len ? s->hold : s->len;
    size_t n_out = s->len - keep;
    /* never cut a UTF-8 character: back up over continuation bytes */
    while (n_out > 0 && n_out < s->len && ((unsigned char)s->buf[n_out] & 0xC0) == 0x80)
        n_out--;
    return release(s, n_out, out, out_len) < 0 ? -ENOMEM : 0;
}

void dec_stop_flush(struct dec_stop *s, const char **out, size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (s->hit || s->len == 0)
        return;
    if (release(s, s->len, out, out_len) < 0) {
        s->len = 0; /* out of memory at the very end: the held bytes are lost */
        return;
    }
}
