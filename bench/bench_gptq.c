/* bench-gptq: what GPTQ error feedback (src/sb_gptq.h) costs and gains inside 128x128 tiles,
 * against the plain quantizer (sb_quantize_tile with the same importance diag(H), the `act`
 * sensitivity), for groups of 32, 64 and 128 and 2 to 4 bits, in both scale formats.
 *
 *   bench-gptq [--tiles N] [--rho R] [--tokens T] [--seed S]
 *   bench-gptq --model DIR [--group G] [--scales f16|q8] [--eval-windows N] [--threads N] [--sequential]
 *
 * Each tile gets random weights (normal, 2% outliers x6) and its own H = X^T X / T from T
 * (default 1024) synthetic calibration inputs whose neighbouring columns are correlated with
 * --rho (default 0.8; an AR(1) process plus a shared component, per-column scales spread like
 * LLM activations). Columns of the table:
 *   plain ns/w      sb_quantize_tile, per weight
 *   gptq ns/w       sb_quantize_tile_gptq (factors H on every call, measures the output error)
 *   factored ns/w   sb_quantize_tile_gptq_factored with H factored beforehand (how a pipeline
 *                   runs it: one factor per tile column, shared by its tiles and bitwidths)
 *   factor ms       sb_gptq_factor_init of one 128x128 block
 *   out-err ratio   mean over tiles of GPTQ's output error sum_r d^T H d / the plain one's
 *   E ratio         the same for the diag(H)-weighted E both return (GPTQ trades it for the
 *                   output error: above 1 is expected, and why curves must use the latter)
 * Single-threaded, thread CPU time; the best of 3 timings over the --tiles tiles (default 8).
 *
 * With --model (a directory with config.json, model.safetensors, calib.txt and heldout.txt,
 * byte-level, e.g. ../shared/models/austen-256): the real thing. H of every linear input is
 * accumulated over every 256-byte window of calib.txt through the FP model, or, with
 * --sequential, layer by layer through the layers already quantized (GPTQ's order: both
 * methods then get their statistics that way); then at 2, 3 and 4 bits, uniform, 128x128 tiles,
 * groups of --group (default 128), --scales (default q8), the seven linear kinds of every
 * layer are quantized by the plain quantizer (importance diag(H): `act`) and by GPTQ, and the
 * perplexity on the first --eval-windows (default 200) windows of 256 of heldout.txt is
 * printed beside the output error ratio per kind and the main thread's CPU seconds spent
 * quantizing (with --sequential, the calibration layer passes too).
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_config.h"
#include "sb_gptq.h"
#include "sb_log.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_quant.h"
#include "sb_safetensors.h"
#include "sb_tokens.h"

enum { TILE = 128 };

/* CPU time of this thread: on shared cores, wall time measures the neighbours too */
static double cpu_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* splitmix64 and Box-Muller: reproducible data without the test support library */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *state) { return (double)(next_random(state) >> 11) * 0x1p-53; }

static double normal(uint64_t *state)
{
    double u1 = uniform(state), u2 = uniform(state);
    return sqrt(-2.0 * log(u1 > 1e-300 ? u1 : 1e-300)) * cos(2.0 * M_PI * u2);
}

/* The tile's block of H: correlated synthetic inputs, summed by the library's accumulator. */
static void make_hessian(uint64_t *state, int tokens, double rho, float *inputs, float *hessian)
{
    double column_scale[TILE];
    for (int c = 0; c < TILE; c++)
        column_scale[c] = exp(0.5 * normal(state)) * (uniform(state) < 0.03 ? 6.0 : 1.0);
    for (int t = 0; t < tokens; t++) {
        double common = normal(state), previous = normal(state);
        for (int c = 0; c < TILE; c++) {
            previous = rho * previous + sqrt(1 - rho * rho) * normal(state);
            inputs[(int64_t)t * TILE + c] = (float)(column_scale[c] * (previous + 0.5 * common) / sqrt(tokens));
        }
    }
    memset(hessian, 0, (size_t)TILE * TILE * sizeof *hessian);
    sb_hessian_accumulate(inputs, tokens, TILE, TILE, hessian);
}

