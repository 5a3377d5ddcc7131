/* bench-runtime: throughput of the model runtime (src/sb_model.h) at ctx 256 on stories260K
 * (dim 64, head_dim 8: attention-bound), austen-256 (dim 256, FFN 768: GEMM-bound) and
 * qwen3-moe-tiny (dim 128, q/k norms, 8 experts of FFN 128 top-2: routing and expert GEMMs), for
 * evaluation (forward) and calibration (forward + backward with every weight gradient
 * delivered), against this machine's OpenBLAS SGEMM peak measured in the same process on a
 * large square product. Achieved GFLOP/s count matmul FLOPs only (sb_model_forward_flops,
 * sb_model_backward_flops), so the ratio to the SGEMM peak says how much of the machine the
 * runtime's GEMMs and everything around them (softmax, norms, SiLU, cross-entropy) leave.
 *
 *   bench-runtime [--shared DIR] [--threads N] [--runtime-threads M] [--batch B] [--windows W]
 *                 [--repeat R] [--sgemm-size N]
 *
 * --threads sets OpenBLAS's and the runtime's threads (default 1; --runtime-threads sets the
 * runtime's alone); --batch is windows per
 * GEMM batch (default 16); --windows the windows of a timed forward (default 64); the best of
 * --repeat runs (default 3) is reported. Models and text come from --shared (default
 * $SB_SHARED_DIR, else ../shared next to the repository).
 */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sb_config.h"
#include "sb_error.h"
#include "sb_log.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_safetensors.h"
#include "sb_tokens.h"

typedef struct bench_options {
    const char *shared;
    int threads;         /* OpenBLAS */
    int runtime_threads; /* the runtime's OpenMP loops and attention; 0: the same as threads */
    int64_t batch, windows;
    int repeat;
    int sgemm_size;
} bench_options;

