#include "keyring.h"

#include "errf.h"
#include "handshake.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEX_LEN (2 * PD_PSK_LEN)

/* One generation of keys. Ids are not secret; the keys live in one
 * sodium_malloc region, read-only except while a key is being added. */
struct ring {
    size_t n;
    char ids[PD_KEYRING_MAX][PD_KEY_ID_MAX + 1];
    uint8_t *keys; /* [PD_KEYRING_MAX][PD_PSK_LEN], sodium_malloc */
};

struct pd_keyring {
    pthread_mutex_t mu; /* guards ring (the pointer and what it points to) */
    struct ring *ring;
    char *path; /* NULL for a ring built with pd_keyring_add */
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc;

static void init_sodium(void) { init_rc = sodium_init() < 0 ? -EIO : 0; }

int pd_keyring_init(void)
{
    pthread_once(&init_once, init_sodium);
    return init_rc;
}

static struct ring *ring_free(struct ring *r)
{
    if (r) {
        sodium_free(r->keys); /* wipes */
        free(r);
    }
    return NULL;
}

static struct ring *ring_new(void)
{
    struct ring *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->keys = sodium_malloc((size_t)PD_KEYRING_MAX * PD_PSK_LEN);
    if (!r->keys) {
        free(r);
        return NULL;
    }
    sodium_memzero(r->keys, (size_t)PD_KEYRING_MAX * PD_PSK_LEN);
    sodium_mprotect_readonly(r->keys);
    return r;
}

static int ring_find(const struct ring *r, const char *id)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->ids[i], id) == 0)
            return (int)i;
    return -1;
}

/* Claims the next slot for id; the caller writes the key at the returned
 * pointer while the region is writable, then calls ring_seal. */
static uint8_t *ring_slot(struct ring *r, const char *id, const char *where, char *err,
                          size_t errlen, int *rc)
{
    if (ring_find(r, id) >= 0) {
        *rc = pd_errf(err, errlen, -EEXIST, "%s: key id \"%s\" appears twice", where, id);
        return NULL;
    }
    if (r->n >= PD_KEYRING_MAX) {
        *rc = pd_errf(err, errlen, -E2BIG, "%s: more than %d keys", where, PD_KEYRING_MAX);
        return NULL;
    }
    snprintf(r->ids[r->n], sizeof(r->ids[r->n]), "%s", id);
    sodium_mprotect_readwrite(r->keys);
    return r->keys + r->n * PD_PSK_LEN;
}

static void ring_commit(struct ring *r, int ok)
{
    if (ok)
        r->n++;
    else
        sodium_memzero(r->keys + r->n * PD_PSK_LEN, PD_PSK_LEN);
    sodium_mprotect_readonly(r->keys);
}

/* ---- key files ---- */

/* Parse one key line "ID HEX64" of n bytes straight into the ring. */
static int parse_line(struct ring *r, const char *line, size_t n, const char *want_id,
                      const char *path, int lineno, char *err, size_t errlen)
{
    char id[PD_KEY_ID_MAX + 1];
    const char *sp = memchr(line, ' ', n);
    size_t idl = sp ? (size_t)(sp - line) : 0;
    int rc = 0;

    if (!sp || idl < 1 || idl > PD_KEY_ID_MAX || n - idl - 1 != HEX_LEN)
        return pd_errf(err, errlen, -EINVAL, "key file %s: line %d: expected \"KEYID HEX64\"", path,
                       lineno);
    memcpy(id, line, idl);
    id[idl] = '\0';
    if (!pd_key_id_valid(id))
        return pd_errf(err, errlen, -EINVAL,
                       "key file %s: line %d: key id is not 1..%d of [A-Za-z0-9._-]", path, lineno,
                       PD_KEY_ID_MAX);
    if (want_id && strcmp(id, want_id) != 0)
        return pd_errf(
            err, errlen, -EINVAL,
            "key file %s: holds key \"%s\"; in a key directory a file is named for its key", path,
            id);
    uint8_t *dst = ring_slot(r, id, path, err, errlen, &rc);
    if (!dst)
        return rc;
    size_t bin_len = 0;
    const char *end = NULL;
    int ok = sodium_hex2bin(dst, PD_PSK_LEN, sp + 1, HEX_LEN, NULL, &bin_len, &end) == 0 &&
             bin_len == PD_PSK_LEN && end == sp + 1 + HEX_LEN;
    ring_commit(r, ok);
    if (!ok)
        return pd_errf(err, errlen, -EINVAL, "key file %s: line %d: the key is not 64 hex digits",
                       path, lineno);
    return 0;
}

