/* bench-curves: the cost of the loss curves (sb_curves_compute), the data-free run's main work,
 * on a synthetic 7B-shaped block of weights, and a fingerprint of what they computed so that
 * a speed change can be checked to leave the results alone.
 *
 *   bench-curves [--rows R] [--cols C] [--tile RxC] [--group G] [--bits 2,3,4,8]
 *                [--scales q8|f16] [--weighted] [--threads N] [--repeat K] [--seed S]
 *                [--trials T] [--refits F]   (the scale search's, sb_quant.h)
 *
 * Defaults are the scalebits-mpi defaults (128x128 tiles, groups of 128, bits 2,3,4,8, Q8
 * scales, weighted search, mse) on a 512 x 4096 block (2M weights) of heavy-tailed weights
 * (Student t with 4 degrees of freedom, one input column in 64 scaled by 8, as
 * bench-gen-checkpoint makes them). --weighted adds a per-column importance (the `act`
 * sensitivity). Prints wall seconds (best of --repeat, default 3), ns per weight per thread
 * (thread count x wall / weights), the sum and an FNV-1a hash of the loss values, and a hash
 * of the scales and zeros every (tile, bitwidth) chose: equal hashes mean bit-identical curves
 * and search results.
 */
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_curves.h"
#include "sb_log.h"

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *state) { return ((double)(splitmix64(state) >> 11) + 0.5) * 0x1p-53; }

static double student_t4(uint64_t *state)
{
    double normal[5];
    for (int k = 0; k < 5; k += 2) {
        double radius = sqrt(-2.0 * log(uniform(state))), angle = 2.0 * M_PI * uniform(state);
        normal[k] = radius * cos(angle);
        if (k + 1 < 5)
            normal[k + 1] = radius * sin(angle);
    }
    double chi2 = normal[1] * normal[1] + normal[2] * normal[2] + normal[3] * normal[3] + normal[4] * normal[4];
    return normal[0] / sqrt(chi2 / 4.0);
}

