/* llama.cpp importance matrices: files of both formats are built here byte by byte from the
 * layout documented in io/sb_imatrix.h (as llama-imatrix writes them), read back and compared
 * with the means they encode; the same data in both formats give the same means; names map to
 * Hugging Face names; every prefix of a valid file is refused without a crash; and each kind of
 * corrupt or unacceptable content gives its own clear error (status, file, entry, column). */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "sb_imatrix.h"
#include "sb_safetensors_write.h"
#include "sb_test.h"

static char *temp_root;

/* ---- a byte buffer with little-endian writers ---- */

typedef struct buffer {
    uint8_t *data;
    size_t size, capacity;
} buffer;

static void put(buffer *b, const void *bytes, size_t count)
{
    if (b->size + count > b->capacity) {
        b->capacity = 2 * (b->size + count) + 64;
        b->data = realloc(b->data, b->capacity);
    }
    memcpy(b->data + b->size, bytes, count);
    b->size += count;
}

static void put_le(buffer *b, uint64_t value, int bytes)
{
    uint8_t out[8];
    for (int i = 0; i < bytes; i++)
        out[i] = (uint8_t)(value >> (8 * i));
    put(b, out, (size_t)bytes);
}

static void put_i32(buffer *b, int32_t value) { put_le(b, (uint32_t)value, 4); }
static void put_u64(buffer *b, uint64_t value) { put_le(b, value, 8); }
static void put_f32(buffer *b, float value)
{
    uint32_t bits;
    memcpy(&bits, &value, 4);
    put_le(b, bits, 4);
}
static void put_gguf_string(buffer *b, const char *text)
{
    put_u64(b, strlen(text));
    put(b, text, strlen(text));
}

static char *path_of(const char *name)
{
    char *path = malloc(4096);
    snprintf(path, 4096, "%s/%s", temp_root, name);
    return path;
}

static void save(const char *path, const void *data, size_t size)
{
    FILE *file = fopen(path, "wb");
    if (!file || (size && fwrite(data, 1, size, file) != size) || fclose(file) != 0) {
        perror(path);
        exit(1);
    }
}

/* ---- test data: a few entries of a 2-layer Llama with hidden 8, FFN 12 ---- */

typedef struct test_entry {
    const char *name;
    int ncols;
    float mean[12];
    int32_t ncall;  /* legacy */
    float count;    /* GGUF */
    bool with_sums; /* GGUF: also write "<name>.in_sum" */
} test_entry;

static test_entry entries[] = {
    {"blk.0.attn_q.weight", 8, {1, 2, 0.5f, 4, 0, 8, 0.25f, 1}, 10, 4096, true},
    {"blk.0.ffn_down.weight", 12, {3, 1, 1, 2, 0.125f, 1, 1, 1, 64, 1, 1, 2}, 10, 4096, false},
    {"blk.1.attn_output.weight", 8, {1, 1, 1, 1, 1, 1, 1, 16}, 6, 1536, false},
    {"output.weight", 8, {0.5f, 0.5f, 2, 2, 1, 1, 1, 1}, 10, 4096, false},
};
enum { NENTRIES = sizeof entries / sizeof entries[0] };

/* Legacy .dat: values = mean * ncall, as llama-imatrix stores them. `trailer` adds the chunk
 * count and dataset name. `override_index` >= 0 replaces that entry's (ncall, first value). */
static buffer legacy_file(const test_entry *list, int count, bool trailer)
{
    buffer b = {0};
    put_i32(&b, count);
    for (int i = 0; i < count; i++) {
        put_i32(&b, (int32_t)strlen(list[i].name));
        put(&b, list[i].name, strlen(list[i].name));
        put_i32(&b, list[i].ncall);
        put_i32(&b, list[i].ncols);
        for (int j = 0; j < list[i].ncols; j++)
            put_f32(&b, list[i].mean[j] * (float)(list[i].ncall > 0 ? list[i].ncall : 1));
    }
    if (trailer) {
        put_i32(&b, 10);
        put_i32(&b, (int32_t)strlen("calib.txt"));
        put(&b, "calib.txt", strlen("calib.txt"));
    }
    return b;
}

