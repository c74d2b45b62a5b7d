/* common/kvchan/keyring: the KV channel's pre-shared keys (id + 32-byte key), read
 * from a key file or a key directory, held in sodium_malloc memory.
 *
 *   struct pd_keyring *kr;
 *   char err[512];
 *   if (pd_keyring_open("/etc/pdserve/kv-keys", &kr, err, sizeof(err)) < 0) { log err; exit }
 *   ...
 *   if (pd_keyring_reload(kr, err, sizeof(err)) < 0)      // SIGHUP
 *       pd_log(PD_LOG_WARN, "%s; keeping the old keys", err);
 *   kr = pd_keyring_free(kr);
 *
 * Key file: text, one key per line "KEYID HEX64" (the id 1..64 of
 * [A-Za-z0-9._-], one space, 64 hex digits); lines starting with '#' and empty
 * lines are ignored; anything else is an error naming the file and line. A key
 * file named by --kv-psk-file may hold several keys (rotation). It must be a
 * regular file that others cannot access and the group cannot change (0600,
 * 0400, or 0640/0440 so a service's group can read root's file), else it is
 * refused.
 *
 * Key directory: every regular file whose name does not start with '.' is a
 * key file holding exactly one key whose id is the file's name (so `ls` shows
 * which keys are installed); subdirectories are skipped. The same checks apply
 * to each file.
 *
 * Several keys may be present at once: an initiator uses the one it names, a
 * responder accepts any. Reload builds a complete new ring, then swaps it in;
 * a failed reload keeps the old ring and says why. Handshakes copy the key
 * they use, so a reload never pulls a key from under one.
 *
 * Threads: every function may be called from any thread; lookups and reloads
 * are serialised by a mutex inside the ring. Keys are never logged and never
 * leave sodium_malloc memory except into the caller's buffer in pd_keyring_get.
 */
#ifndef PD_KEYRING_H
#define PD_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#define PD_PSK_LEN 32
#define PD_KEYRING_MAX 64 /* keys in one ring */
#define PD_KEYFILE_MAX (64u << 10) /* bytes of one key file */

struct pd_keyring;

/* libsodium's initialisation, for the whole KV channel (keyring, auth,
 * kvx): idempotent and thread-safe; every constructor there calls it. 0 or
 * -EIO. */
int pd_keyring_init(void);

/* path: a key file or a key directory (stat decides). Refuses a ring with no
 * keys. -ENOENT/-EACCES/-EPERM (file access, group/other-readable), -EINVAL
 * (syntax, duplicate ids, name/id mismatch), -E2BIG (caps), -ENOMEM. */
int pd_keyring_open(const char *path, struct pd_keyring **out, char *err, size_t errlen);

/* An empty ring with no source, filled with pd_keyring_add (tests, tools). */
int pd_keyring_new(struct pd_keyring **out);
/* Adds (id, key): -EINVAL bad id, -EEXIST duplicate, -E2BIG full. */
int pd_keyring_add(struct pd_keyring *kr, const char *id, const uint8_t key[PD_PSK_LEN],
                   char *err, size_t errlen);

/* Re-read the path given to pd_keyring_open; on any error the old ring stays.
 * -EINVAL when the ring has no source. */
int pd_keyring_reload(struct pd_keyring *kr, char *err, size_t errlen);

/* Accepts NULL; returns NULL. Wipes the keys. */
struct pd_keyring *pd_keyring_free(struct pd_keyring *kr);

size_t pd_keyring_count(struct pd_keyring *kr);
/* Copies the id of key i (< count) into id[PD_KEY_ID_MAX + 1]; -ENOENT past the end. */
int pd_keyring_id_at(struct pd_keyring *kr, size_t i, char *id, size_t idlen);
/* Copies the key named id into key (the caller's buffer should be sodium_malloc
 * memory and is the caller's to wipe). -ENOENT when absent. With id NULL: the
 * ring's only key, -EINVAL when it holds several (the initiator must choose),
 * and the chosen id into id_out (PD_KEY_ID_MAX + 1 bytes) when given. */
int pd_keyring_get(struct pd_keyring *kr, const char *id, uint8_t key[PD_PSK_LEN], char *id_out);

/* Write a new key file at path: "ID HEX64\n", mode 0600, created with O_EXCL
 * (an existing file is never overwritten: -EEXIST). id NULL: "psk-" and 8
 * random hex digits. The id written goes to id_out (PD_KEY_ID_MAX + 1 bytes)
 * when given. For prefilld --gen-psk; the same file works on both sides. */
int pd_keyring_create(const char *path, const char *id, char *id_out, char *err,
                      size_t errlen);

#endif