/* Reads the whole file into sodium_malloc memory (hex key material must not
 * land in ordinary heap pages that could be swapped or left behind). */
static int read_secret_file(int fd, const char *path, char **out, size_t *out_len, char *err,
                            size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return pd_errf(err, errlen, -errno, "key file %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return pd_errf(err, errlen, -EINVAL, "key file %s: not a regular file", path);
    /* group read is how a service user reads root's keys (0640 root:pdserve,
     * docs/operations.md); group write or any access by others is not */
    if (st.st_mode & 037)
        return pd_errf(err, errlen, -EPERM,
                       "key file %s: mode %04o lets others access it or the group change it; "
                       "chmod 600 (or 640 for the service's group) it, refusing",
                       path, (unsigned)(st.st_mode & 07777));
    if (st.st_size > (off_t)PD_KEYFILE_MAX)
        return pd_errf(err, errlen, -E2BIG, "key file %s: %lld bytes exceeds the cap of %u", path,
                       (long long)st.st_size, PD_KEYFILE_MAX);
    char *buf = sodium_malloc((size_t)st.st_size + 1);
    if (!buf)
        return pd_errf(err, errlen, -ENOMEM, "key file %s: out of memory", path);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int e = k < 0 ? errno : EIO;
            sodium_free(buf);
            return pd_errf(err, errlen, -e, "key file %s: read failed: %s", path, strerror(e));
        }
        got += (size_t)k;
    }
    *out = buf;
    *out_len = got;
    return 0;
}

/* Every key line of the file at (dirfd, name) into r. want_id: the file must
 * hold exactly one key of that id (key directory). */
static int load_file(struct ring *r, int dirfd, const char *name, const char *path,
                     const char *want_id, char *err, size_t errlen)
{
    /* O_NONBLOCK: a FIFO planted in a key directory must not hang the daemon */
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return pd_errf(err, errlen, -errno, "key file %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0;
    int rc = read_secret_file(fd, path, &buf, &len, err, errlen);
    close(fd);
    if (rc < 0)
        return rc;

    size_t before = r->n;
    int lineno = 0;
    for (size_t pos = 0; pos < len && rc == 0;) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl ? 1 : 0);
        lineno++;
        if (n == 0 || line[0] == '#')
            continue;
        rc = parse_line(r, line, n, want_id, path, lineno, err, errlen);
    }
    sodium_free(buf);
    if (rc == 0 && r->n == before)
        rc = pd_errf(err, errlen, -EINVAL, "key file %s: no key in it", path);
    if (rc == 0 && want_id && r->n - before != 1)
        rc = pd_errf(err, errlen, -EINVAL, "key file %s: a file in a key directory holds one key",
                     path);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_dir(struct ring *r, const char *path, char *err, size_t errlen)
{
    DIR *d = opendir(path);
    char *names[PD_KEYRING_MAX + 1];
    size_t n = 0;
    int rc = 0;

    if (!d)
        return pd_errf(err, errlen, -errno, "key directory %s: %s", path, strerror(errno));
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n > PD_KEYRING_MAX)
            break;
        if (!(names[n] = strdup(e->d_name)))
            rc = pd_errf(err, errlen, -ENOMEM, "key directory %s: out of memory", path);
        else
            n++;
    }
    if (rc == 0 && n > PD_KEYRING_MAX)
        rc = pd_errf(err, errlen, -E2BIG, "key directory %s: more than %d entries", path,
                     PD_KEYRING_MAX);
    /* sorted, so the ring's order (and every message) is the same on each load */
    if (rc == 0)
        qsort(names, n, sizeof(names[0]), cmp_str);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char fpath[4096];
        struct stat st;
        snprintf(fpath, sizeof(fpath), "%s/%s", path, names[i]);
        if (fstatat(dirfd(d), names[i], &st, 0) < 0) {
            rc = pd_errf(err, errlen, -errno, "key file %s: %s", fpath, strerror(errno));
            break;
        }
        if (!S_ISREG(st.st_mode))
            continue; /* subdirectories, sockets: not keys */
        if (!pd_key_id_valid(names[i])) {
            rc = pd_errf(err, errlen, -EINVAL,
                         "key directory %s: \"%s\" is not a key id ([A-Za-z0-9._-]{1,64})", path,
                         names[i]);
            break;
        }
        rc = load_file(r, dirfd(d), names[i], fpath, names[i], err, errlen);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    closedir(d);
    if (rc == 0 && r->n == 0)
        rc = pd_errf(err, errlen, -EINVAL, "key directory %s: no keys in it", path);
    return rc;
}