/* Best-of-`repeat` GFLOP/s of an n x n x n SGEMM (after one warm-up run). */
static double sgemm_peak(int n, int repeat)
{
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(count * sizeof *a), *b = malloc(count * sizeof *b), *c = malloc(count * sizeof *c);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return NAN;
    }
    for (size_t i = 0; i < count; i++) {
        a[i] = (float)((i * 7919u) % 1000) / 1000.0f - 0.5f;
        b[i] = (float)((i * 104729u) % 1000) / 1000.0f - 0.5f;
    }
    double best = 0.0;
    for (int run = 0; run <= repeat; run++) {
        double start = sb_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double rate = 2.0 * (double)n * n * n / (sb_now() - start) / 1e9;
        if (run > 0 && rate > best) /* run 0 warms caches and OpenBLAS's threads */
            best = rate;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

static sb_status ignore_gradient(void *user, const sb_tensor_id *id, const float *grad, int64_t rows, int64_t cols,
                                 sb_error *err)
{
    /* Touch one value so the call is not free of any memory traffic a consumer would cause. */
    *(volatile float *)user = grad[rows * cols - 1];
    return SB_OK;
}

static void print_row(const char *model, const char *pass, double tokens_per_second, double gflops, double peak)
{
    printf("%-12s %-17s %12.0f %10.2f %9.3f\n", model, pass, tokens_per_second, gflops, gflops / peak);
}

/* Loads a model and its evaluation tokens (a .u32 file, or text as bytes) and times it. */
static sb_status bench_model(const bench_options *options, const char *label, const char *model_dir,
                             const char *token_path, bool text, double peak, sb_error *err)
{
    sb_model_config config;
    SB_TRY(sb_config_load(model_dir, &config, err));
    const sb_model_shape *shape = &config.shape;
    sb_checkpoint checkpoint;
    sb_model model;
    sb_tokens tokens;
    memset(&checkpoint, 0, sizeof checkpoint);
    memset(&model, 0, sizeof model);
    memset(&tokens, 0, sizeof tokens);
    sb_model_workspace *forward_ws = NULL, *backward_ws = NULL;
    sb_layer_cache **caches = calloc((size_t)shape->num_hidden_layers, sizeof *caches);
    const int64_t ctx = 256;
    int64_t windows = options->windows, batch = options->batch;
    sb_status status = caches ? SB_OK : sb_error_set(err, SB_ERR_NOMEM, "out of memory");
    if (status == SB_OK)
        status = sb_checkpoint_open(model_dir, &checkpoint, err);
    if (status == SB_OK)
        status = sb_model_load_checkpoint(shape, &checkpoint, &model, err);
    if (status == SB_OK)
        status = text ? sb_tokens_read_bytes(token_path, shape->vocab_size, &tokens, err)
                      : sb_tokens_read_u32(token_path, shape->vocab_size, &tokens, err);
    sb_window_range range;
    if (status == SB_OK)
        status = sb_tokens_windows(&tokens, ctx, windows > batch ? windows : batch, false, &range, err);
    if (status == SB_OK)
        status = sb_model_workspace_create(shape, ctx, batch, options->runtime_threads, false, &forward_ws, err);
    if (status == SB_OK)
        status = sb_model_workspace_create(shape, ctx, batch, options->runtime_threads, true, &backward_ws, err);
    for (int64_t layer = 0; status == SB_OK && layer < shape->num_hidden_layers; layer++)
        status = sb_layer_cache_create(shape, layer, batch * ctx, &caches[layer], err);

    if (status == SB_OK) {
        double best_forward = INFINITY, best_backward = INFINITY;
        for (int run = 0; status == SB_OK && run < options->repeat; run++) {
            sb_nll nll = {0, 0};
            double start = sb_now();
            status = sb_model_forward(&model, range.tokens, windows, ctx, forward_ws, NULL, NULL, &nll, err);
            double seconds = sb_now() - start;
            best_forward = seconds < best_forward ? seconds : best_forward;
        }
        float sink = 0.0f;
        for (int run = 0; status == SB_OK && run < options->repeat; run++) {
            sb_nll nll = {0, 0};
            double start = sb_now();
            sb_gradient_sink gradients = {ignore_gradient, NULL, &sink};
            status = sb_model_backward(&model, range.tokens, batch, ctx, backward_ws, caches, NULL, NULL, &gradients,
                                       &nll, err);
            double seconds = sb_now() - start;
            best_backward = seconds < best_backward ? seconds : best_backward;
        }
        if (status == SB_OK) {
            double forward_flops = sb_model_forward_flops(shape, windows, ctx);
            print_row(label, "forward", (double)(windows * ctx) / best_forward, forward_flops / best_forward / 1e9,
                      peak);
            double both_flops = sb_model_forward_flops(shape, batch, ctx) + sb_model_backward_flops(shape, batch, ctx);
            print_row(label, "forward+backward", (double)(batch * ctx) / best_backward,
                      both_flops / best_backward / 1e9, peak);
            printf("%-12s memory: workspace %.1f MB (forward) / %.1f MB (with backward), activation cache %.1f MB "
                   "per layer (%lld tokens)\n",
                   label, (double)sb_model_workspace_bytes(forward_ws) / 1e6,
                   (double)sb_model_workspace_bytes(backward_ws) / 1e6,
                   (double)sb_layer_cache_bytes(shape, shape->num_hidden_layers - 1, batch * ctx) / 1e6,
                   (long long)(batch * ctx));
        }
    }
    for (int64_t layer = 0; caches && layer < shape->num_hidden_layers; layer++)
        sb_layer_cache_free(caches[layer]);
    free(caches);
    sb_model_workspace_free(forward_ws);
    sb_model_workspace_free(backward_ws);
    sb_tokens_free(&tokens);
    sb_model_free(&model);
    sb_checkpoint_close(&checkpoint);
    sb_config_free(&config);
    if (status != SB_OK)
        sb_error_prefix(err, "%s", label);
    return status;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: bench-runtime [--shared DIR] [--threads N] [--runtime-threads M] [--batch B] [--windows W] [--repeat R] "
                 "[--sgemm-size N]\n");
}