static void make_weights(uint64_t *state, float *weights)
{
    for (int i = 0; i < TILE * TILE; i++) {
        double v = 0.02 * normal(state);
        weights[i] = (float)(uniform(state) < 0.02 ? 6 * v : v);
    }
}

/* ---- --model: a real checkpoint -------------------------------------------------------------- */

/* H blocks of every linear input: blocks[layer * 7 + kind]; K and V share Q's input (and
 * buffer), UP shares GATE's (sb_activation_fn passes them the same pointer). */
typedef struct model_hessians {
    int64_t layers;
    float **blocks;
} model_hessians;

static bool owns_input(sb_linear_kind kind)
{
    return kind == SB_LINEAR_Q || kind == SB_LINEAR_O || kind == SB_LINEAR_GATE || kind == SB_LINEAR_DOWN;
}

static sb_status accumulate_hook(void *user, const sb_linear_input *input, sb_error *err)
{
    model_hessians *hessians = user;
    if (input->id.expert < 0 && sb_role_is_linear(input->id.role) && owns_input((sb_linear_kind)input->id.role))
        sb_hessian_accumulate(input->x, input->rows, input->in_features, TILE,
                              hessians->blocks[input->id.layer * SB_LINEAR_KIND_COUNT + input->id.role]);
    return SB_OK;
}

/* Quantizes one weight matrix in place (decoded values written back), tile by tile; adds each
 * tile's output error to *output_error. */
static int quantize_matrix(float *weight, int64_t rows, int64_t cols, const float *blocks, int group, int bits,
                           const sb_quant_options *options, bool gptq, double *output_error)
{
    float *tile_copy = malloc((size_t)TILE * TILE * sizeof *tile_copy);
    float *decoded = malloc((size_t)TILE * TILE * sizeof *decoded);
    uint8_t *codes = malloc((size_t)TILE * TILE);
    uint16_t *scales = malloc((size_t)TILE * TILE * sizeof *scales),
             *zeros = malloc((size_t)TILE * TILE * sizeof *zeros);
    int ok = tile_copy && decoded && codes && scales && zeros;
    for (int64_t col0 = 0; ok && col0 < cols; col0 += TILE) {
        int width = (int)(cols - col0 < TILE ? cols - col0 : TILE);
        const float *h = sb_hessian_block(blocks, TILE, col0 / TILE);
        sb_gptq_factor factor;
        if (sb_gptq_factor_init(&factor, h, width, NULL) != SB_OK) {
            ok = 0;
            break;
        }
        for (int64_t row0 = 0; row0 < rows; row0 += TILE) {
            int height = (int)(rows - row0 < TILE ? rows - row0 : TILE);
            for (int r = 0; r < height; r++)
                memcpy(tile_copy + (int64_t)r * width, weight + (row0 + r) * cols + col0,
                       (size_t)width * sizeof(float));
            sb_tile_in in = {tile_copy, width, gptq ? NULL : factor.importance, 0, height, width, group};
            sb_tile_out out = {codes, scales, zeros, 0, 0, SB_SCALES_F16, NULL};
            if (gptq)
                sb_quantize_tile_gptq_factored(&in, &factor, bits, options, &out, NULL);
            else
                sb_quantize_tile(&in, bits, options, &out);
            sb_dequantize_tile(&out, height, width, group, decoded, width);
            *output_error += sb_output_error(h, width, tile_copy, width, decoded, width, height);
            for (int r = 0; r < height; r++)
                memcpy(weight + (row0 + r) * cols + col0, decoded + (int64_t)r * width, (size_t)width * sizeof(float));
        }
        sb_gptq_factor_free(&factor);
    }
    free(tile_copy);
    free(decoded);
    free(codes);
    free(scales);
    free(zeros);
    return ok;
}

/* GPTQ's order: layer by layer, H of layer l from the calibration inputs as the already
 * quantized layers before it produce them (layer l itself still FP while measured), then
 * layer l quantized and run to produce the next layer's inputs. `x` holds the residual stream
 * of every calibration token, `batch` one batch of 16 windows. */