typedef struct gguf_options {
    uint32_t version;
    uint32_t alignment; /* 0: no general.alignment key (default 32) */
    const char *general_type;
    int matrices;        /* per entry (MoE when > 1) */
    int count_elements;  /* elements of .counts; 0: = matrices */
    int32_t sum2_type;   /* ggml type written for in_sum2 */
    bool skip_counts;    /* of the first entry */
    bool misalign;       /* offset of the first tensor not a multiple of the alignment */
} gguf_options;

static const gguf_options default_gguf = {3, 0, "imatrix", 1, 0, 0, false, false};

/* A GGUF imatrix: in_sum2 = mean * count, counts = count, in_sum = 0.5 * in_sum2 where asked. */
static buffer gguf_file(const test_entry *list, int count, gguf_options options)
{
    typedef struct info {
        char name[128];
        int64_t ne[2];
        int32_t type;
        buffer data;
    } info;
    info infos[64];
    int ninfos = 0;
    int matrices = options.matrices, count_elements = options.count_elements ? options.count_elements : matrices;
    for (int i = 0; i < count; i++) {
        info *sum2 = &infos[ninfos++];
        memset(sum2, 0, sizeof *sum2);
        snprintf(sum2->name, sizeof sum2->name, "%s.in_sum2", list[i].name);
        sum2->ne[0] = list[i].ncols;
        sum2->ne[1] = matrices;
        sum2->type = options.sum2_type;
        for (int m = 0; m < matrices; m++)
            for (int j = 0; j < list[i].ncols; j++)
                put_f32(&sum2->data, list[i].mean[j] * list[i].count);
        if (!(options.skip_counts && i == 0)) {
            info *counts = &infos[ninfos++];
            memset(counts, 0, sizeof *counts);
            snprintf(counts->name, sizeof counts->name, "%s.counts", list[i].name);
            counts->ne[0] = 1;
            counts->ne[1] = count_elements;
            for (int m = 0; m < count_elements; m++)
                put_f32(&counts->data, list[i].count);
        }
        if (list[i].with_sums) {
            info *sums = &infos[ninfos++];
            memset(sums, 0, sizeof *sums);
            snprintf(sums->name, sizeof sums->name, "%s.in_sum", list[i].name);
            sums->ne[0] = list[i].ncols;
            sums->ne[1] = matrices;
            for (int m = 0; m < matrices; m++)
                for (int j = 0; j < list[i].ncols; j++)
                    put_f32(&sums->data, 0.5f * list[i].mean[j] * list[i].count);
        }
    }
    uint64_t alignment = options.alignment ? options.alignment : 32;
    buffer b = {0};
    put(&b, "GGUF", 4);
    put_le(&b, options.version, 4);
    put_u64(&b, (uint64_t)ninfos);
    put_u64(&b, options.alignment ? 5 : 4);
    put_gguf_string(&b, "general.type");
    put_i32(&b, 8); /* string */
    put_gguf_string(&b, options.general_type);
    put_gguf_string(&b, "imatrix.datasets");
    put_i32(&b, 9); /* array */
    put_i32(&b, 8); /* of strings */
    put_u64(&b, 2);
    put_gguf_string(&b, "calib.txt");
    put_gguf_string(&b, "more.txt");
    put_gguf_string(&b, "imatrix.chunk_count");
    put_i32(&b, 4); /* uint32 */
    put_le(&b, 42, 4);
    put_gguf_string(&b, "imatrix.chunk_size");
    put_i32(&b, 4);
    put_le(&b, 512, 4);
    if (options.alignment) {
        put_gguf_string(&b, "general.alignment");
        put_i32(&b, 4);
        put_le(&b, options.alignment, 4);
    }
    uint64_t offset = 0;
    for (int i = 0; i < ninfos; i++) {
        put_gguf_string(&b, infos[i].name);
        put_le(&b, 2, 4);
        put_u64(&b, (uint64_t)infos[i].ne[0]);
        put_u64(&b, (uint64_t)infos[i].ne[1]);
        put_i32(&b, infos[i].type);
        put_u64(&b, offset + (options.misalign && i == 0 ? 4 : 0));
        offset += (infos[i].data.size + alignment - 1) / alignment * alignment;
    }
    static const uint8_t zeros[256] = {0};
    put(&b, zeros, (alignment - b.size % alignment) % alignment);
    for (int i = 0; i < ninfos; i++) {
        put(&b, infos[i].data.data, infos[i].data.size);
        if (i + 1 < ninfos) /* no padding after the last: then every strict prefix is truncated */
            put(&b, zeros, (alignment - infos[i].data.size % alignment) % alignment);
        free(infos[i].data.data);
    }
    return b;
}

