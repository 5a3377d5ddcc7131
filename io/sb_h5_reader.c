#include "sb_h5_reader.h"

#include <errno.h>
#include <math.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sb_assert.h"
#include "sb_h5_name.h"
#include "sb_h5_writer.h"
#include "sb_half.h"
#include "sb_pack.h"
#include "sb_quant.h"
#include "sb_sha256.h"
#include "sb_tensor_name.h"

/* The raw byte layouts below (F32 as IEEE little-endian, BF16 as its bit patterns) are read
 * into host memory unchanged. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sb_h5_reader assumes a little-endian host"
#endif

/* Sanity limits on attributes, so that a corrupt value cannot make us allocate or loop forever:
 * 2^40 rows or columns is far beyond any model; a tile side of 2^16 is far beyond any kernel. */
enum { MAX_TILE_SIDE = 1 << 16 };
#define MAX_EXTENT ((int64_t)1 << 40)

/* ---- small HDF5 helpers ------------------------------------------------------------------ */

/* The innermost message on HDF5's error stack (the library's own reason, e.g. "truncated file:
 * eof = ..."), or "" when there is none. Called right after a failing HDF5 call. */
static herr_t first_error(unsigned n, const H5E_error2_t *entry, void *data)
{
    char *reason = data;
    if (n == 0 && entry->desc)
        snprintf(reason, 256, "%s", entry->desc);
    return 0;
}

static void hdf5_reason(char reason[256])
{
    reason[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, first_error, reason); /* upward: innermost first */
}

static void close_id(hid_t id)
{
    if (id < 0)
        return;
    switch (H5Iget_type(id)) {
    case H5I_FILE: H5Fclose(id); break;
    case H5I_GROUP: H5Gclose(id); break;
    case H5I_DATASET: H5Dclose(id); break;
    case H5I_DATASPACE: H5Sclose(id); break;
    case H5I_DATATYPE: H5Tclose(id); break;
    case H5I_ATTR: H5Aclose(id); break;
    default: H5Oclose(id); break;
    }
}

/* Reads up to `max_count` integers of attribute `name` of `object`; *count receives how many
 * (0 if the attribute is absent and not required). `where` prefixes messages. */
static sb_status attr_int64s(hid_t object, const char *where, const char *name, bool required, int64_t *values,
                             int max_count, int *count, sb_error *err)
{
    *count = 0;
    htri_t exists = H5Aexists(object, name);
    if (exists <= 0)
        return required ? sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' is missing", where, name) : SB_OK;
    hid_t attr = H5Aopen(object, name, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    hid_t space = attr >= 0 ? H5Aget_space(attr) : -1;
    hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    sb_status status = SB_OK;
    if (type < 0 || space < 0)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' cannot be read", where, name);
    else if (H5Tget_class(type) != H5T_INTEGER)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' is not an integer", where, name);
    else if (points < 1 || points > max_count)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' has %lld values, expected %s%d", where, name,
                              (long long)points, max_count > 1 ? "1 to " : "", max_count);
    else if (H5Aread(attr, H5T_NATIVE_INT64, values) < 0)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' cannot be read", where, name);
    else
        *count = (int)points;
    close_id(space);
    close_id(type);
    close_id(attr);
    return status;
}

/* Exactly `expected` integers. */
static sb_status attr_int64_exact(hid_t object, const char *where, const char *name, int64_t *values, int expected,
                                  sb_error *err)
{
    int count;
    SB_TRY(attr_int64s(object, where, name, true, values, expected, &count, err));
    if (count != expected)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' has %d value(s), expected %d", where, name, count,
                            expected);
    return SB_OK;
}

static sb_status attr_double(hid_t object, const char *where, const char *name, double *value, sb_error *err)
{
    htri_t exists = H5Aexists(object, name);
    if (exists <= 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' is missing", where, name);
    hid_t attr = H5Aopen(object, name, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    hid_t space = attr >= 0 ? H5Aget_space(attr) : -1;
    sb_status status = SB_OK;
    H5T_class_t class = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    if (class != H5T_FLOAT && class != H5T_INTEGER)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' is not a number", where, name);
    else if (H5Sget_simple_extent_npoints(space) != 1)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' is not a single number", where, name);
    else if (H5Aread(attr, H5T_NATIVE_DOUBLE, value) < 0)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' cannot be read", where, name);
    close_id(space);
    close_id(type);
    close_id(attr);
    return status;
}

static void free_strings(char **strings, int count)
{
    for (int i = 0; strings && i < count; i++)
        free(strings[i]);
    free(strings);
}

/* Reads a string attribute (scalar or 1-D; fixed or variable length) into malloc'd copies.
 * Absent and not required: *strings = NULL, *count = 0. */
static sb_status attr_strings(hid_t object, const char *where, const char *name, bool required, int64_t limit,
                              char ***strings, int *count, sb_error *err)
{
    *strings = NULL;
    *count = 0;
    if (H5Aexists(object, name) <= 0)
        return required ? sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' is missing", where, name) : SB_OK;
    hid_t attr = H5Aopen(object, name, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    hid_t space = attr >= 0 ? H5Aget_space(attr) : -1;
    hid_t memtype = -1;
    hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    sb_status status = SB_OK;
    char **out = NULL;
    if (type < 0 || space < 0 || H5Tget_class(type) != H5T_STRING) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' is not a string", where, name);
        goto done;
    }
    if (points < 1 || points > (1 << 20)) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' has %lld strings", where, name,
                              (long long)points);
        goto done;
    }
    out = sb_calloc((size_t)points, sizeof *out, "string attribute", err);
    if (!out) {
        status = SB_ERR_NOMEM;
        goto done;
    }
    memtype = H5Tcopy(H5T_C_S1);
    if (H5Tis_variable_str(type) > 0) {
        H5Tset_size(memtype, H5T_VARIABLE);
        H5Tset_cset(memtype, H5Tget_cset(type));
        char **pointers = sb_calloc((size_t)points, sizeof *pointers, "string attribute", err);
        if (!pointers) {
            status = SB_ERR_NOMEM;
            goto done;
        }
        if (H5Aread(attr, memtype, pointers) < 0) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' cannot be read", where, name);
        } else {
            for (hssize_t i = 0; i < points; i++) {
                out[i] = strdup(pointers[i] ? pointers[i] : "");
                if (!out[i])
                    status = sb_error_set(err, SB_ERR_NOMEM, "out of memory reading attribute '%s'", name);
            }
            H5Dvlen_reclaim(memtype, space, H5P_DEFAULT, pointers);
        }
        free(pointers);
    } else {
        size_t size = H5Tget_size(type);
        /* fixed-length strings are stored in the file: more bytes than the file holds is a lie */
        if (size == 0 || (uint64_t)size > (uint64_t)limit / (uint64_t)points) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' declares %lld strings of %zu bytes in a "
                                  "file of %lld bytes", where, name, (long long)points, size, (long long)limit);
            goto done;
        }
        /* read as NUL-padded strings one byte longer, so every element ends in a terminator */
        H5Tset_size(memtype, size + 1);
        H5Tset_strpad(memtype, H5T_STR_NULLTERM);
        H5Tset_cset(memtype, H5Tget_cset(type));
        char *buffer = sb_calloc((size_t)points, size + 1, "string attribute", err);
        if (!buffer) {
            status = SB_ERR_NOMEM;
            goto done;
        }
        if (H5Aread(attr, memtype, buffer) < 0) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' cannot be read", where, name);
        } else {
            for (hssize_t i = 0; i < points; i++) {
                out[i] = strndup(buffer + (size_t)i * (size + 1), size);
                if (!out[i])
                    status = sb_error_set(err, SB_ERR_NOMEM, "out of memory reading attribute '%s'", name);
            }
        }
        free(buffer);
    }
done:
    close_id(memtype);
    close_id(space);
    close_id(type);
    close_id(attr);
    if (status != SB_OK) {
        free_strings(out, (int)(points > 0 ? points : 0));
        return status;
    }
    *strings = out;
    *count = (int)points;
    return SB_OK;
}

/* One string; NULL if absent and not required. A string array is refused. */
static sb_status attr_string(hid_t object, const char *where, const char *name, bool required, int64_t limit,
                             char **value, sb_error *err)
{
    char **strings;
    int count;
    *value = NULL;
    SB_TRY(attr_strings(object, where, name, required, limit, &strings, &count, err));
    if (count > 1) {
        free_strings(strings, count);
        return sb_error_set(err, SB_ERR_FORMAT, "%s: attribute '%s' holds %d strings, expected one", where, name,
                            count);
    }
    if (count == 1)
        *value = strings[0];
    free(strings);
    return SB_OK;
}

