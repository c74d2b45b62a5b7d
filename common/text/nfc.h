/* common/text/nfc: Unicode Normalization Form C (canonical decomposition,
 * canonical ordering, canonical composition; UAX #15), for tokenizer.json's
 * NFC normalizer (Qwen2's). Tables from Python's unicodedata
 * (gen_nfc.py -> nfc_table.h); Hangul by its algorithm.
 *
 *   if (!pd_nfc_quick(s, n)) {                 // most text is NFC already
 *       uint8_t *out = malloc(pd_nfc_max(n));
 *       size_t m;
 *       if (pd_nfc(s, n, out, &m) < 0) ...;    // out[0..m) is s in NFC
 *   }
 *
 * Only well-formed UTF-8 is normalized; ill-formed bytes are copied as they
 * are and end a run (normalization never crosses them). Thread-safe (the
 * tables are constant; scratch is per call).
 */
#ifndef PD_NFC_H
#define PD_NFC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* bytes out must hold for n bytes of input (NFC makes UTF-8 at most 3x
 * longer) */
size_t pd_nfc_max(size_t n);
/* s[0..n) in NFC into out (pd_nfc_max(n) bytes): 0 with *len, or -ENOMEM
 * (scratch) */
int pd_nfc(const uint8_t *s, size_t n, uint8_t *out, size_t *len);
/* the Unicode version of the tables ("14.0.0") */
const char *pd_nfc_unicode_version(void);
/* true when s[0..n) is certainly NFC already (the quick check says Yes for
 * every code point): the caller may skip pd_nfc */
bool pd_nfc_quick(const uint8_t *s, size_t n);

#endif
