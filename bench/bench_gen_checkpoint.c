/* bench-gen-checkpoint: writes a synthetic Llama-shaped Hugging Face checkpoint for benchmarks
 * and tests: config.json plus model.safetensors, or model-0000i-of-0000N.safetensors shards and
 * model.safetensors.index.json once the data exceed --shard-gb (sharded as transformers does:
 * tensors in model order, a new shard when the next tensor would overflow the current one).
 *
 * Shapes default to Llama-2-7B's (hidden 4096, FFN 11008, 32 heads, 32 KV heads, vocab 32000)
 * with fewer layers; --small gives a tiny model for tests (hidden 64, FFN 172 (ragged for every
 * tile size, as stories260K's), 4 heads, 2 KV heads, vocab 256, 2 layers).
 *
 * Weights are heavy-tailed like trained ones: 0.02 x Student-t with 4 degrees of freedom, and a
 * few outlier input columns scaled by 8. The outlier columns of the hidden dimension are the same
 * in every layer (real models have persistent outlier channels, which is what channel reordering
 * exploits); o_proj/down_proj get their own. RMSNorm weights are 1 + 0.05 t. Every row has its
 * own random stream derived from (seed, tensor name, row), so the output is the same for any
 * thread count and any sharding. Rows are generated a block at a time and streamed to the writer:
 * memory stays at one block of rows whatever the model size.
 *
 *   bench-gen-checkpoint --out DIR [--layers N | --size-gb X] [--shard-gb Y] [--seed S]
 *                        [--small] [--hidden H] [--intermediate I] [--vocab V] [--heads A]
 *                        [--kv-heads K] [--dtype bf16|f16|f32] [--tie]
 *                        [--config config.json] [--headers-only]
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sb_atomic.h"
#include "sb_config.h"
#include "sb_error.h"
#include "sb_safetensors.h"
#include "sb_safetensors_write.h"

/* transformers' default max_shard_size ("5GB", decimal). */
#define DEFAULT_SHARD_GB 5.0
/* Rows generated (in parallel) per write: a few MB for 7B-like rows. */
enum { ROW_BLOCK = 64 };
/* One input column in OUTLIER_EVERY is an outlier column, scaled by OUTLIER_SCALE. */
enum { OUTLIER_EVERY = 256 };
#define OUTLIER_SCALE 8.0
#define WEIGHT_SCALE 0.02
#define NORM_SCALE 0.05

typedef struct gen_options {
    const char *out_dir;
    int64_t layers; /* 0: from size_gb, or the default */
    double size_gb;
    double shard_gb;
    uint64_t seed;
    int64_t hidden, intermediate, vocab, heads, kv_heads;
    sb_dtype dtype;
    bool tie;
    const char *config_path; /* --config: shapes (and the config.json written) from this file */
    char *config_text;
    bool headers_only;       /* --headers-only: sparse files, headers and holes, no data */
} gen_options;

/* What kind of values a tensor gets. */
typedef enum tensor_kind { KIND_NORM, KIND_HIDDEN_INPUT, KIND_OWN_OUTLIERS } tensor_kind;

typedef struct planned_tensor {
    char name[128];
    int ndim;
    int64_t shape[2];
    tensor_kind kind;
    uint64_t nbytes;
    int shard;
} planned_tensor;

typedef struct plan {
    planned_tensor *tensors;
    int ntensors, capacity;
    int nshards;
    uint64_t total_bytes;
} plan;

/* ---- random numbers: splitmix64 streams, Student-t(4) ---- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* (0, 1]: never 0, so logarithms stay finite. */
static double uniform_open(uint64_t *state) { return ((double)(splitmix64(state) >> 11) + 1.0) * 0x1p-53; }

static uint64_t hash_name(const char *name, uint64_t seed)
{
    uint64_t hash = 0xcbf29ce484222325ULL ^ seed; /* FNV-1a, seeded */
    for (const char *p = name; *p; p++)
        hash = (hash ^ (uint8_t)*p) * 0x100000001b3ULL;
    return hash;
}

