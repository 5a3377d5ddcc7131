/* The safetensors reader and writer: round trips through the writer (F32, F16, BF16; 0-, 1-
 * and 2-D; row ranges; chunked and converted writes; sharded checkpoints with an index), the
 * writer's refusals and atomicity, and every malformed input we know of, each checked for its
 * status and for a message naming the file and, where there is one, the tensor. The real
 * checkpoints of the repository and of ../shared are read whole with check_finite.
 * FP8: the E4M3 decoder against its closed form for all 256 codes and the encoder against the
 * decoder; F8_E4M3 weights dequantized with their block scales (ragged blocks, F32 and BF16
 * scales, row ranges), scale tensors hidden from the tensor list, and every refusal (missing,
 * mis-shaped, orphaned or non-positive scales, NaN codes, no block size, raw reads). */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_fp8.h"
#include "sb_half.h"
#include "sb_safetensors.h"
#include "sb_safetensors_write.h"
#include "sb_test.h"

static char *temp_root;

/* A fresh directory under the test's temporary root. */
static char *fresh_dir(const char *label)
{
    static int counter;
    char *path = malloc(4096);
    snprintf(path, 4096, "%s/%s-%d", temp_root, label, counter++);
    if (mkdir(path, 0755) != 0) {
        perror(path);
        exit(1);
    }
    return path;
}

static void write_bytes(const char *path, const void *data, size_t bytes)
{
    FILE *file = fopen(path, "wb");
    if (!file || fwrite(data, 1, bytes, file) != bytes || fclose(file) != 0) {
        perror(path);
        exit(1);
    }
}

/* A safetensors file from a header text and `data_bytes` bytes of data (0x3c filler or `data`). */
static void write_raw_file(const char *path, const char *header, const void *data, size_t data_bytes)
{
    size_t length = strlen(header);
    size_t total = 8 + length + data_bytes;
    uint8_t *buffer = malloc(total);
    for (int i = 0; i < 8; i++)
        buffer[i] = (uint8_t)((uint64_t)length >> (8 * i));
    memcpy(buffer + 8, header, length);
    if (data)
        memcpy(buffer + 8 + length, data, data_bytes);
    else
        memset(buffer + 8 + length, 0x3c, data_bytes);
    write_bytes(path, buffer, total);
    free(buffer);
}

static char *join(const char *dir, const char *name)
{
    char *path = malloc(4096);
    snprintf(path, 4096, "%s/%s", dir, name);
    return path;
}

/* Opens `dir` expecting failure with `status`, and a message holding each of the NULL-terminated
 * fragments. */
static void expect_open_error_(int line, const char *dir, sb_status status, ...)
{
    sb_checkpoint checkpoint;
    sb_error err = {0};
    sb_status got = sb_checkpoint_open(dir, &checkpoint, &err);
    if (got == SB_OK) {
        fprintf(stderr, "line %d: opening %s succeeded, expected failure\n", line, dir);
        sb_test_failures++;
        sb_checkpoint_close(&checkpoint);
        return;
    }
    SB_CHECK_MSG(got == status, "line %d: status %s, expected %s (%s)", line, sb_status_name(got),
                 sb_status_name(status), err.message);
    SB_CHECK_MSG(err.status == got, "line %d: err.status not set", line);
    va_list fragments;
    va_start(fragments, status);
    for (const char *fragment; (fragment = va_arg(fragments, const char *));)
        SB_CHECK_MSG(strstr(err.message, fragment), "line %d: message '%s' lacks '%s'", line, err.message, fragment);
    va_end(fragments);
    SB_CHECK_MSG(checkpoint.ntensors == 0 && checkpoint.files == NULL, "line %d: failed open left state", line);
}
#define expect_open_error(dir, status, ...) expect_open_error_(__LINE__, dir, status, __VA_ARGS__, (const char *)NULL)

/* A model directory with one model.safetensors made of `header` and `data_bytes` filler bytes. */
static char *single_file_dir(const char *label, const char *header, size_t data_bytes)
{
    char *dir = fresh_dir(label);
    char *path = join(dir, "model.safetensors");
    write_raw_file(path, header, NULL, data_bytes);
    free(path);
    return dir;
}

static float expected_value(sb_dtype dtype, float value)
{
    if (dtype == SB_DTYPE_F16)
        return sb_f16_to_f32(sb_f32_to_f16(value));
    if (dtype == SB_DTYPE_BF16)
        return sb_bf16_to_f32(sb_f32_to_bf16(value));
    return value;
}

typedef struct test_tensor {
    const char *name;
    sb_dtype dtype;
    int ndim;
    int64_t shape[2];
    float *values; /* rows x cols */
} test_tensor;

static int64_t element_count(const test_tensor *tensor)
{
    int64_t count = 1;
    for (int d = 0; d < tensor->ndim; d++)
        count *= tensor->shape[d];
    return count;
}

/* Writes `tensors` to `path`: F32 sources converted by write_f32 in uneven pieces, except that
 * tensors at odd positions are first converted here and written as raw bytes row by row. */
static void write_tensors(const char *path, test_tensor *tensors, int count, bool with_metadata)
{
    sb_safetensors_writer *writer;
    sb_error err = {0};
    SB_CHECK_MSG(sb_safetensors_writer_create(path, &writer, &err) == SB_OK, "%s", err.message);
    if (with_metadata) {
        SB_CHECK(sb_safetensors_writer_add_metadata(writer, "format", "pt", &err) == SB_OK);
        SB_CHECK(sb_safetensors_writer_add_metadata(writer, "producer", "scalebits test \"quoted\"", &err) == SB_OK);
    }
    for (int i = 0; i < count; i++)
        SB_CHECK_MSG(sb_safetensors_writer_declare(writer, tensors[i].name, tensors[i].dtype, tensors[i].ndim,
                                                   tensors[i].shape, &err) == SB_OK, "%s", err.message);
    SB_CHECK_MSG(sb_safetensors_writer_begin_data(writer, &err) == SB_OK, "%s", err.message);
    for (int i = 0; i < count; i++) {
        test_tensor *tensor = &tensors[i];
        int64_t elements = element_count(tensor);
        if (elements == 0)
            continue;
        SB_CHECK(sb_safetensors_writer_current(writer) &&
                 strcmp(sb_safetensors_writer_current(writer), tensor->name) == 0);
        if (i % 2 == 0) {
            for (int64_t begin = 0; begin < elements; begin += 7) {
                int64_t n = elements - begin < 7 ? elements - begin : 7;
                SB_CHECK_MSG(sb_safetensors_writer_write_f32(writer, tensor->values + begin, (size_t)n, &err) == SB_OK,
                             "%s", err.message);
            }
        } else {
            int64_t cols = tensor->ndim == 0 ? 1 : tensor->shape[tensor->ndim - 1];
            size_t element = sb_dtype_size(tensor->dtype);
            uint8_t *row = malloc((size_t)cols * element + 1);
            for (int64_t begin = 0; begin < elements; begin += cols) {
                for (int64_t c = 0; c < cols; c++) {
                    float value = tensor->values[begin + c];
                    if (tensor->dtype == SB_DTYPE_F32) {
                        memcpy(row + 4 * c, &value, 4);
                    } else {
                        uint16_t half = tensor->dtype == SB_DTYPE_F16 ? sb_f32_to_f16(value) : sb_f32_to_bf16(value);
                        memcpy(row + 2 * c, &half, 2);
                    }
                }
                SB_CHECK_MSG(sb_safetensors_writer_write(writer, row, (size_t)cols * element, &err) == SB_OK, "%s",
                             err.message);
            }
            free(row);
        }
    }
    SB_CHECK(sb_safetensors_writer_current(writer) == NULL);
    uint64_t expected_size = sb_safetensors_writer_file_size(writer);
    SB_CHECK_MSG(sb_safetensors_writer_commit(writer, &err) == SB_OK, "%s", err.message);
    struct stat st;
    SB_CHECK(stat(path, &st) == 0 && (uint64_t)st.st_size == expected_size);
}