/* Dataset extents: rank and dims (at most `max_rank`); SB_ERR_FORMAT otherwise. */
static sb_status dataset_extent(hid_t dataset, const char *where, const char *name, int max_rank, int *rank,
                                hsize_t *dims, sb_error *err)
{
    hid_t space = H5Dget_space(dataset);
    int ndims = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    sb_status status = SB_OK;
    if (ndims < 0)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: dataset '%s' has an unreadable dataspace", where, name);
    else if (ndims > max_rank || ndims == 0)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: dataset '%s' has %d dimensions, expected %s%d", where, name,
                              ndims, max_rank > 1 ? "1 to " : "", max_rank);
    else
        H5Sget_simple_extent_dims(space, dims, NULL);
    close_id(space);
    *rank = ndims;
    return status;
}

typedef enum element_kind { ELEMENT_U8, ELEMENT_F16, ELEMENT_F32, ELEMENT_U16 } element_kind;

static const char *element_name(element_kind kind)
{
    static const char *names[] = {"uint8", "16-bit float", "32-bit float", "16-bit integer"};
    return names[kind];
}

/* Checks a dataset's element type: integers by size (and unsigned for uint8), floats by size. */
static sb_status check_type(hid_t dataset, const char *where, const char *name, element_kind kind, sb_error *err)
{
    hid_t type = H5Dget_type(dataset);
    H5T_class_t class = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    size_t size = type >= 0 ? H5Tget_size(type) : 0;
    bool ok;
    switch (kind) {
    case ELEMENT_U8: ok = class == H5T_INTEGER && size == 1 && H5Tget_sign(type) == H5T_SGN_NONE; break;
    case ELEMENT_F16: ok = class == H5T_FLOAT && size == 2; break;
    case ELEMENT_F32: ok = class == H5T_FLOAT && size == 4; break;
    case ELEMENT_U16: ok = class == H5T_INTEGER && size == 2; break;
    default: ok = false; break;
    }
    close_id(type);
    return ok ? SB_OK
              : sb_error_set(err, SB_ERR_FORMAT, "%s: dataset '%s' does not hold %s values", where, name,
                             element_name(kind));
}

static hid_t open_child_dataset(hid_t parent, const char *where, const char *name, sb_error *err)
{
    if (H5Lexists(parent, name, H5P_DEFAULT) <= 0) {
        sb_error_set(err, SB_ERR_FORMAT, "%s: dataset '%s' is missing", where, name);
        return -1;
    }
    hid_t dataset = H5Dopen2(parent, name, H5P_DEFAULT);
    if (dataset < 0)
        sb_error_set(err, SB_ERR_FORMAT, "%s: '%s' is not a readable dataset", where, name);
    return dataset;
}

/* Links directly inside `group`, in HDF5's name order. Only hard links are tensors: a soft or
 * external link could point anywhere (another file, a cycle) and is refused. */
typedef struct name_list {
    char **names;
    int count, capacity;
    bool failed;
    char *not_hard; /* the first link that is not a hard link */
} name_list;

static herr_t collect_name(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    name_list *list = data;
    if (info->type != H5L_TYPE_HARD) {
        list->not_hard = strdup(name);
        list->failed = !list->not_hard;
        return -1;
    }
    if (list->count == list->capacity) {
        int capacity = list->capacity ? list->capacity * 2 : 64;
        char **grown = realloc(list->names, (size_t)capacity * sizeof *grown);
        if (!grown) {
            list->failed = true;
            return -1;
        }
        list->names = grown;
        list->capacity = capacity;
    }
    list->names[list->count] = strdup(name);
    if (!list->names[list->count]) {
        list->failed = true;
        return -1;
    }
    list->count++;
    return 0;
}

static sb_status list_names(hid_t group, const char *where, name_list *list, sb_error *err)
{
    memset(list, 0, sizeof *list);
    hsize_t index = 0;
    if (H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, &index, collect_name, list) < 0) {
        sb_status status = list->not_hard ? sb_error_set(err, SB_ERR_FORMAT, "%s: '%.200s' is a soft or external "
                                                         "link, not a tensor", where, list->not_hard)
                           : list->failed ? sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory listing the tensors",
                                                         where)
                                          : sb_error_set(err, SB_ERR_FORMAT, "%s: cannot list the group", where);
        free(list->not_hard);
        free_strings(list->names, list->count);
        memset(list, 0, sizeof *list);
        return status;
    }
    return SB_OK;
}

/* ---- canonical order (src/sb_tensor_name.h) ---------------------------------------------- */

static int compare_quantized(const void *a, const void *b)
{
    return sb_tensor_name_compare(((const sb_h5_quantized *)a)->name, ((const sb_h5_quantized *)b)->name);
}

static int compare_passthrough(const void *a, const void *b)
{
    return sb_tensor_name_compare(((const sb_h5_passthrough *)a)->name, ((const sb_h5_passthrough *)b)->name);
}

/* ---- open -------------------------------------------------------------------------------- */

static sb_status load_root(sb_h5_reader *reader, hid_t file, sb_error *err)
{
    sb_h5_root *root = &reader->root;
    const char *where = reader->path;
    char *format = NULL;
    if (H5Aexists(file, "format") <= 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: not a scalebits file (no root attribute 'format')", where);
    SB_TRY(attr_string(file, where, "format", true, reader->file_bytes, &format, err));
    bool is_scalebits = strcmp(format, "scalebits") == 0;
    sb_status status = is_scalebits ? SB_OK
                                    : sb_error_set(err, SB_ERR_FORMAT,
                                                   "%s: not a scalebits file (root attribute 'format' is '%.64s')",
                                                   where, format);
    free(format);
    SB_TRY(status);
    SB_TRY(attr_int64_exact(file, where, "format_version", &root->format_version, 1, err));
    if (root->format_version != SB_H5_FORMAT_VERSION)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: format_version %lld is not supported (this reader knows version %d)%s", where,
                            (long long)root->format_version, SB_H5_FORMAT_VERSION,
                            root->format_version > SB_H5_FORMAT_VERSION ? ": a newer scalebits wrote it" : "");
    SB_TRY(attr_double(file, where, "budget_bpw", &root->budget_bpw, err));
    SB_TRY(attr_double(file, where, "achieved_bpw", &root->achieved_bpw, err));
    SB_TRY(attr_int64_exact(file, where, "stored_bits", &root->stored_bits, 1, err));
    SB_TRY(attr_int64_exact(file, where, "quantized_weights", &root->quantized_weights, 1, err));
    SB_TRY(attr_int64_exact(file, where, "tiles", &root->tiles, 1, err));
    int count;
    SB_TRY(attr_int64s(file, where, "tile", false, root->tile, 2, &count, err));
    SB_TRY(attr_int64s(file, where, "group", false, &root->group, 1, &count, err));
    SB_TRY(attr_int64s(file, where, "bits", false, root->bits, 8, &root->nbits, err));
    struct {
        const char *name;
        char **value;
    } strings[] = {
        {"sensitivity", &root->sensitivity},   {"scale_search", &root->scale_search},
        {"allocation_sha256", &root->allocation_sha256}, {"config_json", &root->config_json},
        {"source_model", &root->source_model}, {"command_line", &root->command_line},
        {"tool_version", &root->tool_version},
    };
    for (size_t i = 0; i < sizeof strings / sizeof *strings; i++)
        SB_TRY(attr_string(file, where, strings[i].name, false, reader->file_bytes, strings[i].value, err));
    int64_t threshold = 0;
    SB_TRY(attr_int64s(file, where, "expert_min_tokens", false, &threshold, 1, &count, err));
    reader->expert_min_tokens = count ? threshold : 0;
    return attr_strings(file, where, "source_header_sha256", false, reader->file_bytes, &root->source_header_sha256,
                        &root->nsource_headers, err);
}

/* Nothing is allocated for what a file only declares. Every dataset the reader will read must
 * be stored in full (HDF5 returns fill values for unstored data, so a 484 KB file could
 * otherwise declare 2^29 tiles), and the declared sizes of all datasets together must fit in
 * the file (`declared` sums them over the file; datasets of a real file never share bytes).
 * Only then are buffers sized from those declarations. */
static sb_status check_stored(const sb_h5_reader *reader, hid_t dataset, const char *where, const char *name,
                              uint64_t elements, size_t element_size, int64_t *declared, sb_error *err)
{
    uint64_t limit = (uint64_t)reader->file_bytes;
    if (elements > limit || elements * element_size > limit || (uint64_t)*declared + elements * element_size > limit)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: dataset '%s' declares %llu values: more than the file's %lld bytes can hold", where,
                            name, (unsigned long long)elements, (long long)reader->file_bytes);
    uint64_t bytes = elements * element_size;
    hsize_t stored = H5Dget_storage_size(dataset);
    if ((uint64_t)stored < bytes)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: dataset '%s' declares %llu bytes but stores %llu (sparse, unwritten or compressed "
                            "datasets are not scalebits files)",
                            where, name, (unsigned long long)bytes, (unsigned long long)stored);
    *declared += (int64_t)bytes;
    return SB_OK;
}

