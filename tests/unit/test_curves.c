/* src/sb_curves.h: the scales sb_curves_compute keeps for every (tile, bitwidth) let
 * sb_quantize_block code the chosen bitwidths without searching, with exactly the search's
 * result (codes, scales, zeros, Q8 bounds and error), for F16 and Q8 scales, with and without
 * importance, ragged tiles included; and the curves' costs are the packed sizes. */
#include <stdlib.h>
#include <string.h>

#include "sb_curves.h"
#include "sb_pack.h"
#include "sb_test.h"

static void check_case(sb_test_rng *rng, int64_t rows, int64_t cols, int tile, int group, sb_scale_format format,
                       bool weighted)
{
    sb_tiling tiling;
    SB_CHECK(sb_tiling_init(&tiling, rows, cols, tile, tile, group, NULL) == SB_OK);
    float *block = malloc((size_t)(rows * cols) * sizeof *block), *importance = malloc((size_t)cols * sizeof *importance);
    for (int64_t i = 0; i < rows * cols; i++)
        block[i] = (float)(0.02 * sb_test_normal(rng) + (i % 7 == 0 ? 0.05 : 0.0));
    for (int64_t j = 0; j < cols; j++)
        importance[j] = (float)(0.25 + sb_test_uniform(rng));
    sb_curve_options options = {4, {2, 3, 4, 8}, sb_quant_default_options()};
    options.quant.format = format;
    int64_t tiles = sb_tiling_count(&tiling);
    sb_loss_model model = {{weighted ? importance : NULL, 0, 1.0}, {NULL, 0, 0}, NULL, NULL, NULL, 0};
    double *loss = malloc((size_t)(tiles * 4) * sizeof *loss);
    int64_t *cost = malloc((size_t)(tiles * 4) * sizeof *cost);
    uint16_t *params = malloc((size_t)(tiles * 4 * sb_curve_params_slot(&tiling)) * sizeof *params);
    sb_error err;
    SB_CHECK(sb_curves_compute(&tiling, 0, tiling.tiles_down, block, &model, &options, loss, cost, params, &err) == SB_OK);
    uint8_t *bits = malloc((size_t)tiles);
    for (int64_t t = 0; t < tiles; t++) {
        bits[t] = (uint8_t)options.bits[sb_test_next(rng) % 4];
        sb_tile_rect rect = sb_tiling_rect(&tiling, t);
        for (int k = 0; k < 4; k++)
            SB_CHECK(cost[t * 4 + k] == 8 * sb_tile_code_bytes(rect.rows, rect.cols, options.bits[k]));
    }
    int64_t code_bytes = sb_block_code_bytes(&tiling, 0, tiles, bits), metas = rows * tiling.groups_per_row;
    uint8_t *codes[2];
    uint16_t *scales[2], *zeros[2], *tile_scales[2];
    double error[2];
    for (int k = 0; k < 2; k++) {
        codes[k] = calloc((size_t)code_bytes, 1);
        scales[k] = calloc((size_t)metas, sizeof(uint16_t));
        zeros[k] = calloc((size_t)metas, sizeof(uint16_t));
        tile_scales[k] = calloc((size_t)tiles, sizeof(uint16_t));
        sb_importance w = {weighted ? importance : NULL, 0, 1.0};
        SB_CHECK(sb_quantize_block(&tiling, 0, tiling.tiles_down, block, &w, NULL, &options.quant, bits,
                                   k ? params : NULL, &options, codes[k], scales[k], zeros[k], tile_scales[k], &error[k],
                                   &err) == SB_OK);
    }
    SB_CHECK_MSG(memcmp(codes[0], codes[1], (size_t)code_bytes) == 0 &&
                     memcmp(scales[0], scales[1], (size_t)metas * 2) == 0 &&
                     memcmp(zeros[0], zeros[1], (size_t)metas * 2) == 0 &&
                     memcmp(tile_scales[0], tile_scales[1], (size_t)tiles * 2) == 0,
                 "%lldx%lld, tiles %d, group %d, %s%s: coding from the kept scales differs from searching",
                 (long long)rows, (long long)cols, tile, group, format == SB_SCALES_Q8 ? "Q8" : "F16",
                 weighted ? ", weighted" : "");
    /* the per-tile errors are the same; only their sum's order may differ between threads */
    SB_CHECK_NEAR(error[1], error[0], 1e-12 * (error[0] > 1 ? error[0] : 1));
    for (int k = 0; k < 2; k++) {
        free(codes[k]);
        free(scales[k]);
        free(zeros[k]);
        free(tile_scales[k]);
    }
    free(block);
    free(importance);
    free(loss);
    free(cost);
    free(params);
    free(bits);
}

int main(void)
{
    sb_test_rng rng = {77};
    for (int format = 0; format < 2; format++)
        for (int weighted = 0; weighted < 2; weighted++) {
            check_case(&rng, 64, 128, 64, 32, (sb_scale_format)format, weighted);
            check_case(&rng, 100, 172, 32, 32, (sb_scale_format)format, weighted); /* ragged, like stories260K */
            check_case(&rng, 48, 96, 32, 16, (sb_scale_format)format, weighted);
        }
    return sb_test_finish("test_curves");
}
