/* bench-gen-checkpoint end to end: a tiny sharded checkpoint opens with sb_checkpoint_open and
 * sb_config_load, its tensors have the shapes config.json implies, its weights look like the
 * generator promises (finite, scale 0.02 x Student-t(4), heavy tails, the same outlier column in
 * every hidden-input matrix), and the output depends only on the seed: not on the sharding, not
 * on the run. --size-gb, --tie, stale-file removal and usage errors are checked too.
 * Qwen3 (q/k norms, biases, head_dim != hidden / heads) and Qwen3-MoE (router, experts, a dense
 * layer) have the tensors their config implies; FP8 variants hold F8_E4M3 weights within E4M3
 * rounding of the BF16 ones of the same seed, with their scales; the converter's FP8 copy and
 * its dequantized BF16 copy read back value for value equal; a header-only FP8 Qwen3-235B-A22B
 * has all its 73k tensors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sb_config.h"
#include "sb_safetensors.h"
#include "sb_test.h"

static char generator[4096];
static char *temp_root;

/* Runs the generator with `arguments`; returns its exit status. */
static int run_generator(const char *arguments)
{
    char command[8192];
    snprintf(command, sizeof command, "'%s' %s >/dev/null 2>&1", generator, arguments);
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char *out_dir(const char *label)
{
    char *path = malloc(4096);
    snprintf(path, 4096, "%s/%s", temp_root, label);
    return path;
}

static float *read_tensor(const sb_checkpoint *checkpoint, const char *name, int64_t *rows, int64_t *cols)
{
    const sb_tensor_info *tensor = sb_checkpoint_find(checkpoint, name);
    SB_CHECK_MSG(tensor, "tensor %s missing", name);
    if (!tensor)
        return NULL;
    *rows = sb_tensor_rows(tensor);
    *cols = sb_tensor_cols(tensor);
    float *values = malloc((size_t)(*rows * *cols) * sizeof *values);
    sb_error err = {0};
    SB_CHECK_MSG(sb_checkpoint_read_rows(checkpoint, tensor, 0, *rows, true, values, &err) == SB_OK, "%s",
                 err.message);
    return values;
}

/* The column with the largest mean square, and that mean square over the median column's. */
static int64_t loudest_column(const float *values, int64_t rows, int64_t cols, double *ratio)
{
    double *mean_square = calloc((size_t)cols, sizeof *mean_square);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            mean_square[c] += (double)values[r * cols + c] * values[r * cols + c] / (double)rows;
    int64_t loudest = 0;
    for (int64_t c = 1; c < cols; c++)
        if (mean_square[c] > mean_square[loudest])
            loudest = c;
    double *sorted = malloc((size_t)cols * sizeof *sorted);
    memcpy(sorted, mean_square, (size_t)cols * sizeof *sorted);
    for (int64_t i = 1; i < cols; i++) /* insertion sort: cols is small here */
        for (int64_t j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            double swap = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = swap;
        }
    *ratio = mean_square[loudest] / sorted[cols / 2];
    free(sorted);
    free(mean_square);
    return loudest;
}

static void check_sharded(const char *dir)
{
    sb_model_config config;
    sb_error err = {0};
    SB_CHECK_MSG(sb_config_load(dir, &config, &err) == SB_OK, "%s", err.message);
    const sb_model_shape *shape = &config.shape;
    SB_CHECK(shape->hidden_size == 64 && shape->intermediate_size == 172 && shape->num_attention_heads == 4);
    SB_CHECK(shape->num_key_value_heads == 2 && shape->num_hidden_layers == 3 && shape->vocab_size == 256);
    SB_CHECK(shape->head_dim == 16 && !shape->tie_word_embeddings);

    sb_checkpoint checkpoint;
    SB_CHECK_MSG(sb_checkpoint_open(dir, &checkpoint, &err) == SB_OK, "%s", err.message);
    SB_CHECK_MSG(checkpoint.nfiles >= 3, "%d shards", checkpoint.nfiles);
    SB_CHECK(checkpoint.ntensors == 3 + 9 * 3);
    int64_t h = shape->hidden_size, f = shape->intermediate_size, kv = shape->num_key_value_heads * shape->head_dim;
    struct {
        const char *suffix;
        int64_t rows, cols; /* rows 0: 1-D */
    } layout[] = {
        {"input_layernorm.weight", 0, h}, {"self_attn.q_proj.weight", h, h}, {"self_attn.k_proj.weight", kv, h},
        {"self_attn.v_proj.weight", kv, h}, {"self_attn.o_proj.weight", h, h},
        {"post_attention_layernorm.weight", 0, h}, {"mlp.gate_proj.weight", f, h}, {"mlp.up_proj.weight", f, h},
        {"mlp.down_proj.weight", h, f},
    };
    for (int layer = 0; layer < 3; layer++) {
        for (int i = 0; i < 9; i++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.%s", layer, layout[i].suffix);
            const sb_tensor_info *tensor = sb_checkpoint_find(&checkpoint, name);
            SB_CHECK_MSG(tensor, "%s missing", name);
            if (!tensor)
                continue;
            SB_CHECK(tensor->dtype == SB_DTYPE_BF16);
            if (layout[i].rows == 0)
                SB_CHECK(tensor->ndim == 1 && tensor->shape[0] == layout[i].cols);
            else
                SB_CHECK_MSG(tensor->ndim == 2 && tensor->shape[0] == layout[i].rows &&
                                 tensor->shape[1] == layout[i].cols,
                             "%s shape", name);
        }
    }
    const sb_tensor_info *embed = sb_checkpoint_find(&checkpoint, "model.embed_tokens.weight");
    const sb_tensor_info *head = sb_checkpoint_find(&checkpoint, "lm_head.weight");
    SB_CHECK(embed && embed->shape[0] == 256 && embed->shape[1] == 64);
    SB_CHECK(head && head->shape[0] == 256 && head->shape[1] == 64);
    SB_CHECK(sb_checkpoint_find(&checkpoint, "model.norm.weight"));

    /* every tensor finite */
    for (int i = 0; i < checkpoint.ntensors; i++) {
        int64_t rows, cols;
        free(read_tensor(&checkpoint, checkpoint.tensors[i].name, &rows, &cols));
    }

    /* the weights' distribution: scale, heavy tails, persistent outlier column */
    int64_t rows, cols;
    float *values = read_tensor(&checkpoint, "model.embed_tokens.weight", &rows, &cols);
    double ratio;
    int64_t outlier = loudest_column(values, rows, cols, &ratio);
    SB_CHECK_MSG(ratio > 16, "embedding outlier column only %.1fx the median mean square", ratio);
    double sum2 = 0, sum4 = 0;
    int64_t count = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            if (c == outlier)
                continue;
            double v = values[r * cols + c];
            sum2 += v * v;
            sum4 += v * v * v * v;
            count++;
        }
    double variance = sum2 / (double)count, kurtosis = sum4 / (double)count / (variance * variance);
    /* Student-t(4) x 0.02: variance 2 x 0.0004; kurtosis unbounded (a normal's is 3) */
    SB_CHECK_MSG(fabs(sqrt(variance) / (0.02 * sqrt(2.0)) - 1.0) < 0.25, "std %g", sqrt(variance));
    SB_CHECK_MSG(kurtosis > 5.0, "kurtosis %g: tails not heavy", kurtosis);
    free(values);
    const char *hidden_input[] = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                                  "model.layers.2.mlp.up_proj.weight", "lm_head.weight"};
    for (int i = 0; i < 4; i++) {
        values = read_tensor(&checkpoint, hidden_input[i], &rows, &cols);
        if (!values)
            continue;
        SB_CHECK_MSG(loudest_column(values, rows, cols, &ratio) == outlier && ratio > 8,
                     "%s: outlier column not shared (ratio %.1f)", hidden_input[i], ratio);
        free(values);
    }
    values = read_tensor(&checkpoint, "model.layers.1.post_attention_layernorm.weight", &rows, &cols);
    double mean = 0;
    for (int64_t c = 0; c < cols; c++)
        mean += values[c] / (double)cols;
    SB_CHECK_MSG(fabs(mean - 1.0) < 0.05, "norm weights mean %g", mean);
    free(values);
    sb_checkpoint_close(&checkpoint);
    sb_config_free(&config);
}

