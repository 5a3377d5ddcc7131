/* bench-expert-stats: how many routed tokens an expert needs before its own calibration
 * statistics beat its layer's pooled ones (src/sb_calib_stats.h, SB_EXPERT_MIN_ROWS).
 *
 * Runs a Qwen3-MoE model (default ../shared/models/qwen3-moe-tiny on its calib.txt) over many
 * windows and, for every expert, accumulates the weighted second moments of its inputs
 * (E_w[x_j^2] = sum w x_j^2 / sum w, w the routing weight: what calibration uses) token-slot by
 * token-slot, keeping a snapshot after its first n slots for n = 4, 8, ..., 1024. Experts that
 * received at least --reference slots serve as ground truth: their estimate from all slots.
 * For each, the quantity the allocation cares about is the act loss of quantizing the expert's
 * own weight, D(E) = sum_j E_j sum_i dW_ij^2 with dW the error of min-max round-to-nearest at
 * --bits bits in groups of --group columns; the bench prints, for every n, the relative error
 * |D(E_n) / D(E_all) - 1| (median and 90th percentile over experts and their two inputs: gate/up's
 * and down's) next to that of the fallback, the layer's pooled E over all its experts. The
 * threshold is the n from which an expert's own first n slots estimate its loss better than
 * the pool does.
 *
 *   bench-expert-stats [--model DIR] [--text FILE] [--windows N] [--ctx C] [--reference R]
 *                      [--bits B] [--group G]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_config.h"
#include "sb_error.h"
#include "sb_log.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_safetensors.h"
#include "sb_tokens.h"

enum { CHECKPOINTS = 9 };
static const int64_t checkpoint_rows[CHECKPOINTS] = {4, 8, 16, 32, 64, 128, 256, 512, 1024};

/* One expert input (gate/up's, or down's): running sums and the snapshots after n rows. */
typedef struct input_stats {
    int64_t cols, rows;
    double *sum, weight;
    double *snapshot[CHECKPOINTS]; /* E after checkpoint_rows[k] rows */
} input_stats;

typedef struct collector {
    const sb_model_shape *shape;
    input_stats *inputs; /* [layers x experts x 2] */
} collector;

static input_stats *input_of(collector *c, int64_t layer, int64_t expert, int which)
{
    return &c->inputs[(layer * c->shape->num_experts + expert) * 2 + which];
}

static sb_status on_input(void *user, const sb_linear_input *input, sb_error *err)
{
    collector *c = user;
    if (input->id.expert < 0 || input->id.role == SB_ROLE_UP)
        return SB_OK; /* up sees gate's rows */
    input_stats *s = input_of(c, input->id.layer, input->id.expert, input->id.role == SB_ROLE_DOWN);
    for (int64_t r = 0; r < input->rows; r++) {
        double w = input->route_weights[r];
        for (int64_t j = 0; j < s->cols; j++) {
            double v = input->x[r * s->cols + j];
            s->sum[j] += w * v * v;
        }
        s->weight += w;
        s->rows++;
        for (int k = 0; k < CHECKPOINTS; k++)
            if (s->rows == checkpoint_rows[k]) {
                if (!(s->snapshot[k] = sb_malloc((size_t)s->cols * sizeof(double), "snapshot", err)))
                    return SB_ERR_NOMEM;
                for (int64_t j = 0; j < s->cols; j++)
                    s->snapshot[k][j] = s->sum[j] / s->weight;
            }
    }
    return SB_OK;
}

/* sum_i dW_ij^2 per column j: the error of min-max round-to-nearest at `bits` in groups. */
static void rtn_column_errors(const float *w, int64_t rows, int64_t cols, int bits, int group, double *out)
{
    double levels = (double)((1 << bits) - 1);
    memset(out, 0, (size_t)cols * sizeof *out);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t g = 0; g < cols; g += group) {
            int64_t end = g + group < cols ? g + group : cols;
            double lo = w[i * cols + g], hi = lo;
            for (int64_t j = g; j < end; j++) {
                lo = fmin(lo, w[i * cols + j]);
                hi = fmax(hi, w[i * cols + j]);
            }
            double scale = hi > lo ? (hi - lo) / levels : 1.0;
            for (int64_t j = g; j < end; j++) {
                double q = lo + scale * round((w[i * cols + j] - lo) / scale);
                out[j] += (q - w[i * cols + j]) * (q - w[i * cols + j]);
            }
        }
}

