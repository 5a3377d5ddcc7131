/* The reader (io/sb_h5_reader.h) decodes what the writer wrote, exactly as docs/FORMAT.md says,
 * in both scale encodings: affine-f16 (F16 scale and zero per group) and affine-q8 (8-bit log
 * scale code s and zero-point code c per group, F16 bound D per tile).
 *
 * 1. Known codes through the project's writer API (io/sb_h5_writer.h), once per encoding:
 *    ragged tiles in both directions, every bitwidth 1..8, F16 edge cases in the scales (f16) or
 *    in the tile bounds with the edge codes s = 0/255 and c = 0/255 (q8); packed here by a
 *    bit-by-bit packer written from the spec, decoded here by a float16 decoder written from
 *    IEEE 754 and, for q8, M[s] found here as the float nearest to 2^(-s/32). The reader must
 *    give the same floats bit for bit, for the whole tensor and any row range.
 * 2. scalebits-mpi's own output on the embedded model with ragged 48x40 tiles and bitwidths
 *    {1,3,5,8}, with --scales q8 and --scales f16: every tensor decoded independently from the
 *    raw datasets equals the reader's; each tensor's datasets have the spec's types and extents
 *    (and tile_scales only in q8); the stored bits recounted from H5Dget_storage_size (tile
 *    scales included) equal the spec's formula per tensor and in total, sb_h5_tensor_bits, the
 *    stored_bits attribute and the reader's recount; achieved_bpw <= budget_bpw; the allocation
 *    hash recomputes.
 * 3. All tiles at 8 bits (--bits 8), the default encoding (q8) and f16: every dequantized weight
 *    is within 8-bit quantization error of the source (one grid step of its group, the step
 *    bounded by the encoding's precision); so is every weight scalebits-export writes (plus one
 *    BF16 rounding: it is exactly the BF16 rounding of the reader's value), every source tensor
 *    is exported with its shape and dtype, and pass-through tensors are exported byte for byte.
 * 4. Broken files: not HDF5, truncated, HDF5 but not scalebits, a missing dataset, a codes
 *    length that disagrees with the bit map, a bitwidth of 0 or 9, a newer format_version, and
 *    for q8 a missing tile_scales, one of the wrong length, type or rank, scales of the other
 *    encoding's type, an unknown encoding: each a clear error naming the file (and the tensor),
 *    and scalebits-inspect exits 1 with one line. A stray dataset is charged by the recount and
 *    scalebits-inspect reports the mismatch.
 */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "sb_h5_reader.h"
#include "sb_h5_writer.h"
#include "sb_half.h"
#include "sb_safetensors.h"
#include "sb_sha256.h"
#include "sb_test.h"

static char work[4096], build[4096];

static void shell(const char *command)
{
    if (system(command) != 0) {
        fprintf(stderr, "setup command failed: %s\n", command);
        exit(1);
    }
}

/* ---- independent decoding, straight from the spec ---------------------------------------- */

/* IEEE binary16 to float, by the definition (not src/sb_half.h). */
static float reference_f16(uint16_t h)
{
    int sign = h >> 15, exponent = (h >> 10) & 31, mantissa = h & 1023;
    double value = exponent == 0 ? ldexp(mantissa, -24) : ldexp(1024 + mantissa, exponent - 25);
    if (exponent == 31)
        value = mantissa ? NAN : INFINITY;
    return (float)(sign ? -value : value);
}

/* affine-q8's multipliers M[s] = the float nearest to 2^(-s/32), found here without the
 * project's table: the float from exp2l (64-bit mantissa) and its two neighbours, compared with
 * 2^(-s/32) in long double. `spec_q8_ambiguity` is the smallest distance of 2^(-s/32) from a
 * midpoint between two floats, relative to the value: far above exp2l's error, else "nearest"
 * cannot be decided this way. */
static float spec_q8_table[256];
static double spec_q8_ambiguity = INFINITY;

static void spec_q8_table_init(void)
{
    for (int s = 0; s < 256; s++) {
        long double exact = exp2l(-(long double)s / 32.0L);
        float best = (float)exact;
        float neighbours[2] = {nextafterf(best, 0.0f), nextafterf(best, INFINITY)};
        for (int i = 0; i < 2; i++)
            if (fabsl((long double)neighbours[i] - exact) < fabsl((long double)best - exact))
                best = neighbours[i];
        spec_q8_table[s] = best;
        if (s % 32 != 0) { /* 2^(-s/32) is not a float: how close to the rounding boundary? */
            long double other = (long double)best < exact ? nextafterf(best, INFINITY) : nextafterf(best, 0.0f);
            long double midpoint = ((long double)best + (long double)other) / 2;
            double distance = (double)(fabsl(exact - midpoint) / exact);
            spec_q8_ambiguity = distance < spec_q8_ambiguity ? distance : spec_q8_ambiguity;
        }
    }
}

/* One affine-q8 weight, FORMAT.md's rule in float32 in its order of operations:
 * scale = float32(D) x M[s], z = c x 2^b / 256 (exact), w = scale x (q - z). */
static float spec_q8_weight(uint16_t tile_scale, unsigned s, unsigned c, int bits, unsigned q)
{
    float scale = reference_f16(tile_scale) * spec_q8_table[s];
    float z = (float)c * ldexpf(1.0f, bits - 8);
    return scale * ((float)q - z);
}

/* Code i of a tile: stream bits [i*b, (i+1)*b), stream bit k = bit k%8 of byte k/8. */
static unsigned reference_code(const uint8_t *tile_bytes, int64_t i, int bits)
{
    unsigned code = 0;
    for (int j = 0; j < bits; j++) {
        int64_t k = i * bits + j;
        code |= (unsigned)((tile_bytes[k / 8] >> (k % 8)) & 1) << j;
    }
    return code;
}

static void reference_pack(const uint8_t *codes, int64_t count, int bits, uint8_t *packed)
{
    memset(packed, 0, (size_t)((count * bits + 7) / 8));
    for (int64_t i = 0; i < count; i++)
        for (int j = 0; j < bits; j++) {
            int64_t k = i * bits + j;
            packed[k / 8] |= (uint8_t)(((codes[i] >> j) & 1) << (k % 8));
        }
}

/* A quantized tensor as raw dataset contents. */
typedef struct raw_tensor {
    int64_t rows, cols;
    int tile_rows, tile_cols, group;
    int64_t tiles_down, tiles_across, groups;
    uint8_t *codes, *bitmap;
    int64_t code_bytes;
    bool q8;                /* group attribute encoding = "affine-q8" (else "affine-f16") */
    uint16_t *scales, *zeros; /* [rows x groups]: F16 bit patterns, or the 8-bit codes s and c */
    uint16_t *tile_scales;  /* q8: [tiles] F16 bit patterns of the bounds D */
} raw_tensor;

static int64_t tile_extent(int64_t total, int side, int64_t index)
{
    int64_t left = total - index * side;
    return left < side ? left : side;
}

/* Decodes the whole tensor from raw datasets: out[r * cols + c]. Returns false if the codes run
 * past code_bytes (the bit map and shape disagree with the codes). */
static bool reference_decode(const raw_tensor *t, float *out)
{
    int64_t offset = 0;
    for (int64_t tile = 0; tile < t->tiles_down * t->tiles_across; tile++) {
        int bits = tile % 2 == 0 ? t->bitmap[tile / 2] & 15 : t->bitmap[tile / 2] >> 4;
        int64_t tile_row = tile / t->tiles_across, tile_col = tile % t->tiles_across;
        int64_t rows_t = tile_extent(t->rows, t->tile_rows, tile_row);
        int64_t cols_t = tile_extent(t->cols, t->tile_cols, tile_col);
        int64_t bytes = (rows_t * cols_t * bits + 7) / 8;
        if (offset + bytes > t->code_bytes)
            return false;
        for (int64_t r = 0; r < rows_t; r++)
            for (int64_t c = 0; c < cols_t; c++) {
                int64_t row = tile_row * t->tile_rows + r, col = tile_col * t->tile_cols + c;
                unsigned q = reference_code(t->codes + offset, r * cols_t + c, bits);
                int64_t g = col / t->group;
                if (t->q8) {
                    out[row * t->cols + col] = spec_q8_weight(t->tile_scales[tile], t->scales[row * t->groups + g],
                                                              t->zeros[row * t->groups + g], bits, q);
                } else {
                    float scale = reference_f16(t->scales[row * t->groups + g]);
                    float zero = reference_f16(t->zeros[row * t->groups + g]);
                    out[row * t->cols + col] = scale * (float)q + zero;
                }
            }
        offset += bytes;
    }
    return offset == t->code_bytes;
}

static void raw_free(raw_tensor *t)
{
    free(t->codes);
    free(t->bitmap);
    free(t->scales);
    free(t->zeros);
    free(t->tile_scales);
}

/* A fixed-length string attribute (as the writer stores them) into `out`; false if absent. */
static bool attr_text(hid_t object, const char *name, char *out, size_t size)
{
    out[0] = '\0';
    if (H5Aexists(object, name) <= 0)
        return false;
    hid_t attr = H5Aopen(object, name, H5P_DEFAULT), type = H5Aget_type(attr);
    size_t length = H5Tget_size(type);
    bool ok = H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) == 0 && length < size &&
              H5Aread(attr, type, out) >= 0;
    out[ok ? length : 0] = '\0';
    H5Tclose(type);
    H5Aclose(attr);
    return ok;
}

/* The element type of dataset `name` in `group` is of `class` and `size` bytes (unsigned, for
 * integers), with `rank` dimensions; its element count goes to *points. */
static bool dataset_is(hid_t group, const char *name, H5T_class_t class, size_t size, int rank, hssize_t *points)
{
    if (H5Lexists(group, name, H5P_DEFAULT) <= 0)
        return false;
    hid_t dataset = H5Dopen2(group, name, H5P_DEFAULT);
    hid_t type = H5Dget_type(dataset), space = H5Dget_space(dataset);
    bool ok = H5Tget_class(type) == class && H5Tget_size(type) == size &&
              (class != H5T_INTEGER || H5Tget_sign(type) == H5T_SGN_NONE) && H5Sget_simple_extent_ndims(space) == rank;
    *points = H5Sget_simple_extent_npoints(space);
    H5Sclose(space);
    H5Tclose(type);
    H5Dclose(dataset);
    return ok;
}