/* Every tensor of `a` has the same stored bytes in `b`. */
static bool same_tensors(const char *a_dir, const char *b_dir)
{
    sb_checkpoint a, b;
    sb_error err = {0};
    if (sb_checkpoint_open(a_dir, &a, &err) != SB_OK || sb_checkpoint_open(b_dir, &b, &err) != SB_OK) {
        fprintf(stderr, "%s\n", err.message);
        return false;
    }
    bool same = a.ntensors == b.ntensors;
    for (int i = 0; i < a.ntensors && same; i++) {
        const sb_tensor_info *x = &a.tensors[i], *y = sb_checkpoint_find(&b, x->name);
        same = y && x->nbytes == y->nbytes;
        if (!same)
            break;
        void *bx = malloc(x->nbytes), *by = malloc(y->nbytes);
        same = sb_checkpoint_read_raw(&a, x, bx, &err) == SB_OK && sb_checkpoint_read_raw(&b, y, by, &err) == SB_OK &&
               memcmp(bx, by, x->nbytes) == 0;
        free(bx);
        free(by);
    }
    sb_checkpoint_close(&a);
    sb_checkpoint_close(&b);
    return same;
}

static bool same_file(const char *a, const char *b)
{
    char command[8400];
    snprintf(command, sizeof command, "cmp -s '%s' '%s'", a, b);
    return system(command) == 0;
}

