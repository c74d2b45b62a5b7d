/* common/text/pyjson: JSON written as Python's json.dumps writes it, which is
 * what a chat template's `tojson` prints (transformers' tojson is
 * json.dumps(x, ensure_ascii=False, indent=indent)): tools, tool-call
 * arguments and Llama-3.1's tool results in a prompt must match it byte for
 * byte.
 *
 *   char *s; size_t n; char err[128];
 *   if (pd_pyjson_dump(text, len, 0, &s, &n, err, sizeof err) < 0) -> 400 with err
 *   ... s[0..n) (NUL-terminated; the caller frees) ...
 *
 * From the JSON text, not from a parsed tree: Python keeps what a double
 * cannot (an integer literal is an int of any size, printed as written; 1.0
 * stays a float, printed "1.0") and cJSON keeps neither. What json.loads
 * then json.dumps does to a value:
 *   objects and arrays  keys in the order written; ", " and ": " between
 *                       (indent > 0: "," and ": ", each item on its own line
 *                       indented by indent spaces per level; "{}" and "[]"
 *                       when empty)
 *   integers            the digits written ("-0" is 0)
 *   other numbers       repr(float): the shortest digits that read back,
 *                       fixed for exponents -4..15 ("1e2" -> "100.0"),
 *                       else "1e+16", "1.5e-07"; "Infinity" past a double
 *   strings             raw UTF-8; \" \\ \n \r \t \b \f escaped, other
 *                       controls as \u00XX
 * Refused (-EINVAL, err says where): text that is not one JSON value, a lone
 * UTF-16 surrogate escape (Python keeps it; no UTF-8 prompt can), a key
 * repeated in an object (json.loads keeps the last value at the first's
 * place; a text that reads two ways is refused rather than guessed at),
 * nesting deeper than PD_PYJSON_MAX_DEPTH. -ENOMEM.
 */
#ifndef PD_PYJSON_H
#define PD_PYJSON_H

#include <stddef.h>

#define PD_PYJSON_MAX_DEPTH 64

int pd_pyjson_dump(const char *json, size_t len, int indent, char **out, size_t *out_len, char *err,
                   size_t errlen);
/* Where a value lies in a JSON text. */
struct pd_pyjson_span {
    const char *p;
    size_t n;
};

/* The elements of a JSON array's text, checked as pd_pyjson_dump checks:
 * items[0..*n) point into json. -EINVAL (not an array, or not JSON), -E2BIG
 * (more than max elements: the first max are in items, *n = max, and the
 * rest is not read). */
int pd_pyjson_items(const char *json, size_t len, struct pd_pyjson_span *items, size_t max,
                    size_t *n, char *err, size_t errlen);
/* The value of key (plain ASCII, no escapes) in a JSON object's text: 0 with
 * *out; -ENOENT (no such key), -EINVAL (not an object, or not JSON). */
int pd_pyjson_member(const char *json, size_t len, const char *key, struct pd_pyjson_span *out);
/* json.dumps of a string s[0..n) (bytes copied raw, as above). */
int pd_pyjson_str(const char *s, size_t n, char **out, size_t *out_len);
/* repr(v) of a finite double ("inf"/"nan" otherwise) into buf (>= 32 bytes):
 * the shortest digits that read back as v. */
void pd_pyjson_repr(double v, char *buf, size_t cap);

#endif
