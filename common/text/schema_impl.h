/* common/text/schema_impl.h: a compiled schema's layout, shared by
 * schema.c (which builds it) and grammar.c (whose matcher walks it). Not
 * for other modules: they hold struct pd_schema as an opaque handle. */
#ifndef PD_SCHEMA_IMPL_H
#define PD_SCHEMA_IMPL_H

#include "schema.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define PD_SCHEMA_DIGEST 16

/* Numbers in a bounded number's node: fixed point in units of 1e-18, so
 * every value of at most 18 digits is exact and compares as an integer. */
typedef __int128 pd_fix;
#define PD_FIX_ONE ((pd_fix)1000000000000000000LL) /* 1 */
#define PD_NUM_DIGITS 18 /* digits of a bounded integer; the units' scale */
/* digits of a bounded number (kind number): at most 15 significant digits
 * read back as a double that keeps their order against the bounds (even an
 * exclusive one), as validators, Pydantic and JavaScript read them; 17 would
 * not (0.99999999999999999 reads as 1.0) */
#define PD_NUMBER_DIGITS 15


enum pd_snode_kind {
    PD_SK_ANY, /* any JSON value */
    PD_SK_OBJ_FREE, /* any object */
    PD_SK_OBJECT, /* props [a, a + n) of sc->props, in order; key texts lits [lit, lit + n) */
    PD_SK_ARRAY, /* items node a; count within [min, max] */
    PD_SK_STRING, /* characters within [min, max] */
    PD_SK_INTEGER, /* within [ilo, ihi] */
    PD_SK_NUMBER, /* within lo..hi (lo_x, hi_x: exclusive), or free when !bounded */
    PD_SK_LIT, /* one of the texts lits [lit, lit + n) (enum, const, true/false, null) */
    PD_SK_ANYOF, /* one of the nodes alts [a, a + n) */
};

static inline uint32_t pd_digits_of(uint8_t kind)
{
    return kind == PD_SK_INTEGER ? PD_NUM_DIGITS : PD_NUMBER_DIGITS;
}

struct pd_snode {
    uint8_t kind; /* enum pd_snode_kind */
    bool bounded, lo_x, hi_x; /* number: has bounds; exclusive ends */
    uint16_t a, n, lit; /* by kind, above */
    uint16_t width; /* the most readings a value of it can need at once (anyOf) */
    uint32_t min, max; /* string characters, array items */
    int64_t ilo, ihi; /* integer bounds */
    pd_fix lo, hi; /* number bounds */
};

struct pd_sprop {
    uint16_t node;
    bool required;
};

/* Node 0 is PD_SK_ANY and node 1 PD_SK_OBJ_FREE in every schema; literals
 * 0..2 are true, false and null (any value's literals). */
enum { PD_SNODE_ANY = 0, PD_SNODE_OBJ_FREE = 1, PD_SLIT_TRUE = 0, PD_SLIT_NULL = 2 };

struct pd_schema {
    atomic_uint refs; /* 0: static */
    /* BLAKE2b-128 of the compiled content (json_object's: zeros): the mask
     * cache's key, so equal schemas of different requests share masks */
    uint8_t digest[PD_SCHEMA_DIGEST];
    uint16_t root, n_nodes, n_props, n_alts, n_lits;
    struct pd_snode *nodes;
    struct pd_sprop *props;
    uint16_t *alts;
    uint32_t *lit_off; /* (n_lits + 1) literal i: text[lit_off[i], lit_off[i + 1]) */
    uint8_t *text;
};

static inline pd_fix pd_pow10x(uint32_t k)
{
    pd_fix p = 1;
    while (k--)
        p *= 10;
    return p;
}

/* A number node's bounds in its own units (integers: 1; numbers: 1e-18),
 * as seen by a magnitude: mirrored for a negative number. */
struct pd_span {
    pd_fix lo, hi;
    bool lo_x, hi_x;
};

static inline struct pd_span pd_bounds_of(const struct pd_snode *nd, bool neg)
{
    struct pd_span b = nd->kind == PD_SK_INTEGER
                           ? (struct pd_span){nd->ilo, nd->ihi, false, false}
                           : (struct pd_span){nd->lo, nd->hi, nd->lo_x, nd->hi_x};
    if (neg)
        b = (struct pd_span){-b.hi, -b.lo, b.hi_x, b.lo_x};
    return b;
}

/* Whether a point a + j*g (j >= 0) below b is within the bounds. */
static inline bool pd_grid_meets(const struct pd_span *bd, pd_fix a, pd_fix b, pd_fix g)
{
    pd_fix x = a;
    if (bd->lo > a) /* the first grid point at or above lo */
        x = a + (bd->lo - a + g - 1) / g * g;
    if (bd->lo_x && x == bd->lo)
        x += g;
    return x < b && (x < bd->hi || (x == bd->hi && !bd->hi_x));
}

#endif
