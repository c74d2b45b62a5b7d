/* decoded/stop: stop strings matched across token boundaries.
 *
 *   struct dec_stop st;
 *   dec_stop_init(&st, stops, n_stops);         // stops stay the caller's
 *   for each piece of detokenized text:
 *       int hit = dec_stop_push(&st, piece, n, &out, &out_len);   // send out[0..out_len)
 *       if (hit) finish_reason = "stop";        // out ends right before the stop string
 *   at the end: dec_stop_flush(&st, &out, &out_len);              // what was held back
 *   dec_stop_done(&st);
 *
 * Text that could be the start of a stop string is held back (at most the
 * longest stop string less one byte, moved back to a UTF-8 character
 * boundary), so released text never contains any part of a matched stop
 * string. After a hit, further pushes release nothing. The released text
 * stays valid until the next call. Memory: the held text plus one piece.
 */
#ifndef DEC_STOP_H
#define DEC_STOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dec_stop {
    char *const *stops;
    uint32_t n_stops;
    size_t hold; /* longest stop - 1 */
    char *buf; /* held text, then released text, one allocation */
    size_t len, cap;
    char *out;
    size_t out_cap;
    bool hit;
};

void dec_stop_init(struct dec_stop *s, char *const *stops, uint32_t n_stops);
void dec_stop_done(struct dec_stop *s);
/* 1: a stop string ended the text; 0: not yet; -ENOMEM. */
int dec_stop_push(struct dec_stop *s, const char *text, size_t n, const char **out,
                  size_t *out_len);
void dec_stop_flush(struct dec_stop *s, const char **out, size_t *out_len);

#endif
