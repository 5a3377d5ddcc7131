/* sb_gptq: in-tile quantization with GPTQ error feedback (Frantar et al., ICLR 2023, "GPTQ:
 * Accurate Post-Training Quantization for Generative Pre-trained Transformers"; the reference
 * code is IST-DASLab/gptq, gptq.py; as ScaleBITS, arXiv 2602.17698, section 2.2, uses it).
 *
 * A linear layer's output error on calibration inputs x is, row by row of the weight,
 *     (w - w^)^T H (w - w^),    H = E[x x^T] over the layer's inputs,
 * and the plain quantizer (sb_quant.h) minimises only its diagonal part, each weight on its
 * own. GPTQ takes the columns of a tile from left to right; after column j is rounded, its
 * error is spread over the columns not yet rounded so that they absorb what H says they can:
 *     err = (w_j - w^_j) / U_jj,    w_k -= err * U_jk  for k > j,
 * with U the upper Cholesky factor of (H + lambda I)^-1 (U^T U = (H + lambda I)^-1). Inside a
 * tile, H is the C x C block of the tile's columns: feedback never crosses a tile edge, so
 * tiles stay independent (any order, any thread) and one bitwidth per tile still holds.
 *
 * Choices, each as GPTQ makes it unless said:
 *   - damping lambda = 1% of the mean of diag(H) (GPTQ's percdamp); raised x10, up to 100%,
 *     only if the Cholesky factorisation fails, which it does not for a PSD H;
 *   - dead columns (H_jj = 0: never activated in calibration) get H_jj = 1 and weight 0;
 *   - natural column order (no act-order: a permutation would break the groups' layout);
 *   - groups: a group's scale and zero are chosen when the feedback reaches its first column,
 *     from the group's current (updated) weights, by sb_quant's search with the column
 *     importance diag(H) (GPTQ's "static_groups = False"; the search is ours);
 *   - Q8 (sb_quant.h): the tile's scale bound D must be stored before the first group is
 *     chosen. It is taken, as sb_quantize_tile does, from the searched scales of the weights
 *     before feedback; a group that the feedback makes want more than D is clipped to D (its
 *     scale code 0). Measured on 128x128 tiles with correlated inputs (8 tiles per case, groups
 *     32/64/128, 2-4 bits, input correlation 0.5/0.8/0.95): a quarter of the tiles at groups
 *     32-64 (none at 128) have such a group, wanting 0.1-2% more than D (30% at worst); a
 *     second pass with D from what the first wanted, or a 2x margin on D, changed the mean
 *     output error by less than 1% either way, and the second pass costs time, so neither is
 *     done. (The margin would also cost a bit of D's 256:1 range and the bit-identity below.)
 *
 * With a diagonal H the feedback is zero and the result is bit-identical to sb_quantize_tile
 * with importance diag(H) (codes, scales, zeros, D), which the tests check.
 *
 * Statistics: sb_hessian_accumulate adds the block-diagonal part of X^T X, one C x C block per
 * tile column, so a tensor with `cols` inputs costs cols x C floats (405B's widest input, the
 * 53248-wide down_proj at C = 128: 27 MB), never cols x cols.
 */
#ifndef SB_GPTQ_H
#define SB_GPTQ_H

#include <stdint.h>

#include "sb_error.h"
#include "sb_quant.h"

/* ---- Statistics --------------------------------------------------------------------------- */

/* Adds X_b^T X_b for every block b of `block_cols` consecutive columns of x [ntokens x cols]
 * (row-major, leading dimension `cols`) to `blocks`: block b, of width
 * n_b = min(block_cols, cols - b * block_cols), is n_b x n_b row-major at
 * blocks + b * block_cols * block_cols (cols x block_cols floats in all). Zero `blocks` before
 * the first call. Sums, not means: divide by the token count (or not) before use; E and the
 * output error scale linearly with H, and the codes do not depend on its scale (but for
 * rounding).
 * Float throughout (OpenBLAS cblas_ssyrk, then the lower triangle mirrored): GPTQ itself keeps
 * H in float32, and the float rounding (relative ~1e-6 per batch) is far below the 1% damping.
 * The sums are the same bits with 1 and 2 OpenBLAS threads (test_gptq checks it).
 * Cannot fail: block_cols >= 1, cols >= 0 and ntokens >= 0 are the caller's to ensure. */
