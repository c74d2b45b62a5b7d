/* Prints the C side of the KV handshake's known-answer vectors as one JSON
 * object {"name": "hex", ...}; tests/vectors/kat_auth.py recomputes every
 * value with its own implementation and compares. */
#include "kat_auth.h"

int main(void)
{
    static struct kat k;
    if (kat_compute(&k) < 0)
        return 1;
    printf("{");
    for (size_t i = 0; i < k.n; i++) {
        char hex[2 * PD_AUTH_MSG_MAX + 1];
        sodium_bin2hex(hex, sizeof(hex), k.it[i].v, k.it[i].len);
        printf("%s\n  \"%s\": \"%s\"", i ? "," : "", k.it[i].name, hex);
    }
    printf("\n}\n");
    return 0;
}