static void check_tensors(const sb_checkpoint *checkpoint, const test_tensor *tensors, int count)
{
    sb_error err = {0};
    for (int i = 0; i < count; i++) {
        const test_tensor *want = &tensors[i];
        const sb_tensor_info *info = sb_checkpoint_find(checkpoint, want->name);
        SB_CHECK_MSG(info, "tensor %s not found", want->name);
        if (!info)
            continue;
        SB_CHECK(info->dtype == want->dtype && info->ndim == want->ndim);
        for (int d = 0; d < want->ndim; d++)
            SB_CHECK(info->shape[d] == want->shape[d]);
        int64_t elements = element_count(want);
        SB_CHECK(info->nbytes == (uint64_t)elements * sb_dtype_size(want->dtype));
        int64_t rows = sb_tensor_rows(info), cols = sb_tensor_cols(info);
        SB_CHECK(rows * cols == elements);
        if (elements == 0)
            continue;
        /* every row range [begin, begin + n) */
        float *got = malloc((size_t)elements * sizeof *got);
        int mismatches = 0;
        for (int64_t begin = 0; begin < rows; begin++) {
            for (int64_t n = 1; begin + n <= rows; n++) {
                sb_status status = sb_checkpoint_read_rows(checkpoint, info, begin, n, false, got, &err);
                SB_CHECK_MSG(status == SB_OK, "%s rows %lld+%lld: %s", want->name, (long long)begin, (long long)n,
                             err.message);
                for (int64_t k = 0; k < n * cols; k++) {
                    float expected = expected_value(want->dtype, want->values[begin * cols + k]);
                    if (memcmp(&expected, &got[k], 4) != 0 && mismatches++ < 3)
                        fprintf(stderr, "%s[%lld]: %g, expected %g\n", want->name, (long long)(begin * cols + k),
                                got[k], expected);
                }
            }
        }
        SB_CHECK_MSG(mismatches == 0, "%s: %d mismatches", want->name, mismatches);
        free(got);
    }
}

static float *random_values(sb_test_rng *rng, int64_t count)
{
    float *values = malloc((size_t)(count ? count : 1) * sizeof *values);
    for (int64_t i = 0; i < count; i++)
        values[i] = (float)(sb_test_normal(rng) * 0.05);
    /* a few values that exercise rounding and range: ties, subnormals, large */
    if (count > 3) {
        values[0] = 1.0f + 0x1p-8f; /* BF16 tie -> 1.0 */
        values[1] = 70000.0f;       /* F16 overflow -> inf; finite in BF16 */
        values[2] = 0x1p-20f;       /* F16 subnormal */
    }
    return values;
}

static void test_round_trip_single(void)
{
    sb_test_rng rng = {1};
    test_tensor tensors[] = {
        {"model.embed_tokens.weight", SB_DTYPE_BF16, 2, {9, 6}, NULL},
        {"model.norm.weight", SB_DTYPE_F32, 1, {13}, NULL},
        {"model.layers.0.mlp.down_proj.weight", SB_DTYPE_F16, 2, {5, 11}, NULL},
        {"scalar", SB_DTYPE_F32, 0, {0}, NULL},
        {"empty", SB_DTYPE_BF16, 2, {0, 4}, NULL},
        {"bias.bf16", SB_DTYPE_BF16, 1, {7}, NULL},
        {"f32.matrix", SB_DTYPE_F32, 2, {4, 3}, NULL},
        {"f16.vector", SB_DTYPE_F16, 1, {10}, NULL},
    };
    int count = (int)(sizeof tensors / sizeof tensors[0]);
    for (int i = 0; i < count; i++)
        tensors[i].values = random_values(&rng, element_count(&tensors[i]));
    tensors[1].values[1] = 3.0f; /* keep the F16 overflow value out of the F32 check of finiteness */
    tensors[2].values[1] = 1000.0f;
    char *dir = fresh_dir("single");
    char *path = join(dir, "model.safetensors");
    write_tensors(path, tensors, count, true);

    /* the header: 8-byte aligned data start, metadata first, declaration order */
    FILE *file = fopen(path, "rb");
    uint8_t length_bytes[8];
    SB_CHECK(file && fread(length_bytes, 1, 8, file) == 8);
    uint64_t length = 0;
    for (int i = 7; i >= 0; i--)
        length = length << 8 | length_bytes[i];
    SB_CHECK(length % 8 == 0);
    char *header = calloc(1, length + 1);
    SB_CHECK(fread(header, 1, length, file) == length);
    fclose(file);
    SB_CHECK(strncmp(header, "{\"__metadata__\":{\"format\":\"pt\",", 31) == 0);
    SB_CHECK(strstr(header, "\"model.embed_tokens.weight\":{\"dtype\":\"BF16\",\"shape\":[9,6],\"data_offsets\":[0,108]}"));
    SB_CHECK(strstr(header, "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[270,274]}"));
    SB_CHECK(header[length - 1] == ' ' || header[length - 1] == '}');
    json_error_t json_error;
    json_t *root = json_loadb(header, length, 0, &json_error);
    SB_CHECK(root && json_is_object(root));
    SB_CHECK(strcmp(json_string_value(json_object_get(json_object_get(root, "__metadata__"), "producer")),
                    "scalebits test \"quoted\"") == 0);
    json_decref(root);
    free(header);

    sb_checkpoint checkpoint;
    sb_error err = {0};
    SB_CHECK_MSG(sb_checkpoint_open(dir, &checkpoint, &err) == SB_OK, "%s", err.message);
    SB_CHECK(checkpoint.nfiles == 1 && checkpoint.ntensors == count);
    SB_CHECK(checkpoint.files[0].header_length == length);
    check_tensors(&checkpoint, tensors, count);
    /* raw bytes: the BF16 embedding as stored */
    const sb_tensor_info *embed = sb_checkpoint_find(&checkpoint, "model.embed_tokens.weight");
    uint16_t raw[54];
    SB_CHECK(sb_checkpoint_read_raw(&checkpoint, embed, raw, &err) == SB_OK);
    SB_CHECK(raw[0] == 0x3f80 && raw[5] == sb_f32_to_bf16(tensors[0].values[5]));
    SB_CHECK(embed->data_offset == 8 + length);
    /* the F16 overflow value reads as Inf: check_finite names it */
    float row[11];
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, sb_checkpoint_find(&checkpoint, "f16.vector"), 0, 1, false, row,
                                     &err) == SB_OK);
    SB_CHECK(isinf(row[1]));
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, sb_checkpoint_find(&checkpoint, "f16.vector"), 0, 1, true, row,
                                     &err) == SB_ERR_INPUT);
    SB_CHECK(strstr(err.message, "f16.vector") && strstr(err.message, "Inf at row 0, column 1"));
    /* out-of-range rows are a caller bug */
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, embed, 8, 2, false, row, &err) == SB_ERR_INTERNAL);
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, embed, -1, 1, false, row, &err) == SB_ERR_INTERNAL);
    SB_CHECK(sb_checkpoint_find(&checkpoint, "absent") == NULL);
    sb_checkpoint_close(&checkpoint);

    /* nothing but the file itself is left in the directory (the temporary was renamed) */
    char command[4300];
    snprintf(command, sizeof command, "test $(ls -A '%s' | wc -l) -eq 1", dir);
    SB_CHECK(system(command) == 0);
    for (int i = 0; i < count; i++)
        free(tensors[i].values);
    free(path);
    free(dir);
}

