/* common/engine/prefix: block names (chain hashes) against an independent
 * BLAKE2b, that every input changes a name, and a sequence's names as its
 * blocks fill. */
#include "pd_test.h"
#include "prefix.h"
#include "quant.h"

#include <stdbool.h>

static void unhex(const char *hex, uint8_t out[PD_PREFIX_HASH_LEN])
{
    CHECK_EQ_INT(strlen(hex), 2 * PD_PREFIX_HASH_LEN);
    for (int i = 0; i < PD_PREFIX_HASH_LEN; i++) {
        unsigned v;
        CHECK(sscanf(hex + 2 * i, "%2x", &v) == 1);
        out[i] = (uint8_t)v;
    }
}

static void check_hash(const uint8_t got[PD_PREFIX_HASH_LEN], const char *want_hex)
{
    uint8_t want[PD_PREFIX_HASH_LEN];
    unhex(want_hex, want);
    if (memcmp(got, want, PD_PREFIX_HASH_LEN) != 0) {
        char g[2 * PD_PREFIX_HASH_LEN + 1];
        for (int i = 0; i < PD_PREFIX_HASH_LEN; i++)
            snprintf(g + 2 * i, 3, "%02x", got[i]);
        PD_TEST_FAIL_("got %s, want %s", g, want_hex);
    }
}

/* bytes first, first + 1, ... (the fixed inputs of the known answers) */
static void ramp(uint8_t *b, size_t n, uint8_t first)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(first + i);
}

/* The layout of the known answer: block_bytes > 2^32 so its high word counts. */
static struct pd_kv_layout fixed_layout(void)
{
    struct pd_kv_layout l = {.n_layer = 2, .n_head_kv = 3, .head_dim = 8, .block_size = 16,
                             .kv_dtype = PD_DT_BF16, .block_bytes = 0x123456789ull};
    ramp(l.fingerprint, sizeof(l.fingerprint), 0);
    return l;
}

/* Known answers from Python's hashlib, not libsodium (labels with their NUL,
 * integers little-endian; prefix.h):
 *   python3 -c 'import hashlib; print(hashlib.blake2b(
 *       b"pdserve prefix salt v1\0tenant-a", digest_size=32).hexdigest())'
 * and with b"pdserve prefix salt v1\0" alone for the empty salt. */
static void prefix_salt_matches_an_independent_blake2b(void)
{
    uint8_t out[PD_PREFIX_HASH_LEN];
    pd_prefix_salt("tenant-a", 8, out);
    check_hash(out, "669f6cc995b3a59c46c38f0b151c76febe1c288c12fec6f6584348ab84d4a3e3");
    pd_prefix_salt("", 0, out);
    check_hash(out, "85ac7bdcf5da15ada14501f793fc81bfb729264eb07f8c59a76e6140ca3ae6ab");
}

/*   python3 -c 'import hashlib, struct; print(hashlib.blake2b(
 *       b"pdserve prefix root v1\0" + struct.pack("<5IQ", 2, 3, 8, 16, 30, 0x123456789)
 *       + bytes(range(32)) + bytes(range(64, 96)), digest_size=32).hexdigest())'
 * (30: PD_DT_BF16; fingerprint 00..1f, salt 40..5f) */
static void prefix_root_matches_an_independent_blake2b(void)
{
    const struct pd_kv_layout l = fixed_layout();
    uint8_t salt[PD_PREFIX_HASH_LEN], out[PD_PREFIX_HASH_LEN];
    CHECK_EQ_INT(PD_DT_BF16, 30);
    ramp(salt, sizeof(salt), 0x40);
    pd_prefix_root(&l, salt, out);
    check_hash(out, "95b1a9d5df16096aafe823532835d667303610f13285ad4312c302da2719fcfe");
}

/*   python3 -c 'import hashlib, struct; print(hashlib.blake2b(bytes(range(128, 160))
 *       + struct.pack("<6I", 0, 1, 255, 256, 0x12345678, 151935), digest_size=32).hexdigest())'
 * and bytes(range(128, 160)) alone for no tokens. */
static void prefix_chain_hash_matches_an_independent_blake2b(void)
{
    static const int32_t tok[] = {0, 1, 255, 256, 0x12345678, 151935};
    uint8_t parent[PD_PREFIX_HASH_LEN], out[PD_PREFIX_HASH_LEN];
    ramp(parent, sizeof(parent), 0x80);
    pd_prefix_chain(parent, tok, 6, out);
    check_hash(out, "9a96975e016068d2633d92103ea43699fcf947c8ab926a65b19f6919ee31dac4");
    pd_prefix_chain(parent, tok, 0, out);
    check_hash(out, "bb0e24befe35cd612ad06da77a4a54a4c78d01b38f4609edcb1d4d00628cc2fa");
}

/* A sequence's names chain from its root, one block at a time:
 *   python3 -c 'import hashlib, struct; b = lambda d: hashlib.blake2b(d, digest_size=32).digest();
 *       h0 = b(bytes(range(32)) + struct.pack("<2I", 10, 20));
 *       print(h0.hex(), b(h0 + struct.pack("<2I", 30, 40)).hex())' */