/* Reads /tensors/<name> with plain HDF5 calls: every dataset with the file's own type as memory
 * type (the bytes as stored); 8-bit scale codes are then widened to uint16. Checks the datasets'
 * types and extents against FORMAT.md for the group's encoding first: false (and failed checks)
 * if they are not, with nothing read. */
static bool raw_read(hid_t file, const char *name, raw_tensor *t)
{
    memset(t, 0, sizeof *t);
    char path[1024];
    sb_test_format(path, sizeof path, "/tensors/%s", name);
    hid_t group = H5Gopen2(file, path, H5P_DEFAULT);
    if (group < 0)
        return false;
    int64_t shape[2], tile[2], group_size;
    hid_t attr = H5Aopen(group, "shape", H5P_DEFAULT);
    H5Aread(attr, H5T_NATIVE_INT64, shape);
    H5Aclose(attr);
    attr = H5Aopen(group, "tile", H5P_DEFAULT);
    H5Aread(attr, H5T_NATIVE_INT64, tile);
    H5Aclose(attr);
    attr = H5Aopen(group, "group", H5P_DEFAULT);
    H5Aread(attr, H5T_NATIVE_INT64, &group_size);
    H5Aclose(attr);
    t->rows = shape[0];
    t->cols = shape[1];
    t->tile_rows = (int)tile[0];
    t->tile_cols = (int)tile[1];
    t->group = (int)group_size;
    t->tiles_down = (t->rows + t->tile_rows - 1) / t->tile_rows;
    t->tiles_across = (t->cols + t->tile_cols - 1) / t->tile_cols;
    t->groups = (t->cols + t->group - 1) / t->group;
    char encoding[64];
    bool valid = attr_text(group, "encoding", encoding, sizeof encoding) &&
                 (strcmp(encoding, "affine-q8") == 0 || strcmp(encoding, "affine-f16") == 0);
    SB_CHECK_MSG(valid, "%s: encoding '%s'", name, encoding);
    t->q8 = strcmp(encoding, "affine-q8") == 0;
    int64_t tiles = t->tiles_down * t->tiles_across;
    /* FORMAT.md's datasets: types, ranks and extents */
    hssize_t points;
    bool ok = dataset_is(group, "codes", H5T_INTEGER, 1, 1, &points);
    SB_CHECK_MSG(ok, "%s: codes are uint8", name);
    valid &= ok;
    ok = dataset_is(group, "bitmap", H5T_INTEGER, 1, 1, &points) && points == (tiles + 1) / 2;
    SB_CHECK_MSG(ok, "%s: bitmap is uint8 [ceil(tiles / 2)]", name);
    valid &= ok;
    for (int i = 0; i < 2; i++) {
        const char *which = i ? "zeros" : "scales";
        ok = (t->q8 ? dataset_is(group, which, H5T_INTEGER, 1, 2, &points)
                    : dataset_is(group, which, H5T_FLOAT, 2, 2, &points)) &&
             points == t->rows * t->groups;
        SB_CHECK_MSG(ok, "%s: %s are %s [rows, groups]", name, which, t->q8 ? "uint8" : "float16");
        valid &= ok;
    }
    if (t->q8) {
        ok = dataset_is(group, "tile_scales", H5T_FLOAT, 2, 1, &points) && points == tiles;
        SB_CHECK_MSG(ok, "%s: tile_scales is float16 [tiles]", name);
        valid &= ok;
    } else {
        SB_CHECK_MSG(H5Lexists(group, "tile_scales", H5P_DEFAULT) == 0, "%s: no tile_scales in affine-f16", name);
    }
    if (!valid) {
        H5Gclose(group);
        return false;
    }
    const char *names[5] = {"codes", "bitmap", "scales", "zeros", "tile_scales"};
    void **buffers[5] = {(void **)&t->codes, (void **)&t->bitmap, (void **)&t->scales, (void **)&t->zeros,
                         (void **)&t->tile_scales};
    for (int i = 0; i < (t->q8 ? 5 : 4); i++) {
        hid_t dataset = H5Dopen2(group, names[i], H5P_DEFAULT);
        hid_t space = H5Dget_space(dataset), type = H5Dget_type(dataset);
        points = H5Sget_simple_extent_npoints(space);
        size_t element = H5Tget_size(type);
        void *stored = malloc((size_t)points * element + 1);
        /* the file's own type as memory type: the bytes as stored, no conversion */
        H5Dread(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, stored);
        if (i == 0)
            t->code_bytes = points;
        if ((i == 2 || i == 3) && element == 1) { /* q8 codes s and c, widened */
            uint16_t *wide = malloc((size_t)points * sizeof *wide + 1);
            for (hssize_t k = 0; k < points; k++)
                wide[k] = ((const uint8_t *)stored)[k];
            free(stored);
            stored = wide;
        }
        *buffers[i] = stored;
        H5Tclose(type);
        H5Sclose(space);
        H5Dclose(dataset);
    }
    H5Gclose(group);
    return true;
}

/* Bits stored under a group, from HDF5's storage sizes, by a walk written here. */
typedef struct storage_walk {
    int64_t bits, datasets;
} storage_walk;

static herr_t add_storage(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    storage_walk *walk = data;
    hid_t object = H5Oopen(group, name, H5P_DEFAULT);
    if (H5Iget_type(object) == H5I_DATASET) {
        walk->bits += (int64_t)H5Dget_storage_size(object) * 8;
        walk->datasets++;
    }
    H5Oclose(object);
    return 0;
}

static storage_walk storage_under(hid_t file, const char *group_path)
{
    storage_walk walk = {0, 0};
    hid_t group = H5Gopen2(file, group_path, H5P_DEFAULT);
    H5Lvisit(group, H5_INDEX_NAME, H5_ITER_INC, add_storage, &walk);
    H5Gclose(group);
    return walk;
}

static int64_t storage_bits(const char *path)
{
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    storage_walk walk = storage_under(file, "/tensors");
    H5Fclose(file);
    return walk.bits;
}

/* FORMAT.md's "Budget accounting": the bits a quantized tensor stores, from its raw extents. */
static int64_t spec_tensor_bits(const raw_tensor *t)
{
    int64_t tiles = t->tiles_down * t->tiles_across;
    int64_t metadata = t->q8 ? 16 * t->rows * t->groups + 16 * tiles : 32 * t->rows * t->groups;
    return 8 * t->code_bytes + 8 * ((tiles + 1) / 2) + metadata;
}

static int64_t root_int64(const char *path, const char *name)
{
    int64_t value = -1;
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    H5Aread(attr, H5T_NATIVE_INT64, &value);
    H5Aclose(attr);
    H5Fclose(file);
    return value;
}

/* The reader's decode of every tensor equals the reference, whole and by row ranges; every
 * tensor is in `encoding` (the root attribute too); the accounting holds per tensor and in
 * total. */
static void check_against_reference(const char *path, const char *encoding, sb_test_rng *rng)
{
    sb_h5_reader reader;
    sb_error err;
    sb_status status = sb_h5_reader_open(path, &reader, &err);
    SB_CHECK_MSG(status == SB_OK, "open %s: %s", path, err.message);
    if (status != SB_OK)
        return;
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    char root_encoding[64];
    SB_CHECK_MSG(attr_text(file, "encoding", root_encoding, sizeof root_encoding) &&
                     strcmp(root_encoding, encoding) == 0,
                 "%s: root attribute encoding '%s', expected '%s'", path, root_encoding, encoding);
    bool q8 = strcmp(encoding, "affine-q8") == 0;
    int64_t spec_total = 0, expected_datasets = 0;
    for (int i = 0; i < reader.nquantized; i++) {
        const sb_h5_quantized *tensor = &reader.quantized[i];
        raw_tensor raw;
        if (!raw_read(file, tensor->name, &raw)) {
            SB_CHECK_MSG(false, "raw read %s", tensor->name);
            raw_free(&raw);
            continue;
        }
        SB_CHECK_MSG(raw.q8 == q8 && tensor->format == (q8 ? SB_SCALES_Q8 : SB_SCALES_F16) &&
                         (tensor->tile_scales != NULL) == q8,
                     "%s: encoding %s, reader format %d", tensor->name, encoding, (int)tensor->format);
        if (q8 && tensor->tile_scales)
            SB_CHECK_MSG(memcmp(tensor->tile_scales, raw.tile_scales, (size_t)tensor->tiles * 2) == 0,
                         "%s: the reader's tile bounds are the dataset's", tensor->name);
        /* the accounting of this tensor: its datasets' storage = the spec's formula = the reader's */
        char group_path[1100];
        sb_test_format(group_path, sizeof group_path, "/tensors/%s", tensor->name);
        storage_walk walk = storage_under(file, group_path);
        int64_t spec_bits = spec_tensor_bits(&raw);
        SB_CHECK_MSG(walk.bits == spec_bits && sb_h5_tensor_bits(tensor) == spec_bits &&
                         8 * tensor->storage_bytes == spec_bits && walk.datasets == (q8 ? 5 : 4),
                     "%s: %lld bits in %lld datasets, FORMAT.md %lld, sb_h5_tensor_bits %lld, reader storage %lld",
                     tensor->name, (long long)walk.bits, (long long)walk.datasets, (long long)spec_bits,
                     (long long)sb_h5_tensor_bits(tensor), (long long)(8 * tensor->storage_bytes));
        spec_total += spec_bits;
        expected_datasets += q8 ? 5 : 4;
        int64_t count = raw.rows * raw.cols;
        float *expected = malloc((size_t)count * sizeof *expected);
        float *actual = malloc((size_t)count * sizeof *actual);
        SB_CHECK_MSG(reference_decode(&raw, expected), "%s: codes length matches the bit map", tensor->name);
        status = sb_h5_dequantize_rows(&reader, tensor, 0, tensor->rows, actual, &err);
        SB_CHECK_MSG(status == SB_OK, "%s: %s", tensor->name, err.message);
        int64_t differ = 0;
        for (int64_t k = 0; k < count; k++)
            differ += memcmp(&expected[k], &actual[k], sizeof(float)) != 0;
        SB_CHECK_MSG(differ == 0, "%s: %lld of %lld weights differ from the reference decode", tensor->name,
                     (long long)differ, (long long)count);
        for (int trial = 0; trial < 6; trial++) {
            int64_t begin = (int64_t)(sb_test_uniform(rng) * (double)tensor->rows);
            int64_t rows = 1 + (int64_t)(sb_test_uniform(rng) * (double)(tensor->rows - begin));
            float *part = malloc((size_t)(rows * tensor->cols) * sizeof *part);
            status = sb_h5_dequantize_rows(&reader, tensor, begin, rows, part, &err);
            SB_CHECK_MSG(status == SB_OK && memcmp(part, expected + begin * tensor->cols,
                                                   (size_t)(rows * tensor->cols) * sizeof(float)) == 0,
                         "%s: rows %lld..%lld", tensor->name, (long long)begin, (long long)(begin + rows));
            free(part);
        }
        SB_CHECK(sb_h5_dequantize_rows(&reader, tensor, tensor->rows - 1, 2, actual, &err) == SB_ERR_INTERNAL);
        free(expected);
        free(actual);
        raw_free(&raw);
    }
    H5Fclose(file);
    int64_t recount = 0, datasets = 0;
    SB_CHECK(sb_h5_recount_stored_bits(&reader, &recount, &datasets, &err) == SB_OK);
    SB_CHECK_MSG(recount == storage_bits(path), "reader recount %lld vs the test's own %lld", (long long)recount,
                 (long long)storage_bits(path));
    SB_CHECK_MSG(recount == reader.root.stored_bits, "recount %lld vs stored_bits %lld", (long long)recount,
                 (long long)reader.root.stored_bits);
    SB_CHECK_MSG(datasets == expected_datasets, "%lld datasets under /tensors, expected %lld", (long long)datasets,
                 (long long)expected_datasets);
    int64_t formula = 0;
    for (int i = 0; i < reader.nquantized; i++)
        formula += sb_h5_tensor_bits(&reader.quantized[i]);
    SB_CHECK_MSG(formula == recount, "sb_h5_tensor_bits total %lld vs storage %lld", (long long)formula,
                 (long long)recount);
    SB_CHECK_MSG(spec_total == recount, "FORMAT.md formula %lld vs storage %lld", (long long)spec_total,
                 (long long)recount);
    SB_CHECK_MSG(reader.root.achieved_bpw <= reader.root.budget_bpw, "achieved %g > budget %g",
                 reader.root.achieved_bpw, reader.root.budget_bpw);
    SB_CHECK_NEAR(reader.root.achieved_bpw, (double)recount / (double)reader.root.quantized_weights, 1e-12);
    char hash[65];
    sb_h5_allocation_sha256(&reader, hash);
    SB_CHECK_MSG(reader.root.allocation_sha256 && strcmp(hash, reader.root.allocation_sha256) == 0,
                 "allocation hash %s vs attribute %s", hash,
                 reader.root.allocation_sha256 ? reader.root.allocation_sha256 : "(none)");
    sb_h5_reader_close(&reader);
}