static void test_round_trip_sharded(void)
{
    sb_test_rng rng = {2};
    test_tensor shard1[] = {
        {"model.embed_tokens.weight", SB_DTYPE_BF16, 2, {16, 8}, NULL},
        {"model.layers.0.self_attn.q_proj.weight", SB_DTYPE_BF16, 2, {8, 8}, NULL},
    };
    test_tensor shard2[] = {
        {"model.layers.0.mlp.down_proj.weight", SB_DTYPE_F16, 2, {8, 12}, NULL},
        {"model.norm.weight", SB_DTYPE_F32, 1, {8}, NULL},
        {"lm_head.weight", SB_DTYPE_BF16, 2, {16, 8}, NULL},
    };
    for (int i = 0; i < 2; i++)
        shard1[i].values = random_values(&rng, element_count(&shard1[i]));
    for (int i = 0; i < 3; i++)
        shard2[i].values = random_values(&rng, element_count(&shard2[i]));
    shard2[0].values[1] = 100.0f;
    char *dir = fresh_dir("sharded");
    char *path1 = join(dir, "model-00001-of-00002.safetensors");
    char *path2 = join(dir, "model-00002-of-00002.safetensors");
    write_tensors(path1, shard1, 2, false);
    write_tensors(path2, shard2, 3, true);
    const char *names[5], *files[5];
    uint64_t total = 0;
    for (int i = 0; i < 2; i++) {
        names[i] = shard1[i].name;
        files[i] = "model-00001-of-00002.safetensors";
        total += (uint64_t)element_count(&shard1[i]) * sb_dtype_size(shard1[i].dtype);
    }
    for (int i = 0; i < 3; i++) {
        names[2 + i] = shard2[i].name;
        files[2 + i] = "model-00002-of-00002.safetensors";
        total += (uint64_t)element_count(&shard2[i]) * sb_dtype_size(shard2[i].dtype);
    }
    sb_error err = {0};
    SB_CHECK_MSG(sb_safetensors_write_index(dir, 5, names, files, total, &err) == SB_OK, "%s", err.message);
    char *index_path = join(dir, "model.safetensors.index.json");
    json_error_t json_error;
    json_t *index = json_load_file(index_path, 0, &json_error);
    SB_CHECK(index && json_integer_value(json_object_get(json_object_get(index, "metadata"), "total_size")) ==
                          (json_int_t)total);
    SB_CHECK(json_object_size(json_object_get(index, "weight_map")) == 5);
    json_decref(index);

    sb_checkpoint checkpoint;
    SB_CHECK_MSG(sb_checkpoint_open(dir, &checkpoint, &err) == SB_OK, "%s", err.message);
    SB_CHECK(checkpoint.nfiles == 2 && checkpoint.ntensors == 5);
    check_tensors(&checkpoint, shard1, 2);
    check_tensors(&checkpoint, shard2, 3);
    const sb_tensor_info *head = sb_checkpoint_find(&checkpoint, "lm_head.weight");
    SB_CHECK(head && strstr(checkpoint.files[head->file_index].path, "model-00002-of-00002.safetensors"));
    sb_checkpoint_close(&checkpoint);

    /* index refusals: duplicate names, paths in shard names */
    const char *dup_names[2] = {"a", "a"}, *dup_files[2] = {"x.safetensors", "y.safetensors"};
    SB_CHECK(sb_safetensors_write_index(dir, 2, dup_names, dup_files, 0, &err) == SB_ERR_INTERNAL);
    SB_CHECK(strstr(err.message, "'a' listed twice"));
    const char *path_files[1] = {"../x.safetensors"};
    SB_CHECK(sb_safetensors_write_index(dir, 1, dup_names, path_files, 0, &err) == SB_ERR_INTERNAL);
    for (int i = 0; i < 2; i++)
        free(shard1[i].values);
    for (int i = 0; i < 3; i++)
        free(shard2[i].values);
    free(index_path);
    free(path1);
    free(path2);
    free(dir);
}

static bool dir_is_empty(const char *dir)
{
    char command[4300];
    snprintf(command, sizeof command, "test -z \"$(ls -A '%s')\"", dir);
    return system(command) == 0;
}

