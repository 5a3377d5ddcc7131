/* bench-gen-checkpoint: writes a synthetic Hugging Face checkpoint (Llama, Qwen3 or Qwen3-MoE,
 * BF16/F16/F32 or FP8) for benchmarks and tests, or converts an existing checkpoint (to an FP8
 * copy with block scales, or to a dequantized copy): config.json plus model.safetensors, or
 * model-0000i-of-0000N.safetensors shards and model.safetensors.index.json once the data exceed
 * --shard-gb (sharded as transformers does: tensors in model order, a new shard when the next
 * tensor would overflow the current one).
 *
 * Shapes default to Llama-2-7B's (hidden 4096, FFN 11008, 32 heads, 32 KV heads, vocab 32000)
 * with fewer layers; --small gives a tiny model for tests (hidden 64, FFN 172 (ragged for every
 * tile size, as stories260K's), 4 heads, 2 KV heads, vocab 256, 2 layers). --arch qwen3 adds the
 * per-head q_norm / k_norm (with --small, head_dim 24: not hidden / heads) and --attention-bias
 * the q/k/v/o biases; --arch qwen3-moe makes MoE layers (router mlp.gate, experts
 * mlp.experts.{e}.{gate,up,down}_proj; with --small 8 experts of FFN 48, top-2, layer 0 dense,
 * 3 layers). --config takes every shape from a real config.json (Llama, Qwen3, Qwen3-MoE; an FP8
 * config's quantization_config makes the weights FP8).
 *
 * Weights are heavy-tailed like trained ones: 0.02 x Student-t with 4 degrees of freedom, and a
 * few outlier input columns scaled by 8. The outlier columns of the hidden dimension are the same
 * in every layer (real models have persistent outlier channels, which is what channel reordering
 * exploits); o_proj/down_proj get their own. RMSNorm weights are 1 + 0.05 t, biases 0.02 t. Every
 * row has its own random stream derived from (seed, tensor name, row), so the output is the same
 * for any thread count and any sharding. Rows are generated a block at a time and streamed to the
 * writer: memory stays at one block of rows whatever the model size.
 *
 * FP8 (--fp8, or an FP8 --config): the linear weights of the layers (attention projections, the
 * dense MLP, the experts; not the router, norms, biases, embedding or lm_head, as in the FP8
 * releases) are stored F8_E4M3 with `<name>_scale_inv` right after each, one scale per
 * --fp8-block (default 128x128, ragged at the edges). Scales: `pow2` (default) is the smallest
 * power of two with max|x| / scale <= 448, so code x scale is exact in BF16 and a dequantized
 * BF16 copy holds exactly the values the FP8 copy decodes to; `amax` is max|x| / 448 (what the
 * releases store), rounded to the scale dtype before the codes are chosen against it.
 *
 * Conversion (--from DIR): the tensors of DIR's checkpoint (read as float32, FP8 dequantized) are
 * written again, each in its own dtype (F8_E4M3 ones in BF16) unless --dtype says otherwise;
 * with --fp8 the eligible weights become FP8 as above. config.json is DIR's with
 * quantization_config added (--fp8) or removed, and torch_dtype set when --dtype is given. Every
 * value must survive the conversion exactly (else an error names the tensor and the element):
 * qwen3-moe-tiny -> --fp8 -> --dtype bf16 gives a BF16 copy equal, value for value, to what the
 * FP8 copy decodes to.
 *
 *   bench-gen-checkpoint --out DIR [--layers N | --size-gb X] [--shard-gb Y] [--seed S]
 *                        [--small] [--arch llama|qwen3|qwen3-moe] [--hidden H] [--intermediate I]
 *                        [--vocab V] [--heads A] [--kv-heads K] [--head-dim D] [--attention-bias]
 *                        [--experts E] [--experts-per-tok K] [--moe-intermediate F]
 *                        [--mlp-only L,L,..] [--sparse-step S] [--no-norm-topk]
 *                        [--dtype bf16|f16|f32] [--tie] [--config config.json] [--headers-only]
 *                        [--fp8] [--fp8-block RxC] [--fp8-scales pow2|amax] [--scale-dtype f32|bf16]
 *                        [--from DIR]
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
#include "sb_fp8.h"
#include "sb_half.h"
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
    sb_model_shape shape;    /* every shape number (layers set last) */
    sb_dtype dtype;          /* of the non-FP8 tensors */
    bool dtype_given;
    char *config_text;       /* --config or --from: the config.json to start from (else built) */
    bool headers_only;       /* --headers-only: sparse files, headers and holes, no data */
    bool fp8;
    int64_t fp8_block[2];
    bool fp8_amax;           /* scales max|x| / 448 instead of powers of two */
    sb_dtype scale_dtype;
    const char *from_dir;    /* --from: convert this checkpoint */
    sb_checkpoint source;    /* open when from_dir */
} gen_options;

/* What kind of values a tensor gets. */
typedef enum tensor_kind { KIND_NORM, KIND_BIAS, KIND_HIDDEN_INPUT, KIND_OWN_OUTLIERS } tensor_kind;

