#include "sb_safetensors_write.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sb_atomic.h"
#include "sb_half.h"

/* safetensors stores little-endian values; we write host memory as is. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sb_safetensors_write assumes a little-endian host"
#endif

/* The reference reader refuses headers above 100 MB (and so does ours): never write one. */
enum { MAX_HEADER_BYTES = 100 * 1000 * 1000 };
/* Values converted per fwrite in write_f32: 64 KiB of output, small enough for the stack. */
enum { CONVERT_CHUNK = 32768 };
/* Output buffer: large sequential writes without a syscall per tensor row. */
enum { FILE_BUFFER_BYTES = 1 << 20 };

typedef struct declared_tensor {
    char *name;
    sb_dtype dtype;
    int ndim;
    int64_t shape[SB_MAX_DIMS];
    uint64_t nbytes;
} declared_tensor;

typedef enum writer_state { STATE_DECLARING, STATE_WRITING, STATE_FAILED } writer_state;

struct sb_safetensors_writer {
    char *final_path;
    char *tmp_path;
    FILE *file;
    writer_state state;
    json_t *metadata;    /* key -> string, insertion order kept */
    json_t *names;       /* set of declared names, for O(1) duplicate checks */
    declared_tensor *tensors;
    int ntensors, capacity;
    int current;                 /* tensor the next write goes to; ntensors when all written */
    uint64_t written_in_current; /* bytes of it written so far */
    uint64_t file_size;          /* 8 + header + data, known after begin_data */
};

/* Every failure after create goes through here: the writer can then only be aborted. */
static sb_status fail(sb_safetensors_writer *writer, sb_status status)
{
    writer->state = STATE_FAILED;
    return status;
}

sb_status sb_safetensors_writer_create(const char *final_path, sb_safetensors_writer **writer_out, sb_error *err)
{
    *writer_out = NULL;
    sb_safetensors_writer *writer = sb_calloc(1, sizeof *writer, "a safetensors writer", err);
    if (!writer)
        return SB_ERR_NOMEM;
    size_t tmp_size = strlen(final_path) + 64;
    writer->final_path = strdup(final_path);
    writer->tmp_path = malloc(tmp_size);
    writer->metadata = json_object();
    writer->names = json_object();
    if (!writer->final_path || !writer->tmp_path || !writer->metadata || !writer->names) {
        sb_safetensors_writer_abort(writer);
        return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory starting a safetensors writer", final_path);
    }
    sb_atomic_temp_name(final_path, writer->tmp_path, tmp_size);
    writer->file = fopen(writer->tmp_path, "wb");
    if (!writer->file) {
        sb_status status = sb_error_set(err, SB_ERR_IO, "%s: cannot create temporary file %s: %s", final_path,
                                        writer->tmp_path, strerror(errno));
        free(writer->tmp_path); /* nothing was created: abort must not unlink a stranger's file */
        writer->tmp_path = NULL;
        sb_safetensors_writer_abort(writer);
        return status;
    }
    setvbuf(writer->file, NULL, _IOFBF, FILE_BUFFER_BYTES);
    writer->state = STATE_DECLARING;
    *writer_out = writer;
    return SB_OK;
}

static sb_status require_state(sb_safetensors_writer *writer, writer_state wanted, const char *call, sb_error *err)
{
    if (writer->state == wanted)
        return SB_OK;
    if (writer->state == STATE_FAILED)
        return sb_error_set(err, SB_ERR_INTERNAL, "%s: %s after an earlier failure (abort the writer)",
                            writer->final_path, call);
    return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: %s called %s", writer->final_path, call,
                                     wanted == STATE_DECLARING ? "after begin_data" : "before begin_data"));
}

sb_status sb_safetensors_writer_add_metadata(sb_safetensors_writer *writer, const char *key, const char *value,
                                             sb_error *err)
{
    SB_TRY(require_state(writer, STATE_DECLARING, "add_metadata", err));
    if (json_object_get(writer->metadata, key))
        return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: metadata key '%s' given twice",
                                         writer->final_path, key));
    json_t *string = json_string(value);
    if (!string || json_object_set_new(writer->metadata, key, string) != 0)
        return fail(writer, sb_error_set(err, SB_ERR_INPUT,
                                         "%s: metadata '%s': key and value must be valid UTF-8 strings",
                                         writer->final_path, key));
    return SB_OK;
}

