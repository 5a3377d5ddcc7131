/* sb_blob: self-checking files for work saved between runs (the resume state, mpi/sb_state.h).
 *
 * A blob is: 8 bytes of magic "SBSTATE1", the payload length (uint64 little-endian), the
 * SHA-256 of the payload (32 bytes), the payload. It is written under a temporary name,
 * fsynced and renamed (io/sb_atomic.h), so a crash leaves the whole file or none, and a reader
 * rejects anything damaged: loading never trusts a length it has not checked against the file.
 */
#ifndef SB_BLOB_H
#define SB_BLOB_H

#include <stdbool.h>
#include <stddef.h>

#include "sb_error.h"

/* Writes a blob atomically. */
sb_status sb_blob_save(const char *path, const void *payload, size_t bytes, sb_error *err);
/* Reads a blob of exactly `bytes` payload bytes into `payload`; false (no error) if it is
 * absent, of another size, truncated or fails its checksum: the caller then redoes the work. */
bool sb_blob_load(const char *path, void *payload, size_t bytes);
/* Like sb_blob_load for a payload of unknown size: *payload is malloc'd (the caller frees). */
bool sb_blob_load_any(const char *path, void **payload, size_t *bytes);

/* Writes `<dir>/manifest.json` atomically: every valid blob "*.bin" in `dir` and in its
 * sub-directories `kinds` (NULL-terminated), with its payload size and SHA-256 (for people and
 * tools; loading trusts each blob's own checksum, not the manifest). */
sb_status sb_blob_write_manifest(const char *dir, const char *const *kinds, sb_error *err);

#endif