/* Opens `dir` with its config's FP8 block size. */
static bool open_model(const char *dir, sb_model_config *config, sb_checkpoint *checkpoint)
{
    sb_error err = {0};
    if (sb_config_load(dir, config, &err) != SB_OK) {
        SB_CHECK_MSG(false, "%s", err.message);
        return false;
    }
    sb_checkpoint_options options = sb_config_checkpoint_options(config);
    if (sb_checkpoint_open_with(dir, &options, checkpoint, &err) != SB_OK) {
        SB_CHECK_MSG(false, "%s", err.message);
        sb_config_free(config);
        return false;
    }
    return true;
}

static void expect_shape(const sb_checkpoint *checkpoint, const char *name, int64_t rows, int64_t cols)
{
    const sb_tensor_info *tensor = sb_checkpoint_find(checkpoint, name);
    SB_CHECK_MSG(tensor, "%s missing", name);
    if (!tensor)
        return;
    bool ok = rows == 0 ? tensor->ndim == 1 && tensor->shape[0] == cols
                        : tensor->ndim == 2 && tensor->shape[0] == rows && tensor->shape[1] == cols;
    SB_CHECK_MSG(ok, "%s: wrong shape", name);
}

/* Relative L2 distance between the same tensor of two checkpoints (read as float32). */
static double tensor_distance(const sb_checkpoint *a, const sb_checkpoint *b, const char *name, bool *identical)
{
    int64_t rows, cols, rows_b, cols_b;
    float *x = read_tensor(a, name, &rows, &cols), *y = read_tensor(b, name, &rows_b, &cols_b);
    double diff = 0, norm = 0;
    *identical = x && y && rows == rows_b && cols == cols_b;
    for (int64_t i = 0; *identical && i < rows * cols; i++) {
        diff += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        norm += (double)y[i] * y[i];
    }
    *identical = *identical && memcmp(x, y, (size_t)(rows * cols) * sizeof *x) == 0;
    free(x);
    free(y);
    return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}