static void test_writer_refusals(void)
{
    char *dir = fresh_dir("writer");
    char *path = join(dir, "model.safetensors");
    sb_safetensors_writer *writer;
    sb_error err = {0};
    int64_t shape[2] = {2, 3};
    float values[8] = {0};

    /* a piece running past the tensor's end; the writer then only aborts, leaving nothing */
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_declare(writer, "w", SB_DTYPE_F16, 2, shape, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_begin_data(writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_file_size(writer) == 8 + 64 + 12);
    SB_CHECK(sb_safetensors_writer_write_f32(writer, values, 4, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_write_f32(writer, values, 3, &err) == SB_ERR_INTERNAL);
    SB_CHECK_MSG(strstr(err.message, "tensor 'w'") && strstr(err.message, "runs past its end"), "%s", err.message);
    SB_CHECK(sb_safetensors_writer_commit(writer, &err) != SB_OK);
    SB_CHECK(dir_is_empty(dir));

    /* commit with a tensor incomplete: refused, temporary removed, no final file */
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_declare(writer, "a", SB_DTYPE_F32, 2, shape, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_declare(writer, "b", SB_DTYPE_BF16, 1, shape, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_begin_data(writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_write_f32(writer, values, 6, &err) == SB_OK);
    SB_CHECK(strcmp(sb_safetensors_writer_current(writer), "b") == 0);
    SB_CHECK(sb_safetensors_writer_commit(writer, &err) == SB_ERR_INTERNAL);
    SB_CHECK_MSG(strstr(err.message, "tensor 'b' incomplete"), "%s", err.message);
    SB_CHECK(dir_is_empty(dir));

    /* declaration errors and calls out of order */
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_write(writer, values, 4, &err) == SB_ERR_INTERNAL);
    SB_CHECK(strstr(err.message, "before begin_data"));
    sb_safetensors_writer_abort(writer);
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_declare(writer, "a", SB_DTYPE_F32, 1, shape, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_declare(writer, "a", SB_DTYPE_F32, 1, shape, &err) == SB_ERR_INTERNAL);
    SB_CHECK(strstr(err.message, "'a' declared twice"));
    sb_safetensors_writer_abort(writer);
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_declare(writer, "__metadata__", SB_DTYPE_F32, 1, shape, &err) == SB_ERR_INTERNAL);
    sb_safetensors_writer_abort(writer);
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    int64_t negative[1] = {-2};
    SB_CHECK(sb_safetensors_writer_declare(writer, "n", SB_DTYPE_F32, 1, negative, &err) == SB_ERR_INTERNAL);
    sb_safetensors_writer_abort(writer);
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_add_metadata(writer, "k", "v", &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_add_metadata(writer, "k", "w", &err) == SB_ERR_INTERNAL);
    sb_safetensors_writer_abort(writer);
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_begin_data(writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_declare(writer, "late", SB_DTYPE_F32, 1, shape, &err) == SB_ERR_INTERNAL);
    SB_CHECK(strstr(err.message, "after begin_data"));
    sb_safetensors_writer_abort(writer);
    SB_CHECK(dir_is_empty(dir));
    sb_safetensors_writer_abort(NULL);

    /* an empty file (no tensors) is valid and opens */
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_begin_data(writer, &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_commit(writer, &err) == SB_OK);
    sb_checkpoint checkpoint;
    SB_CHECK_MSG(sb_checkpoint_open(dir, &checkpoint, &err) == SB_OK, "%s", err.message);
    SB_CHECK(checkpoint.ntensors == 0);
    sb_checkpoint_close(&checkpoint);

    /* a directory that does not exist */
    char *missing = join(dir, "no/such/dir/model.safetensors");
    SB_CHECK(sb_safetensors_writer_create(missing, &writer, &err) == SB_ERR_IO);
    SB_CHECK(strstr(err.message, missing) != NULL);
    free(missing);
    free(path);
    free(dir);
}

static void test_bad_single_files(void)
{
    char *dir;

    /* file shorter than 8 bytes */
    dir = fresh_dir("short");
    char *path = join(dir, "model.safetensors");
    write_bytes(path, "\x02\x00\x00", 3);
    expect_open_error(dir, SB_ERR_FORMAT, path, "3 bytes is too short");
    free(path);
    free(dir);

    /* header length larger than the file */
    dir = fresh_dir("hugelen");
    path = join(dir, "model.safetensors");
    write_bytes(path, "\xe8\x03\x00\x00\x00\x00\x00\x00{}", 10);
    expect_open_error(dir, SB_ERR_FORMAT, path, "header length 1000 is impossible");
    /* header length absurd (2^63) */
    write_bytes(path, "\x00\x00\x00\x00\x00\x00\x00\x80{}", 10);
    expect_open_error(dir, SB_ERR_FORMAT, path, "is impossible");
    /* header length zero */
    write_bytes(path, "\x00\x00\x00\x00\x00\x00\x00\x00{}", 10);
    expect_open_error(dir, SB_ERR_FORMAT, path, "header length 0");
    free(path);
    free(dir);

    /* header not JSON; JSON but not an object; duplicate keys */
    dir = single_file_dir("notjson", "{\"a\": {\"dtype\": ", 0);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "header is not valid JSON");
    free(dir);
    dir = single_file_dir("array", "[1, 2, 3]", 0);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "JSON but not an object");
    free(dir);
    dir = single_file_dir("dupkey",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                          8);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "duplicate");
    free(dir);
    dir = single_file_dir("badmeta", "{\"__metadata__\":{\"format\":3}}", 0);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "__metadata__");
    free(dir);

    /* entries missing a field, or not an object */
    dir = single_file_dir("nodtype", "{\"w.weight\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "tensor 'w.weight'", "\"dtype\"");
    free(dir);
    dir = single_file_dir("noshape", "{\"w.weight\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "tensor 'w.weight'", "\"shape\"");
    free(dir);
    dir = single_file_dir("nooffsets", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "tensor 'w.weight'", "\"data_offsets\"");
    free(dir);
    dir = single_file_dir("oneoffset", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8);
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'w.weight'", "\"data_offsets\"");
    free(dir);
    dir = single_file_dir("entrynotobject", "{\"w.weight\":[1,2]}", 8);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "tensor 'w.weight'", "not a JSON object");
    free(dir);

    /* negative and non-integer shapes */
    dir = single_file_dir("negshape", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[-2,2],\"data_offsets\":[0,16]}}", 16);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "tensor 'w.weight'", "shape[0]");
    free(dir);
    dir = single_file_dir("floatshape", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[2,2.5],\"data_offsets\":[0,20]}}",
                          20);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "tensor 'w.weight'", "shape[1]");
    free(dir);
    dir = single_file_dir("stringshape", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}}",
                          16);
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'w.weight'", "shape[0]");
    free(dir);
    dir = single_file_dir("fivedims",
                          "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}", 8);
    expect_open_error(dir, SB_ERR_INPUT, "tensor 'w.weight'", "5 dimensions");
    free(dir);

    /* data_offsets out of range, reversed, negative */
    dir = single_file_dir("pastend", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "tensor 'w.weight'", "run past the end");
    free(dir);
    dir = single_file_dir("reversed", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 12);
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'w.weight'", "begin <= end");
    free(dir);
    dir = single_file_dir("negoffset", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 12);
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'w.weight'", "data_offsets");
    free(dir);

    /* overlapping tensors: neighbours, and an overlap hidden behind a zero-byte tensor */
    dir = single_file_dir("overlap",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                          24);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "'a' and 'b' overlap");
    free(dir);
    dir = single_file_dir("overlap-hidden",
                          "{\"big\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]},"
                          "\"zero\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]},"
                          "\"inner\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
                          32);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "'big' and 'inner' overlap");
    free(dir);
    dir = single_file_dir("overlap-nested",
                          "{\"big\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]},"
                          "\"small\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                          "\"later\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
                          32);
    expect_open_error(dir, SB_ERR_FORMAT, "'big' and 'small' overlap");
    free(dir);
    /* adjacent and zero-byte tensors are fine */
    dir = single_file_dir("adjacent",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                          "\"z\":{\"dtype\":\"BF16\",\"shape\":[0,3],\"data_offsets\":[16,16]},"
                          "\"b\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[16,24]}}",
                          24);
    sb_checkpoint checkpoint;
    sb_error err = {0};
    SB_CHECK_MSG(sb_checkpoint_open(dir, &checkpoint, &err) == SB_OK, "%s", err.message);
    SB_CHECK(checkpoint.ntensors == 3);
    sb_checkpoint_close(&checkpoint);
    free(dir);

    /* shape x dtype != byte count */
    dir = single_file_dir("sizemismatch", "{\"w.weight\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,16]}}",
                          16);
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors", "tensor 'w.weight'", "12 bytes", "span 16");
    free(dir);

    /* unsupported dtypes name the tensor and the dtype */
    dir = single_file_dir("i8", "{\"q.weight\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
    expect_open_error(dir, SB_ERR_INPUT, "model.safetensors", "tensor 'q.weight'", "dtype I8 is not supported");
    free(dir);
    dir = single_file_dir("f64", "{\"d.weight\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16);
    expect_open_error(dir, SB_ERR_INPUT, "model.safetensors", "tensor 'd.weight'", "dtype F64 is not supported");
    free(dir);

    /* truncated data: a good file cut in the middle of its last tensor */
    sb_test_rng rng = {3};
    test_tensor tensors[] = {
        {"first.weight", SB_DTYPE_BF16, 2, {4, 8}, NULL},
        {"second.weight", SB_DTYPE_BF16, 2, {4, 8}, NULL},
    };
    for (int i = 0; i < 2; i++)
        tensors[i].values = random_values(&rng, 32);
    dir = fresh_dir("truncated");
    path = join(dir, "model.safetensors");
    write_tensors(path, tensors, 2, false);
    struct stat st;
    SB_CHECK(stat(path, &st) == 0);
    SB_CHECK(truncate(path, st.st_size - 20) == 0);
    expect_open_error(dir, SB_ERR_FORMAT, path, "tensor 'second.weight'", "truncated");
    /* cut inside the header */
    SB_CHECK(truncate(path, 40) == 0);
    expect_open_error(dir, SB_ERR_FORMAT, path, "impossible");
    for (int i = 0; i < 2; i++)
        free(tensors[i].values);
    free(path);
    free(dir);

    /* no checkpoint at all; not a directory */
    dir = fresh_dir("empty");
    expect_open_error(dir, SB_ERR_IO, dir, "neither model.safetensors nor");
    char *not_dir = join(dir, "nothing-here");
    expect_open_error(not_dir, SB_ERR_IO, not_dir, "not a directory");
    free(not_dir);
    free(dir);
}

/* A shard file with tensors "name" of 4 F32 values each. */
static void write_shard(const char *dir, const char *file, const char *const *names, int count)
{
    char header[4096] = "{";
    for (int i = 0; i < count; i++) {
        char entry[512];
        snprintf(entry, sizeof entry, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[%d,%d]}",
                 i ? "," : "", names[i], 16 * i, 16 * i + 16);
        strcat(header, entry);
    }
    strcat(header, "}");
    char *path = join(dir, file);
    write_raw_file(path, header, NULL, (size_t)(16 * count));
    free(path);
}