/* ---- 1. known codes through the writer API ------------------------------------------------- */

/* The spec's multipliers are decidable by the method above, and the project's table holds them
 * (a kernel keeps the same 256 floats). */
static void test_q8_multipliers(void)
{
    SB_CHECK_MSG(spec_q8_ambiguity > 0x1p-40, "2^(-s/32) lies %.3g (relative) from a float midpoint", spec_q8_ambiguity);
    SB_CHECK(spec_q8_table[0] == 1.0f && spec_q8_table[32] == 0.5f && spec_q8_table[224] == 0x1p-7f);
    const float *table = sb_q8_scale_table();
    int differ = 0;
    for (int s = 0; s < 256; s++)
        differ += memcmp(&table[s], &spec_q8_table[s], sizeof(float)) != 0;
    SB_CHECK_MSG(differ == 0, "%d of the 256 multipliers of sb_q8_scale_table are not the float nearest 2^(-s/32)",
                 differ);
}

typedef struct synthetic {
    const char *name, *role;
    int layer;
    int64_t rows, cols;
    int tile_rows, tile_cols, group;
    uint8_t *codes;     /* [rows * cols], unpacked, in matrix layout */
    uint8_t *bits;      /* [tiles] */
    bool q8;            /* affine-q8 (else affine-f16) */
    uint16_t *scales, *zeros; /* F16 bit patterns, or the q8 codes s and c (0..255) */
    uint16_t *tile_scales;    /* q8: [tiles] F16 bounds D */
    uint8_t *packed;    /* tile after tile */
    int64_t code_bytes, tiles, groups;
} synthetic;

static void synthetic_make(synthetic *s, sb_test_rng *rng, int first_bits)
{
    int64_t down = (s->rows + s->tile_rows - 1) / s->tile_rows, across = (s->cols + s->tile_cols - 1) / s->tile_cols;
    s->tiles = down * across;
    s->groups = (s->cols + s->group - 1) / s->group;
    s->bits = malloc((size_t)s->tiles);
    s->codes = malloc((size_t)(s->rows * s->cols));
    s->scales = malloc((size_t)(s->rows * s->groups) * 2);
    s->zeros = malloc((size_t)(s->rows * s->groups) * 2);
    s->tile_scales = malloc((size_t)s->tiles * 2);
    s->packed = calloc((size_t)(s->rows * s->cols) + (size_t)s->tiles, 1);
    for (int64_t t = 0; t < s->tiles; t++)
        s->bits[t] = (uint8_t)((first_bits - 1 + t) % 8 + 1); /* every bitwidth appears */
    int64_t last = s->rows * s->groups - 1;
    if (s->q8) {
        for (int64_t k = 0; k <= last; k++) {
            s->scales[k] = (uint16_t)(sb_test_next(rng) & 255);
            s->zeros[k] = (uint16_t)(sb_test_next(rng) & 255);
        }
        /* the edge codes, in every combination: s = 0 (M = 1) and 255 (the smallest M); c = 0
         * (no offset) and 255 (z just under 2^b levels) */
        s->scales[0] = 0, s->zeros[0] = 255;
        s->scales[1] = 255, s->zeros[1] = 255;
        s->scales[2] = 0, s->zeros[2] = 0;
        s->scales[last] = 255, s->zeros[last] = 0;
        for (int64_t t = 0; t < s->tiles; t++)
            s->tile_scales[t] = sb_f32_to_f16((float)(0.001 + 0.1 * sb_test_uniform(rng)));
        /* F16 corners of the bound: the largest finite (under s = 0: scale 65504), a subnormal,
         * zero (every weight of the tile is then +-0), one */
        s->tile_scales[0] = 0x7bff;
        s->tile_scales[1] = 0x0001;
        if (s->tiles > 3) {
            s->tile_scales[2] = 0x0000;
            s->tile_scales[3] = 0x3c00;
        }
    } else {
        for (int64_t k = 0; k <= last; k++) {
            s->scales[k] = sb_f32_to_f16((float)(0.001 + 0.1 * sb_test_uniform(rng)));
            s->zeros[k] = sb_f32_to_f16((float)(2 * sb_test_uniform(rng) - 1));
        }
        /* F16 corners: a subnormal scale, a negative-zero zero, the largest finite scale */
        s->scales[0] = 0x0001;
        s->zeros[0] = 0x8000;
        s->scales[last] = 0x7bff;
    }
    s->code_bytes = 0;
    for (int64_t t = 0; t < s->tiles; t++) {
        int64_t tile_row = t / across, tile_col = t % across;
        int64_t rows_t = tile_extent(s->rows, s->tile_rows, tile_row), cols_t = tile_extent(s->cols, s->tile_cols, tile_col);
        uint8_t *tile_codes = malloc((size_t)(rows_t * cols_t));
        for (int64_t r = 0; r < rows_t; r++)
            for (int64_t c = 0; c < cols_t; c++) {
                uint8_t q = (uint8_t)(sb_test_next(rng) & ((1u << s->bits[t]) - 1));
                if (r == 0 && c == 0)
                    q = (uint8_t)((1u << s->bits[t]) - 1); /* the largest code of every tile */
                s->codes[(tile_row * s->tile_rows + r) * s->cols + tile_col * s->tile_cols + c] = q;
                tile_codes[r * cols_t + c] = q;
            }
        reference_pack(tile_codes, rows_t * cols_t, s->bits[t], s->packed + s->code_bytes);
        s->code_bytes += (rows_t * cols_t * s->bits[t] + 7) / 8;
        free(tile_codes);
    }
}

static void synthetic_free(synthetic *s)
{
    free(s->bits);
    free(s->codes);
    free(s->scales);
    free(s->zeros);
    free(s->tile_scales);
    free(s->packed);
}

/* The weight at (r, c) by FORMAT.md's rule for the tensor's encoding. */
static float synthetic_weight(const synthetic *s, int64_t r, int64_t c)
{
    int64_t g = c / s->group;
    unsigned q = s->codes[r * s->cols + c];
    if (s->q8) {
        int64_t across = (s->cols + s->tile_cols - 1) / s->tile_cols;
        int64_t t = r / s->tile_rows * across + c / s->tile_cols;
        return spec_q8_weight(s->tile_scales[t], s->scales[r * s->groups + g], s->zeros[r * s->groups + g], s->bits[t],
                              q);
    }
    return reference_f16(s->scales[r * s->groups + g]) * (float)q + reference_f16(s->zeros[r * s->groups + g]);
}

