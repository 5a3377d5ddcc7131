#include "sb_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_atomic.h"
#include "sb_fp8.h"
#include "sb_half.h"
#include "sb_path.h"
#include "sb_sha256.h"
#include "sb_tensor_name.h"

/* The safetensors reference implementation refuses headers above 100 MB; so do we. */
enum { MAX_HEADER_BYTES = 100 * 1000 * 1000 };

size_t sb_dtype_size(sb_dtype dtype)
{
    switch (dtype) {
    case SB_DTYPE_F32: return 4;
    case SB_DTYPE_F16:
    case SB_DTYPE_BF16: return 2;
    case SB_DTYPE_F8_E4M3: return 1;
    }
    return 0;
}

const char *sb_dtype_name(sb_dtype dtype)
{
    switch (dtype) {
    case SB_DTYPE_F32: return "F32";
    case SB_DTYPE_F16: return "F16";
    case SB_DTYPE_BF16: return "BF16";
    case SB_DTYPE_F8_E4M3: return "F8_E4M3";
    }
    return "?";
}

bool sb_dtype_parse(const char *name, sb_dtype *dtype)
{
    if (strcmp(name, "F32") == 0) *dtype = SB_DTYPE_F32;
    else if (strcmp(name, "F16") == 0) *dtype = SB_DTYPE_F16;
    else if (strcmp(name, "BF16") == 0) *dtype = SB_DTYPE_BF16;
    else if (strcmp(name, "F8_E4M3") == 0) *dtype = SB_DTYPE_F8_E4M3;
    else return false;
    return true;
}

int64_t sb_tensor_rows(const sb_tensor_info *tensor)
{
    if (tensor->ndim <= 1)
        return 1;
    int64_t rows = 1;
    for (int d = 0; d < tensor->ndim - 1; d++)
        rows *= tensor->shape[d];
    return rows;
}

int64_t sb_tensor_cols(const sb_tensor_info *tensor)
{
    return tensor->ndim == 0 ? 1 : tensor->shape[tensor->ndim - 1];
}

static sb_status pread_exact(int fd, void *dst, uint64_t bytes, uint64_t offset, const char *path,
                             sb_error *err)
{
    uint8_t *p = dst;
    while (bytes > 0) {
        size_t chunk = bytes > (1u << 30) ? (1u << 30) : (size_t)bytes;
        ssize_t got = pread(fd, p, chunk, (off_t)offset);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return sb_error_set(err, SB_ERR_IO, "%s: read failed at byte %llu: %s", path,
                                (unsigned long long)offset, strerror(errno));
        }
        if (got == 0)
            return sb_error_set(err, SB_ERR_FORMAT, "%s: file ends early (truncated?) at byte %llu",
                                path, (unsigned long long)offset);
        p += got;
        offset += (uint64_t)got;
        bytes -= (uint64_t)got;
    }
    return SB_OK;
}

typedef struct tensor_list {
    sb_tensor_info *items;
    int count, capacity;
} tensor_list;

static sb_status list_push(tensor_list *list, const sb_tensor_info *info, sb_error *err)
{
    if (list->count == list->capacity) {
        int capacity = list->capacity ? 2 * list->capacity : 64;
        sb_tensor_info *items = realloc(list->items, (size_t)capacity * sizeof *items);
        if (!items)
            return sb_error_set(err, SB_ERR_NOMEM, "cannot grow the tensor list to %d entries", capacity);
        list->items = items;
        list->capacity = capacity;
    }
    list->items[list->count++] = *info;
    return SB_OK;
}