typedef struct planned_tensor {
    char name[160];
    int ndim;
    int64_t shape[2];
    tensor_kind kind;
    sb_dtype dtype;
    bool is_scale;     /* the weight_scale_inv of the tensor before it */
    int source_index;  /* --from: the source tensor; -1 otherwise */
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
    tensor->dtype = dtype;
    tensor->source_index = -1;
    tensor->nbytes = (uint64_t)(ndim == 1 ? cols : rows * cols) * sb_dtype_size(dtype);
    p->total_bytes += tensor->nbytes;
    return SB_OK;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The FP8 releases store the layers' linear weights in F8_E4M3: attention projections, the
 * dense MLP and the experts. The router (mlp.gate), norms, biases, embedding and lm_head stay in
 * the model's dtype. */
static bool fp8_eligible(const char *name, int ndim)
{
    static const char suffix[] = ".weight";
    size_t length = strlen(name);
    return ndim == 2 && strncmp(name, "model.layers.", 13) == 0 && length > sizeof suffix &&
           strcmp(name + length - (sizeof suffix - 1), suffix) == 0 && !strstr(name, ".mlp.gate.weight");
}

/* Adds a tensor, and its scale tensor right after it when it becomes FP8. */
static sb_status plan_weight(const gen_options *options, plan *p, const char *name, int ndim, int64_t rows,
                             int64_t cols, tensor_kind kind, sb_dtype dtype, int source_index, sb_error *err)
{
    bool fp8 = options->fp8 && fp8_eligible(name, ndim);
    SB_TRY(plan_add(p, name, ndim, rows, cols, kind, fp8 ? SB_DTYPE_F8_E4M3 : dtype, err));
    p->tensors[p->ntensors - 1].source_index = source_index;
    if (!fp8)
        return SB_OK;
    char scale_name[200];
    snprintf(scale_name, sizeof scale_name, "%s_scale_inv", name);
    SB_TRY(plan_add(p, scale_name, 2, ceil_div(rows, options->fp8_block[0]), ceil_div(cols, options->fp8_block[1]),
                    KIND_NORM, options->scale_dtype, err));
    p->tensors[p->ntensors - 1].is_scale = true;
    return SB_OK;
}

/* The synthetic model's tensors, in transformers' parameter order within a layer. */
static sb_status plan_synthetic(const gen_options *options, plan *p, sb_error *err)
{
    const sb_model_shape *s = &options->shape;
    int64_t h = s->hidden_size, f = s->intermediate_size, hd = s->head_dim;
    int64_t q = s->num_attention_heads * hd, kv = s->num_key_value_heads * hd, fe = s->moe_intermediate_size;
    sb_dtype dtype = options->dtype;
    char name[160];
#define ADD(kind, ndim, rows, cols, ...)                                                                           \
    do {                                                                                                           \
        snprintf(name, sizeof name, __VA_ARGS__);                                                                  \
        SB_TRY(plan_weight(options, p, name, ndim, rows, cols, kind, dtype, -1, err));                            \
    } while (0)
    ADD(KIND_HIDDEN_INPUT, 2, s->vocab_size, h, "model.embed_tokens.weight");
    for (int64_t layer = 0; layer < options->layers; layer++) {
        long long l = (long long)layer;
        ADD(KIND_NORM, 1, 1, h, "model.layers.%lld.input_layernorm.weight", l);
        static const char *const projections[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        for (int i = 0; i < 4; i++) {
            int64_t rows = i == 0 ? q : i < 3 ? kv : h, cols = i == 3 ? q : h;
            ADD(i == 3 ? KIND_OWN_OUTLIERS : KIND_HIDDEN_INPUT, 2, rows, cols, "model.layers.%lld.self_attn.%s.weight",
                l, projections[i]);
            if (s->attention_bias)
                ADD(KIND_BIAS, 1, 1, rows, "model.layers.%lld.self_attn.%s.bias", l, projections[i]);
        }
        if (s->qk_norm) {
            ADD(KIND_NORM, 1, 1, hd, "model.layers.%lld.self_attn.q_norm.weight", l);
            ADD(KIND_NORM, 1, 1, hd, "model.layers.%lld.self_attn.k_norm.weight", l);
        }
        ADD(KIND_NORM, 1, 1, h, "model.layers.%lld.post_attention_layernorm.weight", l);
        if (sb_layer_is_moe(s, layer)) {
            ADD(KIND_HIDDEN_INPUT, 2, s->num_experts, h, "model.layers.%lld.mlp.gate.weight", l);
            for (int64_t e = 0; e < s->num_experts; e++) {
                ADD(KIND_HIDDEN_INPUT, 2, fe, h, "model.layers.%lld.mlp.experts.%lld.gate_proj.weight", l, (long long)e);
                ADD(KIND_HIDDEN_INPUT, 2, fe, h, "model.layers.%lld.mlp.experts.%lld.up_proj.weight", l, (long long)e);
                ADD(KIND_OWN_OUTLIERS, 2, h, fe, "model.layers.%lld.mlp.experts.%lld.down_proj.weight", l, (long long)e);
            }
        } else {
            ADD(KIND_HIDDEN_INPUT, 2, f, h, "model.layers.%lld.mlp.gate_proj.weight", l);
            ADD(KIND_HIDDEN_INPUT, 2, f, h, "model.layers.%lld.mlp.up_proj.weight", l);
            ADD(KIND_OWN_OUTLIERS, 2, h, f, "model.layers.%lld.mlp.down_proj.weight", l);
        }
    }
    ADD(KIND_NORM, 1, 1, h, "model.norm.weight");
    if (!s->tie_word_embeddings)
        ADD(KIND_HIDDEN_INPUT, 2, s->vocab_size, h, "lm_head.weight");
#undef ADD
    return SB_OK;
}

/* --from: the source's tensors in its file order, each in its dtype (F8_E4M3 as BF16) or --dtype. */
static sb_status plan_conversion(const gen_options *options, plan *p, sb_error *err)
{
    const sb_checkpoint *source = &options->source;
    for (int i = 0; i < source->ntensors; i++) {
        const sb_tensor_info *tensor = &source->tensors[i];
        if (tensor->ndim > 2)
            return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' has %d dimensions (at most 2 converted)",
                                source->files[tensor->file_index].path, tensor->name, tensor->ndim);
        sb_dtype dtype = options->dtype_given                  ? options->dtype
                         : tensor->dtype == SB_DTYPE_F8_E4M3 ? SB_DTYPE_BF16
                                                               : tensor->dtype;
        int ndim = tensor->ndim == 0 ? 1 : tensor->ndim;
        SB_TRY(plan_weight(options, p, tensor->name, ndim, sb_tensor_rows(tensor), sb_tensor_cols(tensor), KIND_NORM,
                           dtype, i, err));
    }
    return SB_OK;
}

static sb_status make_plan(const gen_options *options, plan *p, sb_error *err)
{
    SB_TRY(options->from_dir ? plan_conversion(options, p, err) : plan_synthetic(options, p, err));
    /* transformers' rule: open a new shard when the next tensor would overflow the current one
     * (a tensor larger than the limit gets a shard of its own). A scale stays with its weight. */
    uint64_t limit = (uint64_t)(options->shard_gb * 1e9);
    uint64_t shard_bytes = 0;
    int shard = 0;
    for (int i = 0; i < p->ntensors; i++) {
        if (shard_bytes > 0 && !p->tensors[i].is_scale && shard_bytes + p->tensors[i].nbytes > limit) {
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
            else if (tensor->kind == KIND_BIAS)
                row[c] = (float)(WEIGHT_SCALE * t);
            else
                row[c] = (float)(WEIGHT_SCALE * t * (is_outlier[c] ? OUTLIER_SCALE : 1.0));
        }
    }
}

/* Where a tensor's rows come from: the generator, or the source checkpoint. */
typedef struct row_source {
    const gen_options *options;
    const planned_tensor *tensor;
    uint64_t seed;
    const unsigned char *outliers;
} row_source;

static sb_status source_rows(const row_source *from, int64_t row_begin, int64_t count, float *rows, sb_error *err)
{
    if (from->tensor->source_index < 0) {
        generate_rows(from->tensor, from->seed, from->outliers, row_begin, count, rows);
        return SB_OK;
    }
    const sb_checkpoint *source = &from->options->source;
    return sb_checkpoint_read_rows(source, &source->tensors[from->tensor->source_index], row_begin, count, true, rows,
                                   err);
}

/* Values must survive the conversion to `dtype` exactly: a conversion that rounds would make the
 * copy another model. */
static sb_status check_exact(const planned_tensor *tensor, sb_dtype dtype, const float *values, int64_t row_begin,
                             int64_t count, int64_t cols, sb_error *err)
{
    if (dtype == SB_DTYPE_F32)
        return SB_OK;
    for (int64_t i = 0; i < count * cols; i++) {
        float v = values[i];
        float back = dtype == SB_DTYPE_BF16 ? sb_bf16_to_f32(sb_f32_to_bf16(v)) : sb_f16_to_f32(sb_f32_to_f16(v));
        if (back != v)
            return sb_error_set(err, SB_ERR_INPUT,
                                "tensor '%s': the value %.9g at row %lld, column %lld is not exact in %s (use --dtype "
                                "f32)",
                                tensor->name, (double)v, (long long)(row_begin + i / cols), (long long)(i % cols),
                                sb_dtype_name(dtype));
    }
    return SB_OK;
}

/* The scale of one block with largest magnitude `amax`, as stored (rounded to its dtype). */
static float block_scale(const gen_options *options, float amax)
{
    if (!(amax > 0.0f))
        return 1.0f;
    if (options->fp8_amax) {
        float scale = amax / SB_E4M3_MAX;
        return options->scale_dtype == SB_DTYPE_BF16 ? sb_bf16_to_f32(sb_f32_to_bf16(scale)) : scale;
    }
    /* the smallest power of two with amax / scale <= 448 */
    int exponent;
    float fraction = frexpf(amax / SB_E4M3_MAX, &exponent);
    return ldexpf(1.0f, fraction == 0.5f ? exponent - 1 : exponent);
}

/* Writes an F8_E4M3 tensor, a block row at a time; its scales (all of them: a few floats per
 * 16k weights) go to `scales` for the scale tensor that follows. */
static sb_status write_fp8_tensor(sb_safetensors_writer *writer, const row_source *from, float *rows, uint8_t *codes,
                                  float *scales, sb_error *err)
{
    const gen_options *options = from->options;
    const planned_tensor *tensor = from->tensor;
    int64_t nrows = tensor->shape[0], cols = tensor->shape[1];
    int64_t block_rows = options->fp8_block[0], block_cols = options->fp8_block[1];
    int64_t scale_cols = ceil_div(cols, block_cols);
    for (int64_t row = 0; row < nrows; row += block_rows) {
        int64_t count = nrows - row < block_rows ? nrows - row : block_rows;
        SB_TRY(source_rows(from, row, count, rows, err));
        float *scale_row = scales + (row / block_rows) * scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += block_cols) {
            int64_t c1 = c0 + block_cols < cols ? c0 + block_cols : cols;
            float amax = 0.0f;
            for (int64_t r = 0; r < count; r++)
                for (int64_t c = c0; c < c1; c++)
                    amax = fabsf(rows[r * cols + c]) > amax ? fabsf(rows[r * cols + c]) : amax;
            float scale = block_scale(options, amax);
            scale_row[c0 / block_cols] = scale;
            for (int64_t r = 0; r < count; r++)
                for (int64_t c = c0; c < c1; c++)
                    codes[r * cols + c] = sb_f32_to_e4m3(rows[r * cols + c] / scale);
        }
        SB_TRY(sb_safetensors_writer_write(writer, codes, (size_t)(count * cols), err));
    }
    return SB_OK;
}

