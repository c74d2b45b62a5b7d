/* common/base/utf8: UTF-8 scanning by the Unicode standard's rules (Table 3-7,
 * "maximal subpart" substitution), shared by the tokenizer, streaming
 * detokenization and chat templates.
 *
 *   int32_t cp; bool cut;
 *   size_t k = pd_utf8_next(s, n, &cp, &cut);   // k >= 1 whenever n >= 1
 *   if (cp < 0 && !cut) ... s[0..k) is one maximal invalid subpart
 *
 * Replacement follows the Unicode recommendation that Rust's
 * String::from_utf8_lossy and Python's decode(errors="replace") also follow:
 * each maximal subpart of an ill-formed sequence becomes one U+FFFD. No
 * allocation, no state: safe from any thread.
 */
#ifndef PD_UTF8_H
#define PD_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One step over s[0..n), n >= 1. Returns the number of bytes consumed (>= 1):
 * a whole well-formed character (*cp its code point), or a maximal invalid
 * subpart (*cp = -1). *cut is true when s[0..ret) is a well-formed prefix that
 * the end of the input interrupted (more bytes could complete it); *cp is -1
 * then too. */
size_t pd_utf8_next(const uint8_t *s, size_t n, int32_t *cp, bool *cut);

/* Length of the longest well-formed prefix of s[0..n). */
size_t pd_utf8_valid_prefix(const uint8_t *s, size_t n);

/* Copy s[0..n) to out replacing each maximal invalid subpart (a cut prefix at
 * the end included) with U+FFFD. out must hold 3 * n bytes, or be NULL to
 * only count. Returns the bytes written (or that would be). */
size_t pd_utf8_lossy(const uint8_t *s, size_t n, uint8_t *out);

/* Encode cp (<= 0x10FFFF, not a surrogate) into out[4]; returns 1..4, or 0. */
size_t pd_utf8_put(uint32_t cp, uint8_t *out);

/* A hexadecimal digit's value (either case), or -1 (escapes: "\u00e9", "<0xE9>"). */
int pd_hex_digit(char c);

#endif