static int compare_by_offset(const void *a, const void *b)
{
    const sb_tensor_info *x = a, *y = b;
    if (x->file_index != y->file_index)
        return x->file_index < y->file_index ? -1 : 1;
    if (x->data_offset != y->data_offset)
        return x->data_offset < y->data_offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

/* Parses one tensor entry of a header; `data_start` is the absolute offset of the data area. */
static sb_status parse_entry(const char *path, const char *name, json_t *entry, uint64_t data_start,
                             uint64_t data_bytes, int file_index, sb_tensor_info *info, sb_error *err)
{
    memset(info, 0, sizeof *info);
    /* a name becomes an HDF5 link name (escaped, io/sb_h5_name.h) and part of messages: it must
     * be non-empty and of sane length (jansson already refuses NUL bytes and invalid UTF-8) */
    size_t name_length = strlen(name);
    if (name_length == 0 || name_length > SB_TENSOR_NAME_MAX)
        return sb_error_set(err, SB_ERR_INPUT, "%s: a tensor name of %zu bytes is not supported (1 to %d): '%.80s%s'",
                            path, name_length, SB_TENSOR_NAME_MAX, name, name_length > 80 ? "..." : "");
    if (!json_is_object(entry))
        return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object",
                            path, name);
    json_t *dtype = json_object_get(entry, "dtype");
    json_t *shape = json_object_get(entry, "shape");
    json_t *offsets = json_object_get(entry, "data_offsets");
    /* Name the missing or mistyped field: "needs dtype, shape and offsets" leaves the user guessing. */
    if (!json_is_string(dtype))
        return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': header entry has no \"dtype\" string", path,
                            name);
    if (!json_is_array(shape))
        return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': header entry has no \"shape\" array", path,
                            name);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: tensor '%s': header entry has no two-element \"data_offsets\" array", path, name);
    if (!sb_dtype_parse(json_string_value(dtype), &info->dtype))
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: tensor '%s': dtype %s is not supported (supported: F32, F16, BF16, F8_E4M3)",
                            path, name, json_string_value(dtype));
    size_t ndim = json_array_size(shape);
    if (ndim > SB_MAX_DIMS)
        return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s': %zu dimensions (at most %d supported)",
                            path, name, ndim, SB_MAX_DIMS);
    info->ndim = (int)ndim;
    /* `elements` is the product of the extents; `nonzero` that of the non-zero ones, bounded
     * too, so that a zero extent cannot hide a product that overflows wherever rows or columns
     * are multiplied later ([0, 2^62, 2^62] stores nothing but has 2^124 "columns") */
    uint64_t elements = 1, nonzero = 1;
    for (size_t d = 0; d < ndim; d++) {
        json_t *extent = json_array_get(shape, d);
        if (!json_is_integer(extent) || json_integer_value(extent) < 0)
            return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                                path, name, d);
        uint64_t value = (uint64_t)json_integer_value(extent);
        if (value != 0 && nonzero > UINT64_MAX / 8 / value)
            return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': shape is absurdly large", path, name);
        elements *= value;
        nonzero *= value ? value : 1;
        info->shape[d] = (int64_t)value;
    }
    json_t *begin_json = json_array_get(offsets, 0), *end_json = json_array_get(offsets, 1);
    if (!json_is_integer(begin_json) || !json_is_integer(end_json) || json_integer_value(begin_json) < 0 ||
        json_integer_value(end_json) < json_integer_value(begin_json))
        return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': data_offsets are not 0 <= begin <= end",
                            path, name);
    uint64_t begin = (uint64_t)json_integer_value(begin_json);
    uint64_t end = (uint64_t)json_integer_value(end_json);
    if (end > data_bytes)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%llu, %llu) run past the end of the data "
                            "(%llu bytes; file truncated or header corrupt)",
                            path, name, (unsigned long long)begin, (unsigned long long)end,
                            (unsigned long long)data_bytes);
    uint64_t expected = elements * sb_dtype_size(info->dtype);
    if (end - begin != expected)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: tensor '%s': shape x dtype size = %llu bytes but data_offsets span %llu",
                            path, name, (unsigned long long)expected, (unsigned long long)(end - begin));
    info->name = strdup(name);
    if (!info->name)
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory for a tensor name");
    info->file_index = file_index;
    info->scale_index = -1;
    info->data_offset = data_start + begin;
    info->nbytes = end - begin;
    return SB_OK;
}

/* Reads and validates one file's header; appends its tensors to `list`. */
static sb_status read_file_header(sb_checkpoint_file *file, int file_index, tensor_list *list, sb_error *err)
{
    /* O_NONBLOCK: a FIFO or device in place of a shard must not block the open */
    int fd = open(file->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", file->path, strerror(errno));
    sb_status status = SB_OK;
    char *header = NULL;
    json_t *root = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        status = sb_error_set(err, SB_ERR_IO, "%s: cannot stat: %s", file->path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        status = sb_error_set(err, SB_ERR_IO, "%s: not a regular file", file->path);
        goto done;
    }
    file->size = (uint64_t)st.st_size;
    if (file->size < 8) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: %llu bytes is too short for a safetensors file",
                              file->path, (unsigned long long)file->size);
        goto done;
    }
    uint8_t length_bytes[8];
    if ((status = pread_exact(fd, length_bytes, 8, 0, file->path, err)) != SB_OK)
        goto done;
    uint64_t length = 0;
    for (int i = 7; i >= 0; i--)
        length = length << 8 | length_bytes[i];
    if (length < 2 || length > MAX_HEADER_BYTES || length > file->size - 8) {
        status = sb_error_set(err, SB_ERR_FORMAT,
                              "%s: header length %llu is impossible for a %llu-byte file (corrupt or "
                              "truncated)", file->path, (unsigned long long)length,
                              (unsigned long long)file->size);
        goto done;
    }
    file->header_length = length;
    header = malloc(length);
    if (!header) {
        status = sb_error_set(err, SB_ERR_NOMEM, "%s: cannot allocate %llu bytes for the header",
                              file->path, (unsigned long long)length);
        goto done;
    }
    if ((status = pread_exact(fd, header, length, 8, file->path, err)) != SB_OK)
        goto done;
    sb_sha256_bytes(header, length, file->header_sha256);
    json_error_t json_error;
    root = json_loadb(header, length, JSON_REJECT_DUPLICATES, &json_error);
    if (!root) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: header is not valid JSON: %s (line %d, column %d)",
                              file->path, json_error.text, json_error.line, json_error.column);
        goto done;
    }
    if (!json_is_object(root)) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: header is JSON but not an object (tensor name -> entry)",
                              file->path);
        goto done;
    }
    /* The reference implementation reads "__metadata__" as a string -> string map. */
    json_t *metadata = json_object_get(root, "__metadata__");
    if (metadata) {
        bool strings = json_is_object(metadata);
        const char *key;
        json_t *value;
        json_object_foreach(metadata, key, value) strings = strings && json_is_string(value);
        if (!strings) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: header \"__metadata__\" is not a map of strings",
                                  file->path);
            goto done;
        }
    }
    uint64_t data_start = 8 + length;
    uint64_t data_bytes = file->size - data_start;
    int first = list->count;
    const char *name;
    json_t *entry;
    json_object_foreach(root, name, entry) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        sb_tensor_info info;
        if ((status = parse_entry(file->path, name, entry, data_start, data_bytes, file_index, &info, err)) != SB_OK)
            goto done;
        if ((status = list_push(list, &info, err)) != SB_OK) {
            free(info.name);
            goto done;
        }
    }
    /* No two tensors may share bytes: sort this file's tensors by offset and compare each with the
     * furthest-reaching one before it (not merely its neighbour: a zero-byte tensor in between, or
     * a short one nested inside a long one, would hide the overlap from a neighbour test). */
    if (list->count > first) /* an empty header has no list to sort (qsort of NULL is undefined) */
        qsort(list->items + first, (size_t)(list->count - first), sizeof *list->items, compare_by_offset);
    int reach = first; /* the tensor whose data end furthest so far */
    for (int i = first + 1; i < list->count; i++) {
        const sb_tensor_info *previous = &list->items[reach], *current = &list->items[i];
        if (current->nbytes > 0 && previous->data_offset + previous->nbytes > current->data_offset) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data area",
                                  file->path, previous->name, current->name);
            goto done;
        }
        if (current->data_offset + current->nbytes > previous->data_offset + previous->nbytes)
            reach = i;
    }
