#include "sb_imatrix.h"

#include "sb_atomic.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp limits tensor names to GGML_MAX_NAME (64) bytes; anything far beyond is corruption. */
enum { MAX_NAME_BYTES = 4096 };
/* gguf.cpp's default when general.alignment is absent. */
enum { GGUF_DEFAULT_ALIGNMENT = 32 };
/* gguf_type values (ggml/include/gguf.h) and ggml_type F32. */
enum {
    GGUF_TYPE_UINT8 = 0, GGUF_TYPE_INT8, GGUF_TYPE_UINT16, GGUF_TYPE_INT16, GGUF_TYPE_UINT32, GGUF_TYPE_INT32,
    GGUF_TYPE_FLOAT32, GGUF_TYPE_BOOL, GGUF_TYPE_STRING, GGUF_TYPE_ARRAY, GGUF_TYPE_UINT64, GGUF_TYPE_INT64,
    GGUF_TYPE_FLOAT64, GGUF_TYPE_COUNT
};
enum { GGML_TYPE_F32 = 0 };
enum { GGML_MAX_DIMS = 4 };

/* ---- a bounds-checked little-endian reader over the whole file in memory ---- */

typedef struct cursor {
    const uint8_t *data;
    uint64_t size, pos;
    const char *path;
} cursor;

static sb_status need(cursor *c, uint64_t bytes, const char *what, sb_error *err)
{
    if (bytes > c->size - c->pos)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: file ends at byte %llu while reading %s (%llu bytes needed; truncated?)", c->path,
                            (unsigned long long)c->size, what, (unsigned long long)bytes);
    return SB_OK;
}

static uint64_t load_le(const uint8_t *p, int bytes)
{
    uint64_t value = 0;
    for (int i = bytes - 1; i >= 0; i--)
        value = value << 8 | p[i];
    return value;
}

static sb_status read_u32(cursor *c, uint32_t *value, const char *what, sb_error *err)
{
    SB_TRY(need(c, 4, what, err));
    *value = (uint32_t)load_le(c->data + c->pos, 4);
    c->pos += 4;
    return SB_OK;
}

static sb_status read_i32(cursor *c, int32_t *value, const char *what, sb_error *err)
{
    uint32_t bits;
    SB_TRY(read_u32(c, &bits, what, err));
    memcpy(value, &bits, 4);
    return SB_OK;
}

static sb_status read_u64(cursor *c, uint64_t *value, const char *what, sb_error *err)
{
    SB_TRY(need(c, 8, what, err));
    *value = load_le(c->data + c->pos, 8);
    c->pos += 8;
    return SB_OK;
}

static float load_f32(const uint8_t *p)
{
    uint32_t bits = (uint32_t)load_le(p, 4);
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

/* `length` bytes as a NUL-terminated name; refuses embedded NULs and absurd lengths. */
static sb_status read_name(cursor *c, uint64_t length, char **name, const char *what, sb_error *err)
{
    *name = NULL;
    if (length > MAX_NAME_BYTES)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: %s is %llu bytes long (corrupt file?)", c->path, what,
                            (unsigned long long)length);
    SB_TRY(need(c, length, what, err));
    if (memchr(c->data + c->pos, '\0', length))
        return sb_error_set(err, SB_ERR_FORMAT, "%s: %s at byte %llu contains a NUL byte (corrupt file?)", c->path,
                            what, (unsigned long long)c->pos);
    char *copy = sb_malloc(length + 1, "a name", err);
    if (!copy)
        return SB_ERR_NOMEM;
    memcpy(copy, c->data + c->pos, length);
    copy[length] = '\0';
    c->pos += length;
    *name = copy;
    return SB_OK;
}

/* A GGUF string: u64 length, bytes. */
static sb_status read_gguf_string(cursor *c, char **text, const char *what, sb_error *err)
{
    uint64_t length;
    SB_TRY(read_u64(c, &length, what, err));
    return read_name(c, length, text, what, err);
}


/* ---- names ---- */