/* Two independent Student-t samples with 4 degrees of freedom: Z / sqrt(V / 4) with Z from one
 * Box-Muller pair and V ~ chi-square(4) = -2 ln(U1 U2). Variance 2, kurtosis infinite: a few
 * weights far out, as in trained LLMs. Pairs halve the cost of the normals. */
static void student_t4_pair(uint64_t *state, double out[2])
{
    double radius = sqrt(-2.0 * log(uniform_open(state)));
    double angle = 2.0 * M_PI * uniform_open(state);
    double normal[2] = {radius * cos(angle), radius * sin(angle)};
    for (int k = 0; k < 2; k++) {
        double chi2 = -2.0 * log(uniform_open(state) * uniform_open(state));
        out[k] = normal[k] / sqrt(chi2 / 4.0);
    }
}

/* Marks the outlier columns of a `cols`-wide input dimension chosen by `stream_seed`. */
static void choose_outliers(uint64_t stream_seed, int64_t cols, unsigned char *is_outlier)
{
    memset(is_outlier, 0, (size_t)cols);
    uint64_t state = stream_seed;
    int64_t count = cols / OUTLIER_EVERY > 0 ? cols / OUTLIER_EVERY : 1;
    for (int64_t i = 0; i < count; i++)
        is_outlier[splitmix64(&state) % (uint64_t)cols] = 1;
}

/* ---- the plan: names, shapes, shards ---- */

static sb_status plan_add(plan *p, const char *name, int ndim, int64_t rows, int64_t cols, tensor_kind kind,
                          sb_dtype dtype, sb_error *err)
{
    if (p->ntensors == p->capacity) {
        int capacity = p->capacity ? 2 * p->capacity : 64;
        planned_tensor *tensors = realloc(p->tensors, (size_t)capacity * sizeof *tensors);
        if (!tensors)
            return sb_error_set(err, SB_ERR_NOMEM, "cannot grow the tensor plan to %d entries", capacity);
        p->tensors = tensors;
        p->capacity = capacity;
    }
    planned_tensor *tensor = &p->tensors[p->ntensors++];
    memset(tensor, 0, sizeof *tensor);
    snprintf(tensor->name, sizeof tensor->name, "%s", name);
    tensor->ndim = ndim;
    tensor->shape[0] = ndim == 1 ? cols : rows;
    tensor->shape[1] = cols;
    tensor->kind = kind;
    tensor->nbytes = (uint64_t)(ndim == 1 ? cols : rows * cols) * sb_dtype_size(dtype);
    p->total_bytes += tensor->nbytes;
    return SB_OK;
}

static int64_t head_dim(const gen_options *options) { return options->hidden / options->heads; }

/* Bytes of one decoder layer and of everything else, for --size-gb. */
static void model_bytes(const gen_options *options, uint64_t *per_layer, uint64_t *fixed)
{
    uint64_t h = (uint64_t)options->hidden, f = (uint64_t)options->intermediate, v = (uint64_t)options->vocab;
    uint64_t kv = (uint64_t)(options->kv_heads * head_dim(options));
    uint64_t elements = 2 * h + h * h + 2 * kv * h + h * h + 3 * h * f;
    *per_layer = elements * sb_dtype_size(options->dtype);
    *fixed = (v * h * (options->tie ? 1 : 2) + h) * sb_dtype_size(options->dtype);
}

