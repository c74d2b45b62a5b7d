/* common/kvchan/keyring: key files, key directories, reload, generation. Each test
 * works in its own temporary directory. */
#include "auth.h"
#include "keyring.h"
#include "kv_fixture.h"
#include "pd_test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEX_A "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define HEX_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

static char dir[256], err[512];

static void fresh_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/pd-keyring-XXXXXX");
    if (!mkdtemp(dir))
        PD_TEST_FAIL_("mkdtemp: %s", strerror(errno));
}

/* Removes dir and what the tests put in it (one level of subdirectories). */
static void remove_dir(const char *d)
{
    DIR *dd = opendir(d);
    struct dirent *e;
    while (dd && (e = readdir(dd))) {
        char p[512];
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", d, e->d_name);
        if (unlink(p) < 0)
            remove_dir(p);
    }
    if (dd)
        closedir(dd);
    rmdir(d);
}

/* dir/name with the given text and mode; returns the path (static buffer). */
static const char *put(const char *name, const char *text, mode_t mode)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
    FILE *f = fopen(path, "w");
    if (!f)
        PD_TEST_FAIL_("cannot write %s", path);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
    return path;
}

/* Opening path is refused with rc and the message names why; no ring is handed out. */
static void open_refused(const char *path, int rc, const char *why)
{
    struct pd_keyring *kr = NULL;
    CHECK_EQ_INT(pd_keyring_open(path, &kr, err, sizeof(err)), rc);
    CHECK(kr == NULL);
    CHECK_CONTAINS(err, why);
}

static void key_is(struct pd_keyring *kr, const char *id, const char *hex)
{
    uint8_t got[32], want[32];
    if (pd_keyring_get(kr, id, got, NULL) < 0)
        PD_TEST_FAIL_("no key %s", id);
    sodium_hex2bin(want, 32, hex, 64, NULL, NULL, NULL);
    CHECK(memcmp(got, want, 32) == 0);
}

static void key_file_loads_several_keys(void)
{
    struct pd_keyring *kr;
    char id[PD_KEY_ID_MAX + 1];
    fresh_dir();
    const char *p = put("keys", "# rotated 2026-11\n\nk-old " HEX_A "\nk-new " HEX_B, 0600);
    CHECK_EQ_INT(pd_keyring_open(p, &kr, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_count(kr), 2);
    key_is(kr, "k-old", HEX_A);
    key_is(kr, "k-new", HEX_B);
    CHECK_EQ_INT(pd_keyring_id_at(kr, 1, id, sizeof(id)), 0);
    CHECK_STR(id, "k-new");
    CHECK_EQ_INT(pd_keyring_id_at(kr, 2, id, sizeof(id)), -ENOENT);
    uint8_t k[32];
    CHECK_EQ_INT(pd_keyring_get(kr, "k-gone", k, NULL), -ENOENT);
    CHECK_EQ_INT(pd_keyring_get(kr, NULL, k, NULL), -EINVAL); /* several: must choose */
    pd_keyring_free(kr);
    remove_dir(dir);
}

static void key_file_others_access_or_group_write_refused(void)
{
    struct pd_keyring *kr = NULL;
    const mode_t bad[] = {0604, 0660, 0644, 0610, 0620, 0601};
    fresh_dir();
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        open_refused(put("psk", "k1 " HEX_A "\n", bad[i]), -EPERM,
                     "others access it or the group change it");
        CHECK_CONTAINS(err, "chmod 600");
    }
    /* group read: a service's group reading root's key (0640 root:pdserve) */
    const mode_t good[] = {0640, 0440};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const char *p = put("psk", "k1 " HEX_A "\n", good[i]);
        CHECK_EQ_INT(pd_keyring_open(p, &kr, err, sizeof(err)), 0);
        kr = pd_keyring_free(kr);
    }
    const char *p = put("psk", "k1 " HEX_A "\n", 0400);
    CHECK_EQ_INT(pd_keyring_open(p, &kr, err, sizeof(err)), 0);
    pd_keyring_free(kr);
    remove_dir(dir);
}