static int load_path(const char *path, struct ring **out, char *err, size_t errlen)
{
    struct stat st;
    int rc;
    if (stat(path, &st) < 0)
        return pd_errf(err, errlen, -errno, "keys %s: %s", path, strerror(errno));
    struct ring *r = ring_new();
    if (!r)
        return pd_errf(err, errlen, -ENOMEM, "keys %s: out of memory", path);
    if (S_ISDIR(st.st_mode))
        rc = load_dir(r, path, err, errlen);
    else
        rc = load_file(r, AT_FDCWD, path, path, NULL, err, errlen);
    if (rc < 0) {
        ring_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* ---- the ring ---- */

static int keyring_alloc(const char *path, struct ring *r, struct pd_keyring **out)
{
    struct pd_keyring *kr = calloc(1, sizeof(*kr));
    if (!kr || (path && !(kr->path = strdup(path)))) {
        free(kr);
        return -ENOMEM;
    }
    pthread_mutex_init(&kr->mu, NULL);
    kr->ring = r;
    *out = kr;
    return 0;
}

int pd_keyring_open(const char *path, struct pd_keyring **out, char *err, size_t errlen)
{
    struct ring *r = NULL;
    int rc;
    if ((rc = pd_keyring_init()) < 0)
        return pd_errf(err, errlen, rc, "keys: libsodium failed to initialise");
    if ((rc = load_path(path, &r, err, errlen)) < 0)
        return rc;
    if ((rc = keyring_alloc(path, r, out)) < 0) {
        ring_free(r);
        return pd_errf(err, errlen, rc, "keys %s: out of memory", path);
    }
    return 0;
}

int pd_keyring_new(struct pd_keyring **out)
{
    int rc = pd_keyring_init();
    if (rc < 0)
        return rc;
    struct ring *r = ring_new();
    if (!r)
        return -ENOMEM;
    if ((rc = keyring_alloc(NULL, r, out)) < 0)
        ring_free(r);
    return rc;
}

int pd_keyring_add(struct pd_keyring *kr, const char *id, const uint8_t key[PD_PSK_LEN],
                   char *err, size_t errlen)
{
    int rc = 0;
    if (!pd_key_id_valid(id))
        return pd_errf(err, errlen, -EINVAL, "keys: key id is not 1..%d of [A-Za-z0-9._-]",
                       PD_KEY_ID_MAX);
    pthread_mutex_lock(&kr->mu);
    uint8_t *dst = ring_slot(kr->ring, id, "keys", err, errlen, &rc);
    if (dst) {
        memcpy(dst, key, PD_PSK_LEN);
        ring_commit(kr->ring, 1);
    }
    pthread_mutex_unlock(&kr->mu);
    return rc;
}

int pd_keyring_reload(struct pd_keyring *kr, char *err, size_t errlen)
{
    struct ring *r = NULL;
    if (!kr->path)
        return pd_errf(err, errlen, -EINVAL, "keys: this ring was not read from a file");
    /* build the whole new ring first: a bad edit must not cost the old keys */
    int rc = load_path(kr->path, &r, err, errlen);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&kr->mu);
    struct ring *old = kr->ring;
    kr->ring = r;
    pthread_mutex_unlock(&kr->mu);
    ring_free(old);
    return 0;
}

struct pd_keyring *pd_keyring_free(struct pd_keyring *kr)
{
    if (kr) {
        ring_free(kr->ring);
        pthread_mutex_destroy(&kr->mu);
        free(kr->path);
        free(kr);
    }
    return NULL;
}

size_t pd_keyring_count(struct pd_keyring *kr)
{
    pthread_mutex_lock(&kr->mu);
    size_t n = kr->ring->n;
    pthread_mutex_unlock(&kr->mu);
    return n;
}

int pd_keyring_id_at(struct pd_keyring *kr, size_t i, char *id, size_t idlen)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&kr->mu);
    if (i < kr->ring->n) {
        snprintf(id, idlen, "%s", kr->ring->ids[i]);
        rc = 0;
    }
    pthread_mutex_unlock(&kr->mu);
    return rc;
}