static void check_qwen(void)
{
    char args[8192];
    sb_model_config config;
    sb_checkpoint checkpoint;

    /* Qwen3 dense, biases on: q_dim 4 x 24 = 96 != hidden 64 */
    char *qwen3 = out_dir("qwen3");
    snprintf(args, sizeof args, "--out '%s' --small --arch qwen3 --attention-bias --layers 1", qwen3);
    SB_CHECK(run_generator(args) == 0);
    if (open_model(qwen3, &config, &checkpoint)) {
        SB_CHECK(config.shape.architecture == SB_ARCH_QWEN3 && config.shape.head_dim == 24);
        SB_CHECK(config.shape.attention_bias && config.shape.qk_norm);
        SB_CHECK_MSG(checkpoint.ntensors == 3 + 9 + 4 + 2, "%d tensors", checkpoint.ntensors);
        expect_shape(&checkpoint, "model.layers.0.self_attn.q_proj.weight", 96, 64);
        expect_shape(&checkpoint, "model.layers.0.self_attn.k_proj.weight", 48, 64);
        expect_shape(&checkpoint, "model.layers.0.self_attn.o_proj.weight", 64, 96);
        expect_shape(&checkpoint, "model.layers.0.self_attn.q_proj.bias", 0, 96);
        expect_shape(&checkpoint, "model.layers.0.self_attn.v_proj.bias", 0, 48);
        expect_shape(&checkpoint, "model.layers.0.self_attn.o_proj.bias", 0, 64);
        expect_shape(&checkpoint, "model.layers.0.self_attn.q_norm.weight", 0, 24);
        expect_shape(&checkpoint, "model.layers.0.self_attn.k_norm.weight", 0, 24);
        sb_checkpoint_close(&checkpoint);
        sb_config_free(&config);
    }

    /* Qwen3-MoE: layer 0 dense, layers 1-2 with a router and 8 experts of FFN 48 */
    char *moe = out_dir("moe");
    snprintf(args, sizeof args, "--out '%s' --small --arch qwen3-moe", moe);
    SB_CHECK(run_generator(args) == 0);
    if (open_model(moe, &config, &checkpoint)) {
        const sb_model_shape *s = &config.shape;
        SB_CHECK(s->architecture == SB_ARCH_QWEN3_MOE && s->num_hidden_layers == 3 && s->num_experts == 8);
        SB_CHECK(s->num_experts_per_tok == 2 && s->moe_intermediate_size == 48 && s->norm_topk_prob);
        SB_CHECK(!sb_layer_is_moe(s, 0) && sb_layer_is_moe(s, 1) && sb_layer_is_moe(s, 2));
        SB_CHECK_MSG(checkpoint.ntensors == 3 + 3 * 8 + 3 + 2 * (1 + 24), "%d tensors", checkpoint.ntensors);
        expect_shape(&checkpoint, "model.layers.0.mlp.gate_proj.weight", 172, 64);
        expect_shape(&checkpoint, "model.layers.1.mlp.gate.weight", 8, 64);
        expect_shape(&checkpoint, "model.layers.2.mlp.experts.7.down_proj.weight", 64, 48);
        expect_shape(&checkpoint, "model.layers.1.mlp.experts.0.up_proj.weight", 48, 64);
        SB_CHECK(!sb_checkpoint_find(&checkpoint, "model.layers.1.mlp.gate_proj.weight"));
        sb_checkpoint_close(&checkpoint);
        sb_config_free(&config);
    }

    /* the same seed in FP8 with 32x32 blocks: the linear weights within E4M3 rounding (3
     * mantissa bits: 1/16 relative at worst) of the BF16 ones, everything else identical */
    char *moe8 = out_dir("moe8");
    snprintf(args, sizeof args, "--out '%s' --small --arch qwen3-moe --fp8 --fp8-block 32x32", moe8);
    SB_CHECK(run_generator(args) == 0);
    sb_model_config config_bf16;
    sb_checkpoint bf16;
    if (open_model(moe8, &config, &checkpoint) && open_model(moe, &config_bf16, &bf16)) {
        SB_CHECK(config.fp8_block_rows == 32 && config.fp8_block_cols == 32);
        SB_CHECK_MSG(checkpoint.ntensors == bf16.ntensors && checkpoint.nscales == 4 * 3 + 3 + 2 * 24, "%d, %d",
                     checkpoint.ntensors, checkpoint.nscales);
        int fp8_tensors = 0;
        double worst = 0;
        for (int i = 0; i < checkpoint.ntensors; i++) {
            const sb_tensor_info *tensor = &checkpoint.tensors[i];
            bool identical;
            double distance = tensor_distance(&checkpoint, &bf16, tensor->name, &identical);
            if (tensor->dtype == SB_DTYPE_F8_E4M3) {
                fp8_tensors++;
                worst = distance > worst ? distance : worst;
                SB_CHECK_MSG(distance > 0 && distance < 0.04, "%s: %g from BF16", tensor->name, distance);
                SB_CHECK(strstr(tensor->name, "model.layers.") && !strstr(tensor->name, "mlp.gate.weight"));
            } else {
                SB_CHECK_MSG(identical, "%s differs from the BF16 model", tensor->name);
            }
        }
        SB_CHECK(fp8_tensors == checkpoint.nscales);
        printf("FP8 copy: %d F8_E4M3 tensors, worst relative L2 distance to BF16 %.4f\n", fp8_tensors, worst);
        sb_checkpoint_close(&checkpoint);
        sb_config_free(&config);
        sb_checkpoint_close(&bf16);
        sb_config_free(&config_bf16);
    }

    /* converter: an FP8 copy (128x128 power-of-two scales), then its dequantized BF16 copy:
     * every tensor reads back the same values, bit for bit */
    char *copy8 = out_dir("copy8"), *dequantized = out_dir("dequantized");
    snprintf(args, sizeof args, "--out '%s' --from '%s' --fp8", copy8, moe);
    SB_CHECK(run_generator(args) == 0);
    snprintf(args, sizeof args, "--out '%s' --from '%s' --dtype bf16", dequantized, copy8);
    SB_CHECK(run_generator(args) == 0);
    if (open_model(copy8, &config, &checkpoint) && open_model(dequantized, &config_bf16, &bf16)) {
        SB_CHECK(config.fp8_block_rows == 128 && config_bf16.fp8_block_rows == 0 && bf16.nscales == 0);
        SB_CHECK(checkpoint.nscales == 63 && checkpoint.ntensors == bf16.ntensors);
        int differing = 0;
        for (int i = 0; i < bf16.ntensors; i++) {
            bool identical;
            tensor_distance(&checkpoint, &bf16, bf16.tensors[i].name, &identical);
            differing += !identical;
            SB_CHECK(bf16.tensors[i].dtype == SB_DTYPE_BF16);
        }
        SB_CHECK_MSG(differing == 0, "%d tensors of the dequantized copy differ from the FP8 copy", differing);
        sb_checkpoint_close(&checkpoint);
        sb_config_free(&config);
        sb_checkpoint_close(&bf16);
        sb_config_free(&config_bf16);
    }
    /* max|x| / 448 scales (as the releases store) are not exact in BF16: the BF16 copy is
     * refused, naming the tensor; F32 holds them */
    char *amax = out_dir("amax");
    snprintf(args, sizeof args, "--out '%s' --from '%s' --fp8 --fp8-scales amax --scale-dtype bf16", amax, moe);
    SB_CHECK(run_generator(args) == 0);
    snprintf(args, sizeof args, "'%s' --out '%s' --from '%s' --dtype bf16 2>&1 | grep -q 'is not exact in BF16'",
             generator, dequantized, amax);
    SB_CHECK(system(args) == 0);
    snprintf(args, sizeof args, "--out '%s' --from '%s' --dtype f32", dequantized, amax);
    SB_CHECK(run_generator(args) == 0);

    /* the FP8 release of Qwen3-235B-A22B, headers only: 94 layers of 128 experts */
    char *q235 = out_dir("q235");
    snprintf(args, sizeof args, "--out '%s' --config '%s/configs/qwen3-235b-a22b-fp8.config.json' --headers-only",
             q235, sb_test_data_dir());
    SB_CHECK(run_generator(args) == 0);
    if (open_model(q235, &config, &checkpoint)) {
        SB_CHECK_MSG(checkpoint.ntensors == 3 + 94 * (1 + 4 + 2 + 1 + 1 + 3 * 128) && checkpoint.nscales == 94 * (4 + 384),
                     "%d tensors, %d scales", checkpoint.ntensors, checkpoint.nscales);
        expect_shape(&checkpoint, "model.layers.93.mlp.experts.127.down_proj.weight", 4096, 1536);
        expect_shape(&checkpoint, "model.layers.0.self_attn.q_proj.weight", 8192, 4096);
        const sb_tensor_info *router = sb_checkpoint_find(&checkpoint, "model.layers.5.mlp.gate.weight");
        SB_CHECK(router && router->dtype == SB_DTYPE_BF16 && router->shape[0] == 128);
        printf("Qwen3-235B-A22B FP8 headers: %d tensors, %d scales in %d files\n", checkpoint.ntensors,
               checkpoint.nscales, checkpoint.nfiles);
        sb_checkpoint_close(&checkpoint);
        sb_config_free(&config);
    }

    /* usage errors */
    char *bad = out_dir("bad-qwen");
    snprintf(args, sizeof args, "--out '%s' --small --experts 4", bad);
    SB_CHECK(run_generator(args) == 2);
    snprintf(args, sizeof args, "--out '%s' --small --arch qwen3-moe --experts 4 --experts-per-tok 5", bad);
    SB_CHECK(run_generator(args) == 2);
    snprintf(args, sizeof args, "--out '%s' --from '%s' --layers 2", bad, moe);
    SB_CHECK(run_generator(args) == 2);
    snprintf(args, sizeof args, "--out '%s' --small --fp8 --fp8-block 0x4", bad);
    SB_CHECK(run_generator(args) == 2);
    snprintf(args, sizeof args, "--out '%s' --small --head-dim 8", bad);
    SB_CHECK(run_generator(args) == 2);
    SB_CHECK(access(bad, F_OK) != 0);
    free(qwen3);
    free(moe);
    free(moe8);
    free(copy8);
    free(dequantized);
    free(amax);
    free(q235);
    free(bad);
}

