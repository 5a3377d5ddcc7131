/* sb_curves: per-tile loss-versus-bits curves, the allocator's input.
 *
 * For every tile of a block of whole tile rows and every allowed bitwidth b, D(b) is the
 * estimated loss increase of storing the tile at b bits: the importance-weighted squared error
 * of the quantizer (sb_quant.h) times the tensor's sensitivity scale. The importance comes
 * from the sensitivity estimator (none for `mse`; per-column E[x^2] for `act`; per-element
 * E[g^2] for `fisher`); cost(b) is the tile's packed code bits, byte-padded (sb_tiling.h).
 * Tiles are independent: computed in parallel with OpenMP, each by one thread, so results do
 * not depend on the thread count.
 */
#ifndef SB_CURVES_H
#define SB_CURVES_H

#include <stdint.h>

#include "sb_error.h"
#include "sb_quant.h"
#include "sb_tiling.h"

typedef struct sb_curve_options {
    int noptions;
    int bits[8];              /* ascending */
    sb_quant_options quant;
} sb_curve_options;

/* Importance of a block's weights: w[r * row_stride + c] with r, c relative to the block
 * (row_stride 0 broadcasts one per-column vector); NULL values = uniform. `scale` multiplies. */
typedef struct sb_importance {
    const float *values;
    int64_t row_stride;
    double scale;
} sb_importance;

/* How a tile's loss increase D(b) is estimated from its quantized values Q_b:
 *     D(b) = sum g (Q_b - R) + loss.scale * sum w (Q_b - R)^2
 * with R the reference weights (the original W when NULL), g an optional first-order term and
 * w the second-order weights (`loss`, or `quant` when loss.values is NULL and loss.scale is 0).
 * `quant` weights the quantizer's own scale search. mse: all NULL; act: quant = loss = E[x^2];
 * fisher: quant = E[x^2], loss = F / 2; taylor: R = the current quantized model, g and F taken
 * there. All block-layout arrays are [block rows x cols]. */
typedef struct sb_loss_model {
    sb_importance quant;
    sb_importance loss;
    const float *gradient;
    const float *reference;
    /* --gptq: one factor per tile column of the tensor (sb_gptq.h); the tile is then quantized
     * with error feedback and, when D would be the quantizer's own error, D is the output error
     * (w - w^)^T H (w - w^) times gptq_scale (1 / tokens: a mean, like E[x^2]) */
    const struct sb_gptq_factor *gptq;
    double gptq_scale;
} sb_loss_model;

/* What a tile's quantization at one option stores apart from its codes: its scales and zeros
 * (rows x groups each, as sb_tile_out has them) and its Q8 bound, in a slot of this many uint16
 * (2 x tile_rows x groups per tile row + 1, whatever the tile's own size). sb_curves_compute keeps
 * them for every (tile, option) on request, and sb_quantize_block then codes the chosen option
 * from them without searching again: sb_code_group(_q8) rounds exactly as the search's last step,
 * so the codes, scales and error are the search's (test_quant checks it). */
static inline int64_t sb_curve_params_slot(const sb_tiling *tiling)
{
    return 2 * (int64_t)tiling->tile_rows * sb_tile_groups(tiling->tile_cols, tiling->group) + 1;
}

/* Computes curves for tile rows [tile_row_begin, tile_row_end) of a matrix with `tiling`;
 * `block` holds those rows (row 0 of block = first row of tile_row_begin), `cols` floats each.
 * Writes loss[t * noptions + k] and cost[t * noptions + k] for the block's tiles in row-major
 * tile order. `model` NULL means plain squared error. `params` (may be NULL; ignored with GPTQ,
 * whose codes follow its error feedback) receives every (tile, option)'s slot (see
 * sb_curve_params_slot) at (t * noptions + k) * slot. */
sb_status sb_curves_compute(const sb_tiling *tiling, int64_t tile_row_begin, int64_t tile_row_end, const float *block,
                            const sb_loss_model *model, const sb_curve_options *options, double *loss,
                            int64_t *cost, uint16_t *params, sb_error *err);

/* Quantizes the block's tiles at their chosen bitwidths (bits_per_tile, row-major tile order)
 * and packs them: codes go to `packed_codes` tile after tile (each tile's bytes as
 * sb_tile_code_bytes), scales and zeros to [row][group] arrays of the block's rows
 * (tiling->groups_per_row per row), and (Q8) each tile's scale bound to tile_scales[t]. With
 * `gptq` (one factor per tile column), tiles are quantized with error feedback, exactly as
 * sb_curves_compute measured them. With `params` (what sb_curves_compute kept for the same
 * block and `options`; no GPTQ), each tile is coded at its chosen option's stored scales
 * instead of searched: the same result, one pass over the weights.
 * Returns the summed E through `error` if non-NULL. */
sb_status sb_quantize_block(const sb_tiling *tiling, int64_t tile_row_begin, int64_t tile_row_end, const float *block,
                            const sb_importance *importance, const struct sb_gptq_factor *gptq,
                            const sb_quant_options *quant, const uint8_t *bits_per_tile, const uint16_t *params,
                            const sb_curve_options *options, uint8_t *packed_codes, uint16_t *scales, uint16_t *zeros,
                            uint16_t *tile_scales, double *error, sb_error *err);

/* Bytes of packed codes of tiles [first, first + count) of a tiling at the given bitwidths. */
int64_t sb_block_code_bytes(const sb_tiling *tiling, int64_t first_tile, int64_t count, const uint8_t *bits_per_tile);

#endif