bool sb_imatrix_hf_name(const char *llama_name, char *hf_name, size_t size)
{
    static const struct {
        const char *llama, *hf;
    } globals[] = {
        {"token_embd.weight", "model.embed_tokens.weight"},
        {"output.weight", "lm_head.weight"},
        {"output_norm.weight", "model.norm.weight"},
    };
    static const struct {
        const char *llama, *hf;
    } per_layer[] = {
        {"attn_q.weight", "self_attn.q_proj.weight"},
        {"attn_k.weight", "self_attn.k_proj.weight"},
        {"attn_v.weight", "self_attn.v_proj.weight"},
        {"attn_output.weight", "self_attn.o_proj.weight"},
        {"ffn_gate.weight", "mlp.gate_proj.weight"},
        {"ffn_up.weight", "mlp.up_proj.weight"},
        {"ffn_down.weight", "mlp.down_proj.weight"},
        {"attn_norm.weight", "input_layernorm.weight"},
        {"ffn_norm.weight", "post_attention_layernorm.weight"},
    };
    if (size > 0)
        hf_name[0] = '\0';
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
        if (strcmp(llama_name, globals[i].llama) == 0) {
            int written = snprintf(hf_name, size, "%s", globals[i].hf);
            return written >= 0 && (size_t)written < size;
        }
    }
    /* "blk.<decimal layer>.<suffix>" */
    if (strncmp(llama_name, "blk.", 4) != 0)
        return false;
    const char *digits = llama_name + 4, *p = digits;
    long layer = 0;
    while (*p >= '0' && *p <= '9' && p - digits < 9)
        layer = layer * 10 + (*p++ - '0');
    if (p == digits || *p != '.')
        return false;
    for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++) {
        if (strcmp(p + 1, per_layer[i].llama) == 0) {
            int written = snprintf(hf_name, size, "model.layers.%ld.%s", layer, per_layer[i].hf);
            if (written >= 0 && (size_t)written < size)
                return true;
            if (size > 0)
                hf_name[0] = '\0';
            return false;
        }
    }
    return false;
}

/* ---- entries ---- */

typedef struct entry_list {
    sb_imatrix_entry *items;
    int count, capacity;
} entry_list;

static void free_entry(sb_imatrix_entry *entry)
{
    free(entry->llama_name);
    free(entry->hf_name);
    free(entry->mean_sq);
}

/* Validates the raw values, divides them by `divisor` into a new entry appended to `list`.
 * Takes ownership of `name` (freed on failure). */
static sb_status add_entry(const char *path, entry_list *list, char *name, const uint8_t *raw_values, int64_t ncols,
                           double divisor, double count, const char *divisor_name, sb_error *err)
{
    sb_status status = SB_OK;
    float *mean_sq = NULL;
    char *hf_name = NULL;
    if (!(divisor > 0) || !isfinite(divisor)) {
        status = sb_error_set(err, SB_ERR_INPUT,
                              "%s: entry '%s': %s is %g: no calibration token reached this tensor (counts must be "
                              "> 0)",
                              path, name, divisor_name, divisor);
        goto fail;
    }
    mean_sq = sb_malloc((size_t)ncols * sizeof *mean_sq, "importance values", err);
    if (!mean_sq) {
        status = SB_ERR_NOMEM;
        goto fail;
    }
    for (int64_t j = 0; j < ncols; j++) {
        float value = load_f32(raw_values + 4 * j);
        /* Sums of squares are never negative; NaN/Inf mean the calibration run blew up. */
        if (!isfinite(value) || value < 0) {
            status = sb_error_set(err, SB_ERR_INPUT, "%s: entry '%s': column %lld is %g (must be finite and >= 0)",
                                  path, name, (long long)j, (double)value);
            goto fail;
        }
        mean_sq[j] = (float)((double)value / divisor);
    }
    char mapped[512];
    if (sb_imatrix_hf_name(name, mapped, sizeof mapped) && !(hf_name = strdup(mapped))) {
        status = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    if (list->count == list->capacity) {
        int capacity = list->capacity ? 2 * list->capacity : 64;
        sb_imatrix_entry *items = realloc(list->items, (size_t)capacity * sizeof *items);
        if (!items) {
            status = sb_error_set(err, SB_ERR_NOMEM, "%s: cannot grow the entry list to %d", path, capacity);
            goto fail;
        }
        list->items = items;
        list->capacity = capacity;
    }
    list->items[list->count++] = (sb_imatrix_entry){name, hf_name, ncols, mean_sq, count};
    return SB_OK;
fail:
    free(name);
    free(hf_name);
    free(mean_sq);
    return status;
}

static int compare_entries(const void *a, const void *b)
{
    return strcmp(((const sb_imatrix_entry *)a)->llama_name, ((const sb_imatrix_entry *)b)->llama_name);
}

/* Per-expert tensors of MoE models (llama.cpp merges experts into one 3-D "*_exps" tensor). */
static sb_status refuse_moe(const char *path, const char *name, int64_t matrices, sb_error *err)
{
    if (matrices < 0) /* legacy files do not say how many experts */
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: entry '%s': per-expert importance (an MoE expert tensor) is not supported yet", path,
                            name);
    return sb_error_set(err, SB_ERR_INPUT,
                        "%s: entry '%s': per-expert importance (%lld matrices, an MoE expert tensor) is not "
                        "supported yet",
                        path, name, (long long)matrices);
}