static sb_status write_tensor(sb_safetensors_writer *writer, const row_source *from, float *rows, uint8_t *codes,
                              float *scales, sb_error *err)
{
    const planned_tensor *tensor = from->tensor;
    if (from->options->headers_only)
        return sb_safetensors_writer_skip(writer, tensor->nbytes, err);
    int64_t nrows = tensor->ndim == 1 ? 1 : tensor->shape[0], cols = tensor->shape[tensor->ndim - 1];
    if (tensor->is_scale) /* filled by the weight before it */
        return sb_safetensors_writer_write_f32(writer, scales, (size_t)(nrows * cols), err);
    if (tensor->dtype == SB_DTYPE_F8_E4M3)
        return write_fp8_tensor(writer, from, rows, codes, scales, err);
    for (int64_t row = 0; row < nrows; row += ROW_BLOCK) {
        int64_t count = nrows - row < ROW_BLOCK ? nrows - row : ROW_BLOCK;
        SB_TRY(source_rows(from, row, count, rows, err));
        if (tensor->source_index >= 0)
            SB_TRY(check_exact(tensor, tensor->dtype, rows, row, count, cols, err));
        SB_TRY(sb_safetensors_writer_write_f32(writer, rows, (size_t)(count * cols), err));
    }
    return SB_OK;
}