static sb_status make_plan(const gen_options *options, plan *p, sb_error *err)
{
    int64_t h = options->hidden, f = options->intermediate, kv = options->kv_heads * head_dim(options);
    sb_dtype dtype = options->dtype;
    char name[128];
    SB_TRY(plan_add(p, "model.embed_tokens.weight", 2, options->vocab, h, KIND_HIDDEN_INPUT, dtype, err));
    for (int64_t layer = 0; layer < options->layers; layer++) {
        /* transformers' parameter order within a layer; rows/cols: 'h' hidden, 'k' KV, 'f' FFN. */
        static const struct {
            const char *suffix;
            char rows, cols;
            tensor_kind kind;
        } layout[] = {
            {"input_layernorm.weight", 0, 'h', KIND_NORM},
            {"self_attn.q_proj.weight", 'h', 'h', KIND_HIDDEN_INPUT},
            {"self_attn.k_proj.weight", 'k', 'h', KIND_HIDDEN_INPUT},
            {"self_attn.v_proj.weight", 'k', 'h', KIND_HIDDEN_INPUT},
            {"self_attn.o_proj.weight", 'h', 'h', KIND_OWN_OUTLIERS},
            {"post_attention_layernorm.weight", 0, 'h', KIND_NORM},
            {"mlp.gate_proj.weight", 'f', 'h', KIND_HIDDEN_INPUT},
            {"mlp.up_proj.weight", 'f', 'h', KIND_HIDDEN_INPUT},
            {"mlp.down_proj.weight", 'h', 'f', KIND_OWN_OUTLIERS},
        };
        for (size_t i = 0; i < sizeof layout / sizeof layout[0]; i++) {
            snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)layer, layout[i].suffix);
            int64_t rows = layout[i].rows == 'k' ? kv : layout[i].rows == 'f' ? f : h;
            int64_t cols = layout[i].cols == 'f' ? f : h;
            SB_TRY(plan_add(p, name, layout[i].rows ? 2 : 1, rows, cols, layout[i].kind, dtype, err));
        }
    }
    SB_TRY(plan_add(p, "model.norm.weight", 1, 1, h, KIND_NORM, dtype, err));
    if (!options->tie)
        SB_TRY(plan_add(p, "lm_head.weight", 2, options->vocab, h, KIND_HIDDEN_INPUT, dtype, err));
    /* transformers' rule: open a new shard when the next tensor would overflow the current one
     * (a tensor larger than the limit gets a shard of its own). */
    uint64_t limit = (uint64_t)(options->shard_gb * 1e9);
    uint64_t shard_bytes = 0;
    int shard = 0;
    for (int i = 0; i < p->ntensors; i++) {
        if (shard_bytes > 0 && shard_bytes + p->tensors[i].nbytes > limit) {
            shard++;
            shard_bytes = 0;
        }
        p->tensors[i].shard = shard;
        shard_bytes += p->tensors[i].nbytes;
    }
    p->nshards = shard + 1;
    return SB_OK;
}

static void shard_name(const plan *p, int shard, char *name, size_t size)
{
    if (p->nshards == 1)
        snprintf(name, size, "model.safetensors");
    else
        snprintf(name, size, "model-%05d-of-%05d.safetensors", shard + 1, p->nshards);
}

/* ---- data ---- */

/* Fills `count` rows starting at `row_begin` of `tensor`. */
static void generate_rows(const planned_tensor *tensor, uint64_t tensor_seed, const unsigned char *is_outlier,
                          int64_t row_begin, int64_t count, float *rows)
{
    int64_t cols = tensor->shape[tensor->ndim - 1];
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < count; r++) {
        /* Each row's stream depends only on (tensor, row): thread count and blocking do not matter. */
        uint64_t state = tensor_seed ^ ((uint64_t)(row_begin + r) * 0xd1b54a32d192ed03ULL);
        splitmix64(&state);
        float *row = rows + r * cols;
        double pair[2];
        for (int64_t c = 0; c < cols; c++) {
            if (c % 2 == 0)
                student_t4_pair(&state, pair);
            double t = pair[c % 2];
            if (tensor->kind == KIND_NORM)
                row[c] = (float)(1.0 + NORM_SCALE * t);
            else
                row[c] = (float)(WEIGHT_SCALE * t * (is_outlier[c] ? OUTLIER_SCALE : 1.0));
        }
    }
}