/* ---- legacy .dat ---- */

static sb_status parse_legacy(cursor *c, sb_imatrix *imatrix, entry_list *list, sb_error *err)
{
    int32_t n_entries;
    SB_TRY(read_i32(c, &n_entries, "the entry count", err));
    /* An entry takes at least 17 bytes (three i32, a 1-byte name, one value). */
    if (n_entries < 1 || (uint64_t)n_entries > (c->size - c->pos) / 17)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: %d entries in %llu bytes: not an importance matrix (neither GGUF nor the legacy "
                            ".dat format), or truncated",
                            c->path, n_entries, (unsigned long long)c->size);
    for (int32_t i = 0; i < n_entries; i++) {
        char what[96];
        snprintf(what, sizeof what, "the name of entry %d of %d", i + 1, n_entries);
        int32_t length;
        SB_TRY(read_i32(c, &length, what, err));
        if (length < 1)
            return sb_error_set(err, SB_ERR_FORMAT, "%s: entry %d: name length %d (corrupt file?)", c->path, i + 1,
                                length);
        char *name;
        SB_TRY(read_name(c, (uint64_t)length, &name, what, err));
        int32_t ncall = 0, nval = 0;
        snprintf(what, sizeof what, "the header of entry '%.60s'", name);
        sb_status status = read_i32(c, &ncall, what, err);
        if (status == SB_OK)
            status = read_i32(c, &nval, what, err);
        if (status == SB_OK && nval < 1)
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: entry '%s': %d values (corrupt file?)", c->path, name, nval);
        snprintf(what, sizeof what, "the %d values of entry '%.60s'", nval, name);
        if (status == SB_OK)
            status = need(c, 4 * (uint64_t)nval, what, err);
        if (status == SB_OK && strstr(name, "_exps."))
            status = refuse_moe(c->path, name, -1, err);
        if (status != SB_OK) {
            free(name);
            return status;
        }
        const uint8_t *values = c->data + c->pos;
        c->pos += 4 * (uint64_t)nval;
        /* llama.cpp stored (sum / count) * ncall; llama-quantize divides by ncall: so do we. */
        SB_TRY(add_entry(c->path, list, name, values, nval, (double)ncall, (double)ncall, "ncall", err));
    }
    /* Optional trailer: i32 last chunk, i32 dataset name length, name. Older files end before it. */
    uint64_t remaining = c->size - c->pos;
    if (remaining == 0)
        return SB_OK;
    int32_t last_chunk, length;
    SB_TRY(read_i32(c, &last_chunk, "the chunk count after the entries", err));
    SB_TRY(read_i32(c, &length, "the dataset name length after the entries", err));
    if (last_chunk < 0 || length < 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: trailer after the entries is corrupt (chunks %d, name length %d)",
                            c->path, last_chunk, length);
    imatrix->chunk_count = last_chunk;
    char *dataset;
    SB_TRY(read_name(c, (uint64_t)length, &dataset, "the dataset name after the entries", err));
    imatrix->datasets = malloc(sizeof *imatrix->datasets);
    if (!imatrix->datasets) {
        free(dataset);
        return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", c->path);
    }
    imatrix->datasets[0] = dataset;
    imatrix->ndatasets = 1;
    if (c->pos != c->size)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: %llu unexpected bytes after the dataset name (corrupt file?)",
                            c->path, (unsigned long long)(c->size - c->pos));
    return SB_OK;
}