done:
    json_decref(root);
    free(header);
    close(fd);
    return status;
}

static void free_tensors(tensor_list *list)
{
    for (int i = 0; i < list->count; i++)
        free(list->items[i].name);
    free(list->items);
    list->items = NULL;
    list->count = list->capacity = 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Reads model.safetensors.index.json: the distinct shard file names, in first-use order. */
static sb_status read_index(const char *index_path, json_t **weight_map_out, char ***shards_out,
                            int *nshards_out, sb_error *err)
{
    /* read as a regular file (never a FIFO that would block) of bounded size */
    struct stat st;
    if (stat(index_path, &st) == 0 && st.st_size > MAX_HEADER_BYTES)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: %lld bytes is implausible for an index", index_path,
                            (long long)st.st_size);
    uint8_t *text = NULL;
    size_t size = 0;
    SB_TRY(sb_read_file(index_path, &text, &size, err));
    json_error_t json_error;
    json_t *root = json_loadb((const char *)text, size, JSON_REJECT_DUPLICATES, &json_error);
    free(text);
    if (!root)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", index_path,
                            json_error.text, json_error.line);
    json_t *weight_map = json_object_get(root, "weight_map");
    if (!json_is_object(weight_map) || json_object_size(weight_map) == 0) {
        json_decref(root);
        return sb_error_set(err, SB_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
    }
    size_t capacity = json_object_size(weight_map);
    char **shards = calloc(capacity, sizeof *shards);
    if (!shards) {
        json_decref(root);
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory reading %s", index_path);
    }
    int nshards = 0;
    const char *tensor_name;
    json_t *file_json;
    json_object_foreach(weight_map, tensor_name, file_json) {
        /* a plain file name inside the model directory: no '/', not "." or "..", no control bytes */
        const char *shard = json_is_string(file_json) ? json_string_value(file_json) : NULL;
        bool plain = shard && shard[0] && !strchr(shard, '/') && strcmp(shard, ".") != 0 && strcmp(shard, "..") != 0 &&
                     strlen(shard) <= 255;
        for (const unsigned char *p = (const unsigned char *)shard; plain && *p; p++)
            plain = *p >= 0x20 && *p != 0x7F;
        if (!plain) {
            /* The message first: tensor_name belongs to root. */
            sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': shard file name is not a plain file name", index_path,
                         tensor_name);
            for (int i = 0; i < nshards; i++)
                free(shards[i]);
            free(shards);
            json_decref(root);
            return SB_ERR_FORMAT;
        }
        const char *file = json_string_value(file_json);
        bool seen = false;
        for (int i = 0; i < nshards && !seen; i++)
            seen = strcmp(shards[i], file) == 0;
        if (!seen && !(shards[nshards++] = strdup(file))) {
            for (int i = 0; i < nshards; i++)
                free(shards[i]);
            free(shards);
            json_decref(root);
            return sb_error_set(err, SB_ERR_NOMEM, "out of memory reading %s", index_path);
        }
    }
    /* Shards in name order, so every rank and every run sees the same file order. */
    qsort(shards, (size_t)nshards, sizeof *shards, compare_names);
    json_incref(weight_map);
    json_decref(root);
    *weight_map_out = weight_map;
    *shards_out = shards;
    *nshards_out = nshards;
    return SB_OK;
}

/* A tensor's index with its name, sorted by name to find duplicates and look names up (bsearch). */
typedef struct named_index {
    const char *name;
    int tensor;
} named_index;

static int compare_named(const void *a, const void *b)
{
    const named_index *x = a, *y = b;
    int order = strcmp(x->name, y->name);
    return order ? order : (x->tensor > y->tensor) - (x->tensor < y->tensor);
}

static int compare_name_key(const void *key, const void *item)
{
    return strcmp(key, ((const named_index *)item)->name);
}

/* Duplicate names across shards; with an index, every tensor listed in its own shard and every
 * listed tensor present. */