static int quantize_sequential(sb_model *model, float **fp_weights, model_hessians *hessians,
                               const sb_window_range *calib, sb_model_workspace *workspace, float *x, float *batch,
                               int group, int bits, const sb_quant_options *options, bool gptq, double *output_error,
                               sb_error *err)
{
    const sb_model_shape *shape = &model->shape;
    const int64_t hidden = shape->hidden_size, batch_windows = 16;
    if (sb_embed_forward(shape, model->embed, calib->tokens, calib->n_windows * 256, x, err) != SB_OK)
        return 0;
    for (int64_t l = 0; l < shape->num_hidden_layers; l++) {
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols, slot = l * SB_LINEAR_KIND_COUNT + k;
            sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
            memcpy(sb_layer_linear(&model->layers[l], (sb_linear_kind)k), fp_weights[slot],
                   (size_t)(rows * cols) * sizeof(float));
            if (owns_input((sb_linear_kind)k))
                memset(hessians->blocks[slot], 0, (size_t)(cols * TILE) * sizeof(float));
        }
        for (int64_t w0 = 0; w0 < calib->n_windows; w0 += batch_windows) {
            int64_t n = calib->n_windows - w0 < batch_windows ? calib->n_windows - w0 : batch_windows;
            memcpy(batch, x + w0 * 256 * hidden, (size_t)(n * 256 * hidden) * sizeof(float));
            if (sb_layer_forward(shape, l, &model->layers[l], batch, n, 256, NULL, accumulate_hook, hessians, workspace,
                                 err) != SB_OK)
                return 0;
        }
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols, slot = l * SB_LINEAR_KIND_COUNT + k;
            sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
            if (!quantize_matrix(sb_layer_linear(&model->layers[l], (sb_linear_kind)k), rows, cols,
                                 hessians->blocks[slot], group, bits, options, gptq, &output_error[k]))
                return 0;
        }
        for (int64_t w0 = 0; w0 < calib->n_windows; w0 += batch_windows) {
            int64_t n = calib->n_windows - w0 < batch_windows ? calib->n_windows - w0 : batch_windows;
            if (sb_layer_forward(shape, l, &model->layers[l], x + w0 * 256 * hidden, n, 256, NULL, NULL, NULL,
                                 workspace, err) != SB_OK)
                return 0;
        }
    }
    return 1;
}

static int fail(const sb_error *err)
{
    fprintf(stderr, "bench-gptq: %s\n", err->message);
    return 1;
}