/* Buffers shared by every tensor: a block of rows (float and FP8 codes) and one tensor's scales. */
typedef struct buffers {
    float *rows;
    uint8_t *codes;
    float *scales;
    unsigned char *is_outlier, *hidden_outliers;
} buffers;

static sb_status write_shard(const gen_options *options, const plan *p, int shard, buffers *b, sb_error *err)
{
    char file[64], path[4096];
    shard_name(p, shard, file, sizeof file);
    snprintf(path, sizeof path, "%s/%s", options->out_dir, file);
    sb_safetensors_writer *writer;
    SB_TRY(sb_safetensors_writer_create(path, &writer, err));
    sb_status status = sb_safetensors_writer_add_metadata(writer, "format", "pt", err);
    for (int i = 0; i < p->ntensors && status == SB_OK; i++)
        if (p->tensors[i].shard == shard)
            status = sb_safetensors_writer_declare(writer, p->tensors[i].name, p->tensors[i].dtype, p->tensors[i].ndim,
                                                   p->tensors[i].shape, err);
    if (status == SB_OK)
        status = sb_safetensors_writer_begin_data(writer, err);
    for (int i = 0; i < p->ntensors && status == SB_OK; i++) {
        const planned_tensor *tensor = &p->tensors[i];
        if (tensor->shard != shard)
            continue;
        row_source from = {options, tensor, hash_name(tensor->name, options->seed), b->hidden_outliers};
        if (tensor->kind == KIND_OWN_OUTLIERS) {
            choose_outliers(from.seed ^ 0x6f75746c69657273ULL, tensor->shape[1], b->is_outlier);
            from.outliers = b->is_outlier;
        }
        status = write_tensor(writer, &from, b->rows, b->codes, b->scales, err);
        if (status != SB_OK && tensor->source_index >= 0)
            sb_error_prefix(err, "%s", options->from_dir);
    }
    if (status != SB_OK) {
        sb_safetensors_writer_abort(writer);
        return status;
    }
    return sb_safetensors_writer_commit(writer, err);
}

/* ---- config.json ---- */

static const char *torch_dtype_name(sb_dtype dtype)
{
    return dtype == SB_DTYPE_BF16 ? "bfloat16" : dtype == SB_DTYPE_F16 ? "float16" : "float32";
}