/* ---- checks ---- */

static void check_entries(const sb_imatrix *imatrix, const test_entry *list, int count)
{
    SB_CHECK(imatrix->nentries == count);
    for (int i = 0; i < count; i++) {
        const sb_imatrix_entry *entry = sb_imatrix_find(imatrix, list[i].name);
        SB_CHECK_MSG(entry, "entry %s missing", list[i].name);
        if (!entry)
            continue;
        SB_CHECK(entry->ncols == list[i].ncols);
        for (int j = 0; j < list[i].ncols; j++)
            SB_CHECK_MSG(entry->mean_sq[j] == list[i].mean[j], "%s[%d] = %g, expected %g", list[i].name, j,
                         entry->mean_sq[j], list[i].mean[j]);
        char hf[256];
        SB_CHECK(sb_imatrix_hf_name(list[i].name, hf, sizeof hf));
        SB_CHECK(entry->hf_name && strcmp(entry->hf_name, hf) == 0);
        SB_CHECK(sb_imatrix_find(imatrix, hf) == entry);
    }
    /* sorted by llama.cpp name */
    for (int i = 1; i < imatrix->nentries; i++)
        SB_CHECK(strcmp(imatrix->entries[i - 1].llama_name, imatrix->entries[i].llama_name) < 0);
}

static void test_names(void)
{
    char hf[256];
    struct {
        const char *llama, *hf;
    } cases[] = {
        {"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"},
        {"blk.7.attn_k.weight", "model.layers.7.self_attn.k_proj.weight"},
        {"blk.12.attn_v.weight", "model.layers.12.self_attn.v_proj.weight"},
        {"blk.125.attn_output.weight", "model.layers.125.self_attn.o_proj.weight"},
        {"blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"},
        {"blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"},
        {"blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"},
        {"blk.3.attn_norm.weight", "model.layers.3.input_layernorm.weight"},
        {"blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"},
        {"token_embd.weight", "model.embed_tokens.weight"},
        {"output.weight", "lm_head.weight"},
        {"output_norm.weight", "model.norm.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        SB_CHECK_MSG(sb_imatrix_hf_name(cases[i].llama, hf, sizeof hf) && strcmp(hf, cases[i].hf) == 0, "%s -> %s",
                     cases[i].llama, hf);
    }
    const char *unmapped[] = {"blk.x.attn_q.weight", "blk..attn_q.weight", "blk.3.attn_qkv.weight",
                              "blk.3.ffn_down_exps.weight", "blk.3.attn_q.bias", "rope_freqs.weight", "blk.3",
                              "blk.-1.attn_q.weight", "output", ""};
    for (size_t i = 0; i < sizeof unmapped / sizeof unmapped[0]; i++)
        SB_CHECK_MSG(!sb_imatrix_hf_name(unmapped[i], hf, sizeof hf) && hf[0] == '\0', "%s mapped", unmapped[i]);
    char tiny[8];
    SB_CHECK(!sb_imatrix_hf_name("blk.0.attn_q.weight", tiny, sizeof tiny) && tiny[0] == '\0');
}