sb_status sb_safetensors_writer_declare(sb_safetensors_writer *writer, const char *name, sb_dtype dtype, int ndim,
                                        const int64_t *shape, sb_error *err)
{
    SB_TRY(require_state(writer, STATE_DECLARING, "declare", err));
    if (!name || name[0] == '\0' || strcmp(name, "__metadata__") == 0)
        return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor name '%s' is not allowed",
                                         writer->final_path, name ? name : "(null)"));
    if (json_object_get(writer->names, name))
        return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s' declared twice",
                                         writer->final_path, name));
    if (dtype != SB_DTYPE_F32 && dtype != SB_DTYPE_F16 && dtype != SB_DTYPE_BF16 && dtype != SB_DTYPE_F8_E4M3)
        return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s': unknown dtype %d",
                                         writer->final_path, name, (int)dtype));
    if (ndim < 0 || ndim > SB_MAX_DIMS)
        return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s': %d dimensions (0..%d allowed)",
                                         writer->final_path, name, ndim, SB_MAX_DIMS));
    declared_tensor tensor = {.dtype = dtype, .ndim = ndim};
    uint64_t elements = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s': shape[%d] = %lld is negative",
                                             writer->final_path, name, d, (long long)shape[d]));
        uint64_t extent = (uint64_t)shape[d];
        if (extent != 0 && elements > (UINT64_MAX / 8) / extent)
            return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s': shape is absurdly large",
                                             writer->final_path, name));
        elements *= extent;
        tensor.shape[d] = shape[d];
    }
    tensor.nbytes = elements * sb_dtype_size(dtype);
    if (writer->ntensors == writer->capacity) {
        int capacity = writer->capacity ? 2 * writer->capacity : 64;
        declared_tensor *tensors = realloc(writer->tensors, (size_t)capacity * sizeof *tensors);
        if (!tensors)
            return fail(writer, sb_error_set(err, SB_ERR_NOMEM, "%s: cannot grow the tensor list to %d entries",
                                             writer->final_path, capacity));
        writer->tensors = tensors;
        writer->capacity = capacity;
    }
    tensor.name = strdup(name);
    if (!tensor.name || json_object_set_new(writer->names, name, json_true()) != 0) {
        free(tensor.name);
        return fail(writer, sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s': name must be valid UTF-8",
                                         writer->final_path, name));
    }
    writer->tensors[writer->ntensors++] = tensor;
    return SB_OK;
}

/* Moves `current` past complete (and zero-byte) tensors. */
static void advance(sb_safetensors_writer *writer)
{
    while (writer->current < writer->ntensors &&
           writer->written_in_current == writer->tensors[writer->current].nbytes) {
        writer->current++;
        writer->written_in_current = 0;
    }
}