/* The config of the synthetic model, from its shape. */
static json_t *build_config(const gen_options *options)
{
    const sb_model_shape *s = &options->shape;
    bool qwen = s->architecture != SB_ARCH_LLAMA, moe = s->architecture == SB_ARCH_QWEN3_MOE;
    const char *architecture = moe ? "Qwen3MoeForCausalLM" : qwen ? "Qwen3ForCausalLM" : "LlamaForCausalLM";
    const char *model_type = moe ? "qwen3_moe" : qwen ? "qwen3" : "llama";
    json_t *root = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:s, s:b, s:s, s:i, s:i}",
                             "architectures", architecture, "model_type", model_type, "hidden_size",
                             (json_int_t)s->hidden_size, "intermediate_size", (json_int_t)s->intermediate_size,
                             "num_attention_heads", (json_int_t)s->num_attention_heads, "num_key_value_heads",
                             (json_int_t)s->num_key_value_heads, "num_hidden_layers", (json_int_t)options->layers,
                             "vocab_size", (json_int_t)s->vocab_size, "max_position_embeddings", (json_int_t)4096,
                             "rms_norm_eps", 1e-5, "rope_theta", 10000.0, "hidden_act", "silu",
                             "tie_word_embeddings", (int)s->tie_word_embeddings, "torch_dtype",
                             torch_dtype_name(options->dtype), "bos_token_id", 1, "eos_token_id", 2);
    if (!root || !qwen)
        return root;
    json_object_set_new(root, "head_dim", json_integer(s->head_dim));
    json_object_set_new(root, "attention_bias", json_boolean(s->attention_bias));
    json_object_set_new(root, "use_sliding_window", json_false());
    if (moe) {
        json_object_set_new(root, "num_experts", json_integer(s->num_experts));
        json_object_set_new(root, "num_experts_per_tok", json_integer(s->num_experts_per_tok));
        json_object_set_new(root, "moe_intermediate_size", json_integer(s->moe_intermediate_size));
        json_object_set_new(root, "norm_topk_prob", json_boolean(s->norm_topk_prob));
        json_object_set_new(root, "decoder_sparse_step", json_integer(s->decoder_sparse_step));
        json_t *only = json_array();
        for (int64_t l = 0; l < options->layers; l++)
            if (sb_shape_mlp_only(s, l))
                json_array_append_new(only, json_integer(l));
        json_object_set_new(root, "mlp_only_layers", only);
    }
    return root;
}

static sb_status write_config(const gen_options *options, sb_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", options->out_dir);
    json_t *root;
    if (options->config_text) {
        json_error_t json_error;
        root = json_loads(options->config_text, JSON_DECODE_ANY, &json_error);
        json_t *quant = json_object_get(root, "quantization_config");
        bool has_fp8 = quant && !json_is_null(quant);
        /* a given config.json is written verbatim unless the files differ from what it says */
        if (!options->from_dir && has_fp8 == options->fp8) {
            json_decref(root);
            return sb_atomic_write_file(path, options->config_text, strlen(options->config_text), err);
        }
        if (options->dtype_given)
            json_object_set_new(root, "torch_dtype", json_string(torch_dtype_name(options->dtype)));
        json_object_del(root, "quantization_config");
    } else {
        root = build_config(options);
    }
    if (root && options->fp8)
        json_object_set_new(root, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:[I,I]}", "activation_scheme", "dynamic", "fmt", "e4m3",
                                      "quant_method", "fp8", "weight_block_size", (json_int_t)options->fp8_block[0],
                                      (json_int_t)options->fp8_block[1]));
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(root);
    if (!text)
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory building config.json");
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
    buffers b = {0};
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
    /* the largest row block and the largest scale tensor of the plan */
    int64_t block_floats = 1, widest = 1, scale_floats = 1;
    for (int i = 0; i < p.ntensors; i++) {
        const planned_tensor *tensor = &p.tensors[i];
        int64_t rows = tensor->ndim == 1 ? 1 : tensor->shape[0], cols = tensor->shape[tensor->ndim - 1];
        int64_t block = tensor->dtype == SB_DTYPE_F8_E4M3 ? options->fp8_block[0] : ROW_BLOCK;
        block_floats = (block < rows ? block : rows) * cols > block_floats ? (block < rows ? block : rows) * cols
                                                                            : block_floats;
        widest = cols > widest ? cols : widest;
        if (tensor->is_scale && rows * cols > scale_floats)
            scale_floats = rows * cols;
    }
    if (!options->headers_only) {
        b.rows = sb_malloc((size_t)block_floats * sizeof *b.rows, "a block of rows", err);
        b.codes = sb_malloc((size_t)block_floats, "a block of FP8 codes", err);
        b.scales = sb_malloc((size_t)scale_floats * sizeof *b.scales, "FP8 scales", err);
    }
    b.is_outlier = sb_malloc((size_t)widest, "outlier flags", err);
    b.hidden_outliers = sb_malloc((size_t)widest, "outlier flags", err);
    names = sb_calloc((size_t)p.ntensors, sizeof *names, "the index", err);
    files = sb_calloc((size_t)p.ntensors, sizeof *files, "the index", err);
    shard_files = sb_calloc((size_t)p.nshards, sizeof *shard_files, "the index", err);
    if ((!options->headers_only && (!b.rows || !b.codes || !b.scales)) || !b.is_outlier || !b.hidden_outliers ||
        !names || !files || !shard_files) {
        status = SB_ERR_NOMEM;
        goto done;
    }
    choose_outliers(hash_name("hidden outlier columns", options->seed), options->shape.hidden_size,
                    b.hidden_outliers);
    if ((status = remove_stale(options, &p, err)) != SB_OK)
        goto done;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    uint64_t written = 0;
    for (int shard = 0; shard < p.nshards && status == SB_OK; shard++) {
        shard_name(&p, shard, shard_files[shard], sizeof shard_files[shard]);
        status = write_shard(options, &p, shard, &b, err);
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
        printf("wrote %s: %lld layers, %d tensors, %d shard(s), %.1f MB of %s%s in %.2f s (%.0f MB/s)\n",
               options->out_dir, (long long)options->layers, p.ntensors, p.nshards, 1e-6 * (double)p.total_bytes,
               options->from_dir && !options->dtype_given ? "source dtypes" : sb_dtype_name(options->dtype),
               options->fp8 ? " + F8_E4M3" : "", seconds, seconds > 0 ? 1e-6 * (double)p.total_bytes / seconds : 0.0);
    }