int pd_keyring_get(struct pd_keyring *kr, const char *id, uint8_t key[PD_PSK_LEN], char *id_out)
{
    int rc = 0;
    pthread_mutex_lock(&kr->mu);
    const struct ring *r = kr->ring;
    int i = id ? ring_find(r, id) : r->n == 1 ? 0 : -1;
    if (i < 0) {
        rc = id || r->n == 0 ? -ENOENT : -EINVAL;
    } else {
        memcpy(key, r->keys + (size_t)i * PD_PSK_LEN, PD_PSK_LEN);
        if (id_out)
            snprintf(id_out, PD_KEY_ID_MAX + 1, "%s", r->ids[i]);
    }
    pthread_mutex_unlock(&kr->mu);
    return rc;
}

/* ---- generating a key file ---- */

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? -errno : -EIO;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int pd_keyring_create(const char *path, const char *id, char *id_out, char *err,
                      size_t errlen)
{
    char gen_id[16], file[4096];
    struct stat st;
    int rc;

    if ((rc = pd_keyring_init()) < 0)
        return pd_errf(err, errlen, rc, "keys: libsodium failed to initialise");
    if (!id) {
        uint8_t r[4];
        randombytes_buf(r, sizeof(r));
        snprintf(gen_id, sizeof(gen_id), "psk-%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
        id = gen_id;
    }
    if (!pd_key_id_valid(id))
        return pd_errf(err, errlen, -EINVAL, "keys: key id is not 1..%d of [A-Za-z0-9._-]",
                       PD_KEY_ID_MAX);
    /* a directory gets the file named for the key, as a key directory wants */
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(file, sizeof(file), "%s/%s", path, id);
    else
        snprintf(file, sizeof(file), "%s", path);

    /* line = "ID HEX64\n", built in locked memory */
    size_t idl = strlen(id), line_len = idl + 1 + HEX_LEN + 1;
    uint8_t *key = sodium_malloc(PD_PSK_LEN);
    char *line = sodium_malloc(line_len + 1);
    if (!key || !line) {
        sodium_free(key);
        sodium_free(line);
        return pd_errf(err, errlen, -ENOMEM, "keys: out of memory");
    }
    randombytes_buf(key, PD_PSK_LEN);
    memcpy(line, id, idl);
    line[idl] = ' ';
    sodium_bin2hex(line + idl + 1, HEX_LEN + 1, key, PD_PSK_LEN);
    line[line_len - 1] = '\n';
    sodium_free(key);

    int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        sodium_free(line);
        return pd_errf(err, errlen, rc, "key file %s: %s", file, strerror(-rc));
    }
    /* the umask can only narrow 0600, but say so explicitly */
    if ((rc = fchmod(fd, 0600) < 0 ? -errno : 0) == 0 && (rc = write_all(fd, line, line_len)) == 0)
        rc = fsync(fd) < 0 ? -errno : 0;
    sodium_free(line);
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0) {
        unlink(file);
        return pd_errf(err, errlen, rc, "key file %s: write failed: %s", file, strerror(-rc));
    }
    if (id_out)
        snprintf(id_out, PD_KEY_ID_MAX + 1, "%s", id);
    return 0;
}