/* /calibration/tokens_per_expert, if present (small: read whole, sizes bounded first). */
static sb_status load_expert_tokens(sb_h5_reader *reader, hid_t file, int64_t *declared, sb_error *err)
{
    if (H5Lexists(file, "calibration", H5P_DEFAULT) <= 0 ||
        H5Lexists(file, "calibration/tokens_per_expert", H5P_DEFAULT) <= 0)
        return SB_OK;
    char where[4200];
    snprintf(where, sizeof where, "%s: /calibration", reader->path);
    hid_t dataset = H5Dopen2(file, "calibration/tokens_per_expert", H5P_DEFAULT);
    if (dataset < 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: 'tokens_per_expert' is not a readable dataset", where);
    int rank;
    hsize_t dims[2] = {0, 0};
    hid_t type = H5Dget_type(dataset);
    bool integer = type >= 0 && H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == 8;
    close_id(type);
    sb_status status = integer ? SB_OK
                               : sb_error_set(err, SB_ERR_FORMAT, "%s: dataset 'tokens_per_expert' is not int64", where);
    if (status == SB_OK)
        status = dataset_extent(dataset, where, "tokens_per_expert", 2, &rank, dims, err);
    if (status == SB_OK && (rank != 2 || dims[0] < 1 || dims[1] < 1 || dims[0] > (1 << 20) || dims[1] > (1 << 20) ||
                            dims[0] * dims[1] > ((hsize_t)1 << 26)))
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: dataset 'tokens_per_expert' has an implausible shape", where);
    if (status == SB_OK)
        status = check_stored(reader, dataset, where, "tokens_per_expert", dims[0] * dims[1], 8, declared, err);
    if (status == SB_OK &&
        !(reader->expert_tokens = sb_malloc((size_t)(dims[0] * dims[1]) * sizeof(int64_t), "expert counts", err)))
        status = SB_ERR_NOMEM;
    if (status == SB_OK &&
        H5Dread(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, reader->expert_tokens) < 0)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: dataset 'tokens_per_expert' cannot be read", where);
    for (hsize_t i = 0; status == SB_OK && i < dims[0] * dims[1]; i++)
        if (reader->expert_tokens[i] < -1)
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: 'tokens_per_expert' holds a negative count", where);
    close_id(dataset);
    if (status != SB_OK) {
        free(reader->expert_tokens);
        reader->expert_tokens = NULL;
        return status;
    }
    reader->expert_layers = (int64_t)dims[0];
    reader->experts_per_layer = (int64_t)dims[1];
    return SB_OK;
}

/* Fills bits_per_tile and tile_row_offsets from a tensor's packed bit map (its own bytes: the
 * dataset of a plain tensor, an expert's row of a stack's) and checks them against its code
 * bytes. */
static sb_status unpack_bitmap(sb_h5_quantized *tensor, const uint8_t *packed, const char *where, sb_error *err)
{
    const sb_tiling *tiling = &tensor->tiling;
    tensor->bits_per_tile = sb_malloc((size_t)tensor->tiles, "bit map", err);
    tensor->tile_row_offsets = sb_malloc((size_t)(tiling->tiles_down + 1) * sizeof(int64_t), "tile offsets", err);
    if (!tensor->bits_per_tile || !tensor->tile_row_offsets)
        return SB_ERR_NOMEM;
    sb_unpack_bitmap(packed, tensor->tiles, tensor->bits_per_tile);
    /* FORMAT.md: a trailing unused nibble is zero; anything else means a wrong tile count */
    bool trailing_ok = tensor->tiles % 2 == 0 || (packed[tensor->bitmap_bytes - 1] >> 4) == 0;
    for (int64_t t = 0; t < tensor->tiles; t++) {
        int bits = tensor->bits_per_tile[t];
        if (bits < 1 || bits > SB_MAX_BITS)
            return sb_error_set(err, SB_ERR_FORMAT, "%s: bit map gives tile %lld a bitwidth of %d (allowed: 1..8)",
                                where, (long long)t, bits);
    }
    if (!trailing_ok)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: bit map has a non-zero trailing nibble after its %lld tiles (wrong tile count?)",
                            where, (long long)tensor->tiles);
    int64_t offset = 0;
    for (int64_t tile_row = 0; tile_row < tiling->tiles_down; tile_row++) {
        tensor->tile_row_offsets[tile_row] = offset;
        for (int64_t tile_col = 0; tile_col < tiling->tiles_across && offset <= tensor->code_bytes; tile_col++) {
            int64_t t = tile_row * tiling->tiles_across + tile_col;
            sb_tile_rect rect = sb_tiling_rect(tiling, t);
            offset += sb_tile_code_bytes(rect.rows, rect.cols, tensor->bits_per_tile[t]);
        }
        if (offset > tensor->code_bytes)
            break; /* refused below; stopping here keeps the sum far from overflowing */
    }
    tensor->tile_row_offsets[tiling->tiles_down] = offset;
    if (offset != tensor->code_bytes)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: dataset 'codes' holds %lld bytes%s, but the bit map and shape imply %lld", where,
                            (long long)tensor->code_bytes, tensor->expert >= 0 ? " for this expert" : "",
                            (long long)offset);
    return SB_OK;
}

/* The tensor name of link `link` (io/sb_h5_name.h) into *name, or SB_ERR_FORMAT. */
static sb_status tensor_name_of(const sb_h5_reader *reader, const char *group, const char *link, char **name,
                                sb_error *err)
{
    if (sb_h5_name_unescape(link, name))
        return SB_OK;
    return sb_error_set(err, SB_ERR_FORMAT,
                        "%s: /%s/%.200s is not an escaped tensor name (docs/FORMAT.md, \"Tensor names\")",
                        reader->path, group, link);
}

/* A new zeroed tensor at the end of reader->quantized (close frees what it holds). */
static sb_h5_quantized *append_quantized(sb_h5_reader *reader, int *capacity, sb_error *err)
{
    if (reader->nquantized == *capacity) {
        int grown_capacity = *capacity ? 2 * *capacity : 64;
        sb_h5_quantized *grown = realloc(reader->quantized, (size_t)grown_capacity * sizeof *grown);
        if (!grown) {
            sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory listing the tensors", reader->path);
            return NULL;
        }
        reader->quantized = grown;
        *capacity = grown_capacity;
    }
    sb_h5_quantized *tensor = &reader->quantized[reader->nquantized++];
    memset(tensor, 0, sizeof *tensor);
    tensor->expert = -1;
    return tensor;
}

/* What every tensor of a group (one, or a stack's experts) shares, from its attributes. */
typedef struct group_layout {
    int64_t rows, cols, tile[2], group, layer, experts; /* experts: 0 for a plain tensor */
    sb_tensor_role role;
    sb_dtype dtype;
    sb_scale_format format;
    sb_tiling tiling;
    int64_t *code_offsets; /* stack: [experts + 1], attribute expert_code_offsets */
} group_layout;

