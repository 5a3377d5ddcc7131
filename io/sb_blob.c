#include "sb_blob.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sb_atomic.h"
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

bool sb_blob_load_any(const char *path, void **payload, size_t *bytes)
{
    FILE *file = fopen(path, "rb");
    if (!file)
        return false;
    uint8_t header[48];
    bool ok = fread(header, 1, sizeof header, file) == sizeof header && memcmp(header, BLOB_MAGIC, 8) == 0;
    uint64_t length = 0;
    if (ok)
        memcpy(&length, header + 8, 8);
    /* the length is the file's claim: allocate only what the file really holds */
    struct stat st;
    ok = ok && fstat(fileno(file), &st) == 0 && st.st_size >= (off_t)sizeof header &&
         length == (uint64_t)st.st_size - sizeof header;
    uint8_t *data = ok ? malloc(length ? length : 1) : NULL;
    ok = data && fread(data, 1, length, file) == length;
    fclose(file);
    if (ok) {
        uint8_t digest[32];
        sb_sha256_bytes(data, length, digest);
        ok = memcmp(digest, header + 16, 32) == 0;
    }
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
    void *data;
    size_t length;
    if (!sb_blob_load_any(path, &data, &length))
        return false;
    bool ok = length == bytes;
    if (ok)
        memcpy(payload, data, bytes);
    free(data);
    return ok;
}

static void list_blobs(FILE *out, const char *dir, const char *kind, int *first)
{
    char path[4400];
    snprintf(path, sizeof path, "%s%s%s", dir, kind ? "/" : "", kind ? kind : "");
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *entry;
    while ((entry = readdir(d))) {
        size_t length = strlen(entry->d_name);
        if (length < 5 || strcmp(entry->d_name + length - 4, ".bin") != 0)
            continue;
        char file[8400];
        snprintf(file, sizeof file, "%s/%s", path, entry->d_name);
        void *data;
        size_t bytes;
        if (!sb_blob_load_any(file, &data, &bytes))
            continue;
        uint8_t digest[32];
        char hex[65];
        sb_sha256_bytes(data, bytes, digest);
        sb_sha256_hex(digest, hex);
        free(data);
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
    char path[4400];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    sb_status status = sb_atomic_write_file(path, text, size, err);
    free(text);
    return status;
}
