/* The reader (io/sb_h5_reader.h) decodes what the writer wrote, exactly as docs/FORMAT.md says.
 *
 * 1. Known codes through the project's writer API (io/sb_h5_writer.h): ragged tiles in both
 *    directions, every bitwidth 1..8, F16 edge cases in the scales; packed here by a bit-by-bit
 *    packer written from the spec, decoded here by a float16 decoder written from IEEE 754. The
 *    reader must give the same floats bit for bit, for the whole tensor and any row range.
 * 2. scalebits-mpi's own output on the embedded model with ragged 48x40 tiles and bitwidths
 *    {1,3,5,8}: every tensor decoded independently from the raw datasets equals the reader's;
 *    the stored bits recounted from H5Dget_storage_size equal the stored_bits attribute and the
 *    reader's recount; achieved_bpw <= budget_bpw; the allocation hash recomputes.
 * 3. All tiles at 8 bits (--bits 8): every dequantized weight is within 8-bit quantization error
 *    of the source (a step of its group's range / 255, plus F16 rounding of scale and zero); so
 *    is every weight scalebits-export writes (plus one BF16 rounding: it is exactly the BF16
 *    rounding of the reader's value), every source tensor is exported with its shape and dtype,
 *    and pass-through tensors are exported byte for byte.
 * 4. Broken files: not HDF5, truncated, HDF5 but not scalebits, a missing dataset, a codes
 *    length that disagrees with the bit map, a bitwidth of 0 or 9, a newer format_version: each
 *    a clear error naming the file (and the tensor), and scalebits-inspect exits 1 with one line.
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
    uint16_t *scales, *zeros;
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
                float scale = reference_f16(t->scales[row * t->groups + g]);
                float zero = reference_f16(t->zeros[row * t->groups + g]);
                out[row * t->cols + col] = scale * (float)q + zero;
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
}

/* Reads /tensors/<name> with plain HDF5 calls (scales as their raw 16-bit patterns). */
static bool raw_read(hid_t file, const char *name, raw_tensor *t)
{
    memset(t, 0, sizeof *t);
    char path[1024];
    snprintf(path, sizeof path, "/tensors/%s", name);
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
    const char *names[4] = {"codes", "bitmap", "scales", "zeros"};
    void **buffers[4] = {(void **)&t->codes, (void **)&t->bitmap, (void **)&t->scales, (void **)&t->zeros};
    for (int i = 0; i < 4; i++) {
        hid_t dataset = H5Dopen2(group, names[i], H5P_DEFAULT);
        hid_t space = H5Dget_space(dataset), type = H5Dget_type(dataset);
        hssize_t points = H5Sget_simple_extent_npoints(space);
        *buffers[i] = malloc((size_t)points * H5Tget_size(type) + 1);
        /* the file's own type as memory type: the bytes as stored, no conversion */
        H5Dread(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, *buffers[i]);
        if (i == 0)
            t->code_bytes = points;
        H5Tclose(type);
        H5Sclose(space);
        H5Dclose(dataset);
    }
    H5Gclose(group);
    return true;
}

/* Bits stored under /tensors, from HDF5's storage sizes, by a walk written here. */
static herr_t add_storage(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    hid_t object = H5Oopen(group, name, H5P_DEFAULT);
    if (H5Iget_type(object) == H5I_DATASET)
        *(int64_t *)data += (int64_t)H5Dget_storage_size(object) * 8;
    H5Oclose(object);
    return 0;
}

