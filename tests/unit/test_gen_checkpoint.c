/* bench-gen-checkpoint end to end: a tiny sharded checkpoint opens with sb_checkpoint_open and
 * sb_config_load, its tensors have the shapes config.json implies, its weights look like the
 * generator promises (finite, scale 0.02 x Student-t(4), heavy tails, the same outlier column in
 * every hidden-input matrix), and the output depends only on the seed: not on the sharding, not
 * on the run. --size-gb, --tie, stale-file removal and usage errors are checked too. */
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
    sb_test_format(command, sizeof command, "cmp -s '%s' '%s'", a, b);
    return system(command) == 0;
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