static double loss_of(const double *e, const double *column_errors, int64_t cols)
{
    double d = 0;
    for (int64_t j = 0; j < cols; j++)
        d += e[j] * column_errors[j];
    return d;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quantile(double *values, int count, double q)
{
    if (count == 0)
        return NAN;
    qsort(values, (size_t)count, sizeof *values, compare_doubles);
    return values[(int)fmin(count - 1, floor(q * count))];
}

int main(int argc, char **argv)
{
    const char *shared = getenv("SB_SHARED_DIR") ? getenv("SB_SHARED_DIR") : "../shared";
    char model_dir[4096], text_path[4200];
    snprintf(model_dir, sizeof model_dir, "%s/models/qwen3-moe-tiny", shared);
    snprintf(text_path, sizeof text_path, "%s/calib.txt", model_dir);
    int64_t windows = 256, ctx = 256, reference = 2048;
    int bits = 2, group = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--model") == 0) {
            snprintf(model_dir, sizeof model_dir, "%s", argv[i + 1]);
            snprintf(text_path, sizeof text_path, "%s/calib.txt", model_dir);
        } else if (strcmp(argv[i], "--text") == 0)
            snprintf(text_path, sizeof text_path, "%s", argv[i + 1]);
        else if (strcmp(argv[i], "--windows") == 0)
            windows = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--ctx") == 0)
            ctx = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--reference") == 0)
            reference = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--bits") == 0)
            bits = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--group") == 0)
            group = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--model DIR] [--text FILE] [--windows N] [--ctx C] [--reference R] "
                            "[--bits B] [--group G]\n", argv[0]);
            return 2;
        }
    }
    sb_error err = {0};
    sb_model_config config;
    sb_checkpoint checkpoint;
    sb_model model;
    sb_tokens tokens;
    sb_window_range range;
    sb_model_workspace *workspace = NULL;
    sb_status status = sb_config_load(model_dir, &config, &err);
    const sb_model_shape *shape = &config.shape;
    if (status == SB_OK && shape->num_experts == 0)
        status = sb_error_set(&err, SB_ERR_INPUT, "%s: not a mixture-of-experts model", model_dir);
    if (status == SB_OK)
        status = sb_checkpoint_open(model_dir, &checkpoint, &err);
    if (status == SB_OK)
        status = sb_model_load_checkpoint(shape, &checkpoint, &model, &err);
    if (status == SB_OK)
        status = sb_tokens_read_bytes(text_path, shape->vocab_size, &tokens, &err);
    if (status == SB_OK)
        status = sb_tokens_windows(&tokens, ctx, windows, false, &range, &err);
    if (status == SB_OK)
        status = sb_model_workspace_create(shape, ctx, 8, 1, false, &workspace, &err);
    if (status != SB_OK) {
        fprintf(stderr, "bench-expert-stats: error: %s\n", err.message);
        return 1;
    }
    int64_t layers = shape->num_hidden_layers, experts = shape->num_experts;
    collector c = {shape, calloc((size_t)(layers * experts * 2), sizeof(input_stats))};
    for (int64_t i = 0; i < layers * experts * 2; i++) {
        c.inputs[i].cols = i % 2 ? shape->moe_intermediate_size : shape->hidden_size;
        c.inputs[i].sum = calloc((size_t)c.inputs[i].cols, sizeof(double));
    }
    double start = sb_now();
    sb_nll nll = {0, 0};
    status = sb_model_forward(&model, range.tokens, range.n_windows, ctx, workspace, on_input, &c, &nll, &err);
    if (status != SB_OK) {
        fprintf(stderr, "bench-expert-stats: error: %s\n", err.message);
        return 1;
    }
    printf("%s: %lld windows of %lld tokens of %s, %.1f s; ground truth: experts with >= %lld token-slots; "
           "loss of min-max RTN at %d bits, groups of %d\n",
           model_dir, (long long)range.n_windows, (long long)ctx, text_path, sb_now() - start, (long long)reference, bits,
           group);
    /* per (layer, kind): the pooled E over every expert */
    int cases = 0;
    double *own[CHECKPOINTS], *pooled = calloc((size_t)(layers * experts * 2), sizeof(double));
    for (int k = 0; k < CHECKPOINTS; k++)
        own[k] = calloc((size_t)(layers * experts * 2), sizeof(double));
    for (int64_t layer = 0; layer < layers; layer++) {
        if (!sb_layer_is_moe(shape, layer))
            continue;
        for (int which = 0; which < 2; which++) {
            int64_t cols = which ? shape->moe_intermediate_size : shape->hidden_size;
            double *pool = calloc((size_t)cols, sizeof(double)), pool_weight = 0;
            for (int64_t e = 0; e < experts; e++) {
                input_stats *s = input_of(&c, layer, e, which);
                for (int64_t j = 0; j < cols; j++)
                    pool[j] += s->sum[j];
                pool_weight += s->weight;
            }
            for (int64_t j = 0; j < cols; j++)
                pool[j] /= pool_weight;
            double *column_errors = malloc((size_t)cols * sizeof(double)), *full = malloc((size_t)cols * sizeof(double));
            for (int64_t e = 0; e < experts; e++) {
                input_stats *s = input_of(&c, layer, e, which);
                if (s->rows < reference)
                    continue;
                sb_tensor_id id = {which ? SB_ROLE_DOWN : SB_ROLE_GATE, layer, e};
                int64_t rows, unused;
                sb_weight_shape(shape, &id, &rows, &unused);
                rtn_column_errors(sb_layer_weight(&model.layers[layer], &id), rows, cols, bits, group, column_errors);
                for (int64_t j = 0; j < cols; j++)
                    full[j] = s->sum[j] / s->weight;
                double truth = loss_of(full, column_errors, cols);
                for (int k = 0; k < CHECKPOINTS; k++)
                    own[k][cases] = fabs(loss_of(s->snapshot[k], column_errors, cols) / truth - 1);
                pooled[cases] = fabs(loss_of(pool, column_errors, cols) / truth - 1);
                cases++;
            }
            free(pool);
            free(column_errors);
            free(full);
        }
    }
    double pooled_median = quantile(pooled, cases, 0.5), pooled_p90 = quantile(pooled, cases, 0.9);
    printf("%d reference cases (expert x input)\n", cases);
    printf("%-22s %16s %16s\n", "estimate", "median rel err", "90th pct");
    printf("%-22s %16.4f %16.4f\n", "layer's pooled experts", pooled_median, pooled_p90);
    int64_t threshold = -1;
    for (int k = 0; k < CHECKPOINTS; k++) {
        double median = quantile(own[k], cases, 0.5), p90 = quantile(own[k], cases, 0.9);
        char label[64];
        snprintf(label, sizeof label, "own first %lld slots", (long long)checkpoint_rows[k]);
        printf("%-22s %16.4f %16.4f\n", label, median, p90);
        if (threshold < 0 && median < pooled_median && p90 < pooled_p90)
            threshold = checkpoint_rows[k];
    }
    printf("own statistics beat the pool (median and 90th percentile) from %lld token-slots on\n", (long long)threshold);
    return 0;
}