static void write_text(const char *dir, const char *file, const char *text)
{
    char *path = join(dir, file);
    write_bytes(path, text, strlen(text));
    free(path);
}

static void test_bad_sharded(void)
{
    const char *ab[2] = {"a", "b"}, *c[1] = {"c"}, *bc[2] = {"b", "c"}, *a[1] = {"a"};
    char *dir;

    /* the same tensor in two shards */
    dir = fresh_dir("dup-shards");
    write_shard(dir, "s1.safetensors", ab, 2);
    write_shard(dir, "s2.safetensors", bc, 2);
    write_text(dir, "model.safetensors.index.json",
               "{\"metadata\":{},\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}");
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'b' appears in both", "s1.safetensors", "s2.safetensors");
    free(dir);

    /* the index names a shard that does not exist */
    dir = fresh_dir("missing-shard");
    write_shard(dir, "s1.safetensors", ab, 2);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s3.safetensors\"}}");
    expect_open_error(dir, SB_ERR_IO, "model.safetensors.index.json", "shard s3.safetensors is missing");
    free(dir);

    /* the index lists a tensor its shard lacks */
    dir = fresh_dir("missing-tensor");
    write_shard(dir, "s1.safetensors", a, 1);
    write_shard(dir, "s2.safetensors", c, 1);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}");
    expect_open_error(dir, SB_ERR_FORMAT, "s1.safetensors", "tensor 'b' is listed", "not in this shard");
    free(dir);

    /* the index puts a tensor in the wrong shard */
    dir = fresh_dir("wrong-shard");
    write_shard(dir, "s1.safetensors", ab, 2);
    write_shard(dir, "s2.safetensors", c, 1);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\",\"c\":\"s2.safetensors\"}}");
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'b' is listed in s2.safetensors but stored in s1.safetensors");
    free(dir);

    /* a shard holds a tensor the index does not list */
    dir = fresh_dir("unlisted");
    write_shard(dir, "s1.safetensors", ab, 2);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"s1.safetensors\"}}");
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'b' is stored in s1.safetensors but not listed");
    free(dir);

    /* a malformed index */
    dir = fresh_dir("bad-index");
    write_shard(dir, "s1.safetensors", ab, 2);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": ");
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors.index.json", "not valid JSON");
    write_text(dir, "model.safetensors.index.json", "{\"metadata\":{}}");
    expect_open_error(dir, SB_ERR_FORMAT, "model.safetensors.index.json", "weight_map");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}");
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'a'", "not a plain file name");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":7}}");
    expect_open_error(dir, SB_ERR_FORMAT, "tensor 'a'", "not a plain file name");
    free(dir);

    /* a bad shard is reported with its own path */
    dir = fresh_dir("bad-shard");
    write_shard(dir, "s1.safetensors", a, 1);
    write_text(dir, "s2.safetensors", "garbage");
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}");
    expect_open_error(dir, SB_ERR_FORMAT, "s2.safetensors", "7 bytes is too short");
    free(dir);
}