done:
    free(p.tensors);
    free(b.rows);
    free(b.codes);
    free(b.scales);
    free(b.is_outlier);
    free(b.hidden_outliers);
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
            "           [--small] [--arch llama|qwen3|qwen3-moe] [--hidden H] [--intermediate I] [--vocab V]\n"
            "           [--heads A] [--kv-heads K] [--head-dim D] [--attention-bias] [--experts E]\n"
            "           [--experts-per-tok K] [--moe-intermediate F] [--mlp-only L,L,..] [--sparse-step S]\n"
            "           [--no-norm-topk] [--dtype bf16|f16|f32] [--tie] [--config config.json]\n"
            "           [--headers-only] [--fp8] [--fp8-block RxC] [--fp8-scales pow2|amax]\n"
            "           [--scale-dtype f32|bf16] [--from DIR]\n"
            "Writes a synthetic checkpoint (config.json + safetensors, sharded above --shard-gb,\n"
            "default %.0f GB). Shapes default to Llama-2-7B's with 2 layers; --small: hidden 64,\n"
            "FFN 172, 4 heads, 2 KV heads, vocab 256, 2 layers (qwen3: head_dim 24; qwen3-moe: 8 experts\n"
            "of FFN 48, top-2, layer 0 dense, 3 layers). Weights: 0.02 x Student-t(4) with outlier\n"
            "columns; deterministic from --seed (default 1).\n"
            "--config takes the shapes, layer count and config.json of a real model; --headers-only\n"
            "writes the headers and leaves the data as holes (sparse files: no disk, no time), enough\n"
            "for scalebits-mpi --plan on a 405B-shaped checkpoint.\n"
            "--fp8 stores the layers' linear weights as F8_E4M3 with <name>_scale_inv block scales\n"
            "(--fp8-block, default 128x128; pow2 scales are exact in BF16). --from DIR converts an\n"
            "existing checkpoint instead (with --fp8: an FP8 copy; with --dtype: a dequantized copy).\n",
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

static sb_status parse_dtype(const char *option, const char *value, bool allow_f16, sb_dtype *dtype, sb_error *err)
{
    if (strcmp(value, "bf16") == 0) *dtype = SB_DTYPE_BF16;
    else if (strcmp(value, "f16") == 0 && allow_f16) *dtype = SB_DTYPE_F16;
    else if (strcmp(value, "f32") == 0) *dtype = SB_DTYPE_F32;
    else return sb_error_set(err, SB_ERR_USAGE, "%s: '%s' is not %s", option, value,
                             allow_f16 ? "bf16, f16 or f32" : "f32 or bf16");
    return SB_OK;
}

/* Reads a config.json (DIR/config.json for --from) into `options`: its text and its shape. */
static sb_status read_config(const char *path, gen_options *options, sb_model_config *config, sb_error *err)
{
    uint8_t *bytes = NULL;
    size_t size = 0;
    SB_TRY(sb_read_file(path, &bytes, &size, err));
    char *text = realloc(bytes, size + 1);
    if (!text) {
        free(bytes);
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory reading %s", path);
    }
    text[size] = '\0';
    sb_status status = sb_config_parse(path, text, config, err);
    if (status != SB_OK) {
        free(text);
        return status;
    }
    options->config_text = text;
    return SB_OK;
}

/* Shape options given on the command line; 0 / false / NULL: not given. */
typedef struct shape_flags {
    int64_t hidden, intermediate, vocab, heads, kv_heads, head_dim, experts, experts_per_tok, moe_intermediate,
        sparse_step;
    const char *mlp_only;
    bool attention_bias, no_norm_topk, small;
    sb_architecture architecture;
} shape_flags;

/* The synthetic model's shape: explicit options, else --small's or the default numbers of the
 * architecture. */