void sb_hessian_accumulate(const float *x, int64_t ntokens, int64_t cols, int block_cols, float *blocks);

/* The block of tile column `tile_col` in what sb_hessian_accumulate built (its width is the
 * tile's: min(block_cols, cols - tile_col * block_cols)). */
static inline const float *sb_hessian_block(const float *blocks, int block_cols, int64_t tile_col)
{
    return blocks + tile_col * (int64_t)block_cols * block_cols;
}

/* ---- Quantization ------------------------------------------------------------------------- */

/* What the feedback needs from one C x C block of H, shared by all tiles of a tile column and
 * all bitwidths: compute it once per tile column. Read-only once made: threads may share it. */
typedef struct sb_gptq_factor {
    int cols;
    double damping;    /* lambda added to the diagonal (after the dead-column fix) */
    float *hessian;    /* H as given, cols x cols: the output error is measured with it */
    float *importance; /* diag(H) as given: the groups' search weights when the tile has none */
    double *upper;     /* U, cols x cols row-major, upper triangle (the rest is zero) */
    uint8_t *dead;     /* 1 for a column with H_jj = 0 */
} sb_gptq_factor;

/* Factors one block `hessian` [cols x cols] row-major, symmetric (its upper triangle is what
 * the factor and the output error read; only what a PSD H can be is accepted). SB_ERR_INPUT
 * for a non-finite entry, a negative diagonal, or an H that stays indefinite with 100%
 * damping; SB_ERR_NOMEM. The factor owns its memory: free it with sb_gptq_factor_free (safe
 * on a zeroed or failed factor). */
sb_status sb_gptq_factor_init(sb_gptq_factor *factor, const float *hessian, int cols, sb_error *err);
void sb_gptq_factor_free(sb_gptq_factor *factor);

/* Quantizes a tile with error feedback: like sb_quantize_tile (bits, options->format and the
 * search options; the same output layout; codes that sb_dequantize_tile decodes as they are),
 * with tile->cols == factor->cols. The groups' importance is tile->w when given (as in
 * sb_quantize_tile), else diag(H). Returns E = sum importance * (x - x^)^2 of the result against
 * the tile's own weights (what sb_quantize_tile returns for its result), and in *output_error
 * (if non-NULL) sum over rows of (x - x^)^T H (x - x^) with H as given (undamped): the
 * quantity GPTQ minimises, the measure for loss curves. NaN in both if a working buffer cannot
 * be allocated (a few kB) or the factor's width is not the tile's. Thread-safe. */
double sb_quantize_tile_gptq_factored(const sb_tile_in *tile, const sb_gptq_factor *factor, int bits,
                                      const sb_quant_options *options, sb_tile_out *out, double *output_error);

/* The same from the tile's block of H [tile->cols x tile->cols] row-major, factored on each
 * call (cols^3 / 3 multiply-adds: for several tiles or bitwidths of one tile column, factor
 * once). NaN in both results if the factorisation fails (see sb_gptq_factor_init). */
double sb_quantize_tile_gptq(const sb_tile_in *tile, const float *hessian, int bits, const sb_quant_options *options,
                             sb_tile_out *out, double *output_error);

/* sum over rows of (x - xhat)^T H (x - xhat) for `rows` rows of `cols` values (x[r * x_ld + c],
 * xhat[r * xhat_ld + c]) and H [cols x cols] row-major; in double, in a fixed order. The output
 * error of any quantizer's result, e.g. sb_quantize_tile's, to compare with GPTQ's. */
double sb_output_error(const float *hessian, int cols, const float *x, int64_t x_ld, const float *xhat, int64_t xhat_ld,
                       int rows);

#endif