/* The JSON header text (unpadded), or NULL on allocation failure. */
static char *header_json(const sb_safetensors_writer *writer)
{
    json_t *root = json_object();
    if (!root)
        return NULL;
    /* The reference implementation writes "__metadata__" first; readers do not care, but
     * byte-identical layouts make files easy to compare. */
    if (json_object_size(writer->metadata) > 0 && json_object_set(root, "__metadata__", writer->metadata) != 0)
        goto fail;
    uint64_t offset = 0;
    for (int i = 0; i < writer->ntensors; i++) {
        const declared_tensor *tensor = &writer->tensors[i];
        json_t *shape = json_array();
        if (!shape)
            goto fail;
        for (int d = 0; d < tensor->ndim; d++)
            json_array_append_new(shape, json_integer(tensor->shape[d]));
        json_t *entry = json_pack("{s:s, s:o, s:[I,I]}", "dtype", sb_dtype_name(tensor->dtype), "shape", shape,
                                  "data_offsets", (json_int_t)offset, (json_int_t)(offset + tensor->nbytes));
        if (!entry || json_object_set_new(root, tensor->name, entry) != 0)
            goto fail;
        offset += tensor->nbytes;
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    return text;
fail:
    json_decref(root);
    return NULL;
}

static sb_status write_all(sb_safetensors_writer *writer, const void *data, size_t bytes, sb_error *err)
{
    if (bytes > 0 && fwrite(data, 1, bytes, writer->file) != bytes)
        return fail(writer, sb_error_set(err, SB_ERR_IO, "%s: write failed: %s", writer->tmp_path, strerror(errno)));
    return SB_OK;
}

sb_status sb_safetensors_writer_begin_data(sb_safetensors_writer *writer, sb_error *err)
{
    SB_TRY(require_state(writer, STATE_DECLARING, "begin_data", err));
    char *text = header_json(writer);
    if (!text)
        return fail(writer, sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory building the header",
                                         writer->final_path));
    size_t length = strlen(text);
    /* Pad with spaces (valid JSON whitespace) so the data area starts 8-byte aligned, as the
     * reference implementation does: readers may then map F32 data in place. */
    size_t padded = (length + 7) / 8 * 8;
    if (padded > MAX_HEADER_BYTES) {
        free(text);
        return fail(writer, sb_error_set(err, SB_ERR_INPUT,
                                         "%s: header of %zu bytes exceeds the 100 MB safetensors limit "
                                         "(too many tensors for one file: shard it)",
                                         writer->final_path, padded));
    }
    uint8_t length_bytes[8];
    for (int i = 0; i < 8; i++)
        length_bytes[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    sb_status status = write_all(writer, length_bytes, 8, err);
    if (status == SB_OK)
        status = write_all(writer, text, length, err);
    if (status == SB_OK)
        status = write_all(writer, spaces, padded - length, err);
    free(text);
    if (status != SB_OK)
        return status;
    uint64_t data_bytes = 0;
    for (int i = 0; i < writer->ntensors; i++)
        data_bytes += writer->tensors[i].nbytes;
    writer->file_size = 8 + padded + data_bytes;
    writer->state = STATE_WRITING;
    writer->current = 0;
    writer->written_in_current = 0;
    advance(writer);
    return SB_OK;
}

/* Checks that `bytes` more fit in the current tensor. */
static sb_status check_piece(sb_safetensors_writer *writer, uint64_t bytes, const char *call, sb_error *err)
{
    SB_TRY(require_state(writer, STATE_WRITING, call, err));
    if (bytes == 0)
        return SB_OK;
    if (writer->current >= writer->ntensors)
        return fail(writer, sb_error_set(err, SB_ERR_INTERNAL, "%s: %s of %llu bytes after every tensor is complete",
                                         writer->final_path, call, (unsigned long long)bytes));
    const declared_tensor *tensor = &writer->tensors[writer->current];
    if (bytes > tensor->nbytes - writer->written_in_current)
        return fail(writer, sb_error_set(err, SB_ERR_INTERNAL,
                                         "%s: tensor '%s': %s of %llu bytes runs past its end (%llu of %llu bytes "
                                         "written)",
                                         writer->final_path, tensor->name, call, (unsigned long long)bytes,
                                         (unsigned long long)writer->written_in_current,
                                         (unsigned long long)tensor->nbytes));
    return SB_OK;
}

sb_status sb_safetensors_writer_write(sb_safetensors_writer *writer, const void *data, size_t bytes, sb_error *err)
{
    SB_TRY(check_piece(writer, bytes, "write", err));
    if (bytes == 0)
        return SB_OK;
    SB_TRY(write_all(writer, data, bytes, err));
    writer->written_in_current += bytes;
    advance(writer);
    return SB_OK;
}

sb_status sb_safetensors_writer_skip(sb_safetensors_writer *writer, uint64_t bytes, sb_error *err)
{
    SB_TRY(check_piece(writer, bytes, "skip", err));
    if (bytes == 0)
        return SB_OK;
    /* seeking past the end and writing later (or truncating at commit) leaves a hole */
    if (fflush(writer->file) != 0 || fseeko(writer->file, (off_t)bytes, SEEK_CUR) != 0)
        return fail(writer, sb_error_set(err, SB_ERR_IO, "%s: cannot skip %llu bytes: %s", writer->final_path,
                                         (unsigned long long)bytes, strerror(errno)));
    writer->written_in_current += bytes;
    advance(writer);
    return SB_OK;
}

sb_status sb_safetensors_writer_write_f32(sb_safetensors_writer *writer, const float *values, size_t count,
                                          sb_error *err)
{
    SB_TRY(require_state(writer, STATE_WRITING, "write_f32", err));
    if (count == 0)
        return SB_OK;
    if (writer->current >= writer->ntensors)
        return check_piece(writer, (uint64_t)count * 4, "write_f32", err);
    sb_dtype dtype = writer->tensors[writer->current].dtype;
    SB_TRY(check_piece(writer, (uint64_t)count * sb_dtype_size(dtype), "write_f32", err));
    if (dtype == SB_DTYPE_F8_E4M3) /* codes mean nothing without the block scales the caller chose */
        return fail(writer, sb_error_set(err, SB_ERR_INTERNAL,
                                         "%s: tensor '%s': F8_E4M3 codes are written with "
                                         "sb_safetensors_writer_write, not converted from float32",
                                         writer->final_path, writer->tensors[writer->current].name));
    if (dtype == SB_DTYPE_F32)
        return sb_safetensors_writer_write(writer, values, count * 4, err);
    uint16_t converted[CONVERT_CHUNK];
    for (size_t begin = 0; begin < count; begin += CONVERT_CHUNK) {
        size_t n = count - begin < CONVERT_CHUNK ? count - begin : CONVERT_CHUNK;
        if (dtype == SB_DTYPE_BF16)
            for (size_t i = 0; i < n; i++)
                converted[i] = sb_f32_to_bf16(values[begin + i]);
        else
            for (size_t i = 0; i < n; i++)
                converted[i] = sb_f32_to_f16(values[begin + i]);
        SB_TRY(write_all(writer, converted, n * 2, err));
    }
    writer->written_in_current += (uint64_t)count * 2;
    advance(writer);
    return SB_OK;
}

const char *sb_safetensors_writer_current(const sb_safetensors_writer *writer)
{
    if (writer->state != STATE_WRITING || writer->current >= writer->ntensors)
        return NULL;
    return writer->tensors[writer->current].name;
}

uint64_t sb_safetensors_writer_file_size(const sb_safetensors_writer *writer) { return writer->file_size; }

sb_status sb_safetensors_writer_commit(sb_safetensors_writer *writer, sb_error *err)
{
    sb_status status = require_state(writer, STATE_WRITING, "commit", err);
    if (status == SB_OK && writer->current < writer->ntensors) {
        const declared_tensor *tensor = &writer->tensors[writer->current];
        status = sb_error_set(err, SB_ERR_INTERNAL,
                              "%s: commit with tensor '%s' incomplete (%llu of %llu bytes written; %d of %d tensors "
                              "complete)",
                              writer->final_path, tensor->name, (unsigned long long)writer->written_in_current,
                              (unsigned long long)tensor->nbytes, writer->current, writer->ntensors);
    }
    if (status == SB_OK) {
        FILE *file = writer->file;
        writer->file = NULL;
        bool flushed = fflush(file) == 0;
        /* a skipped tail (sb_safetensors_writer_skip) must still give the file its full size */
        if (flushed)
            flushed = ftruncate(fileno(file), (off_t)writer->file_size) == 0;
        int saved = errno;
        if (fclose(file) != 0 && flushed) {
            flushed = false;
            saved = errno;
        }
        if (!flushed)
            status = sb_error_set(err, SB_ERR_IO, "%s: write failed: %s", writer->tmp_path, strerror(saved));
    }
    if (status == SB_OK)
        status = sb_atomic_commit(writer->tmp_path, writer->final_path, err);
    if (status == SB_OK) {
        free(writer->tmp_path); /* committed: nothing left to remove */
        writer->tmp_path = NULL;
    }
    sb_safetensors_writer_abort(writer);
    return status;
}

void sb_safetensors_writer_abort(sb_safetensors_writer *writer)
{
    if (!writer)
        return;
    if (writer->file)
        fclose(writer->file);
    if (writer->tmp_path)
        unlink(writer->tmp_path);
    for (int i = 0; i < writer->ntensors; i++)
        free(writer->tensors[i].name);
    free(writer->tensors);
    json_decref(writer->metadata);
    json_decref(writer->names);
    free(writer->tmp_path);
    free(writer->final_path);
    free(writer);
}

sb_status sb_safetensors_write_index(const char *dir, int ntensors, const char *const *tensor_names,
                                     const char *const *shard_files, uint64_t total_size, sb_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_t *weight_map = json_object();
    json_t *root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total_size, "weight_map",
                             weight_map);
    if (!root)
        return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory building the index", path);
    sb_status status = SB_OK;
    for (int i = 0; i < ntensors && status == SB_OK; i++) {
        if (strchr(shard_files[i], '/') || shard_files[i][0] == '\0')
            status = sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s': shard '%s' is not a plain file name", path,
                                  tensor_names[i], shard_files[i]);
        else if (json_object_get(weight_map, tensor_names[i]))
            status = sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s' listed twice", path, tensor_names[i]);
        else if (json_object_set_new(weight_map, tensor_names[i], json_string(shard_files[i])) != 0)
            status = sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s': names must be valid UTF-8", path,
                                  tensor_names[i]);
    }
    char *text = NULL;
    if (status == SB_OK) {
        /* transformers writes json.dumps(index, indent=2, sort_keys=True) + "\n". */
        text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
        if (!text)
            status = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory writing the index", path);
    }
    if (status == SB_OK) {
        size_t length = strlen(text);
        char *with_newline = realloc(text, length + 2);
        if (!with_newline) {
            status = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory writing the index", path);
        } else {
            text = with_newline;
            text[length] = '\n';
            text[length + 1] = '\0';
            status = sb_atomic_write_file(path, text, length + 1, err);
        }
    }
    free(text);
    json_decref(root);
    return status;
}
