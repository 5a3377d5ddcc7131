#include "sb_atomic.h"
#include "sb_path.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The directory and the last name of `path` (dirname/basename, into SB_PATH_MAX buffers). */
static sb_status split_path(const char *path, char *dir, char *base, sb_error *err)
{
    char copy_dir[SB_PATH_MAX], copy_base[SB_PATH_MAX];
    SB_TRY(sb_path_format(copy_dir, sizeof copy_dir, err, "%s", path));
    SB_TRY(sb_path_format(copy_base, sizeof copy_base, err, "%s", path));
    SB_TRY(sb_path_format(dir, SB_PATH_MAX, err, "%s", dirname(copy_dir)));
    return sb_path_format(base, SB_PATH_MAX, err, "%s", basename(copy_base));
}

sb_status sb_atomic_temp_name(const char *final_path, char *tmp, size_t tmp_size, sb_error *err)
{
    char dir[SB_PATH_MAX], base[SB_PATH_MAX];
    SB_TRY(split_path(final_path, dir, base, err));
    return sb_path_format(tmp, tmp_size, err, "%s/.%s.tmp-%ld", dir, base, (long)getpid());
}

sb_status sb_fsync_parent_dir(const char *path, sb_error *err)
{
    char dir[SB_PATH_MAX], base[SB_PATH_MAX];
    SB_TRY(split_path(path, dir, base, err));
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot open directory to sync: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    /* Some file systems (and /proc-like ones) refuse directory fsync: not a data-loss error. */
    if (rc != 0 && saved != EINVAL && saved != ENOTSUP)
        return sb_error_set(err, SB_ERR_IO, "%s: directory fsync failed: %s", dir, strerror(saved));
    return SB_OK;
}

sb_status sb_atomic_commit(const char *tmp_path, const char *final_path, sb_error *err)
{
    int fd = open(tmp_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot reopen to sync: %s", tmp_path, strerror(errno));
    if (fsync(fd) != 0) {
        int saved = errno;
        close(fd);
        return sb_error_set(err, SB_ERR_IO, "%s: fsync failed: %s", tmp_path, strerror(saved));
    }
    close(fd);
    if (rename(tmp_path, final_path) != 0)
        return sb_error_set(err, SB_ERR_IO, "cannot rename %s to %s: %s", tmp_path, final_path, strerror(errno));
    return sb_fsync_parent_dir(final_path, err);
}

sb_status sb_atomic_write_file(const char *final_path, const void *data, size_t bytes, sb_error *err)
{
    char tmp[SB_PATH_MAX];
    SB_TRY(sb_atomic_temp_name(final_path, tmp, sizeof tmp, err));
    /* a leftover of a crashed process with our pid goes first; O_EXCL | O_NOFOLLOW then never
     * write through a link someone put under our temporary name */
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    FILE *file = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!file) {
        sb_status status = sb_error_set(err, SB_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return status;
    }
    size_t written = fwrite(data, 1, bytes, file);
    int close_rc = fclose(file);
    if (written != bytes || close_rc != 0) {
        unlink(tmp);
        return sb_error_set(err, SB_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    }
    sb_status status = sb_atomic_commit(tmp, final_path, err);
    if (status != SB_OK)
        unlink(tmp);
    return status;
}

sb_status sb_check_writable_dir_of(const char *path, sb_error *err)
{
    char dir[SB_PATH_MAX], base[SB_PATH_MAX];
    SB_TRY(split_path(path, dir, base, err));
    if (access(dir, W_OK | X_OK) != 0)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot write output here: directory %s: %s", path, dir,
                            strerror(errno));
    return SB_OK;
}

sb_status sb_read_file(const char *path, uint8_t **data, size_t *size, sb_error *err)
{
    *data = NULL;
    *size = 0;
    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; only a regular
     * file is read, and its size is what it really holds */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sb_error_set(err, SB_ERR_IO, "%s: not a regular file", path);
    }
    FILE *file = fdopen(fd, "rb");
    if (!file) {
        close(fd);
        return sb_error_set(err, SB_ERR_NOMEM, "%s: cannot open: %s", path, strerror(errno));
    }
    size_t bytes = (size_t)st.st_size;
    uint8_t *buffer = sb_malloc(bytes + 1, path, err);
    if (!buffer) {
        fclose(file);
        return SB_ERR_NOMEM;
    }
    size_t got = fread(buffer, 1, bytes, file);
    int read_error = ferror(file);
    fclose(file);
    if (got != bytes || read_error) {
        free(buffer);
        return sb_error_set(err, SB_ERR_IO, "%s: read %zu of %zu bytes", path, got, bytes);
    }
    buffer[bytes] = 0;
    *data = buffer;
    *size = bytes;
    return SB_OK;
}