static sb_status check_names(const char *dir, const sb_checkpoint *checkpoint, json_t *weight_map,
                             char *const *shard_names, sb_error *err)
{
    int count = checkpoint->ntensors;
    named_index *sorted = sb_calloc((size_t)count, sizeof *sorted, "the tensor name index", err);
    if (!sorted)
        return SB_ERR_NOMEM;
    for (int i = 0; i < count; i++)
        sorted[i] = (named_index){checkpoint->tensors[i].name, i};
    qsort(sorted, (size_t)count, sizeof *sorted, compare_named);
    sb_status status = SB_OK;
    for (int i = 1; i < count && status == SB_OK; i++) {
        if (strcmp(sorted[i - 1].name, sorted[i].name) == 0)
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s' appears in both %s and %s", dir, sorted[i].name,
                                  checkpoint->files[checkpoint->tensors[sorted[i - 1].tensor].file_index].path,
                                  checkpoint->files[checkpoint->tensors[sorted[i].tensor].file_index].path);
    }
    for (int i = 0; i < count && weight_map && status == SB_OK; i++) {
        const sb_tensor_info *tensor = &checkpoint->tensors[i];
        json_t *file_json = json_object_get(weight_map, tensor->name);
        const char *actual = shard_names[tensor->file_index];
        if (!file_json)
            status = sb_error_set(err, SB_ERR_FORMAT,
                                  "%s/model.safetensors.index.json: tensor '%s' is stored in %s but not listed in "
                                  "the index (stale or corrupt index?)",
                                  dir, tensor->name, actual);
        else if (strcmp(json_string_value(file_json), actual) != 0)
            status = sb_error_set(err, SB_ERR_FORMAT,
                                  "%s/model.safetensors.index.json: tensor '%s' is listed in %s but stored in %s", dir,
                                  tensor->name, json_string_value(file_json), actual);
    }
    if (weight_map && status == SB_OK) {
        const char *name;
        json_t *file_json;
        json_object_foreach(weight_map, name, file_json) {
            if (!bsearch(name, sorted, (size_t)count, sizeof *sorted, compare_name_key)) {
                status = sb_error_set(err, SB_ERR_FORMAT,
                                      "%s/%s: tensor '%s' is listed in model.safetensors.index.json but not in this "
                                      "shard",
                                      dir, json_string_value(file_json), name);
                break;
            }
        }
    }
    free(sorted);
    return status;
}

/* ---- FP8 scales ------------------------------------------------------------------------------ */

static const char scale_suffix[] = "_scale_inv";

static bool is_scale_name(const char *name)
{
    size_t length = strlen(name), suffix = sizeof scale_suffix - 1;
    return length > suffix && strcmp(name + length - suffix, scale_suffix) == 0;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static const char *tensor_path(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor)
{
    return checkpoint->files[tensor->file_index].path;
}

/* Index of the tensor called `name` in `sorted` (names in order), or -1. */
static int find_sorted(const named_index *sorted, int count, const char *name)
{
    const named_index *hit = bsearch(name, sorted, (size_t)count, sizeof *sorted, compare_name_key);
    return hit ? hit->tensor : -1;
}

/* Checks one F8_E4M3 weight against its scale tensor (`scale` may be NULL: missing). */
static sb_status check_fp8_pair(const sb_checkpoint *checkpoint, const sb_tensor_info *weight,
                                const sb_tensor_info *scale, sb_error *err)
{
    const char *path = tensor_path(checkpoint, weight);
    if (checkpoint->fp8_block_rows <= 0 || checkpoint->fp8_block_cols <= 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: tensor '%s' is F8_E4M3 but config.json has no "
                            "quantization_config.weight_block_size (needed to apply its weight_scale_inv)",
                            path, weight->name);
    if (weight->ndim != 2)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: tensor '%s' is F8_E4M3 with %d dimension(s); block scales need a 2-D weight", path,
                            weight->name, weight->ndim);
    if (!scale)
        return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' is F8_E4M3 but its scale tensor '%s%s' is missing",
                            path, weight->name, weight->name, scale_suffix);
    int64_t rows = ceil_div(weight->shape[0], checkpoint->fp8_block_rows);
    int64_t cols = ceil_div(weight->shape[1], checkpoint->fp8_block_cols);
    if (scale->dtype == SB_DTYPE_F8_E4M3)
        return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' has dtype F8_E4M3 (a scale must be F32, BF16 or F16)",
                            tensor_path(checkpoint, scale), scale->name);
    if (scale->ndim != 2 || scale->shape[0] != rows || scale->shape[1] != cols) {
        char actual[96];
        if (scale->ndim == 2)
            snprintf(actual, sizeof actual, "[%lld, %lld]", (long long)scale->shape[0], (long long)scale->shape[1]);
        else
            snprintf(actual, sizeof actual, "%d dimension(s)", scale->ndim);
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: tensor '%s' has shape %s, but weight '%s' [%lld, %lld] with weight_block_size "
                            "[%lld, %lld] needs [%lld, %lld]",
                            tensor_path(checkpoint, scale), scale->name, actual, weight->name,
                            (long long)weight->shape[0], (long long)weight->shape[1],
                            (long long)checkpoint->fp8_block_rows, (long long)checkpoint->fp8_block_cols,
                            (long long)rows, (long long)cols);
    }
    return SB_OK;
}

/* Pairs every F8_E4M3 weight with its `_scale_inv` tensor, checks both, and moves the scale
 * tensors from `tensors` to `scales` (see the header). */