static sb_status write_shard(const gen_options *options, const plan *p, int shard, float *block,
                             unsigned char *is_outlier, const unsigned char *hidden_outliers, sb_error *err)
{
    char file[64], path[4096];
    shard_name(p, shard, file, sizeof file);
    snprintf(path, sizeof path, "%s/%s", options->out_dir, file);
    sb_safetensors_writer *writer;
    SB_TRY(sb_safetensors_writer_create(path, &writer, err));
    sb_status status = sb_safetensors_writer_add_metadata(writer, "format", "pt", err);
    for (int i = 0; i < p->ntensors && status == SB_OK; i++)
        if (p->tensors[i].shard == shard)
            status = sb_safetensors_writer_declare(writer, p->tensors[i].name, options->dtype, p->tensors[i].ndim,
                                                   p->tensors[i].shape, err);
    if (status == SB_OK)
        status = sb_safetensors_writer_begin_data(writer, err);
    for (int i = 0; i < p->ntensors && status == SB_OK; i++) {
        const planned_tensor *tensor = &p->tensors[i];
        if (tensor->shard != shard)
            continue;
        uint64_t tensor_seed = hash_name(tensor->name, options->seed);
        int64_t rows = tensor->ndim == 1 ? 1 : tensor->shape[0], cols = tensor->shape[tensor->ndim - 1];
        const unsigned char *outliers = hidden_outliers;
        if (tensor->kind == KIND_OWN_OUTLIERS) {
            choose_outliers(tensor_seed ^ 0x6f75746c69657273ULL, cols, is_outlier);
            outliers = is_outlier;
        }
        if (options->headers_only) {
            status = sb_safetensors_writer_skip(writer, tensor->nbytes, err);
            continue;
        }
        for (int64_t row = 0; row < rows && status == SB_OK; row += ROW_BLOCK) {
            int64_t count = rows - row < ROW_BLOCK ? rows - row : ROW_BLOCK;
            generate_rows(tensor, tensor_seed, outliers, row, count, block);
            status = sb_safetensors_writer_write_f32(writer, block, (size_t)(count * cols), err);
        }
    }
    if (status != SB_OK) {
        sb_safetensors_writer_abort(writer);
        return status;
    }
    return sb_safetensors_writer_commit(writer, err);
}

static sb_status write_config(const gen_options *options, sb_error *err)
{
    if (options->config_text) {
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", options->out_dir);
        return sb_atomic_write_file(path, options->config_text, strlen(options->config_text), err);
    }
    const char *torch_dtype = options->dtype == SB_DTYPE_BF16 ? "bfloat16"
                              : options->dtype == SB_DTYPE_F16 ? "float16"
                                                               : "float32";
    json_t *root = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:s, s:b, s:s, s:i, s:i}",
                             "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size",
                             (json_int_t)options->hidden, "intermediate_size", (json_int_t)options->intermediate,
                             "num_attention_heads", (json_int_t)options->heads, "num_key_value_heads",
                             (json_int_t)options->kv_heads, "num_hidden_layers", (json_int_t)options->layers,
                             "vocab_size", (json_int_t)options->vocab, "max_position_embeddings", (json_int_t)4096,
                             "rms_norm_eps", 1e-5, "rope_theta", 10000.0, "hidden_act", "silu",
                             "tie_word_embeddings", (int)options->tie, "torch_dtype", torch_dtype, "bos_token_id", 1,
                             "eos_token_id", 2);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(root);
    if (!text)
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory building config.json");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", options->out_dir);
    size_t length = strlen(text);
    sb_status status = sb_atomic_write_file(path, text, length, err);
    free(text);
    return status;
}

/* Removes files a previous run may have left that would contradict this one: a reader prefers
 * the index over model.safetensors, so a stale one of either would win or confuse. */
static sb_status remove_stale(const gen_options *options, const plan *p, sb_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", options->out_dir,
             p->nshards == 1 ? "model.safetensors.index.json" : "model.safetensors");
    if (unlink(path) != 0 && errno != ENOENT)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot remove a stale file: %s", path, strerror(errno));
    return SB_OK;
}