static void prefix_seq_names_match_an_independent_blake2b_chain(void)
{
    static const int32_t tok[] = {10, 20, 30, 40, 50};
    uint8_t root[PD_PREFIX_HASH_LEN];
    struct pd_prefix_seq ph;
    ramp(root, sizeof(root), 0);
    pd_prefix_seq_init(&ph, root);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, tok, 5, 2), 0);
    CHECK_EQ_INT(ph.n, 2); /* token 50 is in a block not full yet */
    check_hash(ph.h[0], "eb6e1c0eac07e4f5c05da878e74890faa8ca25a8f020ed02efe1a9692b17b826");
    check_hash(ph.h[1], "aca0c58e8d21b1621b848e23b00cde08d74d98aa239bb2d48e5d5467d7b0ac84");
    pd_prefix_seq_done(&ph);
}

/* The name of the first block of tokens under layout l and salt s. */
static void first_name(const struct pd_kv_layout *l, const char *salt, const int32_t *tok,
                       uint32_t n, uint8_t out[PD_PREFIX_HASH_LEN])
{
    uint8_t s[PD_PREFIX_HASH_LEN], root[PD_PREFIX_HASH_LEN];
    pd_prefix_salt(salt, strlen(salt), s);
    pd_prefix_root(l, s, root);
    pd_prefix_chain(root, tok, n, out);
}

/* Each input of a name, changed alone, gives a new name: different models,
 * layouts, tenants or tokens never share a block. */
static void prefix_name_changes_when_any_input_changes(void)
{
    enum { N_VARIANTS = 13 };
    static const int32_t tok[4] = {5, 6, 7, 8};
    const int32_t one_token[4] = {5, 6, 7, 9}, swapped[4] = {5, 7, 6, 8};
    uint8_t names[N_VARIANTS][PD_PREFIX_HASH_LEN];
    const struct pd_kv_layout base = fixed_layout();
    struct pd_kv_layout l;
    int v = 0;

    first_name(&base, "a", tok, 4, names[v++]);
    first_name(&base, "b", tok, 4, names[v++]); /* salt */
    first_name(&base, "", tok, 4, names[v++]); /* an empty salt */
    l = base;
    l.fingerprint[31] ^= 1;
    first_name(&l, "a", tok, 4, names[v++]); /* the model */
    l = base;
    l.kv_dtype = PD_DT_F16;
    first_name(&l, "a", tok, 4, names[v++]);
    l = base;
    l.block_size = 32;
    first_name(&l, "a", tok, 4, names[v++]);
    l = base;
    l.n_layer = 3;
    first_name(&l, "a", tok, 4, names[v++]);
    l = base;
    l.n_head_kv = 4;
    first_name(&l, "a", tok, 4, names[v++]);
    l = base;
    l.head_dim = 16;
    first_name(&l, "a", tok, 4, names[v++]);
    l = base;
    l.block_bytes ^= 1ull << 32;
    first_name(&l, "a", tok, 4, names[v++]);
    first_name(&base, "a", one_token, 4, names[v++]); /* one token */
    first_name(&base, "a", swapped, 4, names[v++]); /* the tokens' order */
    /* the parent: the same tokens after a different block */
    uint8_t parent[PD_PREFIX_HASH_LEN];
    memcpy(parent, names[1], sizeof(parent));
    pd_prefix_chain(parent, tok, 4, names[v++]);
    CHECK_EQ_INT(v, N_VARIANTS);

    for (int i = 0; i < N_VARIANTS; i++)
        for (int j = 0; j < i; j++)
            if (memcmp(names[i], names[j], PD_PREFIX_HASH_LEN) == 0)
                PD_TEST_FAIL_("variants %d and %d share a name", j, i);
    uint8_t again[PD_PREFIX_HASH_LEN]; /* and the same inputs, the same name */
    first_name(&base, "a", tok, 4, again);
    CHECK(memcmp(again, names[0], PD_PREFIX_HASH_LEN) == 0);
}

static void prompt_tokens(int32_t *t, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)((i * 2654435761u) % 50000);
}

static void prefix_seq_extend_names_only_full_blocks(void)
{
    int32_t tok[40];
    uint8_t root[PD_PREFIX_HASH_LEN], want[PD_PREFIX_HASH_LEN];
    struct pd_prefix_seq ph;
    prompt_tokens(tok, 40);
    ramp(root, sizeof(root), 7);
    pd_prefix_seq_init(&ph, root);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, tok, 7, 8), 0);
    CHECK_EQ_INT(ph.n, 0);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, tok, 20, 8), 0);
    CHECK_EQ_INT(ph.n, 2);
    pd_prefix_chain(root, tok, 8, want);
    CHECK(memcmp(ph.h[0], want, PD_PREFIX_HASH_LEN) == 0);
    pd_prefix_chain(want, tok + 8, 8, want);
    CHECK(memcmp(ph.h[1], want, PD_PREFIX_HASH_LEN) == 0);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, tok, 12, 8), 0); /* fewer tokens: nothing forgotten */
    CHECK_EQ_INT(ph.n, 2);
    pd_prefix_seq_done(&ph);
    CHECK(ph.h == NULL);
    CHECK_EQ_INT(ph.n, 0);
}