static void key_file_syntax_errors_name_the_line_never_the_key(void)
{
    const char *bad[] = {
        "k1 " HEX_A "\nk2  " HEX_B "\n", /* two spaces */
        "k1 " HEX_A "\nk2 " HEX_B "0\n", /* 65 digits */
        "k1 " HEX_A "\nk2 " "ffeeddccbbaa99887766554433221100ffeeddccbbaa9988776655443322110z\n",
        "k1 " HEX_A "\nk/2 " HEX_B "\n", /* bad id character */
        "k1 " HEX_A "\n" HEX_B "\n", /* no id */
        "k1 " HEX_A "\nk2 " HEX_B " \n", /* trailing space */
    };
    fresh_dir();
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        open_refused(put("psk", bad[i], 0600), -EINVAL, "line 2");
        CHECK(!strstr(err, "ffeedd") && !strstr(err, "000102"));
    }
    remove_dir(dir);
}

static void key_file_duplicate_id_refused(void)
{
    fresh_dir();
    open_refused(put("psk", "k1 " HEX_A "\nk1 " HEX_B "\n", 0600), -EEXIST, "appears twice");
    remove_dir(dir);
}

static void key_file_without_keys_refused(void)
{
    fresh_dir();
    open_refused(put("psk", "# nothing here\n\n", 0600), -EINVAL, "no key");
    remove_dir(dir);
}

static void key_file_over_cap_refused(void)
{
    struct pd_keyring *kr = NULL;
    fresh_dir();
    char *big = malloc(PD_KEYFILE_MAX + 2);
    memset(big, '#', PD_KEYFILE_MAX + 1);
    big[PD_KEYFILE_MAX + 1] = '\0';
    const char *p = put("psk", big, 0600);
    free(big);
    CHECK_EQ_INT(pd_keyring_open(p, &kr, err, sizeof(err)), -E2BIG);
    CHECK_EQ_INT(pd_keyring_open("/nonexistent/psk", &kr, err, sizeof(err)), -ENOENT);
    remove_dir(dir);
}