static sb_status generate(const gen_options *options, sb_error *err)
{
    plan p = {0};
    float *block = NULL;
    unsigned char *is_outlier = NULL, *hidden_outliers = NULL;
    const char **names = NULL, **files = NULL;
    char (*shard_files)[64] = NULL;
    sb_status status = make_plan(options, &p, err);
    if (status != SB_OK)
        goto done;
    if (mkdir(options->out_dir, 0755) != 0 && errno != EEXIST) {
        status = sb_error_set(err, SB_ERR_IO, "%s: cannot create the output directory: %s", options->out_dir,
                              strerror(errno));
        goto done;
    }
    int64_t widest = options->hidden > options->intermediate ? options->hidden : options->intermediate;
    block = sb_malloc((size_t)(ROW_BLOCK * widest) * sizeof *block, "a block of rows", err);
    is_outlier = sb_malloc((size_t)widest, "outlier flags", err);
    hidden_outliers = sb_malloc((size_t)options->hidden, "outlier flags", err);
    names = sb_calloc((size_t)p.ntensors, sizeof *names, "the index", err);
    files = sb_calloc((size_t)p.ntensors, sizeof *files, "the index", err);
    shard_files = sb_calloc((size_t)p.nshards, sizeof *shard_files, "the index", err);
    if (!block || !is_outlier || !hidden_outliers || !names || !files || !shard_files) {
        status = SB_ERR_NOMEM;
        goto done;
    }
    choose_outliers(hash_name("hidden outlier columns", options->seed), options->hidden, hidden_outliers);
    if ((status = remove_stale(options, &p, err)) != SB_OK)
        goto done;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    uint64_t written = 0;
    for (int shard = 0; shard < p.nshards && status == SB_OK; shard++) {
        shard_name(&p, shard, shard_files[shard], sizeof shard_files[shard]);
        status = write_shard(options, &p, shard, block, is_outlier, hidden_outliers, err);
        for (int i = 0; i < p.ntensors; i++)
            if (p.tensors[i].shard == shard)
                written += p.tensors[i].nbytes;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double seconds = (double)(now.tv_sec - start.tv_sec) + 1e-9 * (double)(now.tv_nsec - start.tv_nsec);
        if (status == SB_OK && p.nshards > 1)
            fprintf(stderr, "  %s: %.1f of %.1f MB, %.0f MB/s\n", shard_files[shard], 1e-6 * (double)written,
                    1e-6 * (double)p.total_bytes, seconds > 0 ? 1e-6 * (double)written / seconds : 0.0);
    }
    if (status == SB_OK && p.nshards > 1) {
        for (int i = 0; i < p.ntensors; i++) {
            names[i] = p.tensors[i].name;
            files[i] = shard_files[p.tensors[i].shard];
        }
        status = sb_safetensors_write_index(options->out_dir, p.ntensors, names, files, p.total_bytes, err);
    }
    if (status == SB_OK)
        status = write_config(options, err);
    if (status == SB_OK) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double seconds = (double)(now.tv_sec - start.tv_sec) + 1e-9 * (double)(now.tv_nsec - start.tv_nsec);
        printf("wrote %s: %lld layers, %d tensors, %d shard(s), %.1f MB of %s in %.2f s (%.0f MB/s)\n",
               options->out_dir, (long long)options->layers, p.ntensors, p.nshards, 1e-6 * (double)p.total_bytes,
               sb_dtype_name(options->dtype), seconds, seconds > 0 ? 1e-6 * (double)p.total_bytes / seconds : 0.0);
    }
done:
    free(p.tensors);
    free(block);
    free(is_outlier);
    free(hidden_outliers);
    free(names);
    free(files);
    free(shard_files);
    return status;
}

/* ---- command line ---- */