static void write_synthetic_file(const char *path, synthetic *tensors, int ntensors, const float *norm,
                                 const uint16_t *embed_bf16, const uint16_t *head_f16)
{
    sb_h5_writer *writer;
    sb_error err;
    if (sb_h5_writer_create(path, NULL, MPI_COMM_WORLD, &writer, &err) != SB_OK) {
        fprintf(stderr, "cannot create %s: %s\n", path, err.message);
        exit(1);
    }
    int64_t weights = 0, stored = 0, tiles = 0;
    const char *encoding = tensors[0].q8 ? "affine-q8" : "affine-f16"; /* one for the file */
    for (int i = 0; i < ntensors; i++) {
        synthetic *s = &tensors[i];
        sb_h5_quantized_desc desc = {s->name, s->rows, s->cols, s->tile_rows, s->tile_cols, s->group, s->tiles,
                                     s->code_bytes, "BF16", s->role, s->layer, encoding, 0, NULL};
        int handle;
        SB_CHECK(sb_h5_define_quantized(writer, &desc, &handle, &err) == SB_OK);
        uint8_t *bitmap = calloc((size_t)(s->tiles + 1) / 2, 1);
        for (int64_t t = 0; t < s->tiles; t++)
            bitmap[t / 2] |= (uint8_t)(s->bits[t] << (t % 2 ? 4 : 0));
        SB_CHECK(sb_h5_write_codes(writer, handle, 0, s->code_bytes, s->packed, &err) == SB_OK);
        SB_CHECK(sb_h5_write_bitmap(writer, handle, bitmap, &err) == SB_OK);
        SB_CHECK(sb_h5_write_scale_rows(writer, handle, 0, s->rows, s->scales, s->zeros, &err) == SB_OK);
        if (s->q8) /* in two calls, as ranks write their tile rows */
            SB_CHECK(sb_h5_write_tile_scales(writer, handle, 0, 1, s->tile_scales, &err) == SB_OK &&
                     sb_h5_write_tile_scales(writer, handle, 1, s->tiles - 1, s->tile_scales + 1, &err) == SB_OK);
        free(bitmap);
        weights += s->rows * s->cols;
        tiles += s->tiles;
        /* FORMAT.md */
        stored += 8 * s->code_bytes + 8 * ((s->tiles + 1) / 2) +
                  (s->q8 ? 16 * s->rows * s->groups + 16 * s->tiles : 32 * s->rows * s->groups);
    }
    int handle;
    SB_CHECK(sb_h5_define_passthrough(writer, "model.norm.weight", "F32", 1, (int64_t[]){45}, &handle, &err) == SB_OK);
    SB_CHECK(sb_h5_write_passthrough_rows(writer, handle, 0, 1, norm, &err) == SB_OK);
    SB_CHECK(sb_h5_define_passthrough(writer, "model.embed_tokens.weight", "BF16", 2, (int64_t[]){7, 45}, &handle,
                                      &err) == SB_OK);
    SB_CHECK(sb_h5_write_passthrough_rows(writer, handle, 0, 7, embed_bf16, &err) == SB_OK);
    SB_CHECK(sb_h5_define_passthrough(writer, "lm_head.weight", "F16", 2, (int64_t[]){7, 45}, &handle, &err) == SB_OK);
    SB_CHECK(sb_h5_write_passthrough_rows(writer, handle, 0, 7, head_f16, &err) == SB_OK);
    /* the allocation hash in canonical order: tensors[] is given in that order */
    sb_sha256 hash;
    sb_sha256_init(&hash);
    for (int i = 0; i < ntensors; i++)
        sb_sha256_update(&hash, tensors[i].bits, (size_t)tensors[i].tiles);
    uint8_t digest[32];
    char hex[65];
    sb_sha256_final(&hash, digest);
    sb_sha256_hex(digest, hex);
    SB_CHECK(sb_h5_root_string(writer, "format", "scalebits", &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "format_version", (int64_t[]){1}, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_root_double(writer, "budget_bpw", 9.0, &err) == SB_OK);
    SB_CHECK(sb_h5_root_double(writer, "achieved_bpw", (double)stored / (double)weights, &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "stored_bits", &stored, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "quantized_weights", &weights, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "tiles", &tiles, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_root_string(writer, "allocation_sha256", hex, &err) == SB_OK);
    SB_CHECK(sb_h5_root_string(writer, "encoding", encoding, &err) == SB_OK);
    SB_CHECK(sb_h5_root_string(writer, "config_json", "{\"model_type\": \"llama\"}", &err) == SB_OK);
    SB_CHECK(sb_h5_writer_commit(writer, &err) == SB_OK);
}

static void test_known_codes(sb_test_rng *rng, bool q8)
{
    /* canonical order: q_proj before down_proj of the same layer */
    synthetic tensors[2] = {
        /* one tile column 40 wide, a ragged last tile row of 1; groups of 40 */
        {.name = "model.layers.0.self_attn.q_proj.weight", .role = "q_proj", .layer = 0, .rows = 33, .cols = 40,
         .tile_rows = 32, .tile_cols = 40, .group = 40},
        /* 70 x 45 in 16 x 24 tiles: ragged in both directions (6 rows, 21 columns); groups of 8
         * end in a 5-wide group at column 40 */
        {.name = "model.layers.0.mlp.down_proj.weight", .role = "down_proj", .layer = 0, .rows = 70, .cols = 45,
         .tile_rows = 16, .tile_cols = 24, .group = 8},
    };
    const char *encoding = q8 ? "affine-q8" : "affine-f16";
    tensors[0].q8 = tensors[1].q8 = q8;
    synthetic_make(&tensors[0], rng, 3);
    synthetic_make(&tensors[1], rng, 1);
    float norm[45];
    uint16_t embed[7 * 45], head[7 * 45];
    for (int i = 0; i < 45; i++)
        norm[i] = (float)sb_test_normal(rng);
    for (int i = 0; i < 7 * 45; i++) {
        embed[i] = sb_f32_to_bf16((float)sb_test_normal(rng));
        head[i] = sb_f32_to_f16((float)sb_test_normal(rng));
    }
    char path[4200];
    sb_test_format(path, sizeof path, "%s/known-%s.h5", work, encoding);
    write_synthetic_file(path, tensors, 2, norm, embed, head);

    sb_h5_reader reader;
    sb_error err;
    sb_status status = sb_h5_reader_open(path, &reader, &err);
    SB_CHECK_MSG(status == SB_OK, "open: %s", err.message);
    if (status != SB_OK)
        return;
    SB_CHECK(reader.nquantized == 2 && reader.npassthrough == 3);
    SB_CHECK(strcmp(reader.quantized[0].role, "q_proj") == 0 && strcmp(reader.quantized[1].role, "down_proj") == 0);
    SB_CHECK(strcmp(reader.passthrough[0].name, "model.embed_tokens.weight") == 0);
    SB_CHECK(strcmp(reader.passthrough[2].name, "lm_head.weight") == 0);
    for (int i = 0; i < 2; i++) {
        synthetic *s = &tensors[i];
        const sb_h5_quantized *tensor = sb_h5_find_quantized(&reader, s->name);
        SB_CHECK(tensor && tensor->rows == s->rows && tensor->cols == s->cols && tensor->tiles == s->tiles);
        if (!tensor)
            continue;
        SB_CHECK(tensor->source_dtype == SB_DTYPE_BF16 && tensor->layer == 0);
        SB_CHECK(memcmp(tensor->bits_per_tile, s->bits, (size_t)s->tiles) == 0);
        SB_CHECK(tensor->code_bytes == s->code_bytes);
        SB_CHECK_MSG(tensor->format == (q8 ? SB_SCALES_Q8 : SB_SCALES_F16), "%s: %s", s->name, encoding);
        if (q8)
            SB_CHECK_MSG(tensor->tile_scales && memcmp(tensor->tile_scales, s->tile_scales, (size_t)s->tiles * 2) == 0,
                         "%s: tile bounds as written", s->name);
        else
            SB_CHECK(tensor->tile_scales == NULL);
        float *values = malloc((size_t)(s->rows * s->cols) * sizeof *values);
        SB_CHECK(sb_h5_dequantize_rows(&reader, tensor, 0, s->rows, values, &err) == SB_OK);
        int64_t differ = 0;
        for (int64_t r = 0; r < s->rows; r++)
            for (int64_t c = 0; c < s->cols; c++) {
                float expected = synthetic_weight(s, r, c);
                differ += memcmp(&expected, &values[r * s->cols + c], sizeof(float)) != 0;
            }
        SB_CHECK_MSG(differ == 0, "%s (%s): %lld weights differ from the known codes", s->name, encoding,
                     (long long)differ);
        /* the packed bytes of every tile, as the spec lays them out */
        int64_t offset = 0;
        for (int64_t t = 0; t < s->tiles; t++) {
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            int64_t bytes = (rect.rows * (int64_t)rect.cols * s->bits[t] + 7) / 8;
            uint8_t *packed = malloc((size_t)bytes);
            SB_CHECK(sb_h5_read_tile_codes(&reader, tensor, t, packed, &err) == SB_OK);
            SB_CHECK_MSG(memcmp(packed, s->packed + offset, (size_t)bytes) == 0, "%s tile %lld bytes", s->name,
                         (long long)t);
            offset += bytes;
            free(packed);
        }
        free(values);
    }
    /* pass-through: raw bytes as written, float32 exactly */
    const sb_h5_passthrough *norm_tensor = sb_h5_find_passthrough(&reader, "model.norm.weight");
    const sb_h5_passthrough *embed_tensor = sb_h5_find_passthrough(&reader, "model.embed_tokens.weight");
    const sb_h5_passthrough *head_tensor = sb_h5_find_passthrough(&reader, "lm_head.weight");
    SB_CHECK(norm_tensor && embed_tensor && head_tensor);
    if (norm_tensor && embed_tensor && head_tensor) {
        SB_CHECK(norm_tensor->dtype == SB_DTYPE_F32 && norm_tensor->ndim == 1 && norm_tensor->rows == 1);
        SB_CHECK(embed_tensor->dtype == SB_DTYPE_BF16 && embed_tensor->rows == 7 && embed_tensor->cols == 45);
        SB_CHECK(head_tensor->dtype == SB_DTYPE_F16 && head_tensor->nbytes == 7 * 45 * 2);
        float values[7 * 45];
        uint16_t raw[7 * 45];
        SB_CHECK(sb_h5_read_passthrough_f32(&reader, norm_tensor, 0, 1, values, &err) == SB_OK);
        SB_CHECK(memcmp(values, norm, sizeof norm) == 0);
        SB_CHECK(sb_h5_read_passthrough_raw(&reader, embed_tensor, 0, 7, raw, &err) == SB_OK);
        SB_CHECK(memcmp(raw, embed, sizeof embed) == 0);
        SB_CHECK(sb_h5_read_passthrough_raw(&reader, head_tensor, 0, 7, raw, &err) == SB_OK);
        SB_CHECK(memcmp(raw, head, sizeof head) == 0);
        SB_CHECK(sb_h5_read_passthrough_f32(&reader, embed_tensor, 2, 3, values, &err) == SB_OK);
        bool same = true;
        for (int i = 0; i < 3 * 45; i++)
            same &= values[i] == sb_bf16_to_f32(embed[2 * 45 + i]);
        SB_CHECK_MSG(same, "BF16 rows 2..5 widen exactly");
        SB_CHECK(sb_h5_read_passthrough_f32(&reader, head_tensor, 0, 7, values, &err) == SB_OK);
        same = true;
        for (int i = 0; i < 7 * 45; i++)
            same &= values[i] == reference_f16(head[i]);
        SB_CHECK_MSG(same, "F16 widens exactly");
    }
    sb_h5_reader_close(&reader);
    sb_test_rng again = {99};
    check_against_reference(path, encoding, &again);
    synthetic_free(&tensors[0]);
    synthetic_free(&tensors[1]);
}

/* ---- 2. and 3. the pipeline's own files ---------------------------------------------------- */

static void run_quantizer(const char *args, const char *out)
{
    char command[12000];
    sb_test_format(command, sizeof command, "cd '%s' && '%s/scalebits-mpi' %s --out '%s' --quiet > mpi.log 2>&1", work, build,
             args, out);
    if (system(command) != 0) {
        sb_test_format(command, sizeof command, "cat '%s/mpi.log'", work);
        (void)system(command);
        fprintf(stderr, "scalebits-mpi %s failed\n", args);
        exit(1);
    }
}

/* `scales` is the --scales value ("" for the default), `encoding` what the file must hold. */
static void test_pipeline_file(sb_test_rng *rng, const char *scales, const char *encoding)
{
    char path[4200], args[256];
    sb_test_format(path, sizeof path, "%s/ragged-%s.h5", work, encoding);
    sb_test_format(args, sizeof args, "--tile 48x40 --group 8 --bits 1,3,5,8 --budget 7.5%s%s", scales[0] ? " --scales " : "",
             scales);
    run_quantizer(args, path);
    check_against_reference(path, encoding, rng);
    int64_t stored = root_int64(path, "stored_bits");
    SB_CHECK_MSG(stored == storage_bits(path), "stored_bits %lld vs storage %lld", (long long)stored,
                 (long long)storage_bits(path));
    sb_h5_reader reader;
    sb_error err;
    if (sb_h5_reader_open(path, &reader, &err) == SB_OK) {
        bool several_bitwidths = false;
        for (int i = 0; i < reader.nquantized; i++)
            for (int64_t t = 1; t < reader.quantized[i].tiles; t++)
                several_bitwidths |= reader.quantized[i].bits_per_tile[t] != reader.quantized[0].bits_per_tile[0];
        SB_CHECK_MSG(several_bitwidths, "the allocation mixes bitwidths (else the test proves less)");
        SB_CHECK(reader.root.achieved_bpw <= 7.5);
        sb_h5_reader_close(&reader);
    }
}

/* The largest error an 8-bit weight of a group with source values in [low, high] may have,
 * in the tile with bound D (affine-q8 only).
 *
 * affine-f16: one step (range / 255; the scale search may clip, which moves an outlier by up
 * to a step) plus the F16 rounding of scale (x 255 codes) and zero.
 *
 * affine-q8: the grid always holds 0 (FORMAT.md), so the range is widened to include it, and
 * at 8 bits the zero point z = c is a whole level, so the grid is {S x k}: rounding to it costs
 * half a step, and clipping (as above) up to a step. The step S = D x M[s]: the nearest code
 * s to the group's ideal step is within 2^(1/64) of it and the neighbour search moves it by at
 * most one more code, 2^(1/32); but no code is below M[255] = 2^(-255/32), so a group far
 * smaller than its tile's largest gets the step D x M[255]. */
static double eight_bit_bound(bool q8, float low, float high, float tile_bound)
{
    if (!q8) {
        double step = (high - low) / 255.0;
        return step + 255 * step * 0x1p-11 + fmax(fabs(low), fabs(high)) * 0x1p-11 + 1e-30;
    }
    double range = fmax(high, 0) - fmin(low, 0);
    double step = fmax(range / 255.0 * exp2(3.0 / 64), (double)tile_bound * exp2(-255.0 / 32));
    return step + 1e-30;
}

/* The F16 bound D of the tile holding (r, c), as a float (0 for affine-f16). */
static float tile_bound_at(const sb_h5_quantized *tensor, int64_t r, int64_t c)
{
    if (tensor->format != SB_SCALES_Q8)
        return 0;
    int64_t t = r / tensor->tile_rows * tensor->tiling.tiles_across + c / tensor->tile_cols;
    return reference_f16(tensor->tile_scales[t]);
}

/* All tiles at 8 bits: dequantized weights within 8-bit quantization error of the source
 * (eight_bit_bound). `scales` is the --scales value ("" for the default). */
static void test_eight_bit_error(const char *scales, const char *encoding)
{
    char path[4200], model_dir[4200], args[256];
    sb_test_format(path, sizeof path, "%s/all8-%s.h5", work, encoding);
    sb_test_format(model_dir, sizeof model_dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    sb_test_format(args, sizeof args, "--tile 48x40 --group 8 --bits 8 --budget 16%s%s", scales[0] ? " --scales " : "",
             scales);
    run_quantizer(args, path);
    bool q8 = strcmp(encoding, "affine-q8") == 0;
    sb_h5_reader reader;
    sb_checkpoint checkpoint;
    sb_error err;
    if (sb_h5_reader_open(path, &reader, &err) != SB_OK || sb_checkpoint_open(model_dir, &checkpoint, &err) != SB_OK) {
        SB_CHECK_MSG(false, "open: %s", err.message);
        return;
    }
    double worst = 0; /* max over weights of |error| / bound */
    int64_t over = 0; /* weights beyond their bound */
    char worst_at[1400] = "";
    for (int i = 0; i < reader.nquantized; i++) {
        const sb_h5_quantized *tensor = &reader.quantized[i];
        SB_CHECK_MSG(tensor->format == (q8 ? SB_SCALES_Q8 : SB_SCALES_F16), "%s is %s", tensor->name, encoding);
        const sb_tensor_info *info = sb_checkpoint_find(&checkpoint, tensor->name);
        SB_CHECK_MSG(info != NULL, "%s is in the source", tensor->name);
        if (!info || tensor->format != (q8 ? SB_SCALES_Q8 : SB_SCALES_F16))
            continue;
        int64_t count = tensor->rows * tensor->cols;
        float *source = malloc((size_t)count * sizeof *source), *decoded = malloc((size_t)count * sizeof *decoded);
        SB_CHECK(sb_checkpoint_read_rows(&checkpoint, info, 0, tensor->rows, false, source, &err) == SB_OK);
        SB_CHECK(sb_h5_dequantize_rows(&reader, tensor, 0, tensor->rows, decoded, &err) == SB_OK);
        for (int64_t r = 0; r < tensor->rows; r++)
            for (int64_t c0 = 0; c0 < tensor->cols; c0 += tensor->group) {
                int64_t c1 = c0 + tensor->group < tensor->cols ? c0 + tensor->group : tensor->cols;
                float low = INFINITY, high = -INFINITY;
                for (int64_t c = c0; c < c1; c++) {
                    low = fminf(low, source[r * tensor->cols + c]);
                    high = fmaxf(high, source[r * tensor->cols + c]);
                }
                double bound = eight_bit_bound(q8, low, high, tile_bound_at(tensor, r, c0));
                for (int64_t c = c0; c < c1; c++) {
                    double error = fabs((double)decoded[r * tensor->cols + c] - source[r * tensor->cols + c]);
                    over += error > bound;
                    if (error / bound > worst) {
                        worst = error / bound;
                        sb_test_format(worst_at, sizeof worst_at,
                                 "%s row %lld column %lld: source %.6g in [%.6g, %.6g], decoded %.6g", tensor->name,
                                 (long long)r, (long long)c, source[r * tensor->cols + c], low, high,
                                 decoded[r * tensor->cols + c]);
                    }
                }
            }
        free(source);
        free(decoded);
    }
    printf("8-bit tiles, %s: worst error is %.3f of the bound (%s)\n", encoding, worst, worst_at);
    SB_CHECK_MSG(worst <= 1.0, "%s: %lld weights beyond the 8-bit bound, the worst %.3f x the bound: %s", encoding,
                 (long long)over, worst, worst_at);
    sb_checkpoint_close(&checkpoint);
    sb_h5_reader_close(&reader);
}

/* scalebits-export of the all-8-bit file: every source tensor is there with its shape and dtype;
 * pass-through tensors are byte-identical; quantized ones are the reader's values rounded to the
 * source dtype (BF16) and so within the 8-bit bound above plus one BF16 rounding. */
static void test_export_matches_source(const char *encoding)
{
    char path[4200], out[4200], model_dir[4200], command[12000];
    sb_test_format(path, sizeof path, "%s/all8-%s.h5", work, encoding);
    sb_test_format(out, sizeof out, "%s/export8-%s", work, encoding);
    sb_test_format(model_dir, sizeof model_dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    sb_test_format(command, sizeof command, "'%s/scalebits-export' '%s' --out '%s' > /dev/null", build, path, out);
    SB_CHECK_MSG(system(command) == 0, "%s", command);
    sb_h5_reader reader;
    sb_checkpoint source, exported;
    sb_error err;
    if (sb_h5_reader_open(path, &reader, &err) != SB_OK || sb_checkpoint_open(model_dir, &source, &err) != SB_OK ||
        sb_checkpoint_open(out, &exported, &err) != SB_OK) {
        SB_CHECK_MSG(false, "open: %s", err.message);
        return;
    }
    SB_CHECK(exported.ntensors == source.ntensors);
    double worst = 0;
    int64_t not_rounded = 0;
    for (int i = 0; i < source.ntensors; i++) {
        const sb_tensor_info *want = &source.tensors[i];
        const sb_tensor_info *got = sb_checkpoint_find(&exported, want->name);
        SB_CHECK_MSG(got != NULL, "%s exported", want->name);
        if (!got)
            continue;
        SB_CHECK_MSG(got->dtype == want->dtype && got->ndim == want->ndim &&
                         memcmp(got->shape, want->shape, sizeof(int64_t) * (size_t)want->ndim) == 0,
                     "%s: dtype and shape as in the source", want->name);
        const sb_h5_quantized *tensor = sb_h5_find_quantized(&reader, want->name);
        if (!tensor) {
            uint8_t *a = malloc(want->nbytes), *b = malloc(got->nbytes);
            SB_CHECK(sb_checkpoint_read_raw(&source, want, a, &err) == SB_OK);
            SB_CHECK(sb_checkpoint_read_raw(&exported, got, b, &err) == SB_OK);
            SB_CHECK_MSG(want->nbytes == got->nbytes && memcmp(a, b, want->nbytes) == 0, "%s copied bit for bit",
                         want->name);
            free(a);
            free(b);
            continue;
        }
        int64_t count = tensor->rows * tensor->cols;
        float *original = malloc((size_t)count * 4), *decoded = malloc((size_t)count * 4), *written = malloc((size_t)count * 4);
        SB_CHECK(sb_checkpoint_read_rows(&source, want, 0, tensor->rows, false, original, &err) == SB_OK);
        SB_CHECK(sb_checkpoint_read_rows(&exported, got, 0, tensor->rows, false, written, &err) == SB_OK);
        SB_CHECK(sb_h5_dequantize_rows(&reader, tensor, 0, tensor->rows, decoded, &err) == SB_OK);
        for (int64_t r = 0; r < tensor->rows; r++)
            for (int64_t c0 = 0; c0 < tensor->cols; c0 += tensor->group) {
                int64_t c1 = c0 + tensor->group < tensor->cols ? c0 + tensor->group : tensor->cols;
                float low = INFINITY, high = -INFINITY;
                for (int64_t c = c0; c < c1; c++) {
                    low = fminf(low, original[r * tensor->cols + c]);
                    high = fmaxf(high, original[r * tensor->cols + c]);
                }
                double quantized_bound = eight_bit_bound(tensor->format == SB_SCALES_Q8, low, high,
                                                         tile_bound_at(tensor, r, c0));
                for (int64_t c = c0; c < c1; c++) {
                    int64_t k = r * tensor->cols + c;
                    not_rounded += written[k] != sb_bf16_to_f32(sb_f32_to_bf16(decoded[k]));
                    double bound = quantized_bound + fabs(written[k]) * 0x1p-8; /* plus one BF16 rounding */
                    worst = fmax(worst, fabs((double)written[k] - original[k]) / bound);
                }
            }
        free(original);
        free(decoded);
        free(written);
    }
    printf("export of 8-bit tiles, %s: worst error is %.3f of the bound\n", encoding, worst);
    SB_CHECK_MSG(not_rounded == 0, "%s: %lld exported weights are not the BF16 rounding of the reader's", encoding,
                 (long long)not_rounded);
    SB_CHECK_MSG(worst <= 1.0, "%s: worst exported 8-bit error %.3f x the bound", encoding, worst);
    sb_checkpoint_close(&exported);
    sb_checkpoint_close(&source);
    sb_h5_reader_close(&reader);
}

/* ---- 4. broken files ------------------------------------------------------------------------ */

/* Opening `path` fails with `status` and a message holding every string of `expect`; and
 * scalebits-inspect prints one error line and exits 1. */
static void expect_open_error(const char *label, const char *path, sb_status expected,
                              const char *const *expect)
{
    sb_h5_reader reader;
    sb_error err;
    sb_error_clear(&err);
    sb_status status = sb_h5_reader_open(path, &reader, &err);
    SB_CHECK_MSG(status == expected, "%s: status %d (%s), expected %d", label, status, err.message, expected);
    for (const char *const *s = expect; *s; s++)
        SB_CHECK_MSG(strstr(err.message, *s) != NULL, "%s: message '%s' lacks '%s'", label, err.message, *s);
    printf("%s: %s\n", label, err.message);
    char command[12000], log[4200];
    sb_test_format(log, sizeof log, "%s/inspect.err", work);
    sb_test_format(command, sizeof command, "'%s/scalebits-inspect' '%s' > /dev/null 2> '%s'", build, path, log);
    int rc = system(command);
    SB_CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "%s: scalebits-inspect exit status %d", label,
                 WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
    FILE *file = fopen(log, "r");
    int lines = 0, c;
    while (file && (c = fgetc(file)) != EOF)
        lines += c == '\n';
    if (file)
        fclose(file);
    SB_CHECK_MSG(lines == 1, "%s: scalebits-inspect printed %d lines on stderr", label, lines);
}

/* A copy of `source` at work/<name>, opened read-write with plain serial HDF5. */
static hid_t broken_copy(const char *source, const char *name, char *path, size_t size)
{
    snprintf(path, size, "%s/%s", work, name);
    char command[12000];
    sb_test_format(command, sizeof command, "cp '%s' '%s'", source, path);
    shell(command);
    return H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
}

/* Replaces dataset `link` by an empty one of `type` and extents `dims` (rank 1 or 2). */
static void replace_dataset(hid_t file, const char *link, hid_t type, int rank, const hsize_t *dims)
{
    H5Ldelete(file, link, H5P_DEFAULT);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dataset = H5Dcreate2(file, link, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(dataset);
    H5Sclose(space);
}

/* Sets the string attribute `name` of the object at `object_path` to `value`. */
static void set_string_attribute(hid_t file, const char *object_path, const char *name, const char *value)
{
    hid_t object = H5Oopen(file, object_path, H5P_DEFAULT);
    H5Adelete(object, name);
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR);
    H5Tset_size(type, strlen(value) + 1);
    hid_t attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attr, type, value);
    H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    H5Oclose(object);
}

/* affine-q8 specific damage: tile_scales missing, of the wrong length, type or rank; scales of
 * the other encoding's type; an unknown encoding. And a stray dataset in an affine-f16 file: the
 * reader decodes the file, but the recount charges it and scalebits-inspect says so. */
static void test_broken_q8_files(void)
{
    char good[4200], good_f16[4200], path[4200], link[1024];
    sb_test_format(good, sizeof good, "%s/ragged-affine-q8.h5", work);
    sb_test_format(good_f16, sizeof good_f16, "%s/ragged-affine-f16.h5", work);
    const char *tensor = "model.layers.1.mlp.up_proj.weight";
    int64_t tiles = 0, rows = 0, groups = 0;
    sb_h5_reader reader;
    sb_error err;
    if (sb_h5_reader_open(good, &reader, &err) == SB_OK) {
        const sb_h5_quantized *q = sb_h5_find_quantized(&reader, tensor);
        SB_CHECK(q != NULL);
        if (q) {
            tiles = q->tiles;
            rows = q->rows;
            groups = q->tiling.groups_per_row;
        }
        sb_h5_reader_close(&reader);
    }
    SB_CHECK_MSG(tiles > 1, "%s has several tiles", tensor);
    char tile_scales[1100], group_path[1100];
    sb_test_format(tile_scales, sizeof tile_scales, "/tensors/%s/tile_scales", tensor);
    sb_test_format(group_path, sizeof group_path, "/tensors/%s", tensor);
    hid_t f16 = (hid_t)sb_h5_f16_type();

    hid_t file = broken_copy(good, "q8-no-tile-scales.h5", path, sizeof path);
    H5Ldelete(file, tile_scales, H5P_DEFAULT);
    H5Fclose(file);
    expect_open_error("q8 without tile_scales", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "'tile_scales' is missing", NULL});

    for (int delta = -1; delta <= 1; delta += 2) {
        char name[64], expected[128];
        sb_test_format(name, sizeof name, "q8-tile-scales%+d.h5", delta);
        file = broken_copy(good, name, path, sizeof path);
        hsize_t length = (hsize_t)(tiles + delta);
        replace_dataset(file, tile_scales, f16, 1, &length);
        H5Fclose(file);
        sb_test_format(expected, sizeof expected, "'tile_scales' holds %lld values for %lld tiles", (long long)(tiles + delta),
                 (long long)tiles);
        expect_open_error(name, path, SB_ERR_FORMAT, (const char *[]){path, tensor, expected, NULL});
    }

    file = broken_copy(good, "q8-tile-scales-f32.h5", path, sizeof path);
    hsize_t length = (hsize_t)tiles;
    replace_dataset(file, tile_scales, H5T_IEEE_F32LE, 1, &length);
    H5Fclose(file);
    expect_open_error("q8 tile_scales as float32", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "'tile_scales' does not hold 16-bit float", NULL});

    file = broken_copy(good, "q8-tile-scales-2d.h5", path, sizeof path);
    replace_dataset(file, tile_scales, f16, 2, (hsize_t[]){(hsize_t)tiles, 1});
    H5Fclose(file);
    expect_open_error("q8 tile_scales 2-D", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "'tile_scales' has 2 dimensions", NULL});

    file = broken_copy(good, "q8-f16-scales.h5", path, sizeof path);
    sb_test_format(link, sizeof link, "/tensors/%s/scales", tensor);
    replace_dataset(file, link, f16, 2, (hsize_t[]){(hsize_t)rows, (hsize_t)groups});
    H5Fclose(file);
    expect_open_error("q8 with float16 scales", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "'scales' does not hold uint8", NULL});

    file = broken_copy(good, "q8-says-f16.h5", path, sizeof path);
    set_string_attribute(file, group_path, "encoding", "affine-f16");
    H5Fclose(file);
    expect_open_error("q8 datasets under encoding affine-f16", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "'scales' does not hold 16-bit float", NULL});

    file = broken_copy(good_f16, "f16-says-q8.h5", path, sizeof path);
    set_string_attribute(file, group_path, "encoding", "affine-q8");
    H5Fclose(file);
    expect_open_error("f16 datasets under encoding affine-q8", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "'scales' does not hold uint8", NULL});

    file = broken_copy(good, "q8-unknown-encoding.h5", path, sizeof path);
    set_string_attribute(file, group_path, "encoding", "affine-q4");
    H5Fclose(file);
    expect_open_error("unknown encoding", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "encoding 'affine-q4' is not known", NULL});

    /* a stray tile_scales in an affine-f16 file (written, so that it has storage) */
    file = broken_copy(good_f16, "f16-stray-tile-scales.h5", path, sizeof path);
    {
        hsize_t count = (hsize_t)tiles;
        hid_t space = H5Screate_simple(1, &count, NULL);
        hid_t dataset = H5Dcreate2(file, tile_scales, f16, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        uint16_t *ones = malloc((size_t)tiles * sizeof *ones);
        for (int64_t t = 0; t < tiles; t++)
            ones[t] = 0x3c00;
        H5Dwrite(dataset, f16, H5S_ALL, H5S_ALL, H5P_DEFAULT, ones);
        free(ones);
        H5Dclose(dataset);
        H5Sclose(space);
    }
    H5Fclose(file);
    if (sb_h5_reader_open(path, &reader, &err) == SB_OK) {
        int64_t recount = 0, datasets = 0;
        SB_CHECK(sb_h5_recount_stored_bits(&reader, &recount, &datasets, &err) == SB_OK);
        SB_CHECK_MSG(recount == reader.root.stored_bits + 16 * tiles, "the stray dataset is charged: %lld vs %lld + %lld",
                     (long long)recount, (long long)reader.root.stored_bits, (long long)(16 * tiles));
        sb_h5_reader_close(&reader);
    } else {
        SB_CHECK_MSG(false, "a stray dataset does not stop the reader: %s", err.message);
    }
    char command[12000], log[4200];
    sb_test_format(log, sizeof log, "%s/inspect-stray.txt", work);
    sb_test_format(command, sizeof command, "'%s/scalebits-inspect' '%s' > '%s' 2>&1", build, path, log);
    int rc = system(command);
    SB_CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "inspect of a stray dataset: exit status %d",
                 WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
    sb_test_format(command, sizeof command, "grep -q 'PROBLEM: the datasets under /tensors store' '%s'", log);
    SB_CHECK_MSG(system(command) == 0, "inspect names the stray bits against FORMAT.md's charge (see %s)", log);
    H5Tclose(f16);
}