/* ---- GGUF ---- */

typedef struct gguf_tensor {
    char *name;
    uint32_t ndim;
    int64_t ne[GGML_MAX_DIMS];
    int32_t type;
    uint64_t offset;
} gguf_tensor;

static size_t gguf_scalar_size(int32_t type)
{
    switch (type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

/* An integer-typed value at the cursor, as int64 (for the few keys we read). */
static sb_status read_gguf_integer(cursor *c, int32_t type, const char *key, int64_t *value, sb_error *err)
{
    size_t size = gguf_scalar_size(type);
    if (size == 0 || type == GGUF_TYPE_FLOAT32 || type == GGUF_TYPE_FLOAT64 || type == GGUF_TYPE_BOOL)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: key '%s' has GGUF type %d, expected an integer", c->path, key,
                            type);
    SB_TRY(need(c, size, key, err));
    uint64_t bits = load_le(c->data + c->pos, (int)size);
    c->pos += size;
    bool is_signed = type == GGUF_TYPE_INT8 || type == GGUF_TYPE_INT16 || type == GGUF_TYPE_INT32 ||
                     type == GGUF_TYPE_INT64;
    if (is_signed && size < 8 && (bits >> (8 * size - 1)) & 1)
        bits |= ~(uint64_t)0 << (8 * size); /* sign-extend */
    memcpy(value, &bits, 8);
    return SB_OK;
}

static sb_status skip_gguf_value(cursor *c, int32_t type, const char *key, sb_error *err)
{
    if (type == GGUF_TYPE_STRING) {
        uint64_t length;
        SB_TRY(read_u64(c, &length, key, err));
        SB_TRY(need(c, length, key, err));
        c->pos += length;
        return SB_OK;
    }
    size_t size = gguf_scalar_size(type);
    if (size == 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: key '%s' has invalid GGUF type %d (corrupt file?)", c->path, key,
                            type);
    SB_TRY(need(c, size, key, err));
    c->pos += size;
    return SB_OK;
}

static sb_status parse_gguf_kv(cursor *c, sb_imatrix *imatrix, uint64_t *alignment, sb_error *err)
{
    char *key = NULL;
    SB_TRY(read_gguf_string(c, &key, "a metadata key", err));
    sb_status status = SB_OK;
    int32_t type;
    if ((status = read_i32(c, &type, key, err)) != SB_OK)
        goto done;
    if (type == GGUF_TYPE_ARRAY) {
        int32_t element_type;
        uint64_t count;
        if ((status = read_i32(c, &element_type, key, err)) != SB_OK ||
            (status = read_u64(c, &count, key, err)) != SB_OK)
            goto done;
        if (element_type == GGUF_TYPE_ARRAY || (element_type != GGUF_TYPE_STRING && !gguf_scalar_size(element_type))) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: key '%s': array of invalid GGUF type %d", c->path, key,
                                  element_type);
            goto done;
        }
        /* every element takes at least one byte (strings: 8): bounds the count before allocating */
        if (count > (c->size - c->pos) / (element_type == GGUF_TYPE_STRING ? 8 : gguf_scalar_size(element_type))) {
            status = need(c, c->size - c->pos + 1, key, err);
            goto done;
        }
        bool datasets = strcmp(key, "imatrix.datasets") == 0 && element_type == GGUF_TYPE_STRING;
        if (datasets && count > 0 && !imatrix->datasets) {
            imatrix->datasets = calloc((size_t)count, sizeof *imatrix->datasets);
            if (!imatrix->datasets) {
                status = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", c->path);
                goto done;
            }
        } else {
            datasets = false;
        }
        for (uint64_t i = 0; i < count && status == SB_OK; i++) {
            if (datasets) {
                status = read_gguf_string(c, &imatrix->datasets[i], key, err);
                if (status == SB_OK)
                    imatrix->ndatasets++;
            } else {
                status = skip_gguf_value(c, element_type, key, err);
            }
        }
        goto done;
    }
    if (strcmp(key, "general.alignment") == 0) {
        int64_t value;
        if (type != GGUF_TYPE_UINT32) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: general.alignment has GGUF type %d, expected uint32",
                                  c->path, type);
        } else if ((status = read_gguf_integer(c, type, key, &value, err)) == SB_OK) {
            if (value == 0 || (value & (value - 1)) != 0)
                status = sb_error_set(err, SB_ERR_FORMAT, "%s: general.alignment %lld is not a power of two",
                                      c->path, (long long)value);
            *alignment = (uint64_t)value;
        }
    } else if (strcmp(key, "imatrix.chunk_count") == 0 || strcmp(key, "imatrix.chunk_size") == 0) {
        int64_t value;
        if ((status = read_gguf_integer(c, type, key, &value, err)) == SB_OK) {
            if (strcmp(key, "imatrix.chunk_count") == 0)
                imatrix->chunk_count = value;
            else
                imatrix->chunk_size = value;
        }
    } else if (strcmp(key, "general.type") == 0 && type == GGUF_TYPE_STRING) {
        char *value = NULL;
        if ((status = read_gguf_string(c, &value, key, err)) == SB_OK && strcmp(value, "imatrix") != 0)
            status = sb_error_set(err, SB_ERR_INPUT,
                                  "%s: general.type is \"%s\": a GGUF file, but not an importance matrix "
                                  "(llama-imatrix output)",
                                  c->path, value);
        free(value);
    } else {
        status = skip_gguf_value(c, type, key, err);
    }