static sb_status synthetic_shape(const shape_flags *f, gen_options *options, sb_error *err)
{
    sb_model_shape *s = &options->shape;
    bool qwen = f->architecture != SB_ARCH_LLAMA, moe = f->architecture == SB_ARCH_QWEN3_MOE, small = f->small;
    s->architecture = f->architecture;
    s->hidden_size = f->hidden ? f->hidden : small ? 64 : moe ? 2048 : 4096;
    s->intermediate_size = f->intermediate ? f->intermediate : small ? 172 : moe ? 6144 : 11008;
    s->vocab_size = f->vocab ? f->vocab : small ? 256 : qwen ? 151936 : 32000;
    s->num_attention_heads = f->heads ? f->heads : small ? 4 : 32;
    s->num_key_value_heads = f->kv_heads ? f->kv_heads : small ? 2 : moe ? 4 : s->num_attention_heads;
    s->head_dim = f->head_dim ? f->head_dim : qwen ? (small ? 24 : 128) : s->hidden_size / s->num_attention_heads;
    s->qk_norm = qwen;
    s->attention_bias = f->attention_bias;
    s->rope_theta = 10000.0;
    s->rms_norm_eps = 1e-5;
    if (!qwen && s->hidden_size % s->num_attention_heads != 0)
        return sb_error_set(err, SB_ERR_USAGE, "--hidden %lld is not a multiple of --heads %lld",
                            (long long)s->hidden_size, (long long)s->num_attention_heads);
    if (moe) {
        s->num_experts = f->experts ? f->experts : small ? 8 : 128;
        s->num_experts_per_tok = f->experts_per_tok ? f->experts_per_tok : small ? 2 : 8;
        s->moe_intermediate_size = f->moe_intermediate ? f->moe_intermediate : small ? 48 : 768;
        s->decoder_sparse_step = f->sparse_step ? f->sparse_step : 1;
        s->norm_topk_prob = !f->no_norm_topk;
        if (s->num_experts_per_tok > s->num_experts)
            return sb_error_set(err, SB_ERR_USAGE, "--experts-per-tok %lld exceeds --experts %lld",
                                (long long)s->num_experts_per_tok, (long long)s->num_experts);
        const char *list = f->mlp_only ? f->mlp_only : small ? "0" : "";
        for (const char *p = list; *p;) {
            char *end;
            long long layer = strtoll(p, &end, 10);
            if (end == p || layer < 0 || layer >= SB_MAX_MLP_ONLY_LAYER || (*end && *end != ','))
                return sb_error_set(err, SB_ERR_USAGE, "--mlp-only: '%s' is not a list of layer indices", list);
            s->mlp_only_layers[layer / 64] |= (uint64_t)1 << (layer % 64);
            p = *end ? end + 1 : end;
        }
    } else if (f->experts || f->experts_per_tok || f->moe_intermediate || f->mlp_only || f->sparse_step) {
        return sb_error_set(err, SB_ERR_USAGE, "expert options need --arch qwen3-moe");
    }
    if (!qwen && (f->attention_bias || f->head_dim))
        return sb_error_set(err, SB_ERR_USAGE, "--attention-bias and --head-dim need --arch qwen3 or qwen3-moe");
    if (s->num_attention_heads % s->num_key_value_heads != 0)
        return sb_error_set(err, SB_ERR_USAGE, "--heads %lld is not a multiple of --kv-heads %lld",
                            (long long)s->num_attention_heads, (long long)s->num_key_value_heads);
    if (s->head_dim % 2 != 0)
        return sb_error_set(err, SB_ERR_USAGE, "head dimension %lld is odd (rotary embeddings need pairs)",
                            (long long)s->head_dim);
    return SB_OK;
}