static int run_model(const char *dir, int group, sb_scale_format format, int64_t eval_windows, int threads,
                     bool sequential)
{
    sb_error err;
    sb_model_config config;
    sb_checkpoint checkpoint;
    sb_model model;
    if (sb_config_load(dir, &config, &err) != SB_OK || sb_checkpoint_open(dir, &checkpoint, &err) != SB_OK ||
        sb_model_load_checkpoint(&config.shape, &checkpoint, &model, &err) != SB_OK)
        return fail(&err);
    const sb_model_shape *shape = &model.shape;
    char path[4096];
    sb_tokens calib, heldout;
    sb_window_range calib_range, eval_range;
    snprintf(path, sizeof path, "%s/calib.txt", dir);
    if (sb_tokens_read_bytes(path, shape->vocab_size, &calib, &err) != SB_OK ||
        sb_tokens_windows(&calib, 256, 0, false, &calib_range, &err) != SB_OK)
        return fail(&err);
    snprintf(path, sizeof path, "%s/heldout.txt", dir);
    if (sb_tokens_read_bytes(path, shape->vocab_size, &heldout, &err) != SB_OK ||
        sb_tokens_windows(&heldout, 256, eval_windows, false, &eval_range, &err) != SB_OK)
        return fail(&err);
    sb_model_workspace *workspace;
    if (sb_model_workspace_create(shape, 256, 16, threads, false, &workspace, &err) != SB_OK)
        return fail(&err);

    /* H blocks from the FP model over all of calib.txt, and an FP copy of the linear weights */
    int64_t layers = shape->num_hidden_layers, slots = layers * SB_LINEAR_KIND_COUNT;
    model_hessians hessians = {layers, calloc((size_t)slots, sizeof(float *))};
    float **fp_weights = calloc((size_t)slots, sizeof(float *));
    size_t hessian_bytes = 0;
    for (int64_t l = 0; l < layers; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols;
            sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
            int64_t slot = l * SB_LINEAR_KIND_COUNT + k;
            if (owns_input((sb_linear_kind)k)) {
                hessians.blocks[slot] = calloc((size_t)(cols * TILE), sizeof(float));
                hessian_bytes += (size_t)(cols * TILE) * sizeof(float);
            } else {
                hessians.blocks[slot] = hessians.blocks[slot - (k == SB_LINEAR_UP ? 1 : k)];
            }
            fp_weights[slot] = malloc((size_t)(rows * cols) * sizeof(float));
            memcpy(fp_weights[slot], sb_layer_linear(&model.layers[l], (sb_linear_kind)k),
                   (size_t)(rows * cols) * sizeof(float));
        }
    float *stream =
        sequential ? malloc((size_t)(calib_range.n_windows * 256 * shape->hidden_size) * sizeof(float)) : NULL;
    float *batch = sequential ? malloc((size_t)(16 * 256 * shape->hidden_size) * sizeof(float)) : NULL;
    if (sequential && (!stream || !batch)) {
        fprintf(stderr, "bench-gptq: out of memory for the calibration stream\n");
        return 1;
    }
    sb_nll nll = {0, 0};
    double start = sb_now();
    if (sb_model_forward(&model, calib_range.tokens, calib_range.n_windows, 256, workspace, accumulate_hook, &hessians,
                         &nll, &err) != SB_OK)
        return fail(&err);
    printf("%s: H from %lld calibration tokens (%.1f s, %.1f MB of H blocks)%s; evaluation: %lld windows of 256\n", dir,
           (long long)(calib_range.n_windows * 256), sb_now() - start, hessian_bytes / 1e6,
           sequential ? ", measured layer by layer through the quantized layers" : " through the FP model",
           (long long)eval_range.n_windows);
    nll = (sb_nll){0, 0};
    if (sb_model_forward(&model, eval_range.tokens, eval_range.n_windows, 256, workspace, NULL, NULL, &nll, &err) !=
        SB_OK)
        return fail(&err);
    printf("FP perplexity %.4f; 128x128 tiles, groups of %d, %s\n", exp(nll.sum / (double)nll.count), group,
           sb_scale_format_name(format));
    printf("%4s | %10s %10s | %7s %7s | output error GPTQ / plain:", "bits", "plain ppl", "gptq ppl", "plain s",
           "gptq s");
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++)
        printf(" %s", sb_linear_kind_name((sb_linear_kind)k));
    printf("\n");

    sb_quant_options options = sb_quant_default_options();
    options.format = format;
    for (int bits = 2; bits <= 4; bits++) {
        double perplexity[2], seconds[2], output_error[2][SB_LINEAR_KIND_COUNT] = {{0}};
        for (int method = 0; method < 2; method++) {
            start = cpu_seconds();
            if (sequential) {
                if (!quantize_sequential(&model, fp_weights, &hessians, &calib_range, workspace, stream, batch, group,
                                         bits, &options, method == 1, output_error[method], &err))
                    return fail(&err);
            }
            for (int64_t l = 0; l < layers && !sequential; l++)
                for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
                    int64_t rows, cols, slot = l * SB_LINEAR_KIND_COUNT + k;
                    sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
                    float *weight = sb_layer_linear(&model.layers[l], (sb_linear_kind)k);
                    memcpy(weight, fp_weights[slot], (size_t)(rows * cols) * sizeof(float));
                    if (!quantize_matrix(weight, rows, cols, hessians.blocks[slot], group, bits, &options, method == 1,
                                         &output_error[method][k])) {
                        fprintf(stderr, "bench-gptq: layer %lld %s: out of memory or a bad H block\n", (long long)l,
                                sb_linear_kind_name((sb_linear_kind)k));
                        return 1;
                    }
                }
            seconds[method] = cpu_seconds() - start;
            nll = (sb_nll){0, 0};
            if (sb_model_forward(&model, eval_range.tokens, eval_range.n_windows, 256, workspace, NULL, NULL, &nll,
                                 &err) != SB_OK)
                return fail(&err);
            perplexity[method] = exp(nll.sum / (double)nll.count);
        }
        printf("%4d | %10.4f %10.4f | %7.2f %7.2f |", bits, perplexity[0], perplexity[1], seconds[0], seconds[1]);
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++)
            printf(" %.3f", output_error[1][k] / output_error[0][k]);
        printf("\n");
        fflush(stdout);
    }
    for (int64_t slot = 0; slot < slots; slot++) {
        if (owns_input((sb_linear_kind)(slot % SB_LINEAR_KIND_COUNT)))
            free(hessians.blocks[slot]);
        free(fp_weights[slot]);
    }
    free(hessians.blocks);
    free(fp_weights);
    free(stream);
    free(batch);
    sb_model_workspace_free(workspace);
    sb_tokens_free(&calib);
    sb_tokens_free(&heldout);
    sb_model_free(&model);
    sb_checkpoint_close(&checkpoint);
    sb_config_free(&config);
    return 0;
}