done:
    free(key);
    return status;
}

static int compare_tensor_names(const void *a, const void *b)
{
    return strcmp(((const gguf_tensor *)a)->name, ((const gguf_tensor *)b)->name);
}

static bool remove_suffix(const char *name, const char *suffix, size_t *base_length)
{
    size_t length = strlen(name), suffix_length = strlen(suffix);
    if (length <= suffix_length || strcmp(name + length - suffix_length, suffix) != 0)
        return false;
    *base_length = length - suffix_length;
    return true;
}

static const gguf_tensor *find_tensor(const gguf_tensor *tensors, uint64_t count, const char *base, size_t length,
                                      const char *suffix)
{
    char name[MAX_NAME_BYTES + 32];
    snprintf(name, sizeof name, "%.*s%s", (int)length, base, suffix);
    gguf_tensor key = {.name = name};
    return bsearch(&key, tensors, (size_t)count, sizeof *tensors, compare_tensor_names);
}

static uint64_t tensor_elements(const gguf_tensor *tensor)
{
    uint64_t elements = 1;
    for (uint32_t d = 0; d < tensor->ndim; d++)
        elements *= (uint64_t)tensor->ne[d];
    return elements;
}

/* Checks that a tensor we read is F32 and lies inside the data area; returns its bytes. */
static sb_status locate(cursor *c, const gguf_tensor *tensor, uint64_t data_start, uint64_t alignment,
                        const uint8_t **bytes, sb_error *err)
{
    if (tensor->type != GGML_TYPE_F32)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s' has ggml type %d; llama-imatrix writes F32 (0)",
                            c->path, tensor->name, tensor->type);
    if (tensor->offset % alignment != 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': offset %llu is not a multiple of the alignment %llu",
                            c->path, tensor->name, (unsigned long long)tensor->offset, (unsigned long long)alignment);
    uint64_t nbytes = 4 * tensor_elements(tensor);
    if (data_start > c->size || tensor->offset > c->size - data_start || nbytes > c->size - data_start - tensor->offset)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: tensor '%s': data [%llu, %llu) run past the end of the file (%llu bytes; truncated?)",
                            c->path, tensor->name, (unsigned long long)(data_start + tensor->offset),
                            (unsigned long long)(data_start + tensor->offset + nbytes), (unsigned long long)c->size);
    *bytes = c->data + data_start + tensor->offset;
    return SB_OK;
}

