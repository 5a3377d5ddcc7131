/* sb_atomic: files that appear whole or not at all, and files read whole.
 *
 * Every output is written under a temporary name beside its final path, flushed to disk, and
 * renamed; the directory is then synced so the rename itself survives a crash. A reader never
 * sees a partial file where a good one is expected, and a failed run leaves no file behind.
 */
#ifndef SB_ATOMIC_H
#define SB_ATOMIC_H

#include <stddef.h>
#include <stdint.h>

#include "sb_error.h"

/* The temporary name used for `final_path`: "<dir>/.<name>.tmp-<pid>" written into `tmp`
 * (SB_ERR_USAGE naming the path if it does not fit). */
sb_status sb_atomic_temp_name(const char *final_path, char *tmp, size_t tmp_size, sb_error *err);
/* fsync(path) (a regular file), rename(tmp_path, final_path), fsync the directory. */
sb_status sb_atomic_commit(const char *tmp_path, const char *final_path, sb_error *err);
/* Writes `bytes` to `final_path` atomically (temp file, fsync, rename, directory fsync). */
sb_status sb_atomic_write_file(const char *final_path, const void *data, size_t bytes, sb_error *err);
/* Checks that the directory of `path` exists and is writable (before hours of work). */
sb_status sb_check_writable_dir_of(const char *path, sb_error *err);
/* Reads a whole regular file into a fresh buffer (*data, malloc'd, with one zero byte of room
 * after the *size bytes, so text can be used as a string). Anything but a regular file (a
 * directory, a FIFO that would block, a device) is refused. Errors name the file. */
sb_status sb_read_file(const char *path, uint8_t **data, size_t *size, sb_error *err);

/* fsync of the directory containing `path`. */
sb_status sb_fsync_parent_dir(const char *path, sb_error *err);

#endif