/* `name` is the group's decoded tensor name (a stack's own name for a stack); `limit` the file's size. */
static sb_status read_group_layout(hid_t group, const char *name, int64_t limit, const char *where, group_layout *g,
                                   sb_error *err)
{
    char *role = NULL, *dtype = NULL, *encoding = NULL;
    int64_t shape[2];
    sb_status status = SB_OK;
    int count;
    if ((status = attr_int64_exact(group, where, "shape", shape, 2, err)) != SB_OK ||
        (status = attr_int64_exact(group, where, "tile", g->tile, 2, err)) != SB_OK ||
        (status = attr_int64_exact(group, where, "group", &g->group, 1, err)) != SB_OK ||
        (status = attr_int64_exact(group, where, "layer", &g->layer, 1, err)) != SB_OK ||
        (status = attr_string(group, where, "role", true, limit, &role, err)) != SB_OK ||
        (status = attr_string(group, where, "source_dtype", true, limit, &dtype, err)) != SB_OK ||
        (status = attr_string(group, where, "encoding", true, limit, &encoding, err)) != SB_OK ||
        (status = attr_int64s(group, where, "experts", false, &g->experts, 1, &count, err)) != SB_OK)
        goto done;
    if (count == 0)
        g->experts = 0;
    if (shape[0] < 1 || shape[1] < 1 || shape[0] > MAX_EXTENT || shape[1] > MAX_EXTENT) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: shape [%lld, %lld] is not a matrix", where, (long long)shape[0],
                              (long long)shape[1]);
        goto done;
    }
    g->rows = shape[0];
    g->cols = shape[1];
    if (g->tile[0] < 1 || g->tile[1] < 1 || g->tile[0] > MAX_TILE_SIDE || g->tile[1] > MAX_TILE_SIDE || g->group < 1 ||
        g->group > g->tile[1] || g->tile[1] % g->group != 0) {
        status = sb_error_set(err, SB_ERR_FORMAT,
                              "%s: tile [%lld, %lld] with group %lld is invalid (the group must divide the tile width)",
                              where, (long long)g->tile[0], (long long)g->tile[1], (long long)g->group);
        goto done;
    }
    if (strcmp(encoding, "affine-f16") == 0) {
        g->format = SB_SCALES_F16;
    } else if (strcmp(encoding, "affine-q8") == 0) {
        g->format = SB_SCALES_Q8;
    } else {
        status = sb_error_set(err, SB_ERR_FORMAT,
                              "%s: encoding '%.64s' is not known (this reader decodes affine-f16 and affine-q8)", where,
                              encoding);
        goto done;
    }
    if (!sb_dtype_parse(dtype, &g->dtype)) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: source_dtype '%.64s' is not F32, F16, BF16 or F8_E4M3", where, dtype);
        goto done;
    }
    /* the name is the truth (it fixes the canonical order); attributes that contradict it mean a
     * damaged or forged file */
    int64_t name_layer;
    sb_tensor_role name_role;
    if (g->experts != 0) {
        if (!sb_expert_stack_parse(name, &name_layer, &name_role)) {
            status = sb_error_set(err, SB_ERR_FORMAT,
                                  "%s: has attribute 'experts' but its name is not an expert stack's "
                                  "(model.layers.L.mlp.experts.<gate|up|down>_proj.weight)",
                                  where);
            goto done;
        }
        if (g->experts < 1 || g->experts > (1 << 20) || g->experts > limit / 8 || g->rows > MAX_EXTENT / g->experts) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute 'experts' = %lld is out of range", where,
                                  (long long)g->experts);
            goto done;
        }
    } else {
        sb_tensor_id id = sb_tensor_name_parse(name);
        name_layer = id.layer;
        name_role = id.role;
    }
    if (strcmp(role, sb_role_name(name_role)) != 0 || g->layer != name_layer) {
        status = sb_error_set(err, SB_ERR_FORMAT,
                              "%s: attributes role '%.64s' and layer %lld contradict the tensor's name (role '%s', "
                              "layer %lld)",
                              where, role, (long long)g->layer, sb_role_name(name_role), (long long)name_layer);
        goto done;
    }
    g->role = name_role;
    /* refuses a tile grid whose count overflows (a [2^24, 2^40] matrix in 1x1 tiles) */
    if ((status = sb_tiling_init(&g->tiling, g->rows, g->cols, (int)g->tile[0], (int)g->tile[1], (int)g->group,
                                 err)) != SB_OK) {
        sb_error_prefix(err, "%s", where);
        status = SB_ERR_FORMAT;
        if (err)
            err->status = status;
        goto done;
    }
    if (g->experts > 0) {
        g->code_offsets = sb_malloc((size_t)(g->experts + 1) * sizeof *g->code_offsets, "expert offsets", err);
        if (!g->code_offsets) {
            status = SB_ERR_NOMEM;
            goto done;
        }
        status = attr_int64_exact(group, where, "expert_code_offsets", g->code_offsets, (int)(g->experts + 1), err);
        for (int64_t e = 0; status == SB_OK && e < g->experts; e++)
            if (g->code_offsets[0] != 0 || g->code_offsets[e + 1] < g->code_offsets[e])
                status = sb_error_set(err, SB_ERR_FORMAT, "%s: attribute 'expert_code_offsets' does not ascend from 0",
                                      where);
    }
done:
    free(role);
    free(dtype);
    free(encoding);
    return status;
}

/* Checks a 2-D dataset's type and extent [n0, n1]. */
static sb_status check_matrix(hid_t dataset, const char *where, const char *name, element_kind kind, int64_t n0,
                              int64_t n1, const char *expected, sb_error *err)
{
    int rank;
    hsize_t dims[2] = {0, 0};
    SB_TRY(check_type(dataset, where, name, kind, err));
    SB_TRY(dataset_extent(dataset, where, name, 2, &rank, dims, err));
    if (rank != 2)
        dims[1] = 0; /* reported as [n, 0] */
    if (rank != 2 || (int64_t)dims[0] != n0 || (int64_t)dims[1] != n1)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: dataset '%s' has %d-D shape [%lld, %lld], expected %s = [%lld, %lld]",
                            where, name, rank, (long long)dims[0], (long long)dims[1], expected, (long long)n0,
                            (long long)n1);
    return SB_OK;
}

