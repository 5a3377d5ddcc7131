#include "sb_atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void split_path(const char *path, char *dir, size_t dir_size, char *base, size_t base_size)
{
    char copy_dir[4096], copy_base[4096];
    snprintf(copy_dir, sizeof copy_dir, "%s", path);
    snprintf(copy_base, sizeof copy_base, "%s", path);
    snprintf(dir, dir_size, "%s", dirname(copy_dir));
    snprintf(base, base_size, "%s", basename(copy_base));
}

void sb_atomic_temp_name(const char *final_path, char *tmp, size_t tmp_size)
{
    char dir[4096], base[4096];
    split_path(final_path, dir, sizeof dir, base, sizeof base);
    snprintf(tmp, tmp_size, "%s/.%s.tmp-%ld", dir, base, (long)getpid());
}

sb_status sb_fsync_parent_dir(const char *path, sb_error *err)
{
    char dir[4096], base[4096];
    split_path(path, dir, sizeof dir, base, sizeof base);
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
    char tmp[4200];
    sb_atomic_temp_name(final_path, tmp, sizeof tmp);
    FILE *file = fopen(tmp, "wb");
    if (!file)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
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
    char dir[4096], base[4096];
    split_path(path, dir, sizeof dir, base, sizeof base);
    if (access(dir, W_OK | X_OK) != 0)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot write output here: directory %s: %s", path, dir,
                            strerror(errno));
    return SB_OK;
}

sb_status sb_read_file(const char *path, uint8_t **data, size_t *size, sb_error *err)
{
    *data = NULL;
    *size = 0;
    FILE *file = fopen(path, "rb");
    if (!file)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(file), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(file);
        return sb_error_set(err, SB_ERR_IO, "%s: not a regular file", path);
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