static void test_non_finite(void)
{
    /* NaN at (2, 3) of an F32 4x5 matrix; +Inf at (1, 0) and -Inf at (3, 4) of a BF16 one */
    float f32[20], bf16_values[20];
    for (int i = 0; i < 20; i++)
        f32[i] = bf16_values[i] = 0.25f * (float)i;
    f32[2 * 5 + 3] = NAN;
    bf16_values[1 * 5 + 0] = INFINITY;
    bf16_values[3 * 5 + 4] = -INFINITY;
    test_tensor tensors[] = {
        {"layers.0.nan.weight", SB_DTYPE_F32, 2, {4, 5}, f32},
        {"layers.0.inf.weight", SB_DTYPE_BF16, 2, {4, 5}, bf16_values},
    };
    char *dir = fresh_dir("nonfinite");
    char *path = join(dir, "model.safetensors");
    write_tensors(path, tensors, 2, false);
    sb_checkpoint checkpoint;
    sb_error err = {0};
    SB_CHECK_MSG(sb_checkpoint_open(dir, &checkpoint, &err) == SB_OK, "%s", err.message);
    const sb_tensor_info *nan_tensor = sb_checkpoint_find(&checkpoint, "layers.0.nan.weight");
    const sb_tensor_info *inf_tensor = sb_checkpoint_find(&checkpoint, "layers.0.inf.weight");
    float rows[20];
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, nan_tensor, 0, 4, true, rows, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, path) && strstr(err.message, "tensor 'layers.0.nan.weight'") &&
                     strstr(err.message, "NaN at row 2, column 3"),
                 "%s", err.message);
    /* a range starting later reports the absolute row */
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, nan_tensor, 2, 2, true, rows, &err) == SB_ERR_INPUT);
    SB_CHECK(strstr(err.message, "row 2, column 3"));
    /* rows without it, or without the check, read fine */
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, nan_tensor, 0, 2, true, rows, &err) == SB_OK);
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, nan_tensor, 3, 1, true, rows, &err) == SB_OK);
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, nan_tensor, 0, 4, false, rows, &err) == SB_OK);
    SB_CHECK(isnan(rows[13]) && rows[12] == 3.0f);
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, inf_tensor, 0, 4, true, rows, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "tensor 'layers.0.inf.weight'") && strstr(err.message, "Inf at row 1, column 0"),
                 "%s", err.message);
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, inf_tensor, 2, 2, true, rows, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "Inf at row 3, column 4"), "%s", err.message);
    sb_checkpoint_close(&checkpoint);
    free(path);
    free(dir);
}

/* ---- FP8 ----------------------------------------------------------------------------------- */

/* The E4M3 value of `code` from its definition, in double: (-1)^s (8 + m) 2^(e - 10) for
 * e > 0, (-1)^s m 2^-9 for e = 0, NaN for S.1111.111. */
static double e4m3_reference(int code)
{
    int sign = code >> 7, exponent = (code >> 3) & 15, mantissa = code & 7;
    if (exponent == 15 && mantissa == 7)
        return NAN;
    double magnitude = exponent == 0 ? ldexp(mantissa, -9) : ldexp(8 + mantissa, exponent - 10);
    return sign ? -magnitude : magnitude;
}

static void test_e4m3(void)
{
    int nan_codes = 0;
    for (int code = 0; code < 256; code++) {
        double expected = e4m3_reference(code);
        float got = sb_e4m3_to_f32((uint8_t)code);
        if (isnan(expected)) {
            nan_codes++;
            SB_CHECK_MSG(isnan(got) && sb_e4m3_is_nan((uint8_t)code), "code 0x%02X: NaN expected", code);
            continue;
        }
        SB_CHECK_MSG(!sb_e4m3_is_nan((uint8_t)code), "code 0x%02X is not NaN", code);
        SB_CHECK_MSG((double)got == expected && (signbit(got) != 0) == (code >= 0x80), "code 0x%02X: %.9g, expected %.9g",
                     code, (double)got, expected);
        /* the encoder inverts the decoder on every finite code (-0 included) */
        SB_CHECK_MSG(sb_f32_to_e4m3(got) == code, "encode(decode(0x%02X)) = 0x%02X", code, sb_f32_to_e4m3(got));
    }
    SB_CHECK(nan_codes == 2);
    SB_CHECK(sb_e4m3_to_f32(0x7e) == 448.0f && sb_e4m3_to_f32(0xfe) == -448.0f && sb_e4m3_to_f32(0x38) == 1.0f);
    SB_CHECK(sb_e4m3_to_f32(0x01) == 0x1p-9f && sb_e4m3_to_f32(0x08) == 0x1p-6f && sb_e4m3_to_f32(0x77) == 240.0f);
    /* halfway between neighbours: ties go to the even code; just off halfway, to the nearer */
    for (int code = 0; code < 0x7e; code++) {
        double low = e4m3_reference(code), high = e4m3_reference(code + 1), middle = 0.5 * (low + high);
        int even = code % 2 == 0 ? code : code + 1;
        SB_CHECK_MSG(sb_f32_to_e4m3((float)middle) == even, "midpoint after 0x%02X -> 0x%02X", code,
                     sb_f32_to_e4m3((float)middle));
        SB_CHECK(sb_f32_to_e4m3((float)(middle - (high - low) / 64)) == code);
        SB_CHECK(sb_f32_to_e4m3((float)(middle + (high - low) / 64)) == code + 1);
        SB_CHECK(sb_f32_to_e4m3((float)-middle) == (0x80 | even));
    }
    /* saturation at 448, NaN to 0x7F, underflow to zero */
    SB_CHECK(sb_f32_to_e4m3(463.9f) == 0x7e && sb_f32_to_e4m3(464.0f) == 0x7e && sb_f32_to_e4m3(1e30f) == 0x7e);
    SB_CHECK(sb_f32_to_e4m3(-INFINITY) == 0xfe && sb_f32_to_e4m3(NAN) == 0x7f);
    SB_CHECK(sb_f32_to_e4m3(0x1p-11f) == 0x00 && sb_f32_to_e4m3(0x1p-10f * 1.01f) == 0x01);
}

/* One tensor of an FP8 test file: raw F8_E4M3 codes or float values (converted by the writer). */
typedef struct fp8_item {
    const char *name;
    sb_dtype dtype;
    int ndim;
    int64_t shape[2];
    const uint8_t *codes; /* F8_E4M3 */
    const float *values;  /* other dtypes */
} fp8_item;

static char *write_fp8_dir(const char *label, const fp8_item *items, int count)
{
    char *dir = fresh_dir(label);
    char *path = join(dir, "model.safetensors");
    sb_safetensors_writer *writer;
    sb_error err = {0};
    SB_CHECK_MSG(sb_safetensors_writer_create(path, &writer, &err) == SB_OK, "%s", err.message);
    for (int i = 0; i < count; i++)
        SB_CHECK_MSG(sb_safetensors_writer_declare(writer, items[i].name, items[i].dtype, items[i].ndim, items[i].shape,
                                                   &err) == SB_OK, "%s", err.message);
    SB_CHECK(sb_safetensors_writer_begin_data(writer, &err) == SB_OK);
    for (int i = 0; i < count; i++) {
        int64_t elements = items[i].ndim == 1 ? items[i].shape[0] : items[i].shape[0] * items[i].shape[1];
        sb_status status = items[i].dtype == SB_DTYPE_F8_E4M3
                               ? sb_safetensors_writer_write(writer, items[i].codes, (size_t)elements, &err)
                               : sb_safetensors_writer_write_f32(writer, items[i].values, (size_t)elements, &err);
        SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    }
    SB_CHECK_MSG(sb_safetensors_writer_commit(writer, &err) == SB_OK, "%s", err.message);
    free(path);
    return dir;
}