static void key_dir_loads_each_file_named_for_its_key(void)
{
    struct pd_keyring *kr;
    char id[PD_KEY_ID_MAX + 1];
    fresh_dir();
    put("b-key", "b-key " HEX_B "\n", 0600);
    put("a-key", "a-key " HEX_A "\n", 0400);
    put(".a-key.swp", "garbage", 0644); /* editors' files are not keys */
    char sub[512];
    snprintf(sub, sizeof(sub), "%s/old", dir);
    mkdir(sub, 0700); /* nor are subdirectories */
    CHECK_EQ_INT(pd_keyring_open(dir, &kr, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_count(kr), 2);
    CHECK_EQ_INT(pd_keyring_id_at(kr, 0, id, sizeof(id)), 0);
    CHECK_STR(id, "a-key"); /* sorted by name */
    key_is(kr, "a-key", HEX_A);
    key_is(kr, "b-key", HEX_B);
    pd_keyring_free(kr);
    remove_dir(dir);
}

static void key_dir_file_must_hold_the_key_it_is_named_for(void)
{
    struct pd_keyring *kr = NULL;
    fresh_dir();
    put("k1", "k2 " HEX_A "\n", 0600);
    open_refused(dir, -EINVAL, "named for its key");
    put("k1", "k1 " HEX_A "\nk2 " HEX_B "\n", 0600);
    CHECK_EQ_INT(pd_keyring_open(dir, &kr, err, sizeof(err)), -EINVAL);
    put("k1", "k1 " HEX_A "\n", 0600);
    put("not a key", "x", 0600);
    open_refused(dir, -EINVAL, "is not a key id");
    remove_dir(dir);
}

static void key_dir_with_a_readable_file_refused(void)
{
    fresh_dir();
    put("k1", "k1 " HEX_A "\n", 0600);
    put("k2", "k2 " HEX_B "\n", 0644);
    open_refused(dir, -EPERM, "/k2");
    remove_dir(dir);
}

static void empty_key_dir_refused(void)
{
    fresh_dir();
    open_refused(dir, -EINVAL, "no keys");
    remove_dir(dir);
}

static void key_dir_reload_picks_up_added_and_removed_keys(void)
{
    struct pd_keyring *kr;
    uint8_t k[32];
    fresh_dir();
    put("k1", "k1 " HEX_A "\n", 0600);
    CHECK_EQ_INT(pd_keyring_open(dir, &kr, err, sizeof(err)), 0);
    put("k2", "k2 " HEX_B "\n", 0600);
    CHECK_EQ_INT(pd_keyring_get(kr, "k2", k, NULL), -ENOENT); /* not before the reload */
    CHECK_EQ_INT(pd_keyring_reload(kr, err, sizeof(err)), 0);
    key_is(kr, "k2", HEX_B);
    char p[512];
    snprintf(p, sizeof(p), "%s/k1", dir);
    unlink(p);
    CHECK_EQ_INT(pd_keyring_reload(kr, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_count(kr), 1);
    CHECK_EQ_INT(pd_keyring_get(kr, "k1", k, NULL), -ENOENT);
    pd_keyring_free(kr);
    remove_dir(dir);
}

static void key_dir_reload_keeps_old_ring_on_error(void)
{
    struct pd_keyring *kr;
    fresh_dir();
    put("k1", "k1 " HEX_A "\n", 0600);
    put("k2", "k2 " HEX_B "\n", 0600);
    CHECK_EQ_INT(pd_keyring_open(dir, &kr, err, sizeof(err)), 0);
    /* a half-edited directory: one good new key, one bad one */
    put("k3", "k3 " HEX_A "\n", 0600);
    put("k4", "k4 0123\n", 0600);
    CHECK_EQ_INT(pd_keyring_reload(kr, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "/k4");
    CHECK_EQ_INT(pd_keyring_count(kr), 2);
    key_is(kr, "k1", HEX_A);
    key_is(kr, "k2", HEX_B);
    uint8_t k[32];
    CHECK_EQ_INT(pd_keyring_get(kr, "k3", k, NULL), -ENOENT);
    /* the old ring still completes handshakes */
    struct kv_pair kp;
    CHECK_EQ_INT(kv_pair_init(&kp, 0), 0);
    kp.pd.keyring = kp.pp.keyring = kr;
    kp.pd.key_id = "k2";
    CHECK_EQ_INT(kv_pair_handshake(&kp), 0);
    kp.pd.keyring = kp.pp.keyring = kp.kr;
    kv_pair_done(&kp);
    pd_keyring_free(kr);
    remove_dir(dir);
}

static void reload_of_an_in_memory_ring_refused(void)
{
    struct pd_keyring *kr;
    uint8_t k[32] = {0};
    CHECK_EQ_INT(pd_keyring_new(&kr), 0);
    CHECK_EQ_INT(pd_keyring_add(kr, "k", k, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_add(kr, "k", k, err, sizeof(err)), -EEXIST);
    CHECK_EQ_INT(pd_keyring_add(kr, "bad id", k, err, sizeof(err)), -EINVAL);
    CHECK_EQ_INT(pd_keyring_reload(kr, err, sizeof(err)), -EINVAL);
    pd_keyring_free(kr);
}

static void generate_writes_mode_0600_and_never_overwrites(void)
{
    char path[512], id[PD_KEY_ID_MAX + 1];
    struct stat st;
    struct pd_keyring *kr;
    fresh_dir();
    snprintf(path, sizeof(path), "%s/kv.psk", dir);
    CHECK_EQ_INT(pd_keyring_create(path, NULL, id, err, sizeof(err)), 0);
    CHECK(strncmp(id, "psk-", 4) == 0 && strlen(id) == 12);
    CHECK_EQ_INT(stat(path, &st), 0);
    CHECK_EQ_INT(st.st_mode & 07777, 0600);
    CHECK_EQ_INT(st.st_size, strlen(id) + 1 + 64 + 1);
    CHECK_EQ_INT(pd_keyring_open(path, &kr, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_count(kr), 1);
    uint8_t before[32], after[32];
    CHECK_EQ_INT(pd_keyring_get(kr, id, before, NULL), 0);
    pd_keyring_free(kr);
    CHECK_EQ_INT(pd_keyring_create(path, "other", NULL, err, sizeof(err)), -EEXIST);
    CHECK_EQ_INT(pd_keyring_open(path, &kr, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_get(kr, id, after, NULL), 0);
    CHECK(memcmp(before, after, 32) == 0);
    pd_keyring_free(kr);
    CHECK_EQ_INT(pd_keyring_create(path, "bad/id", NULL, err, sizeof(err)), -EINVAL);
    remove_dir(dir);
}

static void generate_into_a_key_dir_names_the_file_for_the_key(void)
{
    struct pd_keyring *kr;
    char id[PD_KEY_ID_MAX + 1];
    fresh_dir();
    CHECK_EQ_INT(pd_keyring_create(dir, "k-2026", id, err, sizeof(err)), 0);
    CHECK_STR(id, "k-2026");
    CHECK_EQ_INT(pd_keyring_create(dir, "k-2027", NULL, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_open(dir, &kr, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_count(kr), 2);
    pd_keyring_free(kr);
    remove_dir(dir);
}

static void generated_key_completes_a_handshake_between_two_rings(void)
{
    char path[512];
    struct pd_keyring *d_ring, *p_ring;
    struct kv_pair kp;
    fresh_dir();
    snprintf(path, sizeof(path), "%s/kv.psk", dir);
    CHECK_EQ_INT(pd_keyring_create(path, "shared", NULL, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_open(path, &d_ring, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_keyring_open(path, &p_ring, err, sizeof(err)), 0);
    CHECK_EQ_INT(kv_pair_init(&kp, 0), 0);
    kp.pd.keyring = d_ring;
    kp.pp.keyring = p_ring;
    kp.pd.key_id = NULL; /* the only key */
    if (kv_pair_handshake(&kp) < 0)
        PD_TEST_FAIL_("%s", kp.err);
    CHECK_STR(pd_auth_session_key_id(kp.sd), "shared");
    kv_pair_done(&kp);
    pd_keyring_free(d_ring);
    pd_keyring_free(p_ring);
    remove_dir(dir);
}

static const struct pd_test tests[] = {
    PD_TEST(key_file_loads_several_keys),
    PD_TEST(key_file_others_access_or_group_write_refused),
    PD_TEST(key_file_syntax_errors_name_the_line_never_the_key),
    PD_TEST(key_file_duplicate_id_refused),
    PD_TEST(key_file_without_keys_refused),
    PD_TEST(key_file_over_cap_refused),
    PD_TEST(key_dir_loads_each_file_named_for_its_key),
    PD_TEST(key_dir_file_must_hold_the_key_it_is_named_for),
    PD_TEST(key_dir_with_a_readable_file_refused),
    PD_TEST(empty_key_dir_refused),
    PD_TEST(key_dir_reload_picks_up_added_and_removed_keys),
    PD_TEST(key_dir_reload_keeps_old_ring_on_error),
    PD_TEST(reload_of_an_in_memory_ring_refused),
    PD_TEST(generate_writes_mode_0600_and_never_overwrites),
    PD_TEST(generate_into_a_key_dir_names_the_file_for_the_key),
    PD_TEST(generated_key_completes_a_handshake_between_two_rings),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