static void test_legacy(void)
{
    char *path = path_of("imatrix.dat");
    sb_imatrix imatrix;
    sb_error err = {0};
    buffer b = legacy_file(entries, NENTRIES, true);
    save(path, b.data, b.size);
    SB_CHECK_MSG(sb_imatrix_load(path, &imatrix, &err) == SB_OK, "%s", err.message);
    SB_CHECK(imatrix.format == SB_IMATRIX_LEGACY);
    check_entries(&imatrix, entries, NENTRIES);
    SB_CHECK(imatrix.chunk_count == 10 && imatrix.chunk_size == -1);
    SB_CHECK(imatrix.ndatasets == 1 && strcmp(imatrix.datasets[0], "calib.txt") == 0);
    SB_CHECK(sb_imatrix_find(&imatrix, "blk.1.attn_output.weight")->count == 6);
    SB_CHECK(strcmp(imatrix.path, path) == 0);
    sb_imatrix_free(&imatrix);

    /* every strict prefix fails cleanly, except the one ending right after the entries (older
     * files have no trailer) */
    size_t without_trailer = b.size - 4 - 4 - strlen("calib.txt");
    for (size_t length = 0; length < b.size; length++) {
        save(path, b.data, length);
        sb_status status = sb_imatrix_load(path, &imatrix, &err);
        if (length == without_trailer) {
            SB_CHECK_MSG(status == SB_OK, "prefix %zu: %s", length, err.message);
            if (status == SB_OK) {
                check_entries(&imatrix, entries, NENTRIES);
                SB_CHECK(imatrix.chunk_count == -1 && imatrix.ndatasets == 0);
                sb_imatrix_free(&imatrix);
            }
        } else {
            SB_CHECK_MSG(status == SB_ERR_FORMAT && strstr(err.message, path), "prefix %zu of %zu: %s (%s)", length,
                         b.size, sb_status_name(status), err.message);
            SB_CHECK(imatrix.entries == NULL && imatrix.path == NULL);
        }
    }
    /* trailing garbage */
    put(&b, "xyz", 3);
    save(path, b.data, b.size);
    SB_CHECK(sb_imatrix_load(path, &imatrix, &err) == SB_ERR_FORMAT);
    SB_CHECK_MSG(strstr(err.message, "3 unexpected bytes"), "%s", err.message);
    free(b.data);
    free(path);
}

static void test_gguf(void)
{
    char *path = path_of("imatrix.gguf");
    sb_imatrix imatrix;
    sb_error err = {0};
    buffer b = gguf_file(entries, NENTRIES, default_gguf);
    save(path, b.data, b.size);
    SB_CHECK_MSG(sb_imatrix_load(path, &imatrix, &err) == SB_OK, "%s", err.message);
    SB_CHECK(imatrix.format == SB_IMATRIX_GGUF);
    check_entries(&imatrix, entries, NENTRIES);
    SB_CHECK(imatrix.chunk_count == 42 && imatrix.chunk_size == 512);
    SB_CHECK(imatrix.ndatasets == 2 && strcmp(imatrix.datasets[0], "calib.txt") == 0 &&
             strcmp(imatrix.datasets[1], "more.txt") == 0);
    SB_CHECK(sb_imatrix_find(&imatrix, "lm_head.weight")->count == 4096);
    sb_imatrix_free(&imatrix);

    /* every strict prefix fails cleanly */
    for (size_t length = 0; length < b.size; length++) {
        save(path, b.data, length);
        sb_status status = sb_imatrix_load(path, &imatrix, &err);
        SB_CHECK_MSG(status == SB_ERR_FORMAT && strstr(err.message, path), "prefix %zu of %zu: %s (%s)", length, b.size,
                     sb_status_name(status), err.message);
    }
    free(b.data);

    /* GGUF v2 and an explicit alignment of 64 */
    gguf_options options = default_gguf;
    options.version = 2;
    options.alignment = 64;
    b = gguf_file(entries, NENTRIES, options);
    save(path, b.data, b.size);
    SB_CHECK_MSG(sb_imatrix_load(path, &imatrix, &err) == SB_OK, "%s", err.message);
    check_entries(&imatrix, entries, NENTRIES);
    sb_imatrix_free(&imatrix);
    free(b.data);
    free(path);
}

/* Loads `b` expecting `status` and a message with every fragment (NULL-terminated). */
static void expect_error_(int line, buffer b, sb_status status, ...)
{
    char *path = path_of("bad.imatrix");
    save(path, b.data, b.size);
    free(b.data);
    sb_imatrix imatrix;
    sb_error err = {0};
    sb_status got = sb_imatrix_load(path, &imatrix, &err);
    SB_CHECK_MSG(got == status, "line %d: status %s, expected %s (%s)", line, sb_status_name(got),
                 sb_status_name(status), err.message);
    SB_CHECK_MSG(strstr(err.message, path), "line %d: message '%s' lacks the path", line, err.message);
    va_list fragments;
    va_start(fragments, status);
    for (const char *fragment; (fragment = va_arg(fragments, const char *));)
        SB_CHECK_MSG(strstr(err.message, fragment), "line %d: message '%s' lacks '%s'", line, err.message, fragment);
    va_end(fragments);
    if (got == SB_OK)
        sb_imatrix_free(&imatrix);
    free(path);
}
#define expect_error(b, status, ...) expect_error_(__LINE__, b, status, __VA_ARGS__, (const char *)NULL)