static sb_status attach_scales(sb_checkpoint *checkpoint, sb_error *err)
{
    int count = checkpoint->ntensors, nscales = 0;
    bool any_fp8 = false;
    for (int i = 0; i < count; i++) {
        nscales += is_scale_name(checkpoint->tensors[i].name);
        any_fp8 |= checkpoint->tensors[i].dtype == SB_DTYPE_F8_E4M3;
    }
    if (!any_fp8 && nscales == 0)
        return SB_OK; /* the common case costs one pass over the names */
    named_index *sorted = sb_calloc((size_t)count, sizeof *sorted, "the tensor name index", err);
    int *scale_of = sb_calloc((size_t)count, sizeof *scale_of, "the scale index", err);
    sb_tensor_info *kept = sb_calloc((size_t)count, sizeof *kept, "the tensor list", err);
    sb_tensor_info *scales = sb_calloc((size_t)(nscales > 0 ? nscales : 1), sizeof *scales, "the scale list", err);
    sb_status status = sorted && scale_of && kept && scales ? SB_OK : SB_ERR_NOMEM;
    for (int i = 0; i < count && status == SB_OK; i++)
        sorted[i] = (named_index){checkpoint->tensors[i].name, i};
    if (status == SB_OK)
        qsort(sorted, (size_t)count, sizeof *sorted, compare_named);
    /* every scale tensor scales an F8_E4M3 weight */
    for (int i = 0; i < count && status == SB_OK; i++) {
        const sb_tensor_info *scale = &checkpoint->tensors[i];
        scale_of[i] = -1;
        if (!is_scale_name(scale->name))
            continue;
        /* names are at most SB_TENSOR_NAME_MAX bytes (parse_entry): the weight's name fits whole, so
         * it can never be cut into the name of another tensor */
        char base[SB_TENSOR_NAME_MAX + 1];
        snprintf(base, sizeof base, "%.*s", (int)(strlen(scale->name) - (sizeof scale_suffix - 1)), scale->name);
        int weight = find_sorted(sorted, count, base);
        if (weight < 0)
            status = sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' scales '%s', which is not in the checkpoint",
                                  tensor_path(checkpoint, scale), scale->name, base);
        else if (checkpoint->tensors[weight].dtype != SB_DTYPE_F8_E4M3)
            status = sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' scales '%s', which is %s, not F8_E4M3",
                                  tensor_path(checkpoint, scale), scale->name, base,
                                  sb_dtype_name(checkpoint->tensors[weight].dtype));
    }
    /* every F8_E4M3 weight has its scale, of the right shape */
    for (int i = 0; i < count && status == SB_OK; i++) {
        const sb_tensor_info *weight = &checkpoint->tensors[i];
        if (weight->dtype != SB_DTYPE_F8_E4M3)
            continue;
        char name[SB_TENSOR_NAME_MAX + sizeof scale_suffix]; /* whole: never cut into another name */
        snprintf(name, sizeof name, "%s%s", weight->name, scale_suffix);
        int scale = find_sorted(sorted, count, name);
        status = check_fp8_pair(checkpoint, weight, scale >= 0 ? &checkpoint->tensors[scale] : NULL, err);
        scale_of[i] = scale;
    }
    if (status == SB_OK) {
        /* split, keeping the file order in both lists; scale_of[i] becomes an index in `scales` */
        int *new_index = sb_calloc((size_t)count, sizeof *new_index, "the scale index", err);
        status = new_index ? SB_OK : SB_ERR_NOMEM;
        int nkept = 0, nmoved = 0;
        for (int i = 0; i < count && status == SB_OK; i++) {
            if (is_scale_name(checkpoint->tensors[i].name)) {
                new_index[i] = nmoved;
                scales[nmoved++] = checkpoint->tensors[i];
            } else {
                kept[nkept++] = checkpoint->tensors[i];
            }
        }
        for (int i = 0, k = 0; i < count && status == SB_OK; i++) {
            if (is_scale_name(checkpoint->tensors[i].name))
                continue;
            kept[k].scale_index = scale_of[i] >= 0 ? new_index[scale_of[i]] : -1;
            k++;
        }
        free(new_index);
        if (status == SB_OK) {
            free(checkpoint->tensors);
            checkpoint->tensors = kept;
            checkpoint->ntensors = nkept;
            checkpoint->scales = scales;
            checkpoint->nscales = nmoved;
            kept = NULL;
            scales = NULL;
        }
    }
    free(sorted);
    free(scale_of);
    free(kept);
    free(scales);
    return status;
}

/* Tensor indices in name order, for sb_checkpoint_find: a 480B MoE checkpoint has tens of
 * thousands of tensors, and the loader looks each one up by name. */
static sb_status build_name_order(sb_checkpoint *checkpoint, sb_error *err)
{
    int count = checkpoint->ntensors;
    named_index *sorted = sb_calloc((size_t)(count > 0 ? count : 1), sizeof *sorted, "the tensor name index", err);
    checkpoint->name_order = sb_calloc((size_t)(count > 0 ? count : 1), sizeof *checkpoint->name_order,
                                       "the tensor name index", err);
    if (!sorted || !checkpoint->name_order) {
        free(sorted);
        return SB_ERR_NOMEM;
    }
    for (int i = 0; i < count; i++)
        sorted[i] = (named_index){checkpoint->tensors[i].name, i};
    qsort(sorted, (size_t)count, sizeof *sorted, compare_named);
    for (int i = 0; i < count; i++)
        checkpoint->name_order[i] = sorted[i].tensor;
    free(sorted);
    return SB_OK;
}

sb_status sb_checkpoint_open(const char *dir, sb_checkpoint *checkpoint, sb_error *err)
{
    return sb_checkpoint_open_with(dir, NULL, checkpoint, err);
}