int main(int argc, char **argv)
{
    int tiles = 8, tokens = 1024;
    double rho = 0.8;
    uint64_t seed = 1;
    const char *model_dir = NULL;
    int group = 128, threads = 1, sequential = 0;
    int64_t eval_windows = 200;
    sb_scale_format format = SB_SCALES_Q8;
    static const struct option long_options[] = {{"tiles", required_argument, 0, 'n'},
                                                 {"model", required_argument, 0, 'm'},
                                                 {"group", required_argument, 0, 'g'},
                                                 {"scales", required_argument, 0, 'f'},
                                                 {"eval-windows", required_argument, 0, 'e'},
                                                 {"threads", required_argument, 0, 'j'},
                                                 {"sequential", no_argument, 0, 'q'},
                                                 {"rho", required_argument, 0, 'r'},
                                                 {"tokens", required_argument, 0, 't'},
                                                 {"seed", required_argument, 0, 's'},
                                                 {0, 0, 0, 0}};
    for (int opt; (opt = getopt_long(argc, argv, "", long_options, NULL)) != -1;) {
        switch (opt) {
        case 'n': tiles = atoi(optarg); break;
        case 'r': rho = atof(optarg); break;
        case 't': tokens = atoi(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'm': model_dir = optarg; break;
        case 'g': group = atoi(optarg); break;
        case 'f': format = strcmp(optarg, "f16") == 0 ? SB_SCALES_F16 : SB_SCALES_Q8; break;
        case 'e': eval_windows = atoll(optarg); break;
        case 'j': threads = atoi(optarg); break;
        case 'q': sequential = 1; break;
        default:
            fprintf(stderr, "usage: bench-gptq [--tiles N] [--rho R] [--tokens T] [--seed S]\n"
                            "       bench-gptq --model DIR [--group G] [--scales f16|q8] [--eval-windows N] "
                            "[--threads N] [--sequential]\n");
            return 2;
        }
    }
    if (model_dir) {
        if (group < 1 || TILE % group != 0 || threads < 1 || eval_windows < 1) {
            fprintf(stderr, "bench-gptq: --group must divide %d; --threads and --eval-windows positive\n", TILE);
            return 2;
        }
        return run_model(model_dir, group, format, eval_windows, threads, sequential);
    }
    if (tiles < 1 || tokens < 1 || !(rho >= 0 && rho < 1)) {
        fprintf(stderr, "bench-gptq: --tiles and --tokens must be positive, --rho in [0, 1)\n");
        return 2;
    }
    float *inputs = malloc((size_t)tokens * TILE * sizeof *inputs);
    float *hessians = malloc((size_t)tiles * TILE * TILE * sizeof *hessians);
    float *weights = malloc((size_t)tiles * TILE * TILE * sizeof *weights);
    float *decoded = malloc((size_t)TILE * TILE * sizeof *decoded);
    uint8_t *codes = malloc((size_t)TILE * TILE);
    uint16_t *scales = malloc((size_t)TILE * TILE * sizeof *scales),
             *zeros = malloc((size_t)TILE * TILE * sizeof *zeros);
    sb_gptq_factor *factors = calloc((size_t)tiles, sizeof *factors);
    if (!inputs || !hessians || !weights || !decoded || !codes || !scales || !zeros || !factors) {
        fprintf(stderr, "bench-gptq: out of memory\n");
        return 1;
    }
    uint64_t state = seed;
    for (int t = 0; t < tiles; t++) {
        make_hessian(&state, tokens, rho, inputs, hessians + (int64_t)t * TILE * TILE);
        make_weights(&state, weights + (int64_t)t * TILE * TILE);
    }
    double factor_seconds = INFINITY;
    for (int repeat = 0; repeat < 3; repeat++) {
        double start = cpu_seconds();
        for (int t = 0; t < tiles; t++) {
            sb_gptq_factor_free(&factors[t]);
            sb_error err;
            if (sb_gptq_factor_init(&factors[t], hessians + (int64_t)t * TILE * TILE, TILE, &err) != SB_OK) {
                fprintf(stderr, "bench-gptq: %s\n", err.message);
                return 1;
            }
        }
        double seconds = (cpu_seconds() - start) / tiles;
        factor_seconds = seconds < factor_seconds ? seconds : factor_seconds;
    }

    printf("128x128 tiles, %d per case, inputs correlated rho = %.2f, %d tokens; one thread\n", tiles, rho, tokens);
    printf("%-10s %5s %4s | %9s %9s %13s %9s | %13s %7s\n", "format", "group", "bits", "plain ns/w", "gptq ns/w",
           "factored ns/w", "factor ms", "out-err ratio", "E ratio");
    const double weights_per_tile = (double)TILE * TILE;
    for (int format = 0; format < 2; format++) {
        sb_quant_options options = sb_quant_default_options();
        options.format = format ? SB_SCALES_Q8 : SB_SCALES_F16;
        for (int group = 32; group <= 128; group *= 2) {
            for (int bits = 2; bits <= 4; bits++) {
                double best[3] = {INFINITY, INFINITY, INFINITY};
                double output_ratio = 0, error_ratio = 0;
                for (int repeat = 0; repeat < 3; repeat++) {
                    double seconds[3] = {0, 0, 0};
                    for (int t = 0; t < tiles; t++) {
                        const float *h = hessians + (int64_t)t * TILE * TILE, *w = weights + (int64_t)t * TILE * TILE;
                        sb_tile_in plain_in = {w, TILE, factors[t].importance, 0, TILE, TILE, group};
                        sb_tile_in gptq_in = {w, TILE, NULL, 0, TILE, TILE, group};
                        sb_tile_out out = {codes, scales, zeros, 0, 0, SB_SCALES_F16, NULL};
                        double start = cpu_seconds();
                        double plain_error = sb_quantize_tile(&plain_in, bits, &options, &out);
                        seconds[0] += cpu_seconds() - start;
                        sb_dequantize_tile(&out, TILE, TILE, group, decoded, TILE);
                        double plain_output = sb_output_error(h, TILE, w, TILE, decoded, TILE, TILE);
                        double output;
                        start = cpu_seconds();
                        sb_quantize_tile_gptq(&gptq_in, h, bits, &options, &out, &output);
                        seconds[1] += cpu_seconds() - start;
                        start = cpu_seconds();
                        double error =
                            sb_quantize_tile_gptq_factored(&gptq_in, &factors[t], bits, &options, &out, &output);
                        seconds[2] += cpu_seconds() - start;
                        if (repeat == 0) {
                            output_ratio += output / plain_output / tiles;
                            error_ratio += error / plain_error / tiles;
                        }
                    }
                    for (int k = 0; k < 3; k++)
                        best[k] = seconds[k] < best[k] ? seconds[k] : best[k];
                }
                double per_weight = 1e9 / (tiles * weights_per_tile);
                printf("%-10s %5d %4d | %9.1f %9.1f %13.1f %9.2f | %13.3f %7.3f\n",
                       sb_scale_format_name(options.format), group, bits, best[0] * per_weight, best[1] * per_weight,
                       best[2] * per_weight, factor_seconds * 1e3, output_ratio, error_ratio);
            }
        }
    }
    for (int t = 0; t < tiles; t++)
        sb_gptq_factor_free(&factors[t]);
    free(factors);
    free(inputs);
    free(hessians);
    free(weights);
    free(decoded);
    free(codes);
    free(scales);
    free(zeros);
    return 0;
}