/* 20 then 40 tokens (2 then 5 names) gives what 40 at once gives. */
static void prefix_seq_extend_is_incremental(void)
{
    int32_t tok[40];
    uint8_t root[PD_PREFIX_HASH_LEN];
    struct pd_prefix_seq step, once;
    prompt_tokens(tok, 40);
    ramp(root, sizeof(root), 9);
    pd_prefix_seq_init(&step, root);
    pd_prefix_seq_init(&once, root);
    CHECK_EQ_INT(pd_prefix_seq_extend(&step, tok, 20, 8), 0);
    CHECK_EQ_INT(step.n, 2);
    uint8_t first[2][PD_PREFIX_HASH_LEN];
    memcpy(first, step.h, sizeof(first));
    CHECK_EQ_INT(pd_prefix_seq_extend(&step, tok, 40, 8), 0);
    CHECK_EQ_INT(step.n, 5);
    CHECK(memcmp(step.h, first, sizeof(first)) == 0);
    CHECK_EQ_INT(pd_prefix_seq_extend(&once, tok, 40, 8), 0);
    CHECK_EQ_INT(once.n, 5);
    CHECK(memcmp(step.h, once.h, 5 * PD_PREFIX_HASH_LEN) == 0);
    pd_prefix_seq_done(&step);
    pd_prefix_seq_done(&once);
}

/* Past 16 names the array grows, and names already made stay. */
static void prefix_seq_extend_grows_past_first_capacity(void)
{
    int32_t tok[200];
    uint8_t root[PD_PREFIX_HASH_LEN], want[PD_PREFIX_HASH_LEN];
    struct pd_prefix_seq ph;
    prompt_tokens(tok, 200);
    ramp(root, sizeof(root), 1);
    pd_prefix_seq_init(&ph, root);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, tok, 16, 1), 0);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, tok, 200, 1), 0);
    CHECK_EQ_INT(ph.n, 200);
    CHECK(ph.cap >= 200);
    memcpy(want, root, sizeof(want));
    for (uint32_t i = 0; i < 200; i++) {
        pd_prefix_chain(want, tok + i, 1, want);
        if (memcmp(ph.h[i], want, PD_PREFIX_HASH_LEN) != 0)
            PD_TEST_FAIL_("name %u", i);
    }
    pd_prefix_seq_done(&ph);
}

/* After a cut, the names from there on are made again from the new tokens. */
static void prefix_seq_cut_forgets_names_from_block_n(void)
{
    int32_t tok[40];
    uint8_t root[PD_PREFIX_HASH_LEN], kept[2][PD_PREFIX_HASH_LEN], old2[PD_PREFIX_HASH_LEN];
    struct pd_prefix_seq ph, fresh;
    prompt_tokens(tok, 40);
    ramp(root, sizeof(root), 3);
    pd_prefix_seq_init(&ph, root);
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, tok, 40, 8), 0);
    memcpy(kept, ph.h, sizeof(kept));
    memcpy(old2, ph.h[2], sizeof(old2));
    pd_prefix_seq_cut(&ph, 9); /* past n: nothing to forget */
    CHECK_EQ_INT(ph.n, 5);
    pd_prefix_seq_cut(&ph, 2);
    CHECK_EQ_INT(ph.n, 2);
    tok[20] ^= 1; /* a token of block 2 changed */
    CHECK_EQ_INT(pd_prefix_seq_extend(&ph, tok, 40, 8), 0);
    CHECK_EQ_INT(ph.n, 5);
    CHECK(memcmp(ph.h, kept, sizeof(kept)) == 0);
    CHECK(memcmp(ph.h[2], old2, PD_PREFIX_HASH_LEN) != 0);
    pd_prefix_seq_init(&fresh, root);
    CHECK_EQ_INT(pd_prefix_seq_extend(&fresh, tok, 40, 8), 0);
    CHECK(memcmp(ph.h, fresh.h, 5 * PD_PREFIX_HASH_LEN) == 0);
    pd_prefix_seq_done(&ph);
    pd_prefix_seq_done(&fresh);
}

static const struct pd_test tests[] = {
    PD_TEST(prefix_salt_matches_an_independent_blake2b),
    PD_TEST(prefix_root_matches_an_independent_blake2b),
    PD_TEST(prefix_chain_hash_matches_an_independent_blake2b),
    PD_TEST(prefix_seq_names_match_an_independent_blake2b_chain),
    PD_TEST(prefix_name_changes_when_any_input_changes),
    PD_TEST(prefix_seq_extend_names_only_full_blocks),
    PD_TEST(prefix_seq_extend_is_incremental),
    PD_TEST(prefix_seq_extend_grows_past_first_capacity),
    PD_TEST(prefix_seq_cut_forgets_names_from_block_n),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