sb_status sb_checkpoint_open_with(const char *dir, const sb_checkpoint_options *options, sb_checkpoint *checkpoint,
                                  sb_error *err)
{
    memset(checkpoint, 0, sizeof *checkpoint);
    if (options) {
        checkpoint->fp8_block_rows = options->fp8_block_rows;
        checkpoint->fp8_block_cols = options->fp8_block_cols;
    }
    tensor_list list = {0};
    json_t *weight_map = NULL;
    char **shard_names = NULL;
    int nshards = 0;
    sb_status status = SB_OK;
    char *index_path = NULL, *single_path = NULL;
    checkpoint->dir = strdup(dir);
    if (!checkpoint->dir) {
        status = sb_error_set(err, SB_ERR_NOMEM, "out of memory opening %s", dir);
        goto done;
    }
    if ((status = sb_path_alloc(&index_path, err, "%s/model.safetensors.index.json", dir)) != SB_OK ||
        (status = sb_path_alloc(&single_path, err, "%s/model.safetensors", dir)) != SB_OK)
        goto done;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        status = sb_error_set(err, SB_ERR_IO, "%s: not a directory (expected a Hugging Face model directory)", dir);
        goto done;
    }
    if (access(index_path, F_OK) == 0) {
        if ((status = read_index(index_path, &weight_map, &shard_names, &nshards, err)) != SB_OK)
            goto done;
    } else if (access(single_path, F_OK) == 0) {
        shard_names = calloc(1, sizeof *shard_names);
        if (!shard_names || !(shard_names[0] = strdup("model.safetensors"))) {
            status = sb_error_set(err, SB_ERR_NOMEM, "out of memory opening %s", dir);
            goto done;
        }
        nshards = 1;
    } else {
        status = sb_error_set(err, SB_ERR_IO, "%s: neither model.safetensors nor model.safetensors.index.json found", dir);
        goto done;
    }
    checkpoint->files = calloc((size_t)nshards, sizeof *checkpoint->files);
    if (!checkpoint->files) {
        status = sb_error_set(err, SB_ERR_NOMEM, "out of memory opening %s", dir);
        goto done;
    }
    checkpoint->nfiles = nshards;
    for (int i = 0; i < nshards; i++) {
        sb_checkpoint_file *file = &checkpoint->files[i];
        if ((status = sb_path_alloc(&file->path, err, "%s/%s", dir, shard_names[i])) != SB_OK)
            goto done;
        if (weight_map && access(file->path, F_OK) != 0) {
            status = sb_error_set(err, SB_ERR_IO, "%s/model.safetensors.index.json: shard %s is missing",
                                  dir, shard_names[i]);
            goto done;
        }
        if ((status = read_file_header(file, i, &list, err)) != SB_OK)
            goto done;
    }
    checkpoint->tensors = list.items;
    checkpoint->ntensors = list.count;
    list.items = NULL; /* ownership moved to the checkpoint: free_tensors must not touch it */
    list.count = list.capacity = 0;
    /* Names must be unique across shards, and the index must agree with the shards. Sorting the
     * names keeps this O(n log n): MoE checkpoints hold tens of thousands of tensors. */
    if ((status = check_names(dir, checkpoint, weight_map, shard_names, err)) != SB_OK)
        goto done;
    if ((status = attach_scales(checkpoint, err)) != SB_OK)
        goto done;
    if ((status = build_name_order(checkpoint, err)) != SB_OK)
        goto done;
done:
    free_tensors(&list);
    for (int i = 0; i < nshards; i++)
        free(shard_names[i]);
    free(shard_names);
    json_decref(weight_map);
    free(index_path);
    free(single_path);
    if (status != SB_OK)
        sb_checkpoint_close(checkpoint);
    return status;
}

void sb_checkpoint_close(sb_checkpoint *checkpoint)
{
    for (int i = 0; i < checkpoint->ntensors; i++)
        free(checkpoint->tensors[i].name);
    free(checkpoint->tensors);
    for (int i = 0; i < checkpoint->nscales; i++)
        free(checkpoint->scales[i].name);
    free(checkpoint->scales);
    free(checkpoint->name_order);
    for (int i = 0; i < checkpoint->nfiles; i++)
        free(checkpoint->files[i].path);
    free(checkpoint->files);
    free(checkpoint->dir);
    memset(checkpoint, 0, sizeof *checkpoint);
}

typedef struct name_lookup {
    const char *name;
    const sb_checkpoint *checkpoint;
} name_lookup;

static int compare_lookup(const void *key, const void *item)
{
    const name_lookup *lookup = key;
    return strcmp(lookup->name, lookup->checkpoint->tensors[*(const int *)item].name);
}

const sb_tensor_info *sb_checkpoint_find(const sb_checkpoint *checkpoint, const char *name)
{
    if (!checkpoint->name_order) { /* only while opening */
        for (int i = 0; i < checkpoint->ntensors; i++)
            if (strcmp(checkpoint->tensors[i].name, name) == 0)
                return &checkpoint->tensors[i];
        return NULL;
    }
    name_lookup key = {name, checkpoint};
    const int *hit = bsearch(&key, checkpoint->name_order, (size_t)checkpoint->ntensors, sizeof *hit, compare_lookup);
    return hit ? &checkpoint->tensors[*hit] : NULL;
}

static sb_status read_bytes(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor, uint64_t offset,
                            uint64_t bytes, void *dst, sb_error *err)
{
    const char *path = checkpoint->files[tensor->file_index].path;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return sb_error_set(err, SB_ERR_IO, "%s: tensor '%s': cannot open: %s", path, tensor->name, strerror(errno));
    sb_status status = pread_exact(fd, dst, bytes, tensor->data_offset + offset, path, err);
    close(fd);
    if (status != SB_OK)
        sb_error_prefix(err, "tensor '%s'", tensor->name);
    return status;
}