static void expect_fp8_open_error_(int line, const char *dir, int64_t block_rows, int64_t block_cols,
                                   const char *fragment1, const char *fragment2)
{
    sb_checkpoint checkpoint;
    sb_error err = {0};
    sb_checkpoint_options options = {block_rows, block_cols};
    sb_status got = sb_checkpoint_open_with(dir, &options, &checkpoint, &err);
    SB_CHECK_MSG(got == SB_ERR_INPUT, "line %d: status %s (%s)", line, sb_status_name(got), err.message);
    if (got == SB_OK)
        sb_checkpoint_close(&checkpoint);
    SB_CHECK_MSG(strstr(err.message, dir) && strstr(err.message, "model.safetensors"), "line %d: '%s' lacks the file",
                 line, err.message);
    SB_CHECK_MSG(strstr(err.message, fragment1) && strstr(err.message, fragment2), "line %d: '%s' lacks '%s' / '%s'",
                 line, err.message, fragment1, fragment2);
}
#define expect_fp8_open_error(dir, br, bc, f1, f2) expect_fp8_open_error_(__LINE__, dir, br, bc, f1, f2)

static void test_fp8_checkpoint(void)
{
    /* w.weight: 5 x 7 codes, blocks of 2 x 3 (ragged: the last block row has 1 row, the last
     * block column 1 column), F32 scales [3, 3]; v.weight: 3 x 4, BF16 scales [2, 2] */
    enum { R = 5, C = 7 };
    uint8_t codes[R * C], codes_v[12];
    sb_test_rng rng = {77};
    for (int i = 0; i < R * C; i++) {
        codes[i] = (uint8_t)(sb_test_next(&rng) % 256);
        if (sb_e4m3_is_nan(codes[i]))
            codes[i] = 0x42;
    }
    for (int i = 0; i < 12; i++)
        codes_v[i] = (uint8_t)(0x30 + i);
    float scales[9] = {0.5f, 2.0f, 0.001f, 3.0f, 1.0f / 3.0f, 7.0f, 0.25f, 1e-5f, 100.0f};
    float scales_v[4] = {0.125f, 1.5f, 2.5f, 0.0078125f};
    float norm[4] = {1, 2, 3, 4};
    fp8_item items[] = {
        {"a.norm.weight", SB_DTYPE_BF16, 1, {4, 0}, NULL, norm},
        {"w.weight", SB_DTYPE_F8_E4M3, 2, {R, C}, codes, NULL},
        {"w.weight_scale_inv", SB_DTYPE_F32, 2, {3, 3}, NULL, scales},
        {"v.weight", SB_DTYPE_F8_E4M3, 2, {3, 4}, codes_v, NULL},
        {"v.weight_scale_inv", SB_DTYPE_BF16, 2, {2, 2}, NULL, scales_v},
    };
    char *dir = write_fp8_dir("fp8", items, 5);
    sb_checkpoint checkpoint;
    sb_error err = {0};
    sb_checkpoint_options options = {2, 3};
    SB_CHECK_MSG(sb_checkpoint_open_with(dir, &options, &checkpoint, &err) == SB_OK, "%s", err.message);
    /* the scales are not tensors of the model */
    SB_CHECK(checkpoint.ntensors == 3 && checkpoint.nscales == 2);
    SB_CHECK(sb_checkpoint_find(&checkpoint, "w.weight_scale_inv") == NULL);
    const sb_tensor_info *w = sb_checkpoint_find(&checkpoint, "w.weight");
    const sb_tensor_info *v = sb_checkpoint_find(&checkpoint, "v.weight");
    const sb_tensor_info *n = sb_checkpoint_find(&checkpoint, "a.norm.weight");
    SB_CHECK(w && v && n && n->scale_index == -1 && w->dtype == SB_DTYPE_F8_E4M3 && sb_dtype_size(w->dtype) == 1);
    SB_CHECK(w && strcmp(checkpoint.scales[w->scale_index].name, "w.weight_scale_inv") == 0);
    SB_CHECK(v && strcmp(checkpoint.scales[v->scale_index].name, "v.weight_scale_inv") == 0);
    /* every row range reads code x its block's scale, exactly */
    float out[R * C];
    for (int begin = 0; begin < R; begin++)
        for (int count = 0; begin + count <= R; count++) {
            SB_CHECK(sb_checkpoint_read_rows(&checkpoint, w, begin, count, true, out, &err) == SB_OK);
            int mismatches = 0;
            for (int r = begin; r < begin + count; r++)
                for (int c = 0; c < C; c++) {
                    float expected = (float)e4m3_reference(codes[r * C + c]) * scales[(r / 2) * 3 + c / 3];
                    mismatches += out[(r - begin) * C + c] != expected;
                }
            SB_CHECK_MSG(mismatches == 0, "rows [%d, %d): %d mismatches", begin, begin + count, mismatches);
        }
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, v, 0, 3, true, out, &err) == SB_OK);
    for (int i = 0; i < 12; i++)
        SB_CHECK(out[i] == (float)e4m3_reference(codes_v[i]) *
                               sb_bf16_to_f32(sb_f32_to_bf16(scales_v[(i / 4 / 2) * 2 + (i % 4) / 3])));
    /* raw bytes of an FP8 tensor are refused; of the others, fine */
    uint8_t raw[64];
    SB_CHECK(sb_checkpoint_read_raw(&checkpoint, w, raw, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "tensor 'w.weight' is F8_E4M3") && strstr(err.message, "cannot be passed through"),
                 "%s", err.message);
    SB_CHECK(sb_checkpoint_read_raw_rows(&checkpoint, w, 0, 1, raw, &err) == SB_ERR_INPUT);
    SB_CHECK(sb_checkpoint_read_raw(&checkpoint, n, raw, &err) == SB_OK);
    sb_checkpoint_close(&checkpoint);

    /* no block size: the FP8 tensor cannot be read */
    expect_fp8_open_error(dir, 0, 0, "tensor 'w.weight' is F8_E4M3",
                          "no quantization_config.weight_block_size");
    SB_CHECK(sb_checkpoint_open(dir, &checkpoint, &err) == SB_ERR_INPUT);
    /* the same file read with another block size: its scales have the wrong shape */
    expect_fp8_open_error(dir, 128, 128, "tensor 'w.weight_scale_inv' has shape [3, 3]",
                          "weight 'w.weight' [5, 7] with weight_block_size [128, 128] needs [1, 1]");
    free(dir);

    /* a weight without its scale; a scale whose weight is missing or not FP8; an FP8 scale; a 1-D FP8 tensor */
    fp8_item no_scale[] = {items[1]};
    dir = write_fp8_dir("fp8-no-scale", no_scale, 1);
    expect_fp8_open_error(dir, 2, 3, "tensor 'w.weight' is F8_E4M3 but its scale tensor 'w.weight_scale_inv'",
                          "is missing");
    free(dir);
    fp8_item orphan[] = {items[0], {"x.weight_scale_inv", SB_DTYPE_F32, 2, {3, 3}, NULL, scales}};
    dir = write_fp8_dir("fp8-orphan", orphan, 2);
    expect_fp8_open_error(dir, 2, 3, "tensor 'x.weight_scale_inv' scales 'x.weight'", "not in the checkpoint");
    free(dir);
    fp8_item not_fp8[] = {{"a.norm.weight_scale_inv", SB_DTYPE_F32, 2, {1, 2}, NULL, scales}, items[0]};
    dir = write_fp8_dir("fp8-not-fp8", not_fp8, 2);
    expect_fp8_open_error(dir, 2, 3, "tensor 'a.norm.weight_scale_inv' scales 'a.norm.weight'",
                          "which is BF16, not F8_E4M3");
    free(dir);
    fp8_item fp8_scale[] = {items[1], {"w.weight_scale_inv", SB_DTYPE_F8_E4M3, 2, {3, 3}, codes, NULL}};
    dir = write_fp8_dir("fp8-fp8-scale", fp8_scale, 2);
    expect_fp8_open_error(dir, 2, 3, "tensor 'w.weight_scale_inv' has dtype F8_E4M3", "F32, BF16 or F16");
    free(dir);
    fp8_item one_dim[] = {{"z.weight", SB_DTYPE_F8_E4M3, 1, {7, 0}, codes, NULL},
                          {"z.weight_scale_inv", SB_DTYPE_F32, 2, {1, 3}, NULL, scales}};
    dir = write_fp8_dir("fp8-1d", one_dim, 2);
    expect_fp8_open_error(dir, 2, 3, "tensor 'z.weight' is F8_E4M3 with 1 dimension(s)", "need a 2-D weight");
    free(dir);
    fp8_item misshaped[] = {items[1], {"w.weight_scale_inv", SB_DTYPE_F32, 2, {3, 2}, NULL, scales}};
    dir = write_fp8_dir("fp8-misshaped", misshaped, 2);
    expect_fp8_open_error(dir, 2, 3, "tensor 'w.weight_scale_inv' has shape [3, 2]",
                          "weight 'w.weight' [5, 7] with weight_block_size [2, 3] needs [3, 3]");
    free(dir);

    /* bad values are found when read: a NaN code; scales 0, negative, NaN, Inf */
    uint8_t with_nan[R * C];
    memcpy(with_nan, codes, sizeof with_nan);
    with_nan[3 * C + 5] = 0xff;
    fp8_item nan_code[] = {{"w.weight", SB_DTYPE_F8_E4M3, 2, {R, C}, with_nan, NULL}, items[2]};
    dir = write_fp8_dir("fp8-nan", nan_code, 2);
    SB_CHECK(sb_checkpoint_open_with(dir, &options, &checkpoint, &err) == SB_OK);
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, &checkpoint.tensors[0], 0, 3, true, out, &err) == SB_OK);
    SB_CHECK(sb_checkpoint_read_rows(&checkpoint, &checkpoint.tensors[0], 2, 3, false, out, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, dir) && strstr(err.message, "tensor 'w.weight'") &&
                     strstr(err.message, "NaN (F8_E4M3 code 0xFF) at row 3, column 5"),
                 "%s", err.message);
    sb_checkpoint_close(&checkpoint);
    free(dir);
    const float bad_scales[] = {0.0f, -1.0f, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        float broken[9];
        memcpy(broken, scales, sizeof broken);
        broken[1 * 3 + 2] = bad_scales[i]; /* block (1, 2): rows 2-3, column 6 */
        fp8_item bad_scale[] = {items[1], {"w.weight_scale_inv", SB_DTYPE_F32, 2, {3, 3}, NULL, broken}};
        dir = write_fp8_dir("fp8-bad-scale", bad_scale, 2);
        SB_CHECK(sb_checkpoint_open_with(dir, &options, &checkpoint, &err) == SB_OK);
        SB_CHECK(sb_checkpoint_read_rows(&checkpoint, &checkpoint.tensors[0], 0, 2, true, out, &err) == SB_OK);
        SB_CHECK(sb_checkpoint_read_rows(&checkpoint, &checkpoint.tensors[0], 1, 2, true, out, &err) == SB_ERR_INPUT);
        SB_CHECK_MSG(strstr(err.message, dir) && strstr(err.message, "tensor 'w.weight_scale_inv'") &&
                         strstr(err.message, "of block (1, 2) is not finite and positive"),
                     "%s", err.message);
        sb_checkpoint_close(&checkpoint);
        free(dir);
    }
}

