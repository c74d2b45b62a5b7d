/* decoded/jstrict: what cJSON 1.7 cannot say about a request body, checked on
 * the raw text (docs/internals/daemon.md, "What the JSON means").
 *
 *   struct dec_jstrict js;
 *   if (dec_jstrict_scan(body, len, &js, msg, sizeof msg, &field) < 0) 400 with msg;
 *   js.seed_text / js.seed_len: the top-level "seed" number as written
 *
 * cJSON keeps the first of duplicate keys (most proxies and validators take
 * the last: a parser differential), turns "\u0000" into the end of a C
 * string (so "abc\u0000def" reads as "abc"), accepts raw control characters
 * in strings, and keeps every number as a double (a seed above 2^53 rounds).
 * The scan refuses a duplicate key in any object (naming it), a NUL or raw
 * control character in any string (naming the top-level field it is under),
 * and hands back the seed's text for an exact integer read and the tools'
 * text (a template prints them from it: 1.0 stays 1.0, which cJSON loses).
 *
 * The body must already be valid UTF-8 and valid JSON (cJSON parsed it) and
 * nested no deeper than the caller's cap (dec_api_json_depth): the scan
 * recurses once per level. Allocates one scratch buffer of len bytes.
 */
#ifndef DEC_JSTRICT_H
#define DEC_JSTRICT_H

#include <stddef.h>
#include <stdint.h>

struct dec_jstrict {
    const char *seed_text; /* into the body; NULL: no top-level "seed" number */
    size_t seed_len;
    const char *tools_text; /* the top-level "tools" value as written (pyjson renders it) */
    size_t tools_len;
};

/* 0, or a refusal with a message: -EINVAL (a duplicate key), -EILSEQ (NUL
 * or a raw control character in a string); *field (may be NULL) is set to
 * the static name of the top-level field the problem is under when it is one
 * of the API's, else NULL. -ENOMEM. */
int dec_jstrict_scan(const char *body, size_t len, struct dec_jstrict *out, char *msg,
                     size_t msglen, const char **field);

/* A JSON number's text as an exact integer in [-2^63, 2^64 - 1], stored as
 * its two's complement: 0, or -EINVAL (a fraction, an exponent, or out of
 * range). */
int dec_jstrict_u64(const char *text, size_t len, uint64_t *out);

#endif