/* Rows of an F8_E4M3 weight, dequantized: code (r, c) x scale_inv[r / R][c / C]. */
static sb_status read_fp8_rows(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor, int64_t row_begin,
                               int64_t row_count, float *dst, sb_error *err)
{
    if (tensor->scale_index < 0 || tensor->scale_index >= checkpoint->nscales || checkpoint->fp8_block_rows <= 0 ||
        checkpoint->fp8_block_cols <= 0)
        return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': F8_E4M3 without its scale", tensor->name);
    const char *path = tensor_path(checkpoint, tensor);
    const sb_tensor_info *scale = &checkpoint->scales[tensor->scale_index];
    int64_t cols = sb_tensor_cols(tensor), count = row_count * cols;
    if (row_count == 0)
        return SB_OK;
    /* The codes go to the last quarter of dst and widen forwards in place: element i is read
     * (from byte 3n + i) before any write reaches it (writes end at 4i + 4 <= 3n + i + 1). */
    uint8_t *codes = (uint8_t *)dst + 3 * (size_t)count;
    SB_TRY(read_bytes(checkpoint, tensor, (uint64_t)(row_begin * cols), (uint64_t)count, codes, err));
    int64_t block_rows = checkpoint->fp8_block_rows, block_cols = checkpoint->fp8_block_cols;
    int64_t scale_first = row_begin / block_rows, scale_last = (row_begin + row_count - 1) / block_rows;
    int64_t scale_cols = scale->shape[1], scale_count = (scale_last - scale_first + 1) * scale_cols;
    float *scales = sb_malloc((size_t)scale_count * sizeof *scales, "FP8 scales", err);
    if (!scales)
        return SB_ERR_NOMEM;
    sb_status status = sb_checkpoint_read_rows(checkpoint, scale, scale_first, scale_last - scale_first + 1, false,
                                               scales, err);
    /* A scale that is 0, negative, NaN or Inf would turn a whole block into garbage silently. */
    for (int64_t i = 0; i < scale_count && status == SB_OK; i++)
        if (!(isfinite(scales[i]) && scales[i] > 0.0f))
            status = sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s': scale %g of block (%lld, %lld) is not finite "
                                  "and positive", tensor_path(checkpoint, scale), scale->name, (double)scales[i],
                                  (long long)(scale_first + i / scale_cols), (long long)(i % scale_cols));
    float table[256]; /* the 256 codes decoded once per call */
    for (int code = 0; code < 256; code++)
        table[code] = sb_e4m3_to_f32((uint8_t)code);
    /* In element order, so that the in-place widening above stays valid. */
    for (int64_t r = 0; r < row_count && status == SB_OK; r++) {
        int64_t row = row_begin + r;
        const float *scale_row = scales + (row / block_rows - scale_first) * scale_cols;
        const uint8_t *code_row = codes + r * cols;
        float *out = dst + r * cols;
        for (int64_t c0 = 0; c0 < cols && status == SB_OK; c0 += block_cols) {
            int64_t c1 = c0 + block_cols < cols ? c0 + block_cols : cols;
            float block_scale = scale_row[c0 / block_cols];
            for (int64_t c = c0; c < c1; c++) {
                uint8_t code = code_row[c];
                if (sb_e4m3_is_nan(code)) {
                    status = sb_error_set(err, SB_ERR_INPUT,
                                          "%s: tensor '%s': NaN (F8_E4M3 code 0x%02X) at row %lld, column %lld", path,
                                          tensor->name, code, (long long)row, (long long)c);
                    break;
                }
                out[c] = table[code] * block_scale;
            }
        }
    }
    free(scales);
    return status;
}

/* Chunks of the widening and finiteness passes below: small enough for the stack and L1, long
 * enough that the per-chunk test is noise. */
enum { CHUNK = 2048 };

/* Widens count 16-bit floats stored in the upper half of dst to float32 in place, forwards, a
 * chunk at a time through a copy: chunk [i, i + m) is read (bytes 2n+2i .. 2n+2i+2m) before its
 * writes (bytes 4i .. 4i+4m) land, and those end at or below the next unread byte since i + m <= n.
 * The copy is what lets the compiler vectorise the loop (dst and raw alias); the element loop it
 * replaced took 6% of a data-free run. */
static void widen16_in_place(sb_dtype dtype, float *dst, uint64_t count)
{
    const uint16_t *raw = (const uint16_t *)((const uint8_t *)dst + count * 2);
    uint16_t chunk[CHUNK];
    for (uint64_t i = 0; i < count; i += CHUNK) {
        size_t m = count - i < CHUNK ? (size_t)(count - i) : CHUNK;
        memcpy(chunk, raw + i, m * sizeof *chunk);
        float *out = dst + i;
        if (dtype == SB_DTYPE_BF16)
            for (size_t j = 0; j < m; j++)
                out[j] = sb_bf16_to_f32(chunk[j]);
        else
            for (size_t j = 0; j < m; j++)
                out[j] = sb_f16_to_f32(chunk[j]);
    }
}