static void test_legacy_errors(void)
{
    test_entry bad[NENTRIES];
    buffer b;

    b = (buffer){0};
    expect_error(b, SB_ERR_FORMAT, "empty file");
    b = (buffer){0};
    put_i32(&b, 0);
    expect_error(b, SB_ERR_FORMAT, "0 entries", "not an importance matrix");
    b = (buffer){0};
    put(&b, "some random text that is not an imatrix at all", 46);
    expect_error(b, SB_ERR_FORMAT, "not an importance matrix");

    /* zero calls: no data */
    memcpy(bad, entries, sizeof bad);
    bad[1].ncall = 0;
    expect_error(legacy_file(bad, NENTRIES, true), SB_ERR_INPUT, "entry 'blk.0.ffn_down.weight'", "ncall is 0");
    /* NaN, Inf, negative */
    memcpy(bad, entries, sizeof bad);
    bad[2].mean[5] = NAN;
    expect_error(legacy_file(bad, NENTRIES, true), SB_ERR_INPUT, "entry 'blk.1.attn_output.weight'", "column 5");
    memcpy(bad, entries, sizeof bad);
    bad[0].mean[7] = INFINITY;
    expect_error(legacy_file(bad, NENTRIES, false), SB_ERR_INPUT, "entry 'blk.0.attn_q.weight'", "column 7 is inf");
    memcpy(bad, entries, sizeof bad);
    bad[3].mean[0] = -1;
    expect_error(legacy_file(bad, NENTRIES, false), SB_ERR_INPUT, "entry 'output.weight'", "column 0 is -", ">= 0");
    /* MoE experts */
    memcpy(bad, entries, sizeof bad);
    bad[1].name = "blk.0.ffn_down_exps.weight";
    expect_error(legacy_file(bad, NENTRIES, true), SB_ERR_INPUT, "entry 'blk.0.ffn_down_exps.weight'",
                 "MoE expert tensor");
    /* duplicate entries */
    memcpy(bad, entries, sizeof bad);
    bad[2].name = bad[0].name;
    expect_error(legacy_file(bad, NENTRIES, true), SB_ERR_FORMAT, "entry 'blk.0.attn_q.weight' appears twice");
    /* corrupt headers: name length, nval, NUL in a name, absurd entry count */
    b = (buffer){0};
    put_i32(&b, 1);
    put_i32(&b, -3);
    put(&b, "abcdefghijklmnopqrstuvwxyz", 26);
    expect_error(b, SB_ERR_FORMAT, "entry 1: name length -3");
    b = (buffer){0};
    put_i32(&b, 1);
    put_i32(&b, 5);
    put(&b, "w.abc", 5);
    put_i32(&b, 1);
    put_i32(&b, 0);
    put(&b, "padding-to-be-plausible", 23);
    expect_error(b, SB_ERR_FORMAT, "entry 'w.abc': 0 values");
    b = (buffer){0};
    put_i32(&b, 1);
    put_i32(&b, 5);
    put(&b, "w\0abc", 5);
    put_i32(&b, 1);
    put_i32(&b, 1);
    put_f32(&b, 1.0f);
    expect_error(b, SB_ERR_FORMAT, "NUL byte");
    b = legacy_file(entries, NENTRIES, true);
    b.data[0] = 0xff; /* n_entries = 255 + ... */
    expect_error(b, SB_ERR_FORMAT, "entries in");
    /* a corrupt trailer */
    b = legacy_file(entries, NENTRIES, true);
    b.size -= 3; /* dataset name cut short */
    expect_error(b, SB_ERR_FORMAT, "dataset name", "truncated");
}