/* Reads every tensor of a real checkpoint with check_finite. */
static void read_real_checkpoint(const char *dir)
{
    sb_checkpoint checkpoint;
    sb_error err = {0};
    sb_status status = sb_checkpoint_open(dir, &checkpoint, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    if (status != SB_OK)
        return;
    SB_CHECK(checkpoint.ntensors > 0 && sb_checkpoint_find(&checkpoint, "model.embed_tokens.weight"));
    for (int i = 0; i < checkpoint.ntensors; i++) {
        const sb_tensor_info *tensor = &checkpoint.tensors[i];
        int64_t rows = sb_tensor_rows(tensor), cols = sb_tensor_cols(tensor);
        float *values = malloc((size_t)(rows * cols) * sizeof *values);
        SB_CHECK_MSG(sb_checkpoint_read_rows(&checkpoint, tensor, 0, rows, true, values, &err) == SB_OK, "%s",
                     err.message);
        free(values);
    }
    printf("read %d tensors of %s\n", checkpoint.ntensors, dir);
    sb_checkpoint_close(&checkpoint);
}

int main(void)
{
    temp_root = sb_test_temp_dir("safetensors");
    test_round_trip_single();
    test_round_trip_sharded();
    test_writer_refusals();
    test_bad_single_files();
    test_bad_sharded();
    test_non_finite();
    test_e4m3();
    test_fp8_checkpoint();
    char path[4096];
    snprintf(path, sizeof path, "%s/tiny-austen-kjv", sb_test_data_dir());
    read_real_checkpoint(path);
    const char *shared = sb_test_shared_dir();
    if (shared) {
        const char *models[] = {"stories260K-hf", "austen-256", "tiny-austen-kjv"};
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/models/%s", shared, models[i]);
            read_real_checkpoint(path);
        }
    }
    sb_test_remove_tree(temp_root);
    free(temp_root);
    return sb_test_finish("test_safetensors");
}