/* Is element i of a raw array of dtype finite? */
static bool raw_finite(sb_dtype dtype, const uint8_t *bytes, int64_t i)
{
    if (dtype == SB_DTYPE_F8_E4M3)
        return (bytes[i] & 0x7F) != 0x7F; /* E4M3 has no infinities; 0x7F and 0xFF are NaN */
    if (dtype == SB_DTYPE_F32) {
        uint32_t bits;
        memcpy(&bits, bytes + 4 * i, 4);
        return (bits & 0x7F800000u) != 0x7F800000u;
    }
    uint16_t bits;
    memcpy(&bits, bytes + 2 * i, 2);
    /* F16: 5 exponent bits; BF16: 8, as float32's */
    return dtype == SB_DTYPE_F16 ? (bits & 0x7C00u) != 0x7C00u : (bits & 0x7F80u) != 0x7F80u;
}

/* Any non-finite element in [begin, end)? Branch-free over the range, so it vectorises. */
static bool raw_range_finite(sb_dtype dtype, const uint8_t *bytes, int64_t begin, int64_t end)
{
    unsigned bad = 0;
    if (dtype == SB_DTYPE_F8_E4M3) {
        for (int64_t i = begin; i < end; i++)
            bad |= (bytes[i] & 0x7Fu) == 0x7Fu;
    } else if (dtype == SB_DTYPE_F32) {
        for (int64_t i = begin; i < end; i++) {
            uint32_t bits;
            memcpy(&bits, bytes + 4 * i, 4);
            bad |= (bits & 0x7F800000u) == 0x7F800000u;
        }
    } else {
        const uint16_t mask = dtype == SB_DTYPE_F16 ? 0x7C00u : 0x7F80u;
        for (int64_t i = begin; i < end; i++) {
            uint16_t bits;
            memcpy(&bits, bytes + 2 * i, 2);
            bad |= (bits & mask) == mask;
        }
    }
    return !bad;
}

int64_t sb_first_nonfinite(sb_dtype dtype, const void *raw, int64_t count)
{
    const uint8_t *bytes = raw;
    for (int64_t begin = 0; begin < count; begin += CHUNK) {
        int64_t end = count - begin < CHUNK ? count : begin + CHUNK;
        if (raw_range_finite(dtype, bytes, begin, end))
            continue;
        for (int64_t i = begin; i < end; i++)
            if (!raw_finite(dtype, bytes, i))
                return i;
    }
    return -1;
}

sb_status sb_checkpoint_read_rows(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor,
                                  int64_t row_begin, int64_t row_count, bool check_finite,
                                  float *dst, sb_error *err)
{
    int64_t rows = sb_tensor_rows(tensor), cols = sb_tensor_cols(tensor);
    if (row_begin < 0 || row_count < 0 || row_begin + row_count > rows)
        return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': rows [%lld, %lld) outside 0..%lld", tensor->name,
                            (long long)row_begin, (long long)(row_begin + row_count), (long long)rows);
    uint64_t count = (uint64_t)(row_count * cols);
    size_t element = sb_dtype_size(tensor->dtype);
    uint64_t offset = (uint64_t)(row_begin * cols) * element;
    if (tensor->dtype == SB_DTYPE_F8_E4M3) {
        SB_TRY(read_fp8_rows(checkpoint, tensor, row_begin, row_count, dst, err));
    } else if (tensor->dtype == SB_DTYPE_F32) {
        SB_TRY(read_bytes(checkpoint, tensor, offset, count * 4, dst, err));
    } else {
        /* the 16-bit values go to the upper half of dst (widen16_in_place) */
        SB_TRY(read_bytes(checkpoint, tensor, offset, count * 2, (uint8_t *)dst + count * 2, err));
        widen16_in_place(tensor->dtype, dst, count);
    }
    if (check_finite) {
        int64_t bad = sb_first_nonfinite(SB_DTYPE_F32, dst, (int64_t)count);
        if (bad >= 0)
            return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s': %s at row %lld, column %lld",
                                checkpoint->files[tensor->file_index].path, tensor->name,
                                isnan(dst[bad]) ? "NaN" : "Inf", (long long)(row_begin + bad / cols),
                                (long long)(bad % cols));
    }
    return SB_OK;
}

/* The stored bytes of an F8_E4M3 tensor are codes without their scales: never pass them on. */
static sb_status refuse_raw_fp8(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor, sb_error *err)
{
    if (tensor->dtype != SB_DTYPE_F8_E4M3)
        return SB_OK;
    return sb_error_set(err, SB_ERR_INPUT,
                        "%s: tensor '%s' is F8_E4M3 with block scales and cannot be passed through as stored "
                        "(quantize it, or dequantize the checkpoint first)",
                        tensor_path(checkpoint, tensor), tensor->name);
}

sb_status sb_checkpoint_read_raw(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor, void *dst,
                                 sb_error *err)
{
    SB_TRY(refuse_raw_fp8(checkpoint, tensor, err));
    return read_bytes(checkpoint, tensor, 0, tensor->nbytes, dst, err);
}

sb_status sb_checkpoint_read_raw_rows(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor,
                                      int64_t row_begin, int64_t row_count, void *dst, sb_error *err)
{
    SB_TRY(refuse_raw_fp8(checkpoint, tensor, err));
    int64_t rows = sb_tensor_rows(tensor), cols = sb_tensor_cols(tensor);
    if (row_begin < 0 || row_count < 0 || row_begin + row_count > rows)
        return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': rows [%lld, %lld) outside 0..%lld", tensor->name,
                            (long long)row_begin, (long long)(row_begin + row_count), (long long)rows);
    uint64_t row_bytes = (uint64_t)cols * sb_dtype_size(tensor->dtype);
    return read_bytes(checkpoint, tensor, (uint64_t)row_begin * row_bytes, (uint64_t)row_count * row_bytes, dst, err);
}