static sb_status parse_gguf_entries(cursor *c, gguf_tensor *tensors, uint64_t ntensors, uint64_t data_start,
                                    uint64_t alignment, entry_list *list, sb_error *err)
{
    qsort(tensors, (size_t)ntensors, sizeof *tensors, compare_tensor_names);
    for (uint64_t i = 1; i < ntensors; i++)
        if (strcmp(tensors[i - 1].name, tensors[i].name) == 0)
            return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s' appears twice", c->path, tensors[i].name);
    for (uint64_t i = 0; i < ntensors; i++) {
        const gguf_tensor *tensor = &tensors[i];
        size_t length;
        bool is_sum2 = remove_suffix(tensor->name, ".in_sum2", &length);
        if (!is_sum2) {
            /* a counts or in_sum without its in_sum2 is a broken pair */
            if ((remove_suffix(tensor->name, ".counts", &length) || remove_suffix(tensor->name, ".in_sum", &length)) &&
                !find_tensor(tensors, ntensors, tensor->name, length, ".in_sum2"))
                return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s' has no matching '%.*s.in_sum2'", c->path,
                                    tensor->name, (int)length, tensor->name);
            continue;
        }
        const gguf_tensor *counts = find_tensor(tensors, ntensors, tensor->name, length, ".counts");
        const gguf_tensor *sums = find_tensor(tensors, ntensors, tensor->name, length, ".in_sum");
        if (!counts)
            return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s' has no matching '%.*s.counts'", c->path,
                                tensor->name, (int)length, tensor->name);
        int64_t ncols = tensor->ndim ? tensor->ne[0] : 1;
        uint64_t elements = tensor_elements(tensor);
        int64_t matrices = ncols > 0 ? (int64_t)(elements / (uint64_t)ncols) : 0;
        char *name = strndup(tensor->name, length);
        if (!name)
            return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", c->path);
        sb_status status = SB_OK;
        if (ncols <= 0 || elements == 0)
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: entry '%s': in_sum2 has no elements", c->path, name);
        else if (tensor_elements(counts) != (uint64_t)matrices)
            status = sb_error_set(err, SB_ERR_FORMAT,
                                  "%s: entry '%s': %llu counts for %lld matrices of %lld columns (mismatched sums and "
                                  "counts)",
                                  c->path, name, (unsigned long long)tensor_elements(counts), (long long)matrices,
                                  (long long)ncols);
        else if (sums && tensor_elements(sums) != elements)
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: entry '%s': in_sum has %llu elements, in_sum2 %llu",
                                  c->path, name, (unsigned long long)tensor_elements(sums),
                                  (unsigned long long)elements);
        else if (matrices > 1)
            status = refuse_moe(c->path, name, matrices, err);
        const uint8_t *sum2_bytes = NULL, *count_bytes = NULL, *sum_bytes = NULL;
        if (status == SB_OK)
            status = locate(c, tensor, data_start, alignment, &sum2_bytes, err);
        if (status == SB_OK)
            status = locate(c, counts, data_start, alignment, &count_bytes, err);
        if (status == SB_OK && sums)
            status = locate(c, sums, data_start, alignment, &sum_bytes, err);
        if (status != SB_OK) {
            free(name);
            return status;
        }
        double count = load_f32(count_bytes);
        SB_TRY(add_entry(c->path, list, name, sum2_bytes, ncols, count, count, "count", err));
    }
    return SB_OK;
}