int main(void)
{
    const char *build = getenv("SB_BUILD_DIR");
    snprintf(generator, sizeof generator, "%s/bench/bench-gen-checkpoint", build ? build : "build");
    if (access(generator, X_OK) != 0) {
        fprintf(stderr, "%s is not built (it is part of the default build: cmake --build)\n", generator);
        return 1;
    }
    temp_root = sb_test_temp_dir("gen");
    char args[8192];

    /* a tiny sharded checkpoint */
    char *sharded = out_dir("sharded");
    snprintf(args, sizeof args, "--out '%s' --small --layers 3 --shard-gb 0.0001 --seed 7", sharded);
    SB_CHECK(run_generator(args) == 0);
    check_sharded(sharded);

    /* the same seed, one file: the same tensors; a second sharded run: identical files */
    char *single = out_dir("single");
    snprintf(args, sizeof args, "--out '%s' --small --layers 3 --seed 7", single);
    SB_CHECK(run_generator(args) == 0);
    char path_a[4200], path_b[4200];
    snprintf(path_a, sizeof path_a, "%s/model.safetensors", single);
    SB_CHECK(access(path_a, R_OK) == 0);
    snprintf(path_a, sizeof path_a, "%s/model.safetensors.index.json", single);
    SB_CHECK(access(path_a, F_OK) != 0);
    SB_CHECK(same_tensors(sharded, single));
    char *again = out_dir("again");
    snprintf(args, sizeof args, "OMP_NUM_THREADS=2 '%s' --out '%s' --small --layers 3 --shard-gb 0.0001 --seed 7",
             generator, again);
    SB_CHECK(system(args) == 0);
    snprintf(path_a, sizeof path_a, "%s/model-00002-of-00004.safetensors", sharded);
    snprintf(path_b, sizeof path_b, "%s/model-00002-of-00004.safetensors", again);
    SB_CHECK_MSG(same_file(path_a, path_b), "a second run (two threads) differs: %s", path_b);
    snprintf(path_a, sizeof path_a, "%s/model.safetensors.index.json", sharded);
    snprintf(path_b, sizeof path_b, "%s/model.safetensors.index.json", again);
    SB_CHECK(same_file(path_a, path_b));

    /* another seed, other weights */
    char *other = out_dir("other");
    snprintf(args, sizeof args, "--out '%s' --small --layers 3 --seed 8", other);
    SB_CHECK(run_generator(args) == 0);
    SB_CHECK(!same_tensors(single, other));

    /* writing a single file over a sharded directory removes the stale index */
    snprintf(args, sizeof args, "--out '%s' --small --layers 1 --seed 7", again);
    SB_CHECK(run_generator(args) == 0);
    sb_checkpoint checkpoint;
    sb_error err = {0};
    SB_CHECK_MSG(sb_checkpoint_open(again, &checkpoint, &err) == SB_OK, "%s", err.message);
    SB_CHECK(checkpoint.nfiles == 1 && checkpoint.ntensors == 3 + 9);
    sb_checkpoint_close(&checkpoint);

    /* --size-gb picks the layer count: 1 MB of the small shape is 10 layers of 90880 bytes
     * plus 65664 bytes of embeddings, head and final norm */
    char *sized = out_dir("sized");
    snprintf(args, sizeof args, "--out '%s' --small --size-gb 0.001", sized);
    SB_CHECK(run_generator(args) == 0);
    sb_model_config config;
    SB_CHECK_MSG(sb_config_load(sized, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK_MSG(config.shape.num_hidden_layers == 10, "%lld layers", (long long)config.shape.num_hidden_layers);
    sb_config_free(&config);

    /* tied embeddings and other shapes: no lm_head; F32 */
    char *tied = out_dir("tied");
    snprintf(args, sizeof args,
             "--out '%s' --tie --hidden 96 --intermediate 200 --vocab 100 --heads 6 --kv-heads 3 --layers 1 "
             "--dtype f32",
             tied);
    SB_CHECK(run_generator(args) == 0);
    SB_CHECK_MSG(sb_config_load(tied, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.tie_word_embeddings && config.shape.head_dim == 16 && config.shape.num_key_value_heads == 3);
    sb_config_free(&config);
    SB_CHECK_MSG(sb_checkpoint_open(tied, &checkpoint, &err) == SB_OK, "%s", err.message);
    SB_CHECK(!sb_checkpoint_find(&checkpoint, "lm_head.weight") && checkpoint.ntensors == 2 + 9);
    const sb_tensor_info *k_proj = sb_checkpoint_find(&checkpoint, "model.layers.0.self_attn.k_proj.weight");
    SB_CHECK(k_proj && k_proj->dtype == SB_DTYPE_F32 && k_proj->shape[0] == 48 && k_proj->shape[1] == 96);
    sb_checkpoint_close(&checkpoint);

    /* usage errors exit 2 and write nothing */
    char *bad = out_dir("bad");
    snprintf(args, sizeof args, "--out '%s' --small --heads 5", bad);
    SB_CHECK(run_generator(args) == 2);
    snprintf(args, sizeof args, "--out '%s' --small --kv-heads 3", bad);
    SB_CHECK(run_generator(args) == 2);
    snprintf(args, sizeof args, "--out '%s' --layers 2 --size-gb 1", bad);
    SB_CHECK(run_generator(args) == 2);
    snprintf(args, sizeof args, "--out '%s' --layers -1", bad);
    SB_CHECK(run_generator(args) == 2);
    SB_CHECK(run_generator("--small") == 2);
    SB_CHECK(run_generator("--bogus 3") == 2);
    SB_CHECK(access(bad, F_OK) != 0);

    check_qwen();

    sb_test_remove_tree(temp_root);
    free(temp_root);
    free(sharded);
    free(single);
    free(again);
    free(other);
    free(sized);
    free(tied);
    free(bad);
    return sb_test_finish("test_gen_checkpoint");
}