/* Loads the group /tensors/<link>: one tensor, or every expert of a stack. */
static sb_status load_quantized(sb_h5_reader *reader, hid_t tensors_group, const char *link, int *capacity,
                                int64_t *declared, sb_error *err)
{
    char *group_name = NULL; /* the decoded name of the group: a tensor's, or a stack's */
    SB_TRY(tensor_name_of(reader, "tensors", link, &group_name, err));
    char where[1200];
    snprintf(where, sizeof where, "%s: tensor '%.1000s'", reader->path, group_name); /* cut for messages only */
    hid_t group = H5Gopen2(tensors_group, link, H5P_DEFAULT);
    if (group < 0) {
        free(group_name);
        return sb_error_set(err, SB_ERR_FORMAT, "%s: /tensors/%s is not a group", reader->path, link);
    }
    enum { CODES, BITMAP, SCALES, ZEROS, TILE_SCALES, DATASETS };
    hid_t datasets[DATASETS] = {-1, -1, -1, -1, -1};
    static const char *dataset_names[DATASETS] = {"codes", "bitmap", "scales", "zeros", "tile_scales"};
    group_layout g;
    memset(&g, 0, sizeof g);
    uint8_t *bitmaps = NULL;
    uint16_t *tile_scales = NULL;
    sb_status status = read_group_layout(group, group_name, reader->file_bytes, where, &g, err);
    bool stack = g.experts > 0;
    int64_t experts = stack ? g.experts : 1, tiles = sb_tiling_count(&g.tiling);
    int64_t bitmap_bytes = sb_bitmap_bytes(tiles), groups = g.tiling.groups_per_row;
    element_kind scale_kind = g.format == SB_SCALES_Q8 ? ELEMENT_U8 : ELEMENT_F16;
    int ndatasets = g.format == SB_SCALES_Q8 ? DATASETS : TILE_SCALES;
    /* in the order of the checks below, so that the first problem is the one reported */
    for (int i = 0; status == SB_OK && i < TILE_SCALES; i++)
        if ((datasets[i] = open_child_dataset(group, where, dataset_names[i], err)) < 0)
            status = SB_ERR_FORMAT;
    int rank;
    hsize_t dims[2];
    if (status == SB_OK &&
        (status = check_type(datasets[CODES], where, "codes", ELEMENT_U8, err)) == SB_OK &&
        (status = dataset_extent(datasets[CODES], where, "codes", 1, &rank, dims, err)) == SB_OK &&
        (status = check_stored(reader, datasets[CODES], where, "codes", dims[0], 1, declared, err)) == SB_OK && stack &&
        (int64_t)dims[0] != g.code_offsets[experts])
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: dataset 'codes' holds %lld bytes, but expert_code_offsets ends at %lld",
                              where, (long long)dims[0], (long long)g.code_offsets[experts]);
    int64_t code_bytes = status == SB_OK ? (int64_t)dims[0] : 0;
    if (status == SB_OK && !stack) {
        /* a plain bit map: 1-D, its length checked against the tile count */
        if ((status = check_type(datasets[BITMAP], where, "bitmap", ELEMENT_U8, err)) == SB_OK &&
            (status = dataset_extent(datasets[BITMAP], where, "bitmap", 1, &rank, dims, err)) == SB_OK &&
            (int64_t)dims[0] != bitmap_bytes)
            status = sb_error_set(err, SB_ERR_FORMAT,
                                  "%s: dataset 'bitmap' holds %lld bytes, but %lld tiles need ceil(tiles / 2) = %lld",
                                  where, (long long)dims[0], (long long)tiles, (long long)bitmap_bytes);
    } else if (status == SB_OK) {
        status = check_matrix(datasets[BITMAP], where, "bitmap", ELEMENT_U8, experts, bitmap_bytes,
                              "[experts, ceil(tiles / 2)]", err);
    }
    /* experts <= file bytes / 8 and the tile count < 2^62 (sb_tiling_init): no overflow before the
     * file-size bound of check_stored */
    if (status == SB_OK && (bitmap_bytes > reader->file_bytes || experts > reader->file_bytes / (bitmap_bytes + 1)))
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: %lld tiles per matrix: more than the file's %lld bytes can hold",
                              where, (long long)tiles, (long long)reader->file_bytes);
    if (status == SB_OK)
        status = check_stored(reader, datasets[BITMAP], where, "bitmap", (uint64_t)(experts * bitmap_bytes), 1, declared,
                              err);
    for (int i = SCALES; status == SB_OK && i <= ZEROS; i++) {
        status = check_matrix(datasets[i], where, dataset_names[i], scale_kind, experts * g.rows, groups,
                              stack ? "[experts x rows, ceil(cols / group)]" : "[rows, ceil(cols / group)]", err);
        /* rows x groups: both below 2^40 and checked against the file size right away */
        if (status == SB_OK)
            status = check_stored(reader, datasets[i], where, dataset_names[i],
                                  (uint64_t)(experts * g.rows) * (uint64_t)groups, scale_kind == ELEMENT_U8 ? 1 : 2,
                                  declared, err);
    }
    if (status == SB_OK && g.format == SB_SCALES_Q8 &&
        (datasets[TILE_SCALES] = open_child_dataset(group, where, "tile_scales", err)) < 0)
        status = SB_ERR_FORMAT;
    if (status == SB_OK && g.format == SB_SCALES_Q8 &&
        (status = check_type(datasets[TILE_SCALES], where, "tile_scales", ELEMENT_F16, err)) == SB_OK &&
        (status = dataset_extent(datasets[TILE_SCALES], where, "tile_scales", 1, &rank, dims, err)) == SB_OK &&
        (int64_t)dims[0] != experts * tiles)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: dataset 'tile_scales' holds %lld values for %lld tiles", where,
                              (long long)dims[0], (long long)(experts * tiles));
    if (status == SB_OK && g.format == SB_SCALES_Q8)
        status = check_stored(reader, datasets[TILE_SCALES], where, "tile_scales", (uint64_t)(experts * tiles), 2,
                              declared, err);
    /* the bit maps and tile scale bounds: small, read once */
    if (status == SB_OK && (!(bitmaps = sb_malloc((size_t)(experts * bitmap_bytes) + 1, "bit map", err)) ||
                            (g.format == SB_SCALES_Q8 &&
                             !(tile_scales = sb_malloc((size_t)(experts * tiles) * sizeof *tile_scales, "tile scales", err)))))
        status = SB_ERR_NOMEM;
    if (status == SB_OK && H5Dread(datasets[BITMAP], H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bitmaps) < 0) {
        char reason[256];
        hdf5_reason(reason);
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: dataset 'bitmap' cannot be read (%s)", where, reason);
    }
    if (status == SB_OK && tile_scales &&
        H5Dread(datasets[TILE_SCALES], (hid_t)reader->f16_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, tile_scales) < 0)
        status = sb_error_set(err, SB_ERR_IO, "%s: cannot read dataset 'tile_scales'", where);
    /* every tile bound a finite, non-negative float16: a NaN bound would decode to NaN weights */
    for (int64_t t = 0; status == SB_OK && tile_scales && t < experts * tiles; t++) {
        float bound = sb_f16_to_f32(tile_scales[t]);
        if (!isfinite(bound) || bound < 0)
            status = sb_error_set(err, SB_ERR_FORMAT,
                                  "%s: tile_scales[%lld] is %g (a tile's scale bound must be finite and >= 0)", where,
                                  (long long)t, (double)bound);
    }
    int64_t storage = 0;
    for (int i = 0; status == SB_OK && i < ndatasets; i++)
        storage += (int64_t)H5Dget_storage_size(datasets[i]);
    int64_t scale_bytes = g.format == SB_SCALES_Q8 ? 1 : 2;
    for (int64_t e = 0; status == SB_OK && e < experts; e++) {
        sb_h5_quantized *tensor = append_quantized(reader, capacity, err);
        if (!tensor) {
            status = SB_ERR_NOMEM;
            break;
        }
        char name[256];
        sb_tensor_id id = {g.role, g.layer, e};
        if (stack)
            sb_tensor_name_format(id, name, sizeof name);
        tensor->name = strdup(stack ? name : group_name);
        tensor->link = strdup(link);
        if (!tensor->name || !tensor->link) {
            status = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", where);
            break;
        }
        char expert_where[1600];
        snprintf(expert_where, sizeof expert_where, "%s%s%s", where, stack ? ", expert " : "", stack ? name : "");
        tensor->expert = stack ? e : -1;
        tensor->rows = g.rows;
        tensor->cols = g.cols;
        tensor->tile_rows = (int)g.tile[0];
        tensor->tile_cols = (int)g.tile[1];
        tensor->group = (int)g.group;
        tensor->layer = g.layer;
        snprintf(tensor->role, sizeof tensor->role, "%s", sb_role_name(g.role));
        tensor->source_dtype = g.dtype;
        tensor->format = g.format;
        tensor->tiling = g.tiling;
        tensor->tiles = tiles;
        tensor->bitmap_bytes = bitmap_bytes;
        tensor->scale_count = g.rows * groups;
        tensor->code_bytes = stack ? g.code_offsets[e + 1] - g.code_offsets[e] : code_bytes;
        tensor->stack_code_offset = stack ? g.code_offsets[e] : 0;
        tensor->stack_row_offset = e * g.rows;
        tensor->stack_tile_offset = e * tiles;
        if ((status = unpack_bitmap(tensor, bitmaps + e * bitmap_bytes, expert_where, err)) != SB_OK)
            break;
        if (tile_scales) {
            if (!(tensor->tile_scales = sb_malloc((size_t)tiles * sizeof(uint16_t), "tile scales", err))) {
                status = SB_ERR_NOMEM;
                break;
            }
            memcpy(tensor->tile_scales, tile_scales + e * tiles, (size_t)tiles * sizeof(uint16_t));
        }
        /* a stack's datasets are contiguous: each expert's share of them, by extents */
        tensor->storage_bytes = stack ? tensor->code_bytes + bitmap_bytes + 2 * scale_bytes * tensor->scale_count +
                                            (tile_scales ? 2 * tiles : 0)
                                      : storage;
    }
    free(bitmaps);
    free(tile_scales);
    free(g.code_offsets);
    free(group_name);
    for (int i = 0; i < DATASETS; i++)
        close_id(datasets[i]);
    close_id(group);
    return status;
}
static sb_status load_passthrough(sb_h5_reader *reader, hid_t passthrough_group, const char *link,
                                  sb_h5_passthrough *tensor, int64_t *declared, sb_error *err)
{
    tensor->link = strdup(link);
    if (!tensor->link)
        return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", reader->path);
    SB_TRY(tensor_name_of(reader, "passthrough", link, &tensor->name, err));
    const char *name = tensor->name;
    char where[1200];
    snprintf(where, sizeof where, "%s: pass-through tensor '%.1000s'", reader->path, name);
    hid_t dataset = H5Dopen2(passthrough_group, link, H5P_DEFAULT);
    if (dataset < 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: /passthrough/%s is not a readable dataset", reader->path, link);
    char *dtype = NULL;
    sb_status status = attr_string(dataset, where, "dtype", true, reader->file_bytes, &dtype, err);
    /* F8_E4M3 sources are never passed through (their codes need scales; io/sb_safetensors.h) */
    if (status == SB_OK && (!sb_dtype_parse(dtype, &tensor->dtype) || tensor->dtype == SB_DTYPE_F8_E4M3))
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: dtype '%.64s' is not F32, F16 or BF16", where, dtype);
    if (status == SB_OK) {
        element_kind kind = tensor->dtype == SB_DTYPE_F32 ? ELEMENT_F32 : tensor->dtype == SB_DTYPE_F16 ? ELEMENT_F16
                                                                                                          : ELEMENT_U16;
        status = check_type(dataset, where, "data", kind, err);
    }
    hsize_t dims[SB_MAX_DIMS];
    if (status == SB_OK)
        status = dataset_extent(dataset, where, "data", SB_MAX_DIMS, &tensor->ndim, dims, err);
    uint64_t elements = 1;
    for (int d = 0; status == SB_OK && d < tensor->ndim; d++) {
        tensor->shape[d] = (int64_t)dims[d];
        /* every element is stored (checked below), so the product stays below the file size */
        if (dims[d] > (hsize_t)MAX_EXTENT || (dims[d] > 0 && elements > (uint64_t)MAX_EXTENT / dims[d]))
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: extent %llu makes an implausible shape", where,
                                  (unsigned long long)dims[d]);
        else
            elements *= dims[d];
    }
    if (status == SB_OK)
        status = check_stored(reader, dataset, where, "data", elements, sb_dtype_size(tensor->dtype), declared, err);
    if (status == SB_OK) {
        tensor->rows = 1;
        for (int d = 0; d + 1 < tensor->ndim; d++)
            tensor->rows *= tensor->shape[d];
        tensor->cols = tensor->shape[tensor->ndim - 1];
        tensor->nbytes = (int64_t)elements * (int64_t)sb_dtype_size(tensor->dtype);
        tensor->storage_bytes = (int64_t)H5Dget_storage_size(dataset);
    }
    free(dtype);
    close_id(dataset);
    return status;
}