static sb_status parse_gguf(cursor *c, sb_imatrix *imatrix, entry_list *list, sb_error *err)
{
    c->pos = 4; /* the magic */
    uint32_t version;
    SB_TRY(read_u32(c, &version, "the GGUF version", err));
    if ((version & 0xffffu) == 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: GGUF version 0x%08x: a big-endian file? (only little-endian is "
                            "read)", c->path, version);
    if (version < 2 || version > 3)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: GGUF version %u is not supported (2 and 3 are)", c->path, version);
    uint64_t ntensors, nkv;
    SB_TRY(read_u64(c, &ntensors, "the tensor count", err));
    SB_TRY(read_u64(c, &nkv, "the key-value count", err));
    /* Every key-value takes >= 12 bytes and every tensor info >= 24: absurd counts are corruption. */
    if (nkv > (c->size - c->pos) / 12 || ntensors > (c->size - c->pos) / 24)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: %llu tensors and %llu keys cannot fit in %llu bytes (corrupt or "
                            "truncated)", c->path, (unsigned long long)ntensors, (unsigned long long)nkv,
                            (unsigned long long)c->size);
    uint64_t alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < nkv; i++)
        SB_TRY(parse_gguf_kv(c, imatrix, &alignment, err));
    gguf_tensor *tensors = sb_calloc((size_t)ntensors, sizeof *tensors, "the GGUF tensor list", err);
    if (!tensors)
        return SB_ERR_NOMEM;
    sb_status status = SB_OK;
    for (uint64_t i = 0; i < ntensors && status == SB_OK; i++) {
        gguf_tensor *tensor = &tensors[i];
        char what[128];
        snprintf(what, sizeof what, "the info of tensor %llu of %llu", (unsigned long long)i + 1,
                 (unsigned long long)ntensors);
        if ((status = read_gguf_string(c, &tensor->name, what, err)) != SB_OK)
            break;
        snprintf(what, sizeof what, "the info of tensor '%.60s'", tensor->name);
        if ((status = read_u32(c, &tensor->ndim, what, err)) != SB_OK)
            break;
        if (tensor->ndim > GGML_MAX_DIMS) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (at most %d)", c->path,
                                  tensor->name, tensor->ndim, GGML_MAX_DIMS);
            break;
        }
        uint64_t elements = 1;
        for (uint32_t d = 0; d < tensor->ndim && status == SB_OK; d++) {
            uint64_t extent;
            if ((status = read_u64(c, &extent, what, err)) != SB_OK)
                break;
            /* ggml sizes are int64; and even at one bit per element no tensor can hold more than 8
             * elements per byte of the file */
            if (extent > INT64_MAX || (extent != 0 && elements > 8 * c->size / extent))
                status = sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': dimension %u = %llu is impossible", c->path,
                                      tensor->name, d, (unsigned long long)extent);
            elements *= extent;
            tensor->ne[d] = (int64_t)extent;
        }
        if (status == SB_OK)
            status = read_i32(c, &tensor->type, what, err);
        if (status == SB_OK)
            status = read_u64(c, &tensor->offset, what, err);
    }
    /* the data area starts at the next multiple of the alignment */
    uint64_t data_start = (c->pos + alignment - 1) / alignment * alignment;
    if (status == SB_OK)
        status = parse_gguf_entries(c, tensors, ntensors, data_start, alignment, list, err);
    for (uint64_t i = 0; i < ntensors; i++)
        free(tensors[i].name);
    free(tensors);
    return status;
}

/* ---- public ---- */

sb_status sb_imatrix_load(const char *path, sb_imatrix *imatrix, sb_error *err)
{
    memset(imatrix, 0, sizeof *imatrix);
    imatrix->chunk_count = imatrix->chunk_size = -1;
    uint8_t *data = NULL;
    size_t size = 0;
    entry_list list = {0};
    imatrix->path = strdup(path);
    if (!imatrix->path)
        return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
    sb_status status = sb_read_file(path, &data, &size, err);
    if (status == SB_OK && size == 0)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: empty file", path);
    if (status == SB_OK) {
        cursor c = {data, size, 0, path};
        bool gguf = size >= 4 && memcmp(data, "GGUF", 4) == 0;
        imatrix->format = gguf ? SB_IMATRIX_GGUF : SB_IMATRIX_LEGACY;
        status = gguf ? parse_gguf(&c, imatrix, &list, err) : parse_legacy(&c, imatrix, &list, err);
    }
    if (status == SB_OK && list.count == 0)
        status = sb_error_set(err, SB_ERR_INPUT, "%s: no importance entries (no '<tensor>.in_sum2' tensors)", path);
    if (status == SB_OK) {
        qsort(list.items, (size_t)list.count, sizeof *list.items, compare_entries);
        for (int i = 1; i < list.count && status == SB_OK; i++)
            if (strcmp(list.items[i - 1].llama_name, list.items[i].llama_name) == 0)
                status = sb_error_set(err, SB_ERR_FORMAT, "%s: entry '%s' appears twice", path, list.items[i].llama_name);
    }
    imatrix->entries = list.items;
    imatrix->nentries = list.count;
    free(data);
    if (status != SB_OK)
        sb_imatrix_free(imatrix);
    return status;
}

