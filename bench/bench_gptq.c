/* bench-gptq: what GPTQ error feedback (src/sb_gptq.h) costs and gains inside 128x128 tiles,
 * against the plain quantizer (sb_quantize_tile with the same importance diag(H), the `act`
 * sensitivity), for groups of 32, 64 and 128 and 2 to 4 bits, in both scale formats.
 *
 *   bench-gptq [--tiles N] [--rho R] [--tokens T] [--seed S]
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
 *   E ratio         the same for the diag(H)-weighted E both return
 * Single-threaded, thread CPU time; the best of 3 timings over the --tiles tiles (default 8).
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_gptq.h"
#include "sb_quant.h"

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

int main(int argc, char **argv)
{
    int tiles = 8, tokens = 1024;
    double rho = 0.8;
    uint64_t seed = 1;
    static const struct option long_options[] = {{"tiles", required_argument, 0, 'n'},
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
        default:
            fprintf(stderr, "usage: bench-gptq [--tiles N] [--rho R] [--tokens T] [--seed S]\n");
            return 2;
        }
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
    uint16_t *scales = malloc((size_t)TILE * TILE * sizeof *scales), *zeros = malloc((size_t)TILE * TILE * sizeof *zeros);
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

    printf("128x128 tiles, %d per case, inputs correlated rho = %.2f, %d tokens; one thread\n", tiles, rho,
           tokens);
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
                        sb_tile_out out = {codes, scales, zeros, 0, 0, SB_SCALES_F16};
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
                        double error = sb_quantize_tile_gptq_factored(&gptq_in, &factors[t], bits, &options, &out,
                                                                      &output);
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
                printf("%-10s %5d %4d | %9.1f %9.1f %13.1f %9.2f | %13.3f %7.3f\n", sb_scale_format_name(options.format),
                       group, bits, best[0] * per_weight, best[1] * per_weight, best[2] * per_weight,
                       factor_seconds * 1e3, output_ratio, error_ratio);
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