static int64_t storage_bits(const char *path)
{
    int64_t bits = 0;
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t group = H5Gopen2(file, "/tensors", H5P_DEFAULT);
    H5Lvisit(group, H5_INDEX_NAME, H5_ITER_INC, add_storage, &bits);
    H5Gclose(group);
    H5Fclose(file);
    return bits;
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

/* The reader's decode of every tensor equals the reference, whole and by row ranges. */
static void check_against_reference(const char *path, sb_test_rng *rng)
{
    sb_h5_reader reader;
    sb_error err;
    sb_status status = sb_h5_reader_open(path, &reader, &err);
    SB_CHECK_MSG(status == SB_OK, "open %s: %s", path, err.message);
    if (status != SB_OK)
        return;
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    for (int i = 0; i < reader.nquantized; i++) {
        const sb_h5_quantized *tensor = &reader.quantized[i];
        raw_tensor raw;
        SB_CHECK_MSG(raw_read(file, tensor->name, &raw), "raw read %s", tensor->name);
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
    SB_CHECK(datasets == 4 * reader.nquantized);
    int64_t formula = 0;
    for (int i = 0; i < reader.nquantized; i++)
        formula += sb_h5_tensor_bits(&reader.quantized[i]);
    SB_CHECK_MSG(formula == recount, "FORMAT.md formula %lld vs storage %lld", (long long)formula, (long long)recount);
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

typedef struct synthetic {
    const char *name, *role;
    int layer;
    int64_t rows, cols;
    int tile_rows, tile_cols, group;
    uint8_t *codes;     /* [rows * cols], unpacked, in matrix layout */
    uint8_t *bits;      /* [tiles] */
    uint16_t *scales, *zeros;
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
    s->packed = calloc((size_t)(s->rows * s->cols) + (size_t)s->tiles, 1);
    for (int64_t t = 0; t < s->tiles; t++)
        s->bits[t] = (uint8_t)((first_bits - 1 + t) % 8 + 1); /* every bitwidth appears */
    for (int64_t k = 0; k < s->rows * s->groups; k++) {
        s->scales[k] = sb_f32_to_f16((float)(0.001 + 0.1 * sb_test_uniform(rng)));
        s->zeros[k] = sb_f32_to_f16((float)(2 * sb_test_uniform(rng) - 1));
    }
    /* F16 corners: a subnormal scale, a negative-zero zero, the largest finite scale */
    s->scales[0] = 0x0001;
    s->zeros[0] = 0x8000;
    s->scales[s->rows * s->groups - 1] = 0x7bff;
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
    free(s->packed);
}

static float synthetic_weight(const synthetic *s, int64_t r, int64_t c)
{
    int64_t g = c / s->group;
    return reference_f16(s->scales[r * s->groups + g]) * (float)s->codes[r * s->cols + c] +
           reference_f16(s->zeros[r * s->groups + g]);
}

static void write_synthetic_file(const char *path, synthetic *tensors, int ntensors, const float *norm,
                                 const uint16_t *embed_bf16, const uint16_t *head_f16)
{
    sb_h5_writer *writer;
    sb_error err;
    if (sb_h5_writer_create(path, MPI_COMM_WORLD, &writer, &err) != SB_OK) {
        fprintf(stderr, "cannot create %s: %s\n", path, err.message);
        exit(1);
    }
    int64_t weights = 0, stored = 0, tiles = 0;
    for (int i = 0; i < ntensors; i++) {
        synthetic *s = &tensors[i];
        sb_h5_quantized_desc desc = {s->name, s->rows, s->cols, s->tile_rows, s->tile_cols, s->group, s->tiles,
                                     s->code_bytes, "BF16", s->role, s->layer};
        int handle;
        SB_CHECK(sb_h5_define_quantized(writer, &desc, &handle, &err) == SB_OK);
        uint8_t *bitmap = calloc((size_t)(s->tiles + 1) / 2, 1);
        for (int64_t t = 0; t < s->tiles; t++)
            bitmap[t / 2] |= (uint8_t)(s->bits[t] << (t % 2 ? 4 : 0));
        SB_CHECK(sb_h5_write_codes(writer, handle, 0, s->code_bytes, s->packed, &err) == SB_OK);
        SB_CHECK(sb_h5_write_bitmap(writer, handle, bitmap, &err) == SB_OK);
        SB_CHECK(sb_h5_write_scale_rows(writer, handle, 0, s->rows, s->scales, s->zeros, &err) == SB_OK);
        free(bitmap);
        weights += s->rows * s->cols;
        tiles += s->tiles;
        stored += 8 * s->code_bytes + 8 * ((s->tiles + 1) / 2) + 32 * s->rows * s->groups; /* FORMAT.md */
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
    SB_CHECK(sb_h5_root_string(writer, "config_json", "{\"model_type\": \"llama\"}", &err) == SB_OK);
    SB_CHECK(sb_h5_writer_commit(writer, &err) == SB_OK);
}

static void test_known_codes(sb_test_rng *rng)
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
    snprintf(path, sizeof path, "%s/known.h5", work);
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
        float *values = malloc((size_t)(s->rows * s->cols) * sizeof *values);
        SB_CHECK(sb_h5_dequantize_rows(&reader, tensor, 0, s->rows, values, &err) == SB_OK);
        int64_t differ = 0;
        for (int64_t r = 0; r < s->rows; r++)
            for (int64_t c = 0; c < s->cols; c++) {
                float expected = synthetic_weight(s, r, c);
                differ += memcmp(&expected, &values[r * s->cols + c], sizeof(float)) != 0;
            }
        SB_CHECK_MSG(differ == 0, "%s: %lld weights differ from the known codes", s->name, (long long)differ);
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
    check_against_reference(path, &again);
    synthetic_free(&tensors[0]);
    synthetic_free(&tensors[1]);
}

/* ---- 2. and 3. the pipeline's own files ---------------------------------------------------- */

static void run_quantizer(const char *args, const char *out)
{
    char command[12000];
    snprintf(command, sizeof command, "cd '%s' && '%s/scalebits-mpi' %s --out '%s' --quiet > mpi.log 2>&1", work, build,
             args, out);
    if (system(command) != 0) {
        snprintf(command, sizeof command, "cat '%s/mpi.log'", work);
        (void)system(command);
        fprintf(stderr, "scalebits-mpi %s failed\n", args);
        exit(1);
    }
}

static void test_pipeline_file(sb_test_rng *rng)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/ragged.h5", work);
    run_quantizer("--tile 48x40 --group 8 --bits 1,3,5,8 --budget 7.5", path);
    check_against_reference(path, rng);
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

/* All tiles at 8 bits: dequantized weights within 8-bit quantization error of the source. The
 * bound per (row, group): one step (range / 255; the scale search may clip, which moves an
 * outlier by up to a step) plus the F16 rounding of scale (x 255 codes) and zero. */
static void test_eight_bit_error(void)
{
    char path[4200], model_dir[4200];
    snprintf(path, sizeof path, "%s/all8.h5", work);
    snprintf(model_dir, sizeof model_dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    run_quantizer("--tile 48x40 --group 8 --bits 8 --budget 16", path);
    sb_h5_reader reader;
    sb_checkpoint checkpoint;
    sb_error err;
    SB_CHECK(sb_h5_reader_open(path, &reader, &err) == SB_OK);
    SB_CHECK(sb_checkpoint_open(model_dir, &checkpoint, &err) == SB_OK);
    double worst = 0; /* max over weights of |error| / bound */
    for (int i = 0; i < reader.nquantized; i++) {
        const sb_h5_quantized *tensor = &reader.quantized[i];
        const sb_tensor_info *info = sb_checkpoint_find(&checkpoint, tensor->name);
        SB_CHECK_MSG(info != NULL, "%s is in the source", tensor->name);
        if (!info)
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
                double step = (high - low) / 255.0;
                double bound = step + 255 * step * 0x1p-11 + fmax(fabs(low), fabs(high)) * 0x1p-11 + 1e-30;
                for (int64_t c = c0; c < c1; c++) {
                    double error = fabs((double)decoded[r * tensor->cols + c] - source[r * tensor->cols + c]);
                    worst = fmax(worst, error / bound);
                }
            }
        free(source);
        free(decoded);
    }
    printf("8-bit tiles: worst error is %.3f of the bound\n", worst);
    SB_CHECK_MSG(worst <= 1.0, "worst 8-bit error %.3f x the bound", worst);
    sb_checkpoint_close(&checkpoint);
    sb_h5_reader_close(&reader);
}

/* scalebits-export of the all-8-bit file: every source tensor is there with its shape and dtype;
 * pass-through tensors are byte-identical; quantized ones are the reader's values rounded to the
 * source dtype (BF16) and so within the 8-bit bound above plus one BF16 rounding. */
static void test_export_matches_source(void)
{
    char path[4200], out[4200], model_dir[4200], command[12000];
    snprintf(path, sizeof path, "%s/all8.h5", work);
    snprintf(out, sizeof out, "%s/export8", work);
    snprintf(model_dir, sizeof model_dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    snprintf(command, sizeof command, "'%s/scalebits-export' '%s' --out '%s' > /dev/null", build, path, out);
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
                double step = (high - low) / 255.0;
                for (int64_t c = c0; c < c1; c++) {
                    int64_t k = r * tensor->cols + c;
                    not_rounded += written[k] != sb_bf16_to_f32(sb_f32_to_bf16(decoded[k]));
                    double bound = step + 255 * step * 0x1p-11 + fmax(fabs(low), fabs(high)) * 0x1p-11 +
                                   fabs(written[k]) * 0x1p-8 + 1e-30;
                    worst = fmax(worst, fabs((double)written[k] - original[k]) / bound);
                }
            }
        free(original);
        free(decoded);
        free(written);
    }
    printf("export of 8-bit tiles: worst error is %.3f of the bound\n", worst);
    SB_CHECK_MSG(not_rounded == 0, "%lld exported weights are not the BF16 rounding of the reader's",
                 (long long)not_rounded);
    SB_CHECK_MSG(worst <= 1.0, "worst exported 8-bit error %.3f x the bound", worst);
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
    snprintf(log, sizeof log, "%s/inspect.err", work);
    snprintf(command, sizeof command, "'%s/scalebits-inspect' '%s' > /dev/null 2> '%s'", build, path, log);
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
    snprintf(command, sizeof command, "cp '%s' '%s'", source, path);
    shell(command);
    return H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
}

static void test_broken_files(void)
{
    char good[4200], path[4200], command[12000];
    snprintf(good, sizeof good, "%s/ragged.h5", work);
    const char *tensor = "model.layers.1.mlp.up_proj.weight";

    snprintf(path, sizeof path, "%s/text.h5", work);
    FILE *text = fopen(path, "w");
    fputs("this is not HDF5\n", text);
    fclose(text);
    expect_open_error("text file", path, SB_ERR_FORMAT, (const char *[]){path, "not a scalebits file", NULL});

    snprintf(path, sizeof path, "%s/truncated.h5", work);
    snprintf(command, sizeof command, "head -c 20000 '%s' > '%s'", good, path);
    shell(command);
    expect_open_error("truncated file", path, SB_ERR_FORMAT, (const char *[]){path, "truncated or corrupt", NULL});

    snprintf(path, sizeof path, "%s/missing.h5", work);
    expect_open_error("missing file", path, SB_ERR_IO, (const char *[]){path, "No such file", NULL});

    hid_t file = broken_copy(good, "no-format.h5", path, sizeof path);
    H5Adelete(file, "format");
    H5Fclose(file);
    expect_open_error("HDF5 but not scalebits", path, SB_ERR_FORMAT,
                      (const char *[]){path, "not a scalebits file", NULL});

    file = broken_copy(good, "no-scales.h5", path, sizeof path);
    char link[1024];
    snprintf(link, sizeof link, "/tensors/%s/scales", tensor);
    H5Ldelete(file, link, H5P_DEFAULT);
    H5Fclose(file);
    expect_open_error("missing dataset", path, SB_ERR_FORMAT, (const char *[]){path, tensor, "'scales' is missing", NULL});

    /* one byte more of codes than the bit map implies: rewrite the dataset one byte longer */
    file = broken_copy(good, "long-codes.h5", path, sizeof path);
    snprintf(link, sizeof link, "/tensors/%s/codes", tensor);
    hid_t dataset = H5Dopen2(file, link, H5P_DEFAULT);
    hid_t space = H5Dget_space(dataset);
    hsize_t length = (hsize_t)H5Sget_simple_extent_npoints(space) + 1;
    H5Sclose(space);
    H5Dclose(dataset);
    H5Ldelete(file, link, H5P_DEFAULT);
    space = H5Screate_simple(1, &length, NULL);
    dataset = H5Dcreate2(file, link, H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(dataset);
    H5Sclose(space);
    H5Fclose(file);
    expect_open_error("codes length", path, SB_ERR_FORMAT,
                      (const char *[]){path, tensor, "'codes' holds", "bit map and shape imply", NULL});

    for (int bad = 0; bad <= 9; bad += 9) {
        char name[64];
        snprintf(name, sizeof name, "bitwidth-%d.h5", bad);
        file = broken_copy(good, name, path, sizeof path);
        snprintf(link, sizeof link, "/tensors/%s/bitmap", tensor);
        dataset = H5Dopen2(file, link, H5P_DEFAULT);
        uint8_t bitmap[64];
        H5Dread(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bitmap);
        bitmap[0] = (uint8_t)((bitmap[0] & 0xf0) | bad);
        H5Dwrite(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bitmap);
        H5Dclose(dataset);
        H5Fclose(file);
        char expected[64];
        snprintf(expected, sizeof expected, "tile 0 a bitwidth of %d", bad);
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

int main(int argc, char **argv)
{
    /* the writer is collective over a communicator: one rank here */
    MPI_Init(&argc, &argv);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the broken-file cases fail on purpose */
    const char *build_dir = getenv("SB_BUILD_DIR");
    snprintf(build, sizeof build, "%s", build_dir ? build_dir : "build");
    char *dir = sb_test_temp_dir("h5-roundtrip");
    snprintf(work, sizeof work, "%s", dir);
    sb_test_rng rng = {2602};
    test_known_codes(&rng);
    test_pipeline_file(&rng);
    test_eight_bit_error();
    test_export_matches_source();
    test_broken_files();
    int status = sb_test_finish("test_h5_roundtrip");
    if (status == 0)
        sb_test_remove_tree(dir);
    else
        printf("files kept in %s\n", dir);
    free(dir);
    MPI_Finalize();
    return status;
}