void sb_imatrix_free(sb_imatrix *imatrix)
{
    for (int i = 0; i < imatrix->nentries; i++)
        free_entry(&imatrix->entries[i]);
    free(imatrix->entries);
    if (imatrix->datasets)
        for (int i = 0; i < imatrix->ndatasets; i++)
            free(imatrix->datasets[i]);
    free(imatrix->datasets);
    free(imatrix->path);
    memset(imatrix, 0, sizeof *imatrix);
}

const sb_imatrix_entry *sb_imatrix_find(const sb_imatrix *imatrix, const char *name)
{
    for (int i = 0; i < imatrix->nentries; i++)
        if (imatrix->entries[i].hf_name && strcmp(imatrix->entries[i].hf_name, name) == 0)
            return &imatrix->entries[i];
    for (int i = 0; i < imatrix->nentries; i++)
        if (strcmp(imatrix->entries[i].llama_name, name) == 0)
            return &imatrix->entries[i];
    return NULL;
}

sb_status sb_imatrix_check_checkpoint(const sb_imatrix *imatrix, const sb_checkpoint *checkpoint, sb_error *err)
{
    for (int i = 0; i < imatrix->nentries; i++) {
        const sb_imatrix_entry *entry = &imatrix->entries[i];
        if (!entry->hf_name)
            return sb_error_set(err, SB_ERR_INPUT,
                                "%s: entry '%s' has no Hugging Face Llama counterpart (an importance matrix of "
                                "another architecture?)",
                                imatrix->path, entry->llama_name);
        const sb_tensor_info *tensor = sb_checkpoint_find(checkpoint, entry->hf_name);
        if (!tensor)
            return sb_error_set(err, SB_ERR_INPUT, "%s: entry '%s': %s has no tensor '%s' (an importance matrix of "
                                "another model?)", imatrix->path, entry->llama_name, checkpoint->dir, entry->hf_name);
        if (tensor->ndim != 2 || tensor->shape[1] != entry->ncols)
            return sb_error_set(err, SB_ERR_INPUT,
                                "%s: entry '%s' has %lld columns but tensor '%s' of %s has %lld (an importance matrix "
                                "of another model?)",
                                imatrix->path, entry->llama_name, (long long)entry->ncols, entry->hf_name,
                                checkpoint->dir, (long long)sb_tensor_cols(tensor));
    }
    return SB_OK;
}

void sb_imatrix_llama_linear_name(int64_t layer, int kind, char *name, size_t size)
{
    static const char *suffix[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    snprintf(name, size, "blk.%lld.%s.weight", (long long)layer, kind >= 0 && kind < 7 ? suffix[kind] : "?");
}

static void put_i32(FILE *out, int32_t value) { fwrite(&value, 4, 1, out); }

sb_status sb_imatrix_write_dat(const char *path, int nentries, const char *const *names, const int64_t *ncols,
                               const float *const *means, int chunks, const char *dataset, sb_error *err)
{
    char *bytes = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&bytes, &size);
    if (!out)
        return sb_error_set(err, SB_ERR_NOMEM, "%s: cannot build the importance matrix", path);
    put_i32(out, nentries);
    for (int i = 0; i < nentries; i++) {
        put_i32(out, (int32_t)strlen(names[i]));
        fwrite(names[i], 1, strlen(names[i]), out);
        put_i32(out, 1); /* ncall: the values below are already means */
        put_i32(out, (int32_t)ncols[i]);
        fwrite(means[i], sizeof(float), (size_t)ncols[i], out);
    }
    put_i32(out, chunks);
    put_i32(out, (int32_t)strlen(dataset));
    fwrite(dataset, 1, strlen(dataset), out);
    if (fclose(out) != 0) {
        free(bytes);
        return sb_error_set(err, SB_ERR_NOMEM, "%s: cannot build the importance matrix", path);
    }
    sb_status status = sb_atomic_write_file(path, bytes, size, err);
    free(bytes);
    return status;
}