static void usage(FILE *stream)
{
    fprintf(stream,
            "usage: bench-gen-checkpoint --out DIR [--layers N | --size-gb X] [--shard-gb Y] [--seed S]\n"
            "                            [--small] [--hidden H] [--intermediate I] [--vocab V]\n"
            "                            [--heads A] [--kv-heads K] [--dtype bf16|f16|f32] [--tie]\n"
            "                            [--config config.json] [--headers-only]\n"
            "Writes a synthetic Llama checkpoint (config.json + safetensors, sharded above --shard-gb,\n"
            "default %.0f GB). Shapes default to Llama-2-7B's with 2 layers; --small: hidden 64,\n"
            "FFN 172, 4 heads, 2 KV heads, vocab 256, 2 layers. Weights: 0.02 x Student-t(4) with\n"
            "outlier columns; deterministic from --seed (default 1).\n"
            "--config takes the shapes, layer count and config.json of a real model; --headers-only\n"
            "writes the headers and leaves the data as holes (sparse files: no disk, no time), enough\n"
            "for scalebits-mpi --plan on a 405B-shaped checkpoint.\n",
            DEFAULT_SHARD_GB);
}

static sb_status parse_int(const char *option, const char *text, int64_t *value, sb_error *err)
{
    char *end;
    errno = 0;
    long long parsed = strtoll(text, &end, 10);
    if (errno || end == text || *end || parsed <= 0)
        return sb_error_set(err, SB_ERR_USAGE, "%s: '%s' is not a positive integer", option, text);
    *value = parsed;
    return SB_OK;
}

static sb_status parse_double(const char *option, const char *text, double *value, sb_error *err)
{
    char *end;
    errno = 0;
    double parsed = strtod(text, &end);
    if (errno || end == text || *end || !(parsed > 0) || !isfinite(parsed))
        return sb_error_set(err, SB_ERR_USAGE, "%s: '%s' is not a positive number", option, text);
    *value = parsed;
    return SB_OK;
}