sb_status sb_h5_reader_open(const char *path, sb_h5_reader *reader, sb_error *err)
{
    memset(reader, 0, sizeof *reader);
    reader->file_id = reader->f16_type = -1;
    /* Failures come back as sb_error messages; HDF5's stack dumps would only confuse users. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    struct stat st;
    if (stat(path, &st) != 0)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return sb_error_set(err, SB_ERR_IO, "%s: not a regular file", path);
    reader->path = strdup(path);
    if (!reader->path)
        return sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
    reader->file_bytes = (int64_t)st.st_size;
    sb_status status = SB_OK;
    hid_t tensors_group = -1, passthrough_group = -1;
    name_list names = {0};
    int64_t declared = 0; /* bytes of every dataset read so far: at most the file's size */
    htri_t is_hdf5 = H5Fis_hdf5(path);
    if (is_hdf5 <= 0) {
        status = is_hdf5 == 0 ? sb_error_set(err, SB_ERR_FORMAT, "%s: not a scalebits file (not an HDF5 file)", path)
                              : sb_error_set(err, SB_ERR_IO, "%s: cannot read the file", path);
        goto fail;
    }
    reader->file_id = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (reader->file_id < 0) {
        char reason[256];
        hdf5_reason(reason);
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: HDF5 cannot open it, the file is truncated or corrupt%s%s", path,
                              reason[0] ? ": " : "", reason);
        goto fail;
    }
    reader->f16_type = sb_h5_f16_type();
    if (reader->f16_type < 0) {
        status = sb_error_set(err, SB_ERR_INTERNAL, "%s: cannot build the float16 type", path);
        goto fail;
    }
    if ((status = load_root(reader, reader->file_id, err)) != SB_OK ||
        (status = load_expert_tokens(reader, reader->file_id, &declared, err)) != SB_OK)
        goto fail;
    if (H5Lexists(reader->file_id, "tensors", H5P_DEFAULT) <= 0 ||
        (tensors_group = H5Gopen2(reader->file_id, "tensors", H5P_DEFAULT)) < 0) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: group /tensors is missing", path);
        goto fail;
    }
    if (H5Lexists(reader->file_id, "passthrough", H5P_DEFAULT) <= 0 ||
        (passthrough_group = H5Gopen2(reader->file_id, "passthrough", H5P_DEFAULT)) < 0) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: group /passthrough is missing", path);
        goto fail;
    }
    char where[4200];
    snprintf(where, sizeof where, "%s: /tensors", path);
    if ((status = list_names(tensors_group, where, &names, err)) != SB_OK)
        goto fail;
    int capacity = 0;
    for (int i = 0; i < names.count; i++)
        if ((status = load_quantized(reader, tensors_group, names.names[i], &capacity, &declared, err)) != SB_OK)
            goto fail;
    free_strings(names.names, names.count);
    memset(&names, 0, sizeof names);
    snprintf(where, sizeof where, "%s: /passthrough", path);
    if ((status = list_names(passthrough_group, where, &names, err)) != SB_OK)
        goto fail;
    reader->passthrough =
        sb_calloc((size_t)(names.count > 0 ? names.count : 1), sizeof *reader->passthrough, "tensors", err);
    if (!reader->passthrough) {
        status = SB_ERR_NOMEM;
        goto fail;
    }
    for (int i = 0; i < names.count; i++) {
        reader->npassthrough = i + 1;
        if ((status = load_passthrough(reader, passthrough_group, names.names[i], &reader->passthrough[i], &declared,
                                       err)) != SB_OK)
            goto fail;
    }
    free_strings(names.names, names.count);
    memset(&names, 0, sizeof names);
    qsort(reader->quantized, (size_t)reader->nquantized, sizeof *reader->quantized, compare_quantized);
    /* an expert both in a stack and in a group of its own (or in two stacks) is two tensors */
    for (int i = 1; i < reader->nquantized; i++)
        if (strcmp(reader->quantized[i - 1].name, reader->quantized[i].name) == 0) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%.1000s' is stored twice (in groups '%.200s' and "
                                  "'%.200s')", path, reader->quantized[i].name, reader->quantized[i - 1].link,
                                  reader->quantized[i].link);
            goto fail;
        }
    qsort(reader->passthrough, (size_t)reader->npassthrough, sizeof *reader->passthrough, compare_passthrough);
    int64_t weights = 0, tiles = 0;
    bool overflow = false;
    for (int i = 0; i < reader->nquantized; i++) {
        int64_t tensor_weights;
        overflow |= __builtin_mul_overflow(reader->quantized[i].rows, reader->quantized[i].cols, &tensor_weights);
        overflow |= __builtin_add_overflow(weights, tensor_weights, &weights);
        overflow |= __builtin_add_overflow(tiles, reader->quantized[i].tiles, &tiles);
    }
    if (overflow) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: the tensors' weight count overflows", path);
        goto fail;
    }
    /* The accounting attributes must describe this file's tensors: FORMAT.md defines them. */
    if (weights != reader->root.quantized_weights || tiles != reader->root.tiles) {
        status = sb_error_set(err, SB_ERR_FORMAT,
                              "%s: root attributes say %lld quantized weights in %lld tiles, but /tensors holds %lld "
                              "in %lld",
                              path, (long long)reader->root.quantized_weights, (long long)reader->root.tiles,
                              (long long)weights, (long long)tiles);
        goto fail;
    }
    close_id(tensors_group);
    close_id(passthrough_group);
    return SB_OK;
fail:
    free_strings(names.names, names.count);
    close_id(tensors_group);
    close_id(passthrough_group);
    sb_h5_reader_close(reader);
    return status;
}

void sb_h5_reader_close(sb_h5_reader *reader)
{
    if (!reader)
        return;
    for (int i = 0; i < reader->nquantized; i++) {
        free(reader->quantized[i].name);
        free(reader->quantized[i].link);
        free(reader->quantized[i].bits_per_tile);
        free(reader->quantized[i].tile_scales);
        free(reader->quantized[i].tile_row_offsets);
    }
    free(reader->quantized);
    for (int i = 0; i < reader->npassthrough; i++) {
        free(reader->passthrough[i].name);
        free(reader->passthrough[i].link);
    }
    free(reader->passthrough);
    free(reader->expert_tokens);
    sb_h5_root *root = &reader->root;
    char *strings[] = {root->sensitivity,  root->scale_search, root->allocation_sha256, root->config_json,
                       root->source_model, root->command_line, root->tool_version};
    for (size_t i = 0; i < sizeof strings / sizeof *strings; i++)
        free(strings[i]);
    free_strings(root->source_header_sha256, root->nsource_headers);
    if (reader->f16_type >= 0)
        H5Tclose((hid_t)reader->f16_type);
    if (reader->file_id >= 0)
        H5Fclose((hid_t)reader->file_id);
    free(reader->path);
    memset(reader, 0, sizeof *reader);
    reader->file_id = reader->f16_type = -1;
}

const sb_h5_quantized *sb_h5_find_quantized(const sb_h5_reader *reader, const char *name)
{
    for (int i = 0; i < reader->nquantized; i++)
        if (strcmp(reader->quantized[i].name, name) == 0)
            return &reader->quantized[i];
    return NULL;
}

const sb_h5_passthrough *sb_h5_find_passthrough(const sb_h5_reader *reader, const char *name)
{
    for (int i = 0; i < reader->npassthrough; i++)
        if (strcmp(reader->passthrough[i].name, name) == 0)
            return &reader->passthrough[i];
    return NULL;
}

int64_t sb_h5_tensor_bits(const sb_h5_quantized *tensor)
{
    return 8 * tensor->code_bytes + 8 * tensor->bitmap_bytes +
           sb_scale_bits(tensor->format, tensor->rows, tensor->tiling.groups_per_row, tensor->tiles);
}

/* ---- reads ------------------------------------------------------------------------------- */

/* /<group>/<link>[/<child>]: `link` is the tensor's escaped name, which holds no '/'. */
static hid_t open_tensor_dataset(const sb_h5_reader *reader, const char *group, const char *name, const char *child,
                                 sb_error *err)
{
    size_t length = strlen(group) + strlen(name) + strlen(child) + 8;
    char *path = malloc(length);
    if (!path) {
        sb_error_set(err, SB_ERR_NOMEM, "out of memory");
        return -1;
    }
    if (child[0])
        snprintf(path, length, "/%s/%s/%s", group, name, child);
    else
        snprintf(path, length, "/%s/%s", group, name);
    hid_t dataset = H5Dopen2((hid_t)reader->file_id, path, H5P_DEFAULT);
    if (dataset < 0)
        sb_error_set(err, SB_ERR_IO, "%s: cannot open dataset %s", reader->path, path);
    free(path);
    return dataset;
}