static sb_status parse_options(int argc, char **argv, gen_options *options, sb_error *err)
{
    /* Explicit shape options win over --small whatever their order: collect them first. */
    shape_flags flags = {0};
    int64_t seed = 1;
    const char *config_path = NULL, *block = NULL;
    bool tie = false;
    *options = (gen_options){.shard_gb = DEFAULT_SHARD_GB, .dtype = SB_DTYPE_BF16, .scale_dtype = SB_DTYPE_F32,
                             .fp8_block = {128, 128}};
    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        bool *flag = strcmp(option, "--small") == 0            ? &flags.small
                     : strcmp(option, "--tie") == 0            ? &tie
                     : strcmp(option, "--headers-only") == 0   ? &options->headers_only
                     : strcmp(option, "--attention-bias") == 0 ? &flags.attention_bias
                     : strcmp(option, "--no-norm-topk") == 0   ? &flags.no_norm_topk
                     : strcmp(option, "--fp8") == 0           ? &options->fp8
                                                               : NULL;
        if (flag) {
            *flag = true;
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
        else if (strcmp(option, "--config") == 0) config_path = value;
        else if (strcmp(option, "--from") == 0) options->from_dir = value;
        else if (strcmp(option, "--layers") == 0) SB_TRY(parse_int(option, value, &options->layers, err));
        else if (strcmp(option, "--size-gb") == 0) SB_TRY(parse_double(option, value, &options->size_gb, err));
        else if (strcmp(option, "--shard-gb") == 0) SB_TRY(parse_double(option, value, &options->shard_gb, err));
        else if (strcmp(option, "--seed") == 0) SB_TRY(parse_int(option, value, &seed, err));
        else if (strcmp(option, "--hidden") == 0) SB_TRY(parse_int(option, value, &flags.hidden, err));
        else if (strcmp(option, "--intermediate") == 0) SB_TRY(parse_int(option, value, &flags.intermediate, err));
        else if (strcmp(option, "--vocab") == 0) SB_TRY(parse_int(option, value, &flags.vocab, err));
        else if (strcmp(option, "--heads") == 0) SB_TRY(parse_int(option, value, &flags.heads, err));
        else if (strcmp(option, "--kv-heads") == 0) SB_TRY(parse_int(option, value, &flags.kv_heads, err));
        else if (strcmp(option, "--head-dim") == 0) SB_TRY(parse_int(option, value, &flags.head_dim, err));
        else if (strcmp(option, "--experts") == 0) SB_TRY(parse_int(option, value, &flags.experts, err));
        else if (strcmp(option, "--experts-per-tok") == 0) SB_TRY(parse_int(option, value, &flags.experts_per_tok, err));
        else if (strcmp(option, "--moe-intermediate") == 0) SB_TRY(parse_int(option, value, &flags.moe_intermediate, err));
        else if (strcmp(option, "--sparse-step") == 0) SB_TRY(parse_int(option, value, &flags.sparse_step, err));
        else if (strcmp(option, "--mlp-only") == 0) flags.mlp_only = value;
        else if (strcmp(option, "--fp8-block") == 0) block = value;
        else if (strcmp(option, "--dtype") == 0) {
            SB_TRY(parse_dtype(option, value, true, &options->dtype, err));
            options->dtype_given = true;
        } else if (strcmp(option, "--scale-dtype") == 0) {
            SB_TRY(parse_dtype(option, value, false, &options->scale_dtype, err));
        } else if (strcmp(option, "--fp8-scales") == 0) {
            if (strcmp(value, "pow2") != 0 && strcmp(value, "amax") != 0)
                return sb_error_set(err, SB_ERR_USAGE, "--fp8-scales: '%s' is not pow2 or amax", value);
            options->fp8_amax = strcmp(value, "amax") == 0;
        } else if (strcmp(option, "--arch") == 0) {
            if (strcmp(value, "llama") == 0) flags.architecture = SB_ARCH_LLAMA;
            else if (strcmp(value, "qwen3") == 0) flags.architecture = SB_ARCH_QWEN3;
            else if (strcmp(value, "qwen3-moe") == 0) flags.architecture = SB_ARCH_QWEN3_MOE;
            else return sb_error_set(err, SB_ERR_USAGE, "--arch: '%s' is not llama, qwen3 or qwen3-moe", value);
        } else {
            return sb_error_set(err, SB_ERR_USAGE, "unknown option %s", option);
        }
    }
    if (!options->out_dir)
        return sb_error_set(err, SB_ERR_USAGE, "--out DIR is required");
    if (options->layers && options->size_gb > 0)
        return sb_error_set(err, SB_ERR_USAGE, "give --layers or --size-gb, not both");
    if (options->from_dir && (config_path || options->layers || options->size_gb > 0 || flags.small))
        return sb_error_set(err, SB_ERR_USAGE, "--from converts a checkpoint as it is: no --config, --layers, "
                            "--size-gb or --small");
    if (block) {
        char *end;
        long long rows = strtoll(block, &end, 10), cols = *end == 'x' ? strtoll(end + 1, &end, 10) : 0;
        if (*end || rows <= 0 || cols <= 0 || rows > INT32_MAX || cols > INT32_MAX)
            return sb_error_set(err, SB_ERR_USAGE, "--fp8-block: '%s' is not RxC", block);
        options->fp8_block[0] = rows;
        options->fp8_block[1] = cols;
    }
    options->seed = (uint64_t)seed;
    if (config_path || options->from_dir) {
        /* a real model's config.json: its shapes, layer count, FP8 block size, and the file itself */
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", options->from_dir ? options->from_dir : ".");
        sb_model_config config;
        SB_TRY(read_config(options->from_dir ? path : config_path, options, &config, err));
        options->shape = config.shape;
        if (config.fp8_block_rows > 0 && !options->from_dir) {
            options->fp8 = true; /* an FP8 release's config: FP8 weights */
            options->fp8_block[0] = config.fp8_block_rows;
            options->fp8_block[1] = config.fp8_block_cols;
        }
        if (!options->layers && !(options->size_gb > 0))
            options->layers = config.shape.num_hidden_layers;
        if (options->from_dir) {
            sb_checkpoint_options source = sb_config_checkpoint_options(&config);
            sb_status status = sb_checkpoint_open_with(options->from_dir, &source, &options->source, err);
            sb_config_free(&config);
            return status;
        }
        sb_config_free(&config);
        /* explicit shape options still win over the config's */
        sb_model_shape *s = &options->shape;
        s->hidden_size = flags.hidden ? flags.hidden : s->hidden_size;
        s->intermediate_size = flags.intermediate ? flags.intermediate : s->intermediate_size;
        s->vocab_size = flags.vocab ? flags.vocab : s->vocab_size;
        s->num_attention_heads = flags.heads ? flags.heads : s->num_attention_heads;
        s->num_key_value_heads = flags.kv_heads ? flags.kv_heads : s->num_key_value_heads;
    } else {
        SB_TRY(synthetic_shape(&flags, options, err));
        options->shape.tie_word_embeddings = tie;
    }
    if (options->size_gb > 0) {
        /* bytes of one layer and of the rest, from the plans of a 1- and a 2-layer model (MoE
         * and dense layers differ: the figure is then approximate) */
        uint64_t bytes[2];
        for (int layers = 1; layers <= 2; layers++) {
            plan p = {0};
            options->layers = layers;
            sb_status status = make_plan(options, &p, err);
            bytes[layers - 1] = p.total_bytes;
            free(p.tensors);
            SB_TRY(status);
        }
        double per_layer = (double)(bytes[1] - bytes[0]), fixed = (double)bytes[0] - per_layer;
        double layers = (options->size_gb * 1e9 - fixed) / per_layer;
        options->layers = layers < 1.0 ? 1 : (int64_t)llround(layers);
    } else if (!options->layers) {
        options->layers = flags.architecture == SB_ARCH_QWEN3_MOE && flags.small ? 3 : 2;
    }
    options->shape.num_hidden_layers = options->layers;
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
    if (options.from_dir)
        sb_checkpoint_close(&options.source);
    free(options.config_text);
    if (status != SB_OK) {
        fprintf(stderr, "bench-gen-checkpoint: %s: %s\n", sb_status_name(status), err.message);
        if (status == SB_ERR_USAGE)
            usage(stderr);
        return sb_status_exit_code(status);
    }
    return 0;
}