static void test_broken_files(void)
{
    char good[4200], path[4200], command[12000];
    sb_test_format(good, sizeof good, "%s/ragged-affine-q8.h5", work);
    const char *tensor = "model.layers.1.mlp.up_proj.weight";

    sb_test_format(path, sizeof path, "%s/text.h5", work);
    FILE *text = fopen(path, "w");
    fputs("this is not HDF5\n", text);
    fclose(text);
    expect_open_error("text file", path, SB_ERR_FORMAT, (const char *[]){path, "not a scalebits file", NULL});

    sb_test_format(path, sizeof path, "%s/truncated.h5", work);
    sb_test_format(command, sizeof command, "head -c 20000 '%s' > '%s'", good, path);
    shell(command);
    expect_open_error("truncated file", path, SB_ERR_FORMAT, (const char *[]){path, "truncated or corrupt", NULL});

    sb_test_format(path, sizeof path, "%s/missing.h5", work);
    expect_open_error("missing file", path, SB_ERR_IO, (const char *[]){path, "No such file", NULL});

    hid_t file = broken_copy(good, "no-format.h5", path, sizeof path);
    H5Adelete(file, "format");
    H5Fclose(file);
    expect_open_error("HDF5 but not scalebits", path, SB_ERR_FORMAT,
                      (const char *[]){path, "not a scalebits file", NULL});

    file = broken_copy(good, "no-scales.h5", path, sizeof path);
    char link[1024];
    sb_test_format(link, sizeof link, "/tensors/%s/scales", tensor);
    H5Ldelete(file, link, H5P_DEFAULT);
    H5Fclose(file);
    expect_open_error("missing dataset", path, SB_ERR_FORMAT, (const char *[]){path, tensor, "'scales' is missing", NULL});

    /* one byte more of codes than the bit map implies: rewrite the dataset one byte longer */
    file = broken_copy(good, "long-codes.h5", path, sizeof path);
    sb_test_format(link, sizeof link, "/tensors/%s/codes", tensor);
    hid_t dataset = H5Dopen2(file, link, H5P_DEFAULT);
    hid_t space = H5Dget_space(dataset);
    hsize_t length = (hsize_t)H5Sget_simple_extent_npoints(space) + 1;
    H5Sclose(space);
    H5Dclose(dataset);
    H5Ldelete(file, link, H5P_DEFAULT);
    space = H5Screate_simple(1, &length, NULL);
    dataset = H5Dcreate2(file, link, H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    /* written, so that it is stored: an unwritten dataset is refused before its length matters */
    uint8_t *zero_codes = calloc(length, 1);
    H5Dwrite(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, zero_codes);
    free(zero_codes);
    H5Dclose(dataset);
    H5Sclose(space);
    H5Fclose(file);
    expect_open_error("codes length", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "'codes' holds", "bit map and shape imply", NULL});

    for (int bad = 0; bad <= 9; bad += 9) {
        char name[64];
        sb_test_format(name, sizeof name, "bitwidth-%d.h5", bad);
        file = broken_copy(good, name, path, sizeof path);
        sb_test_format(link, sizeof link, "/tensors/%s/bitmap", tensor);
        dataset = H5Dopen2(file, link, H5P_DEFAULT);
        uint8_t bitmap[64];
        H5Dread(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bitmap);
        bitmap[0] = (uint8_t)((bitmap[0] & 0xf0) | bad);
        H5Dwrite(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bitmap);
        H5Dclose(dataset);
        H5Fclose(file);
        char expected[64];
        sb_test_format(expected, sizeof expected, "tile 0 a bitwidth of %d", bad);
        expect_open_error(name, path, SB_ERR_FORMAT, (const char *[]){path, tensor, expected, NULL});
    }

    file = broken_copy(good, "version-2.h5", path, sizeof path);
    hid_t attr = H5Aopen(file, "format_version", H5P_DEFAULT);
    int64_t version = 2;
    H5Awrite(attr, H5T_NATIVE_INT64, &version);
    H5Aclose(attr);
    H5Fclose(file);
    expect_open_error("newer format", path, SB_ERR_FORMAT, (const char *[]){path, "format_version 2", NULL});
}