static sb_status parse_options(int argc, char **argv, gen_options *options, sb_error *err)
{
    /* Explicit shape options win over --small whatever their order: collect them first. */
    int64_t hidden = 0, intermediate = 0, vocab = 0, heads = 0, kv_heads = 0, seed = 1;
    bool small = false;
    *options = (gen_options){.shard_gb = DEFAULT_SHARD_GB, .dtype = SB_DTYPE_BF16};
    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        if (strcmp(option, "--small") == 0) {
            small = true;
            continue;
        }
        if (strcmp(option, "--tie") == 0) {
            options->tie = true;
            continue;
        }
        if (strcmp(option, "--headers-only") == 0) {
            options->headers_only = true;
            continue;
        }
        if (strcmp(option, "--help") == 0 || strcmp(option, "-h") == 0) {
            usage(stdout);
            return sb_error_set(err, SB_ERR_STOPPED, "help");
        }
        if (i + 1 >= argc)
            return sb_error_set(err, SB_ERR_USAGE, "%s needs a value (or unknown option)", option);
        const char *value = argv[++i];
        if (strcmp(option, "--out") == 0) options->out_dir = value;
        else if (strcmp(option, "--config") == 0) options->config_path = value;
        else if (strcmp(option, "--layers") == 0) SB_TRY(parse_int(option, value, &options->layers, err));
        else if (strcmp(option, "--size-gb") == 0) SB_TRY(parse_double(option, value, &options->size_gb, err));
        else if (strcmp(option, "--shard-gb") == 0) SB_TRY(parse_double(option, value, &options->shard_gb, err));
        else if (strcmp(option, "--seed") == 0) SB_TRY(parse_int(option, value, &seed, err));
        else if (strcmp(option, "--hidden") == 0) SB_TRY(parse_int(option, value, &hidden, err));
        else if (strcmp(option, "--intermediate") == 0) SB_TRY(parse_int(option, value, &intermediate, err));
        else if (strcmp(option, "--vocab") == 0) SB_TRY(parse_int(option, value, &vocab, err));
        else if (strcmp(option, "--heads") == 0) SB_TRY(parse_int(option, value, &heads, err));
        else if (strcmp(option, "--kv-heads") == 0) SB_TRY(parse_int(option, value, &kv_heads, err));
        else if (strcmp(option, "--dtype") == 0) {
            if (strcmp(value, "bf16") == 0) options->dtype = SB_DTYPE_BF16;
            else if (strcmp(value, "f16") == 0) options->dtype = SB_DTYPE_F16;
            else if (strcmp(value, "f32") == 0) options->dtype = SB_DTYPE_F32;
            else return sb_error_set(err, SB_ERR_USAGE, "--dtype: '%s' is not bf16, f16 or f32", value);
        } else {
            return sb_error_set(err, SB_ERR_USAGE, "unknown option %s", option);
        }
    }
    if (!options->out_dir)
        return sb_error_set(err, SB_ERR_USAGE, "--out DIR is required");
    if (options->layers && options->size_gb > 0)
        return sb_error_set(err, SB_ERR_USAGE, "give --layers or --size-gb, not both");
    options->seed = (uint64_t)seed;
    if (options->config_path) {
        /* a real model's config.json: its shapes and layer count, and the file itself */
        FILE *file = fopen(options->config_path, "rb");
        if (!file)
            return sb_error_set(err, SB_ERR_IO, "%s: cannot open", options->config_path);
        char *text = calloc(1, 1 << 20);
        size_t got = text ? fread(text, 1, (1 << 20) - 1, file) : 0;
        fclose(file);
        sb_model_config config;
        sb_status status = text ? sb_config_parse(options->config_path, text, &config, err)
                                : sb_error_set(err, SB_ERR_NOMEM, "out of memory");
        if (status != SB_OK) {
            free(text);
            return status;
        }
        (void)got;
        hidden = hidden ? hidden : config.shape.hidden_size;
        intermediate = intermediate ? intermediate : config.shape.intermediate_size;
        vocab = vocab ? vocab : config.shape.vocab_size;
        heads = heads ? heads : config.shape.num_attention_heads;
        kv_heads = kv_heads ? kv_heads : config.shape.num_key_value_heads;
        if (!options->layers && !(options->size_gb > 0))
            options->layers = config.shape.num_hidden_layers;
        options->tie = config.shape.tie_word_embeddings;
        sb_config_free(&config);
        options->config_text = text;
    }
    options->hidden = hidden ? hidden : small ? 64 : 4096;
    options->intermediate = intermediate ? intermediate : small ? 172 : 11008;
    options->vocab = vocab ? vocab : small ? 256 : 32000;
    options->heads = heads ? heads : small ? 4 : 32;
    options->kv_heads = kv_heads ? kv_heads : small ? 2 : options->heads;
    if (options->hidden % options->heads != 0)
        return sb_error_set(err, SB_ERR_USAGE, "--hidden %lld is not a multiple of --heads %lld",
                            (long long)options->hidden, (long long)options->heads);
    if (options->heads % options->kv_heads != 0)
        return sb_error_set(err, SB_ERR_USAGE, "--heads %lld is not a multiple of --kv-heads %lld",
                            (long long)options->heads, (long long)options->kv_heads);
    if (head_dim(options) % 2 != 0)
        return sb_error_set(err, SB_ERR_USAGE, "head dimension %lld is odd (rotary embeddings need pairs)",
                            (long long)head_dim(options));
    if (options->size_gb > 0) {
        uint64_t per_layer, fixed;
        model_bytes(options, &per_layer, &fixed);
        double layers = (options->size_gb * 1e9 - (double)fixed) / (double)per_layer;
        options->layers = layers < 1.0 ? 1 : (int64_t)llround(layers);
    } else if (!options->layers) {
        options->layers = 2;
    }
    return SB_OK;
}

int main(int argc, char **argv)
{
    gen_options options;
    sb_error err = {0};
    sb_status status = parse_options(argc, argv, &options, &err);
    if (status == SB_ERR_STOPPED)
        return 0; /* --help */
    if (status == SB_OK)
        status = generate(&options, &err);
    if (status != SB_OK) {
        fprintf(stderr, "bench-gen-checkpoint: %s: %s\n", sb_status_name(status), err.message);
        if (status == SB_ERR_USAGE)
            usage(stderr);
        return sb_status_exit_code(status);
    }
    return 0;
}