static void test_gguf_errors(void)
{
    test_entry bad[NENTRIES];
    gguf_options options;
    buffer b;

    options = default_gguf;
    options.version = 1;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_FORMAT, "GGUF version 1 is not supported");
    options.version = 4;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_FORMAT, "GGUF version 4");
    options.version = 0x03000000;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_FORMAT, "big-endian");

    /* a model, not an importance matrix */
    options = default_gguf;
    options.general_type = "model";
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_INPUT, "general.type is \"model\"");
    /* no entries at all */
    expect_error(gguf_file(entries, 0, default_gguf), SB_ERR_INPUT, "no importance entries");

    /* zero counts, NaN */
    memcpy(bad, entries, sizeof bad);
    bad[2].count = 0;
    expect_error(gguf_file(bad, NENTRIES, default_gguf), SB_ERR_INPUT, "entry 'blk.1.attn_output.weight'",
                 "count is 0");
    memcpy(bad, entries, sizeof bad);
    bad[1].mean[11] = NAN;
    expect_error(gguf_file(bad, NENTRIES, default_gguf), SB_ERR_INPUT, "entry 'blk.0.ffn_down.weight'",
                 "column 11 is", "nan");

    /* an in_sum2 without its counts */
    options = default_gguf;
    options.skip_counts = true;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_FORMAT, "blk.0.attn_q.weight.in_sum2",
                 "no matching 'blk.0.attn_q.weight.counts'");
    /* MoE: 4 matrices per entry */
    options = default_gguf;
    options.matrices = 4;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_INPUT, "4 matrices", "MoE expert tensor");
    /* counts of the wrong size */
    options = default_gguf;
    options.count_elements = 2;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_FORMAT, "mismatched sums and counts");
    /* in_sum2 not F32 */
    options = default_gguf;
    options.sum2_type = 1;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_FORMAT, "ggml type 1");
    /* misaligned offset */
    options = default_gguf;
    options.misalign = true;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_FORMAT, "not a multiple of the alignment 32");
    /* alignment not a power of two */
    options = default_gguf;
    options.alignment = 48;
    expect_error(gguf_file(entries, NENTRIES, options), SB_ERR_FORMAT, "general.alignment 48");
    /* data past the end: chop the last tensor's bytes */
    b = gguf_file(entries, NENTRIES, default_gguf);
    b.size -= 4;
    expect_error(b, SB_ERR_FORMAT, "run past the end", "truncated");
    /* absurd counts in the header */
    b = gguf_file(entries, NENTRIES, default_gguf);
    b.data[15] = 0x7f; /* tensor count's top byte */
    expect_error(b, SB_ERR_FORMAT, "cannot fit");
    /* an orphan counts tensor: a one-entry file whose in_sum2 is renamed */
    b = gguf_file(entries, 1, default_gguf);
    uint8_t *where = memmem(b.data, b.size, ".in_sum2", 8);
    SB_CHECK(where != NULL);
    if (where)
        memcpy(where, ".in_sumX", 8);
    expect_error(b, SB_ERR_FORMAT, "'blk.0.attn_q.weight.counts' has no matching 'blk.0.attn_q.weight.in_sum2'");
    /* duplicate tensors */
    /* duplicate tensors: rename "<name>.counts" to "<name>.in_sum" (same length), which exists */
    b = gguf_file(entries, 1, default_gguf);
    where = memmem(b.data, b.size, "weight.counts", 13);
    SB_CHECK(where != NULL);
    if (where)
        memcpy(where, "weight.in_sum", 13); /* now two tensors named "...in_sum" */
    expect_error(b, SB_ERR_FORMAT, "appears twice");
}