/* Reads `count` elements from `offset` of 1-D dataset, or rows [row_begin, +rows) x all columns
 * of a 2-D one (rank given by `rank`); rank 0 means the whole dataset. */
static herr_t read_slab(hid_t dataset, hid_t memtype, int rank, int64_t start0, int64_t count0, int64_t count1,
                        void *dst)
{
    if (rank == 0)
        return H5Dread(dataset, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst);
    hsize_t start[2] = {(hsize_t)start0, 0}, count[2] = {(hsize_t)count0, (hsize_t)count1};
    hid_t file_space = H5Dget_space(dataset);
    hid_t memory_space = H5Screate_simple(rank, count, NULL);
    herr_t rc = file_space < 0 || memory_space < 0 ? -1 : 0;
    if (rc >= 0)
        rc = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, NULL, count, NULL);
    if (rc >= 0)
        rc = H5Dread(dataset, memtype, memory_space, file_space, H5P_DEFAULT, dst);
    close_id(memory_space);
    close_id(file_space);
    return rc;
}

static sb_status read_failed(const sb_h5_reader *reader, const char *tensor, const char *what, sb_error *err)
{
    char reason[256];
    hdf5_reason(reason);
    return sb_error_set(err, SB_ERR_IO, "%s: tensor '%s': cannot read %s%s%s (corrupt file?)", reader->path, tensor,
                        what, reason[0] ? ": " : "", reason);
}

/* affine-f16: a NaN or Inf scale or zero decodes to NaN weights; refuse it by name. */
static sb_status check_finite_f16(const sb_h5_reader *reader, const sb_h5_quantized *tensor, int64_t row_begin,
                                  int64_t rows, const uint16_t *scales, const uint16_t *zeros, sb_error *err)
{
    int64_t groups = tensor->tiling.groups_per_row;
    for (int64_t i = 0; i < rows * groups; i++) {
        const uint16_t *values[2] = {scales, zeros};
        for (int k = 0; k < 2; k++) {
            float value = sb_f16_to_f32(values[k][i]);
            if (!isfinite(value))
                return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s': %s at row %lld, group %lld is %g (must be "
                                    "finite)", reader->path, tensor->name, k ? "zero" : "scale",
                                    (long long)(row_begin + i / groups), (long long)(i % groups), (double)value);
        }
    }
    return SB_OK;
}

sb_status sb_h5_check_scales(const sb_h5_reader *reader, const sb_h5_quantized *tensor, sb_error *err)
{
    /* affine-q8: the codes are bytes and every tile bound was checked at open */
    if (tensor->format != SB_SCALES_F16)
        return SB_OK;
    int64_t groups = tensor->tiling.groups_per_row;
    int64_t step = (1 << 20) / groups > 0 ? (1 << 20) / groups : 1; /* about 4 MiB of buffers */
    if (step > tensor->rows)
        step = tensor->rows;
    uint16_t *scales = sb_malloc((size_t)(step * groups) * sizeof *scales, "scales", err);
    uint16_t *zeros = sb_malloc((size_t)(step * groups) * sizeof *zeros, "zeros", err);
    hid_t scales_set = -1, zeros_set = -1;
    sb_status status = scales && zeros ? SB_OK : SB_ERR_NOMEM;
    if (status == SB_OK && ((scales_set = open_tensor_dataset(reader, "tensors", tensor->link, "scales", err)) < 0 ||
                            (zeros_set = open_tensor_dataset(reader, "tensors", tensor->link, "zeros", err)) < 0))
        status = SB_ERR_IO;
    for (int64_t row = 0; status == SB_OK && row < tensor->rows; row += step) {
        int64_t rows = tensor->rows - row < step ? tensor->rows - row : step;
        int64_t stacked_row = tensor->stack_row_offset + row;
        if (read_slab(scales_set, (hid_t)reader->f16_type, 2, stacked_row, rows, groups, scales) < 0 ||
            read_slab(zeros_set, (hid_t)reader->f16_type, 2, stacked_row, rows, groups, zeros) < 0)
            status = read_failed(reader, tensor->name, "its scales and zeros", err);
        else
            status = check_finite_f16(reader, tensor, row, rows, scales, zeros, err);
    }
    close_id(scales_set);
    close_id(zeros_set);
    free(scales);
    free(zeros);
    return status;
}

sb_status sb_h5_read_tile_codes(const sb_h5_reader *reader, const sb_h5_quantized *tensor, int64_t tile,
                                uint8_t *packed, sb_error *err)
{
    if (tile < 0 || tile >= tensor->tiles)
        return sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s': tile %lld is outside its %lld tiles", reader->path,
                            tensor->name, (long long)tile, (long long)tensor->tiles);
    const sb_tiling *tiling = &tensor->tiling;
    int64_t tile_row = tile / tiling->tiles_across;
    int64_t offset = tensor->tile_row_offsets[tile_row];
    for (int64_t t = tile_row * tiling->tiles_across; t < tile; t++) {
        sb_tile_rect rect = sb_tiling_rect(tiling, t);
        offset += sb_tile_code_bytes(rect.rows, rect.cols, tensor->bits_per_tile[t]);
    }
    sb_tile_rect rect = sb_tiling_rect(tiling, tile);
    int64_t bytes = sb_tile_code_bytes(rect.rows, rect.cols, tensor->bits_per_tile[tile]);
    /* open checked that the tiles' sizes sum to the stored codes */
    SB_ASSERT(offset >= 0 && offset + bytes <= tensor->code_bytes);
    hid_t codes = open_tensor_dataset(reader, "tensors", tensor->link, "codes", err);
    if (codes < 0)
        return SB_ERR_IO;
    herr_t rc = read_slab(codes, H5T_NATIVE_UINT8, 1, tensor->stack_code_offset + offset, bytes, 0, packed);
    close_id(codes);
    return rc < 0 ? read_failed(reader, tensor->name, "its codes", err) : SB_OK;
}

