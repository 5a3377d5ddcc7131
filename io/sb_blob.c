#include "sb_blob.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sb_atomic.h"
#include "sb_path.h"
#include "sb_sha256.h"

static const char BLOB_MAGIC[8] = {'S', 'B', 'S', 'T', 'A', 'T', 'E', '1'};

sb_status sb_blob_save(const char *path, const void *payload, size_t bytes, sb_error *err)
{
    size_t total = sizeof BLOB_MAGIC + 8 + 32 + bytes;
    uint8_t *blob = sb_malloc(total, "state blob", err);
    if (!blob)
        return SB_ERR_NOMEM;
    memcpy(blob, BLOB_MAGIC, sizeof BLOB_MAGIC);
    uint64_t length = bytes;
    memcpy(blob + 8, &length, 8);
    sb_sha256_bytes(payload, bytes, blob + 16);
    memcpy(blob + 48, payload, bytes);
    sb_status status = sb_atomic_write_file(path, blob, total, err);
    free(blob);
    return status;
}

/* Opens a blob and checks what can be checked before reading its payload: a regular file (never
 * a FIFO that would block), the magic, and a declared length equal to what the file holds. */
static FILE *open_blob(const char *path, uint8_t header[48], uint64_t *length)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    FILE *file = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 48 || !(file = fdopen(fd, "rb"))) {
        close(fd);
        return NULL;
    }
    if (fread(header, 1, 48, file) != 48 || memcmp(header, BLOB_MAGIC, 8) != 0) {
        fclose(file);
        return NULL;
    }
    memcpy(length, header + 8, 8);
    /* the length is the file's claim: it must be exactly what the file holds */
    if (*length != (uint64_t)st.st_size - 48) {
        fclose(file);
        return NULL;
    }
    return file;
}

/* Reads the payload into `data` (length bytes) and checks its SHA-256. */
static bool read_payload(FILE *file, const uint8_t header[48], void *data, uint64_t length)
{
    if (fread(data, 1, length, file) != length)
        return false;
    uint8_t digest[32];
    sb_sha256_bytes(data, length, digest);
    return memcmp(digest, header + 16, 32) == 0;
}

bool sb_blob_load_any(const char *path, void **payload, size_t *bytes)
{
    uint8_t header[48];
    uint64_t length;
    FILE *file = open_blob(path, header, &length);
    if (!file)
        return false;
    uint8_t *data = length <= SIZE_MAX - 1 ? malloc(length ? length : 1) : NULL;
    bool ok = data && read_payload(file, header, data, length);
    fclose(file);
    if (!ok) {
        free(data);
        return false;
    }
    *payload = data;
    *bytes = length;
    return true;
}

bool sb_blob_load(const char *path, void *payload, size_t bytes)
{
    uint8_t header[48];
    uint64_t length;
    FILE *file = open_blob(path, header, &length);
    if (!file)
        return false;
    /* a blob of another size is refused before a byte of it is read: nothing is allocated, and
     * the caller's buffer is only written when the checksum holds */
    bool ok = length == bytes;
    uint8_t *data = ok ? malloc(bytes ? bytes : 1) : NULL;
    ok = data && read_payload(file, header, data, length);
    fclose(file);
    if (ok)
        memcpy(payload, data, bytes);
    free(data);
    return ok;
}

static void list_blobs(FILE *out, const char *dir, const char *kind, int *first)
{
    char path[SB_PATH_MAX];
    if (sb_path_format(path, sizeof path, NULL, "%s%s%s", dir, kind ? "/" : "", kind ? kind : "") != SB_OK)
        return;
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *entry;
    while ((entry = readdir(d))) {
        size_t length = strlen(entry->d_name);
        if (length < 5 || strcmp(entry->d_name + length - 4, ".bin") != 0)
            continue;
        char file[SB_PATH_MAX];
        if (sb_path_format(file, sizeof file, NULL, "%s/%s", path, entry->d_name) != SB_OK)
            continue;
        void *data;
        size_t bytes;
        if (!sb_blob_load_any(file, &data, &bytes))
            continue;
        uint8_t digest[32];
        char hex[65];
        sb_sha256_bytes(data, bytes, digest);
        sb_sha256_hex(digest, hex);
        free(data);
        /* the names are ours ("<first tile>-<tiles>.bin"), but a file dropped in the directory
         * must not break the JSON: only blobs with plain names are listed */
        if (strspn(entry->d_name, "0123456789-abcdefghijklmnopqrstuvwxyz._") != strlen(entry->d_name))
            continue;
        fprintf(out, "%s\n    {\"file\": \"%s%s%s\", \"bytes\": %zu, \"sha256\": \"%s\"}", *first ? "" : ",",
                kind ? kind : "", kind ? "/" : "", entry->d_name, bytes, hex);
        *first = 0;
    }
    closedir(d);
}

sb_status sb_blob_write_manifest(const char *dir, const char *const *kinds, sb_error *err)
{
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (!out)
        return sb_error_set(err, SB_ERR_NOMEM, "%s: cannot build the manifest", dir);
    fprintf(out, "{\n  \"files\": [");
    int first = 1;
    list_blobs(out, dir, NULL, &first);
    for (int k = 0; kinds && kinds[k]; k++)
        list_blobs(out, dir, kinds[k], &first);
    fprintf(out, "\n  ]\n}\n");
    if (fclose(out) != 0 || !text) {
        free(text);
        return sb_error_set(err, SB_ERR_NOMEM, "%s: cannot build the manifest", dir);
    }
    char path[SB_PATH_MAX];
    sb_status status = sb_path_format(path, sizeof path, err, "%s/manifest.json", dir);
    if (status == SB_OK)
        status = sb_atomic_write_file(path, text, size, err);
    free(text);
    return status;
}