/* ---- 5. expert stacks (docs/FORMAT.md, "Experts") --------------------------------------------- */

/* A file with a plain q_proj and a stack of three experts' down_proj of layer 1, written out of
 * order and in pieces (as ranks write their units); `duplicate` adds expert 1 again as a group of
 * its own. */
static void write_stack_file(const char *path, synthetic *plain, synthetic *experts, int nexperts, bool duplicate)
{
    sb_h5_writer *writer;
    sb_error err;
    SB_CHECK(sb_h5_writer_create(path, NULL, MPI_COMM_WORLD, &writer, &err) == SB_OK);
    const char *encoding = plain->q8 ? "affine-q8" : "affine-f16";
    int64_t weights = 0, stored = 0, tiles = 0, code_bytes[8], total_code_bytes = 0;
    synthetic *all[9] = {plain};
    for (int e = 0; e < nexperts; e++) {
        code_bytes[e] = experts[e].code_bytes;
        total_code_bytes += code_bytes[e];
        all[1 + e] = &experts[e];
    }
    sb_h5_quantized_desc desc = {plain->name, plain->rows, plain->cols, plain->tile_rows, plain->tile_cols, plain->group,
                                 plain->tiles, plain->code_bytes, "BF16", plain->role, plain->layer, encoding, 0, NULL};
    int handles[9];
    SB_CHECK(sb_h5_define_quantized(writer, &desc, &handles[0], &err) == SB_OK);
    synthetic *x = &experts[0];
    sb_h5_quantized_desc stack = {"model.layers.1.mlp.experts.down_proj.weight", x->rows, x->cols, x->tile_rows,
                                  x->tile_cols, x->group, x->tiles, total_code_bytes, "F8_E4M3", "down_proj", 1,
                                  encoding, nexperts, code_bytes};
    SB_CHECK(sb_h5_define_quantized(writer, &stack, &handles[1], &err) == SB_OK);
    for (int e = 1; e < nexperts; e++)
        handles[1 + e] = handles[1] + e;
    int extra = -1;
    if (duplicate) {
        synthetic *d = &experts[1];
        sb_h5_quantized_desc own = {"model.layers.1.mlp.experts.1.down_proj.weight", d->rows, d->cols, d->tile_rows,
                                    d->tile_cols, d->group, d->tiles, d->code_bytes, "BF16", "down_proj", 1, encoding, 0,
                                    NULL};
        SB_CHECK(sb_h5_define_quantized(writer, &own, &extra, &err) == SB_OK);
    }
    /* experts last to first; each in two tile-row pieces where it has two */
    for (int k = nexperts; k >= 0; k--) {
        synthetic *t = all[k];
        uint8_t *bitmap = calloc((size_t)(t->tiles + 1) / 2, 1);
        for (int64_t i = 0; i < t->tiles; i++)
            bitmap[i / 2] |= (uint8_t)(t->bits[i] << (i % 2 ? 4 : 0));
        int64_t across = (t->cols + t->tile_cols - 1) / t->tile_cols, split_row = t->tile_rows;
        int64_t split_bytes = 0;
        for (int64_t i = 0; i < across; i++) {
            int64_t cols_t = tile_extent(t->cols, t->tile_cols, i);
            split_bytes += (t->tile_rows * cols_t * t->bits[i] + 7) / 8;
        }
        SB_CHECK(sb_h5_write_codes(writer, handles[k], 0, split_bytes, t->packed, &err) == SB_OK);
        SB_CHECK(sb_h5_write_codes(writer, handles[k], split_bytes, t->code_bytes - split_bytes, t->packed + split_bytes,
                                   &err) == SB_OK);
        SB_CHECK(sb_h5_write_bitmap(writer, handles[k], bitmap, &err) == SB_OK);
        SB_CHECK(sb_h5_write_scale_rows(writer, handles[k], 0, split_row, t->scales, t->zeros, &err) == SB_OK);
        SB_CHECK(sb_h5_write_scale_rows(writer, handles[k], split_row, t->rows - split_row, t->scales + split_row * t->groups,
                                        t->zeros + split_row * t->groups, &err) == SB_OK);
        if (t->q8)
            SB_CHECK(sb_h5_write_tile_scales(writer, handles[k], 0, t->tiles, t->tile_scales, &err) == SB_OK);
        if (duplicate && k == 2) {
            SB_CHECK(sb_h5_write_codes(writer, extra, 0, t->code_bytes, t->packed, &err) == SB_OK);
            SB_CHECK(sb_h5_write_bitmap(writer, extra, bitmap, &err) == SB_OK);
            SB_CHECK(sb_h5_write_scale_rows(writer, extra, 0, t->rows, t->scales, t->zeros, &err) == SB_OK);
            if (t->q8)
                SB_CHECK(sb_h5_write_tile_scales(writer, extra, 0, t->tiles, t->tile_scales, &err) == SB_OK);
        }
        free(bitmap);
        weights += t->rows * t->cols;
        tiles += t->tiles;
        stored += 8 * t->code_bytes + 8 * ((t->tiles + 1) / 2) +
                  (t->q8 ? 16 * t->rows * t->groups + 16 * t->tiles : 32 * t->rows * t->groups);
    }
    sb_sha256 hash;
    sb_sha256_init(&hash);
    for (int k = 0; k <= nexperts; k++)
        sb_sha256_update(&hash, all[k]->bits, (size_t)all[k]->tiles);
    uint8_t digest[32];
    char hex[65];
    sb_sha256_final(&hash, digest);
    sb_sha256_hex(digest, hex);
    SB_CHECK(sb_h5_root_string(writer, "format", "scalebits", &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "format_version", (int64_t[]){1}, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_root_double(writer, "budget_bpw", 9.0, &err) == SB_OK);
    SB_CHECK(sb_h5_root_double(writer, "achieved_bpw", (double)stored / (double)weights, &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "stored_bits", &stored, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "quantized_weights", &weights, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "tiles", &tiles, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_root_string(writer, "allocation_sha256", hex, &err) == SB_OK);
    SB_CHECK(sb_h5_root_string(writer, "encoding", encoding, &err) == SB_OK);
    int64_t counts[2 * 3] = {-1, -1, -1, 7, 0, 12345};
    SB_CHECK(sb_h5_write_small_i64(writer, "/calibration/tokens_per_expert", counts, 2, 3, &err) == SB_OK);
    SB_CHECK(sb_h5_root_int64s(writer, "expert_min_tokens", (int64_t[]){16}, 1, &err) == SB_OK);
    SB_CHECK(sb_h5_writer_commit(writer, &err) == SB_OK);
}

/* Stacked experts read back as tensors of their own: names, bits, codes, decoding, storage and
 * accounting exactly as plain tensors; the calibration counts; and a damaged stack refused. */
static void test_expert_stack(sb_test_rng *rng, bool q8)
{
    enum { EXPERTS = 3 };
    synthetic plain = {.name = "model.layers.1.self_attn.q_proj.weight", .role = "q_proj", .layer = 1, .rows = 40,
                       .cols = 45, .tile_rows = 16, .tile_cols = 24, .group = 8, .q8 = q8};
    synthetic experts[EXPERTS];
    synthetic_make(&plain, rng, 2);
    for (int e = 0; e < EXPERTS; e++) {
        /* 45 x 30 in 16 x 24 tiles: ragged both ways; 6 tiles, so a full last bit map byte */
        experts[e] = (synthetic){.name = NULL, .role = "down_proj", .layer = 1, .rows = 45, .cols = 30, .tile_rows = 16,
                                 .tile_cols = 24, .group = 8, .q8 = q8};
        synthetic_make(&experts[e], rng, 1 + 3 * e);
    }
    const char *encoding = q8 ? "affine-q8" : "affine-f16";
    char path[4200];
    snprintf(path, sizeof path, "%s/stack-%s.h5", work, encoding);
    write_stack_file(path, &plain, experts, EXPERTS, false);
    sb_h5_reader reader;
    sb_error err;
    sb_status status = sb_h5_reader_open(path, &reader, &err);
    SB_CHECK_MSG(status == SB_OK, "open: %s", err.message);
    if (status != SB_OK)
        return;
    SB_CHECK(reader.nquantized == 1 + EXPERTS);
    SB_CHECK(strcmp(reader.quantized[0].name, plain.name) == 0 && reader.quantized[0].expert == -1);
    int64_t formula = 0;
    for (int e = 0; e < EXPERTS; e++) {
        char name[96];
        snprintf(name, sizeof name, "model.layers.1.mlp.experts.%d.down_proj.weight", e);
        const sb_h5_quantized *tensor = sb_h5_find_quantized(&reader, name);
        SB_CHECK_MSG(tensor && tensor == &reader.quantized[1 + e], "%s listed in canonical order", name);
        if (!tensor)
            continue;
        synthetic *x = &experts[e];
        SB_CHECK(tensor->expert == e && strcmp(tensor->link, "model.layers.1.mlp.experts.down_proj.weight") == 0);
        SB_CHECK(tensor->source_dtype == SB_DTYPE_F8_E4M3 && strcmp(tensor->role, "down_proj") == 0 && tensor->layer == 1);
        SB_CHECK(tensor->code_bytes == x->code_bytes && memcmp(tensor->bits_per_tile, x->bits, (size_t)x->tiles) == 0);
        if (q8)
            SB_CHECK(memcmp(tensor->tile_scales, x->tile_scales, (size_t)x->tiles * 2) == 0);
        /* FORMAT.md's charge, and the share of the stack's storage the reader gives it */
        int64_t bits = 8 * x->code_bytes + 8 * ((x->tiles + 1) / 2) +
                       (q8 ? 16 * x->rows * x->groups + 16 * x->tiles : 32 * x->rows * x->groups);
        SB_CHECK(sb_h5_tensor_bits(tensor) == bits && tensor->storage_bytes * 8 == bits);
        formula += bits;
        float *values = malloc((size_t)(x->rows * x->cols) * sizeof *values);
        SB_CHECK(sb_h5_dequantize_rows(&reader, tensor, 0, x->rows, values, &err) == SB_OK);
        int64_t differ = 0;
        for (int64_t r = 0; r < x->rows; r++)
            for (int64_t c = 0; c < x->cols; c++) {
                float expected = synthetic_weight(x, r, c);
                differ += memcmp(&expected, &values[r * x->cols + c], sizeof(float)) != 0;
            }
        /* rows from the middle of a tile row, too */
        SB_CHECK(sb_h5_dequantize_rows(&reader, tensor, 20, 7, values, &err) == SB_OK);
        for (int64_t r = 20; r < 27; r++)
            for (int64_t c = 0; c < x->cols; c++) {
                float expected = synthetic_weight(x, r, c);
                differ += memcmp(&expected, &values[(r - 20) * x->cols + c], sizeof(float)) != 0;
            }
        SB_CHECK_MSG(differ == 0, "expert %d (%s): %lld weights differ from the known codes", e, encoding,
                     (long long)differ);
        int64_t offset = 0;
        for (int64_t t = 0; t < x->tiles; t++) {
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            int64_t bytes = (rect.rows * (int64_t)rect.cols * x->bits[t] + 7) / 8;
            uint8_t packed[4096];
            SB_CHECK(sb_h5_read_tile_codes(&reader, tensor, t, packed, &err) == SB_OK);
            SB_CHECK_MSG(memcmp(packed, x->packed + offset, (size_t)bytes) == 0, "expert %d tile %lld", e, (long long)t);
            offset += bytes;
        }
        free(values);
    }
    int64_t recounted, datasets;
    SB_CHECK(sb_h5_recount_stored_bits(&reader, &recounted, &datasets, &err) == SB_OK);
    formula += sb_h5_tensor_bits(&reader.quantized[0]);
    SB_CHECK_MSG(recounted == formula && recounted == reader.root.stored_bits, "stack accounting: %lld %lld %lld",
                 (long long)recounted, (long long)formula, (long long)reader.root.stored_bits);
    SB_CHECK(datasets == (q8 ? 10 : 8)); /* two groups, not four */
    char hex[65];
    sb_h5_allocation_sha256(&reader, hex);
    SB_CHECK(strcmp(hex, reader.root.allocation_sha256) == 0);
    SB_CHECK(reader.expert_tokens && reader.expert_layers == 2 && reader.experts_per_layer == 3 &&
             reader.expert_tokens[5] == 12345 && reader.expert_min_tokens == 16);
    sb_h5_reader_close(&reader);

    /* damage: offsets that contradict the bit maps, a stack name with another role, an expert
     * stored twice */
    char broken[4200];
    hid_t file = broken_copy(path, "stack-offsets.h5", broken, sizeof broken);
    hid_t group = H5Gopen2(file, "/tensors/model.layers.1.mlp.experts.down_proj.weight", H5P_DEFAULT);
    hid_t attr = H5Aopen(group, "expert_code_offsets", H5P_DEFAULT);
    int64_t offsets[EXPERTS + 1];
    H5Aread(attr, H5T_NATIVE_INT64, offsets);
    offsets[1] += 1; /* expert 0 one byte longer, expert 1 one shorter: the sum still fits */
    H5Awrite(attr, H5T_NATIVE_INT64, offsets);
    H5Aclose(attr);
    H5Gclose(group);
    H5Fclose(file);
    expect_open_error("stack: code offsets contradict the bit maps", broken, SB_ERR_FORMAT,
                      (const char *[]){broken, "model.layers.1.mlp.experts.0.down_proj.weight", "for this expert",
                                       "the bit map and shape imply", NULL});
    file = broken_copy(path, "stack-role.h5", broken, sizeof broken);
    set_string_attribute(file, "/tensors/model.layers.1.mlp.experts.down_proj.weight", "role", "gate_proj");
    H5Fclose(file);
    expect_open_error("stack: role contradicts the name", broken, SB_ERR_FORMAT,
                      (const char *[]){broken, "role 'gate_proj'", "contradict", NULL});
    snprintf(broken, sizeof broken, "%s/stack-twice.h5", work);
    write_stack_file(broken, &plain, experts, EXPERTS, true);
    expect_open_error("stack: an expert stored twice", broken, SB_ERR_FORMAT,
                      (const char *[]){broken, "tensor 'model.layers.1.mlp.experts.1.down_proj.weight' is stored twice",
                                       NULL});
    synthetic_free(&plain);
    for (int e = 0; e < EXPERTS; e++)
        synthetic_free(&experts[e]);
}

int main(int argc, char **argv)
{
    /* the writer is collective over a communicator: one rank here */
    MPI_Init(&argc, &argv);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the broken-file cases fail on purpose */
    const char *build_dir = getenv("SB_BUILD_DIR");
    sb_test_format(build, sizeof build, "%s", build_dir ? build_dir : "build");
    char *dir = sb_test_temp_dir("h5-roundtrip");
    sb_test_format(work, sizeof work, "%s", dir);
    sb_test_rng rng = {2602};
    spec_q8_table_init();
    test_q8_multipliers();
    test_known_codes(&rng, false);
    test_known_codes(&rng, true);
    test_pipeline_file(&rng, "q8", "affine-q8");
    test_pipeline_file(&rng, "f16", "affine-f16");
    test_eight_bit_error("", "affine-q8"); /* the default encoding */
    test_eight_bit_error("f16", "affine-f16");
    test_export_matches_source("affine-q8");
    test_export_matches_source("affine-f16");
    test_broken_files();
    test_broken_q8_files();
    test_expert_stack(&rng, false);
    test_expert_stack(&rng, true);
    int status = sb_test_finish("test_h5_roundtrip");
    if (status == 0)
        sb_test_remove_tree(dir);
    else
        printf("files kept in %s\n", dir);
    free(dir);
    MPI_Finalize();
    return status;
}