static bool parse_int(const char *text, long min, long max, long *value)
{
    char *end;
    long parsed = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || parsed < min || parsed > max)
        return false;
    *value = parsed;
    return true;
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"shared", required_argument, NULL, 's'}, {"threads", required_argument, NULL, 't'},
        {"batch", required_argument, NULL, 'b'},  {"windows", required_argument, NULL, 'w'},
        {"repeat", required_argument, NULL, 'r'}, {"sgemm-size", required_argument, NULL, 'n'},
        {"runtime-threads", required_argument, NULL, 'o'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bench_options options = {getenv("SB_SHARED_DIR"), 1, 0, 16, 64, 3, 2048};
    char default_shared[4096];
    if (!options.shared) {
        /* The embedded model lives in <repo>/tests/data/tiny-austen-kjv; shared/ is next to <repo>. */
        snprintf(default_shared, sizeof default_shared, "%s/../../../../shared", SB_DEFAULT_MODEL_DIR);
        options.shared = default_shared;
    }
    int option;
    long value;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        bool ok = true;
        switch (option) {
        case 's': options.shared = optarg; break;
        case 't': ok = parse_int(optarg, 1, 4096, &value) && (options.threads = (int)value); break;
        case 'b': ok = parse_int(optarg, 1, 1 << 20, &value) && (options.batch = value); break;
        case 'w': ok = parse_int(optarg, 1, 1 << 20, &value) && (options.windows = value); break;
        case 'r': ok = parse_int(optarg, 1, 1000, &value) && (options.repeat = (int)value); break;
        case 'n': ok = parse_int(optarg, 64, 16384, &value) && (options.sgemm_size = (int)value); break;
        case 'o': ok = parse_int(optarg, 1, 4096, &value) && (options.runtime_threads = (int)value); break;
        case 'h': usage(stdout); return 0;
        default: ok = false; break;
        }
        if (!ok) {
            usage(stderr);
            return 2;
        }
    }
    if (options.runtime_threads == 0)
        options.runtime_threads = options.threads;
    openblas_set_num_threads(options.threads);
    printf("%s (core %s), %d OpenBLAS / %d runtime thread(s), %ld CPUs online, ctx 256, batch %lld windows\n", openblas_get_config(),
           openblas_get_corename(), options.threads, options.runtime_threads, sysconf(_SC_NPROCESSORS_ONLN), (long long)options.batch);
    double peak = sgemm_peak(options.sgemm_size, options.repeat);
    printf("sgemm %dx%dx%d: %.2f GFLOP/s (best of %d; the peak below)\n", options.sgemm_size, options.sgemm_size,
           options.sgemm_size, peak, options.repeat);
    printf("%-12s %-17s %12s %10s %9s\n", "model", "pass", "tokens/s", "GFLOP/s", "of peak");

    char model_dir[4096], tokens_path[4096];
    sb_error err;
    int failures = 0;
    snprintf(model_dir, sizeof model_dir, "%s/models/stories260K-hf", options.shared);
    snprintf(tokens_path, sizeof tokens_path, "%s/data/tinystories_val.tok512.u32", options.shared);
    if (bench_model(&options, "stories260K", model_dir, tokens_path, false, peak, &err) != SB_OK) {
        fprintf(stderr, "bench-runtime: error: %s\n", err.message);
        failures++;
    }
    snprintf(model_dir, sizeof model_dir, "%s/models/austen-256", options.shared);
    snprintf(tokens_path, sizeof tokens_path, "%s/models/austen-256/heldout.txt", options.shared);
    if (bench_model(&options, "austen-256", model_dir, tokens_path, true, peak, &err) != SB_OK) {
        fprintf(stderr, "bench-runtime: error: %s\n", err.message);
        failures++;
    }
    /* Qwen3-MoE: q/k norms, 8 experts of FFN 128 top-2 in 3 of 4 layers (FLOPs: the experts a
     * token uses, not all of them) */
    snprintf(model_dir, sizeof model_dir, "%s/models/qwen3-moe-tiny", options.shared);
    snprintf(tokens_path, sizeof tokens_path, "%s/models/qwen3-moe-tiny/heldout.txt", options.shared);
    if (bench_model(&options, "qwen3-moe", model_dir, tokens_path, true, peak, &err) != SB_OK) {
        fprintf(stderr, "bench-runtime: error: %s\n", err.message);
        failures++;
    }
    return failures ? 1 : 0;
}