int main(int argc, char **argv)
{
    int64_t rows = 512, cols = 4096;
    int tile_rows = 128, tile_cols = 128, group = 128, threads = 1, repeat = 3, weighted = 0;
    uint64_t seed = 1;
    sb_curve_options options = {4, {2, 3, 4, 8}, sb_quant_default_options()};
    options.quant.format = SB_SCALES_Q8;
    static const struct option long_options[] = {
        {"rows", required_argument, 0, 'r'},   {"cols", required_argument, 0, 'c'},
        {"tile", required_argument, 0, 't'},   {"group", required_argument, 0, 'g'},
        {"bits", required_argument, 0, 'b'},   {"scales", required_argument, 0, 's'},
        {"weighted", no_argument, 0, 'w'},     {"threads", required_argument, 0, 'n'},
        {"repeat", required_argument, 0, 'k'}, {"seed", required_argument, 0, 'e'},
        {"trials", required_argument, 0, 'T'}, {"refits", required_argument, 0, 'R'},
        {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (opt) {
        case 'r': rows = atoll(optarg); break;
        case 'c': cols = atoll(optarg); break;
        case 't':
            if (sscanf(optarg, "%dx%d", &tile_rows, &tile_cols) != 2)
                return 2;
            break;
        case 'g': group = atoi(optarg); break;
        case 'b': {
            options.noptions = 0;
            for (char *p = optarg; *p && options.noptions < 8;) {
                options.bits[options.noptions++] = (int)strtol(p, &p, 10);
                if (*p == ',')
                    p++;
            }
            break;
        }
        case 's': options.quant.format = strcmp(optarg, "f16") == 0 ? SB_SCALES_F16 : SB_SCALES_Q8; break;
        case 'w': weighted = 1; break;
        case 'n': threads = atoi(optarg); break;
        case 'k': repeat = atoi(optarg); break;
        case 'e': seed = (uint64_t)atoll(optarg); break;
        case 'T': options.quant.trials = atoi(optarg); break;
        case 'R': options.quant.refits = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: bench-curves [--rows R] [--cols C] [--tile RxC] [--group G] [--bits LIST] "
                            "[--scales q8|f16] [--weighted] [--threads N] [--repeat K] [--seed S]\n");
            return 2;
        }
    }
    if (rows < 1 || cols < 1 || tile_rows < 1 || tile_cols < 1 || group < 1 || tile_cols % group || threads < 1 ||
        repeat < 1 || options.noptions < 1) {
        fprintf(stderr, "bench-curves: bad sizes\n");
        return 2;
    }
    omp_set_num_threads(threads);
    sb_tiling tiling;
    sb_error err = {0};
    if (sb_tiling_init(&tiling, rows, cols, tile_rows, tile_cols, group, &err) != SB_OK) {
        fprintf(stderr, "bench-curves: %s\n", err.message);
        return 2;
    }
    float *block = malloc((size_t)(rows * cols) * sizeof(float));
    float *importance = malloc((size_t)cols * sizeof(float));
    int64_t tiles = sb_tiling_count(&tiling);
    double *loss = malloc((size_t)(tiles * options.noptions) * sizeof(double));
    int64_t *cost = malloc((size_t)(tiles * options.noptions) * sizeof(int64_t));
    /* the scales and zeros every (tile, bitwidth) chose: hashed too, so equal hashes mean the
     * whole search result is the same, not only its error */
    size_t nparams = (size_t)(tiles * options.noptions * sb_curve_params_slot(&tiling));
    uint16_t *params = calloc(nparams, sizeof(uint16_t));
    if (!block || !importance || !loss || !cost || !params) {
        fprintf(stderr, "bench-curves: out of memory\n");
        return 1;
    }
    uint64_t state = seed;
    for (int64_t c = 0; c < cols; c++)
        importance[c] = (float)(0.1 + uniform(&state)) * (c % 64 == 7 ? 30.0f : 1.0f);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            block[r * cols + c] = (float)(0.02 * student_t4(&state)) * (c % 64 == 7 ? 8.0f : 1.0f);
    sb_loss_model model = {{weighted ? importance : NULL, 0, 1.0}, {NULL, 0, 0}, NULL, NULL, NULL, 0};
    double best = INFINITY;
    for (int k = 0; k < repeat; k++) {
        double start = omp_get_wtime();
        if (sb_curves_compute(&tiling, 0, tiling.tiles_down, block, &model, &options, loss, cost, params, &err) != SB_OK) {
            fprintf(stderr, "bench-curves: %s\n", err.message);
            return 1;
        }
        double seconds = omp_get_wtime() - start;
        best = seconds < best ? seconds : best;
    }
    double sum = 0;
    uint64_t hash = 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < tiles * options.noptions; i++) {
        sum += loss[i];
        unsigned char bytes[8];
        memcpy(bytes, &loss[i], 8);
        for (int b = 0; b < 8; b++)
            hash = (hash ^ bytes[b]) * 0x100000001b3ull;
    }
    uint64_t params_hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < nparams; i++) {
        params_hash = (params_hash ^ (params[i] & 0xff)) * 0x100000001b3ull;
        params_hash = (params_hash ^ (params[i] >> 8)) * 0x100000001b3ull;
    }
    printf("curves: %lld x %lld, tiles %dx%d, group %d, %d bitwidths, %s%s, %d thread(s): %.3f s, %.1f ns/weight/thread, "
           "loss sum %.9g, hash %016llx, scales hash %016llx\n",
           (long long)rows, (long long)cols, tile_rows, tile_cols, group, options.noptions,
           sb_scale_format_name(options.quant.format), weighted ? ", weighted" : "", threads, best,
           1e9 * best * threads / (double)(rows * cols), sum, (unsigned long long)hash,
           (unsigned long long)params_hash);
    free(block);
    free(importance);
    free(params);
    free(loss);
    free(cost);
    return 0;
}