static void test_check_checkpoint(void)
{
    /* a checkpoint with hidden 8, FFN 12, two layers (only the tensors the entries name) */
    char *dir = path_of("model");
    char command[4200];
    sb_test_format(command, sizeof command, "mkdir -p '%s'", dir);
    SB_CHECK(system(command) == 0);
    char file[4200];
    sb_test_format(file, sizeof file, "%s/model.safetensors", dir);
    struct {
        const char *name;
        int64_t shape[2];
    } tensors[] = {
        {"model.layers.0.self_attn.q_proj.weight", {8, 8}},  {"model.layers.0.mlp.down_proj.weight", {8, 12}},
        {"model.layers.1.self_attn.o_proj.weight", {8, 8}},  {"lm_head.weight", {16, 8}},
        {"model.embed_tokens.weight", {16, 8}},
    };
    sb_safetensors_writer *writer;
    sb_error err = {0};
    SB_CHECK(sb_safetensors_writer_create(file, &writer, &err) == SB_OK);
    for (int i = 0; i < 5; i++)
        SB_CHECK(sb_safetensors_writer_declare(writer, tensors[i].name, SB_DTYPE_BF16, 2, tensors[i].shape, &err) ==
                 SB_OK);
    SB_CHECK(sb_safetensors_writer_begin_data(writer, &err) == SB_OK);
    float zeros[128] = {0};
    for (int i = 0; i < 5; i++)
        SB_CHECK(sb_safetensors_writer_write_f32(writer, zeros, (size_t)(tensors[i].shape[0] * tensors[i].shape[1]),
                                                 &err) == SB_OK);
    SB_CHECK_MSG(sb_safetensors_writer_commit(writer, &err) == SB_OK, "%s", err.message);
    sb_checkpoint checkpoint;
    SB_CHECK_MSG(sb_checkpoint_open(dir, &checkpoint, &err) == SB_OK, "%s", err.message);

    char *path = path_of("check.gguf");
    sb_imatrix imatrix;
    buffer b = gguf_file(entries, NENTRIES, default_gguf);
    save(path, b.data, b.size);
    free(b.data);
    SB_CHECK(sb_imatrix_load(path, &imatrix, &err) == SB_OK);
    SB_CHECK_MSG(sb_imatrix_check_checkpoint(&imatrix, &checkpoint, &err) == SB_OK, "%s", err.message);
    sb_imatrix_free(&imatrix);

    test_entry other[NENTRIES];
    memcpy(other, entries, sizeof other);
    other[0].ncols = 6; /* another model's hidden size */
    b = gguf_file(other, NENTRIES, default_gguf);
    save(path, b.data, b.size);
    free(b.data);
    SB_CHECK(sb_imatrix_load(path, &imatrix, &err) == SB_OK);
    SB_CHECK(sb_imatrix_check_checkpoint(&imatrix, &checkpoint, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "entry 'blk.0.attn_q.weight' has 6 columns") &&
                     strstr(err.message, "'model.layers.0.self_attn.q_proj.weight'") && strstr(err.message, "has 8"),
                 "%s", err.message);
    sb_imatrix_free(&imatrix);

    memcpy(other, entries, sizeof other);
    other[2].name = "blk.5.attn_output.weight"; /* a deeper model */
    b = gguf_file(other, NENTRIES, default_gguf);
    save(path, b.data, b.size);
    free(b.data);
    SB_CHECK(sb_imatrix_load(path, &imatrix, &err) == SB_OK);
    SB_CHECK(sb_imatrix_check_checkpoint(&imatrix, &checkpoint, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "has no tensor 'model.layers.5.self_attn.o_proj.weight'"), "%s", err.message);
    sb_imatrix_free(&imatrix);

    memcpy(other, entries, sizeof other);
    other[1].name = "blk.0.attn_qkv.weight"; /* another architecture */
    b = legacy_file(other, NENTRIES, true);
    save(path, b.data, b.size);
    free(b.data);
    SB_CHECK(sb_imatrix_load(path, &imatrix, &err) == SB_OK);
    const sb_imatrix_entry *qkv = sb_imatrix_find(&imatrix, "blk.0.attn_qkv.weight");
    SB_CHECK(qkv && qkv->hf_name == NULL);
    SB_CHECK(sb_imatrix_check_checkpoint(&imatrix, &checkpoint, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "'blk.0.attn_qkv.weight' has no Hugging Face Llama counterpart"), "%s",
                 err.message);
    sb_imatrix_free(&imatrix);

    sb_checkpoint_close(&checkpoint);
    free(path);
    free(dir);
}

int main(void)
{
    temp_root = sb_test_temp_dir("imatrix");
    test_names();
    test_legacy();
    test_gguf();
    test_legacy_errors();
    test_gguf_errors();
    test_check_checkpoint();
    /* a file that does not exist */
    sb_imatrix imatrix;
    sb_error err = {0};
    char *missing = path_of("missing.gguf");
    SB_CHECK(sb_imatrix_load(missing, &imatrix, &err) == SB_ERR_IO && strstr(err.message, missing));
    free(missing);
    sb_test_remove_tree(temp_root);
    free(temp_root);
    return sb_test_finish("test_imatrix");
}