sb_status sb_h5_dequantize_rows(const sb_h5_reader *reader, const sb_h5_quantized *tensor, int64_t row_begin,
                                int64_t row_count, float *dst, sb_error *err)
{
    const sb_tiling *tiling = &tensor->tiling;
    if (row_begin < 0 || row_count < 0 || row_begin + row_count > tensor->rows)
        return sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s': rows %lld..%lld are outside its %lld rows",
                            reader->path, tensor->name, (long long)row_begin, (long long)(row_begin + row_count),
                            (long long)tensor->rows);
    if (row_count == 0)
        return SB_OK;
    int64_t row_end = row_begin + row_count;
    int64_t first_tile_row = row_begin / tiling->tile_rows, last_tile_row = (row_end - 1) / tiling->tile_rows;
    int64_t band_bytes = 0;
    for (int64_t tile_row = first_tile_row; tile_row <= last_tile_row; tile_row++) {
        int64_t bytes = tensor->tile_row_offsets[tile_row + 1] - tensor->tile_row_offsets[tile_row];
        band_bytes = bytes > band_bytes ? bytes : band_bytes;
    }
    int64_t band_rows = row_count < tiling->tile_rows ? row_count : tiling->tile_rows;
    int64_t scale_count = band_rows * tiling->groups_per_row;
    /* the largest tile that exists, not the declared tile size (a 65536 x 65536 tile over a
     * small matrix) */
    int64_t tile_values = (tiling->rows < tiling->tile_rows ? tiling->rows : tiling->tile_rows) *
                          (tiling->cols < tiling->tile_cols ? tiling->cols : tiling->tile_cols);
    uint8_t *band = sb_malloc((size_t)(band_bytes > 0 ? band_bytes : 1), "codes", err);
    uint8_t *unpacked = sb_malloc((size_t)tile_values, "codes", err);
    uint16_t *scales = sb_malloc((size_t)scale_count * sizeof *scales, "scales", err);
    uint16_t *zeros = sb_malloc((size_t)scale_count * sizeof *zeros, "zeros", err);
    hid_t codes_set = -1, scales_set = -1, zeros_set = -1;
    sb_status status = SB_OK;
    if (!band || !unpacked || !scales || !zeros) {
        status = SB_ERR_NOMEM;
        goto done;
    }
    if ((codes_set = open_tensor_dataset(reader, "tensors", tensor->link, "codes", err)) < 0 ||
        (scales_set = open_tensor_dataset(reader, "tensors", tensor->link, "scales", err)) < 0 ||
        (zeros_set = open_tensor_dataset(reader, "tensors", tensor->link, "zeros", err)) < 0) {
        status = SB_ERR_IO;
        goto done;
    }
    hid_t f16 = (hid_t)reader->f16_type;
    for (int64_t tile_row = first_tile_row; tile_row <= last_tile_row; tile_row++) {
        int64_t offset = tensor->tile_row_offsets[tile_row];
        int64_t bytes = tensor->tile_row_offsets[tile_row + 1] - offset;
        int64_t r0 = tile_row * tiling->tile_rows, r1 = r0 + tiling->tile_rows;
        r0 = r0 > row_begin ? r0 : row_begin;
        r1 = r1 < row_end ? r1 : row_end;
        if (read_slab(codes_set, H5T_NATIVE_UINT8, 1, tensor->stack_code_offset + offset, bytes, 0, band) < 0) {
            status = read_failed(reader, tensor->name, "its codes", err);
            goto done;
        }
        /* the file's own half type as memory type: the raw F16 bits, decoded below by the rule */
        hid_t scale_memtype = tensor->format == SB_SCALES_Q8 ? H5T_NATIVE_UINT16 : f16;
        int64_t stacked_r0 = tensor->stack_row_offset + r0;
        if (read_slab(scales_set, scale_memtype, 2, stacked_r0, r1 - r0, tiling->groups_per_row, scales) < 0 ||
            read_slab(zeros_set, scale_memtype, 2, stacked_r0, r1 - r0, tiling->groups_per_row, zeros) < 0) {
            status = read_failed(reader, tensor->name, "its scales and zeros", err);
            goto done;
        }
        if (tensor->format == SB_SCALES_F16 &&
            (status = check_finite_f16(reader, tensor, r0, r1 - r0, scales, zeros, err)) != SB_OK)
            goto done;
        int64_t tile_offset = 0;
        for (int64_t tile_col = 0; tile_col < tiling->tiles_across; tile_col++) {
            int64_t t = tile_row * tiling->tiles_across + tile_col;
            sb_tile_rect rect = sb_tiling_rect(tiling, t);
            int bits = tensor->bits_per_tile[t];
            /* the tile's codes lie inside the band read, its values inside `unpacked` */
            SB_ASSERT(tile_offset + sb_tile_code_bytes(rect.rows, rect.cols, bits) <= bytes);
            SB_ASSERT((int64_t)rect.rows * rect.cols <= tile_values);
            sb_unpack_codes(band + tile_offset, (int64_t)rect.rows * rect.cols, bits, unpacked);
            tile_offset += sb_tile_code_bytes(rect.rows, rect.cols, bits);
            int64_t first_group = rect.col0 / tiling->group;
            int tile_groups = sb_tile_groups(rect.cols, tiling->group);
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *code_row = unpacked + (r - rect.row0) * rect.cols;
                const uint16_t *scale_row = scales + (r - r0) * tiling->groups_per_row + first_group;
                const uint16_t *zero_row = zeros + (r - r0) * tiling->groups_per_row + first_group;
                float *out = dst + (r - row_begin) * tensor->cols + rect.col0;
                for (int g = 0; g < tile_groups; g++) {
                    int c0 = g * tiling->group;
                    int n = rect.cols - c0 < tiling->group ? rect.cols - c0 : tiling->group;
                    if (tensor->format == SB_SCALES_Q8)
                        sb_dequantize_group_q8(code_row + c0, n, bits, tensor->tile_scales[t], scale_row[g],
                                               zero_row[g], out + c0);
                    else
                        sb_dequantize_group(code_row + c0, n, scale_row[g], zero_row[g], out + c0);
                }
            }
        }
    }
done:
    close_id(codes_set);
    close_id(scales_set);
    close_id(zeros_set);
    free(band);
    free(unpacked);
    free(scales);
    free(zeros);
    return status;
}

/* Rows of a pass-through tensor, converted by HDF5 to memory type `memtype`. */
static sb_status read_passthrough(const sb_h5_reader *reader, const sb_h5_passthrough *tensor, int64_t row_begin,
                                  int64_t row_count, hid_t memtype, void *dst, sb_error *err)
{
    if (row_begin < 0 || row_count < 0 || row_begin + row_count > tensor->rows ||
        (tensor->ndim > 2 && (row_begin != 0 || row_count != tensor->rows)))
        return sb_error_set(err, SB_ERR_INTERNAL,
                            "%s: pass-through tensor '%s': rows %lld..%lld cannot be read (it has %lld rows%s)",
                            reader->path, tensor->name, (long long)row_begin, (long long)(row_begin + row_count),
                            (long long)tensor->rows, tensor->ndim > 2 ? " and is read whole" : "");
    if (row_count == 0)
        return SB_OK;
    hid_t dataset = open_tensor_dataset(reader, "passthrough", tensor->link, "", err);
    if (dataset < 0)
        return SB_ERR_IO;
    herr_t rc;
    if (tensor->ndim == 2)
        rc = read_slab(dataset, memtype, 2, row_begin, row_count, tensor->cols, dst);
    else
        rc = read_slab(dataset, memtype, 0, 0, 0, 0, dst); /* 1-D (one row) or whole N-D */
    close_id(dataset);
    if (rc < 0) {
        char reason[256];
        hdf5_reason(reason);
        return sb_error_set(err, SB_ERR_IO, "%s: pass-through tensor '%s': cannot read it%s%s (corrupt file?)",
                            reader->path, tensor->name, reason[0] ? ": " : "", reason);
    }
    return SB_OK;
}

sb_status sb_h5_read_passthrough_raw(const sb_h5_reader *reader, const sb_h5_passthrough *tensor, int64_t row_begin,
                                     int64_t row_count, void *dst, sb_error *err)
{
    hid_t memtype = tensor->dtype == SB_DTYPE_F32   ? H5T_IEEE_F32LE
                    : tensor->dtype == SB_DTYPE_F16 ? (hid_t)reader->f16_type
                                                    : H5T_STD_U16LE;
    return read_passthrough(reader, tensor, row_begin, row_count, memtype, dst, err);
}

sb_status sb_h5_read_passthrough_f32(const sb_h5_reader *reader, const sb_h5_passthrough *tensor, int64_t row_begin,
                                     int64_t row_count, float *dst, sb_error *err)
{
    if (tensor->dtype == SB_DTYPE_F32)
        return read_passthrough(reader, tensor, row_begin, row_count, H5T_NATIVE_FLOAT, dst, err);
    /* 16-bit values go through their own buffer (as large as the range the caller asked for),
     * then widen with the project's exact conversions (src/sb_half.h). */
    int64_t count = row_count * tensor->cols;
    uint16_t *raw = sb_malloc((size_t)(count > 0 ? count : 1) * sizeof *raw, "pass-through rows", err);
    if (!raw)
        return SB_ERR_NOMEM;
    sb_status status = sb_h5_read_passthrough_raw(reader, tensor, row_begin, row_count, raw, err);
    if (status == SB_OK) {
        for (int64_t i = 0; i < count; i++)
            dst[i] = tensor->dtype == SB_DTYPE_F16 ? sb_f16_to_f32(raw[i]) : sb_bf16_to_f32(raw[i]);
    }
    free(raw);
    return status;
}

/* ---- accounting -------------------------------------------------------------------------- */

typedef struct recount {
    int64_t bytes, datasets;
    bool failed;
} recount;

static herr_t count_dataset(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    recount *total = data;
    if (info->type != H5L_TYPE_HARD)
        return 0; /* a soft or external link stores nothing here */
    hid_t object = H5Oopen(group, name, H5P_DEFAULT);
    if (object < 0) {
        total->failed = true;
        return -1;
    }
    if (H5Iget_type(object) == H5I_DATASET) {
        total->bytes += (int64_t)H5Dget_storage_size(object);
        total->datasets++;
    }
    H5Oclose(object);
    return 0;
}

sb_status sb_h5_recount_stored_bits(const sb_h5_reader *reader, int64_t *stored_bits, int64_t *datasets,
                                    sb_error *err)
{
    recount total = {0, 0, false};
    hid_t group = H5Gopen2((hid_t)reader->file_id, "tensors", H5P_DEFAULT);
    herr_t rc = group < 0 ? -1 : H5Lvisit(group, H5_INDEX_NAME, H5_ITER_INC, count_dataset, &total);
    close_id(group);
    if (rc < 0)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: cannot visit the datasets under /tensors", reader->path);
    *stored_bits = total.bytes * 8;
    if (datasets)
        *datasets = total.datasets;
    return SB_OK;
}

void sb_h5_allocation_sha256(const sb_h5_reader *reader, char hex[65])
{
    sb_sha256 hash;
    sb_sha256_init(&hash);
    for (int i = 0; i < reader->nquantized; i++)
        sb_sha256_update(&hash, reader->quantized[i].bits_per_tile, (size_t)reader->quantized[i].tiles);
    uint8_t digest[32];
    sb_sha256_final(&hash, digest);
    sb_sha256_hex(digest, hex);
}
