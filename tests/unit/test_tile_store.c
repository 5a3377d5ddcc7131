/* src/sb_tile_store.h: every (tile, option) of the store decodes to exactly what the quantizer
 * and sb_dequantize_tile give for that tile (plain and GPTQ, Q8 and F16 scales, ragged tiles,
 * F32 and BF16 weights), whatever the thread count; fills of any rectangle assemble the same
 * matrix; the taylor sums match a double-precision reference; the kept choice is what the
 * write stage would pack. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_gptq.h"
#include "sb_half.h"
#include "sb_pack.h"
#include "sb_test.h"
#include "sb_tile_store.h"

/* The tile's reference values at `bits` from the quantizer itself, and its packed codes. */
static double reference_tile(const float *w, const sb_tiling *tiling, int64_t tile, const float *importance,
                           const sb_gptq_factor *factors, const sb_quant_options *quant, int bits, float *values,
                           uint8_t *packed, uint16_t *scales, uint16_t *zeros, uint16_t *tile_scale)
{
    sb_tile_rect rect = sb_tiling_rect(tiling, tile);
    uint8_t codes[64 * 64];
    float work[2 * 64 * 64];
    sb_tile_in in = {w + rect.row0 * tiling->cols + rect.col0, tiling->cols, importance ? importance + rect.col0 : NULL,
                     0, rect.rows, rect.cols, tiling->group};
    sb_tile_out out = {codes, scales, zeros, 0, bits, quant->format, work};
    double error = factors ? sb_quantize_tile_gptq_factored(&in, &factors[rect.col0 / tiling->tile_cols], bits, quant,
                                                            &out, NULL)
                           : sb_quantize_tile(&in, bits, quant, &out);
    sb_dequantize_tile(&out, rect.rows, rect.cols, tiling->group, values, rect.cols);
    sb_pack_codes(codes, (int64_t)rect.rows * rect.cols, bits, packed);
    *tile_scale = out.tile_scale;
    return error;
}

static void check_case(sb_test_rng *rng, int64_t rows, int64_t cols, int tile, int group, sb_scale_format format,
                       bool gptq, bool bf16)
{
    sb_tiling tiling;
    SB_CHECK(sb_tiling_init(&tiling, rows, cols, tile, tile, group, NULL) == SB_OK);
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    uint16_t *w16 = malloc((size_t)(rows * cols) * sizeof *w16);
    float *importance = malloc((size_t)cols * sizeof *importance);
    for (int64_t i = 0; i < rows * cols; i++) {
        w16[i] = sb_f32_to_bf16((float)(0.02 * sb_test_normal(rng)));
        w[i] = sb_bf16_to_f32(w16[i]);
    }
    for (int64_t j = 0; j < cols; j++)
        importance[j] = (float)(0.5 + sb_test_uniform(rng));
    sb_gptq_factor *factors = NULL;
    if (gptq) {
        factors = calloc((size_t)tiling.tiles_across, sizeof *factors);
        for (int64_t t = 0; t < tiling.tiles_across; t++) {
            sb_tile_rect rect = sb_tiling_rect(&tiling, t);
            int n = rect.cols;
            float *h = calloc((size_t)(n * n), sizeof *h), *x = malloc((size_t)(4 * n * n) * sizeof *x);
            for (int i = 0; i < 4 * n * n; i++)
                x[i] = (float)sb_test_normal(rng);
            for (int i = 0; i < 4 * n; i++) /* correlated inputs: H = X^T X of rows with a shared part */
                for (int a = 0; a < n; a++)
                    for (int b = 0; b < n; b++)
                        h[a * n + b] += (x[i * n + a] + x[i * n]) * (x[i * n + b] + x[i * n]);
            SB_CHECK(sb_gptq_factor_init(&factors[t], h, n, NULL) == SB_OK);
            free(h);
            free(x);
        }
    }
    sb_curve_options options = {4, {2, 3, 4, 8}, sb_quant_default_options()};
    options.quant.format = format;
    sb_linear weights = bf16 ? sb_linear_bf16(w16, rows, cols) : sb_linear_f32(w, rows, cols);
    sb_tile_store one, two;
    sb_error err;
    SB_CHECK(sb_tile_store_build(&one, &tiling, &options, &weights, importance, factors, 1, &err) == SB_OK);
    SB_CHECK(sb_tile_store_build(&two, &tiling, &options, &weights, importance, factors, 2, &err) == SB_OK);
    SB_CHECK(one.offset[one.ntiles * 4] == two.offset[two.ntiles * 4] &&
             memcmp(one.data, two.data, (size_t)one.offset[one.ntiles * 4]) == 0);
    SB_CHECK(sb_tile_store_bytes(&one) <= sb_tile_store_bytes_for(&tiling, &options, false) + one.ntiles * 4 * 2);
    SB_CHECK(sb_tile_store_bytes_for(&tiling, &options, true) > sb_tile_store_bytes_for(&tiling, &options, false));
    int64_t ntiles = sb_tiling_count(&tiling);
    float values[64 * 64], decoded[64 * 64];
    uint8_t packed[64 * 64], scratch[64];
    uint16_t scales[64 * 8], zeros[64 * 8], tile_scale;
    int mismatches = 0;
    for (int64_t t = 0; t < ntiles; t++)
        for (int o = 0; o < 4; o++) {
            sb_tile_rect rect = sb_tiling_rect(&tiling, t);
            double error = reference_tile(w, &tiling, t, importance, factors, &options.quant, options.bits[o], values,
                                          packed, scales, zeros, &tile_scale);
            sb_tile_store_decode(&one, t, o, 0, rect.rows, 0, rect.cols, decoded, rect.cols, scratch);
            sb_stored_tile stored = sb_tile_store_output(&one, t, o);
            int groups = sb_tile_groups(rect.cols, group);
            bool same = memcmp(values, decoded, (size_t)rect.rows * rect.cols * sizeof(float)) == 0 &&
                        stored.code_bytes == sb_tile_code_bytes(rect.rows, rect.cols, options.bits[o]) &&
                        memcmp(stored.codes, packed, (size_t)stored.code_bytes) == 0 &&
                        memcmp(stored.scales, scales, (size_t)(rect.rows * groups) * 2) == 0 &&
                        memcmp(stored.zeros, zeros, (size_t)(rect.rows * groups) * 2) == 0 && stored.tile_scale == tile_scale &&
                        stored.error == error;
            mismatches += !same;
        }
    SB_CHECK_MSG(mismatches == 0, "%lldx%lld tiles %d group %d %s%s%s: %d (tile, option)s differ from the quantizer",
                 (long long)rows, (long long)cols, tile, group, format == SB_SCALES_Q8 ? "Q8" : "F16",
                 gptq ? " gptq" : "", bf16 ? " bf16" : "", mismatches);
    /* a choice per tile; fills of odd rectangles assemble the matrix of decoded tiles */
    uint8_t *choice = malloc((size_t)ntiles);
    for (int64_t t = 0; t < ntiles; t++)
        choice[t] = (uint8_t)(sb_test_next(rng) % 4);
    float *matrix = malloc((size_t)(rows * cols) * sizeof *matrix), *filled = calloc((size_t)(rows * cols), sizeof *filled);
    for (int64_t t = 0; t < ntiles; t++) {
        sb_tile_rect rect = sb_tiling_rect(&tiling, t);
        sb_tile_store_decode(&one, t, choice[t], 0, rect.rows, 0, rect.cols, matrix + rect.row0 * cols + rect.col0, cols,
                             scratch);
    }
    for (int64_t r = 0; r < rows; r += 7)
        for (int64_t c = 0; c < cols; c += 13)
            sb_tile_store_fill(&one, choice, r, rows - r < 7 ? rows - r : 7, c, cols - c < 13 ? cols - c : 13,
                               filled + r * cols + c, cols);
    SB_CHECK(memcmp(matrix, filled, (size_t)(rows * cols) * sizeof(float)) == 0);
    /* taylor sums against double sums from the decoded tiles; the decoded copy gives the same bits */
    float *grad = malloc((size_t)(rows * cols) * sizeof *grad);
    for (int64_t i = 0; i < rows * cols; i++)
        grad[i] = (float)sb_test_normal(rng);
    float *work = malloc((size_t)sb_tile_store_taylor_scratch_bytes(&one));
    double worst = 0;
    double (*sums)[2][4] = calloc((size_t)ntiles, sizeof *sums);
    for (int64_t t = 0; t < ntiles; t++) {
        sb_tile_rect rect = sb_tiling_rect(&tiling, t);
        double first[4] = {0}, second[4] = {0};
        sb_tile_store_taylor_add(&one, t, 3, grad + rect.row0 * cols + rect.col0, cols, first, second, work);
        memcpy(sums[t][0], first, sizeof first);
        memcpy(sums[t][1], second, sizeof second);
        float base[64 * 64], q[64 * 64];
        sb_tile_store_decode(&one, t, 3, 0, rect.rows, 0, rect.cols, base, rect.cols, scratch);
        for (int o = 0; o < 3; o++) {
            sb_tile_store_decode(&one, t, o, 0, rect.rows, 0, rect.cols, q, rect.cols, scratch);
            double a = 0, b = 0, scale_a = 0;
            for (int r = 0; r < rect.rows; r++)
                for (int c = 0; c < rect.cols; c++) {
                    double g = grad[(rect.row0 + r) * cols + rect.col0 + c], d = (double)q[r * rect.cols + c] - base[r * rect.cols + c];
                    a += g * d;
                    b += g * g * d * d;
                    scale_a += fabs(g * d);
                }
            worst = fmax(worst, fabs(first[o] - a) / (scale_a > 0 ? scale_a : 1));
            worst = fmax(worst, fabs(second[o] - b) / (b > 0 ? b : 1));
        }
        SB_CHECK(first[3] == 0 && second[3] == 0);
    }
    SB_CHECK_MSG(worst < 1e-5, "taylor sums off the double reference by %g (relative)", worst);
    SB_CHECK(sb_tile_store_decode_all(&two, 2, &err) == SB_OK);
    bool same_sums = true;
    for (int64_t t = 0; t < ntiles; t++) {
        sb_tile_rect rect = sb_tiling_rect(&tiling, t);
        double first[4] = {0}, second[4] = {0};
        sb_tile_store_taylor_add(&two, t, 3, grad + rect.row0 * cols + rect.col0, cols, first, second, work);
        same_sums = same_sums && memcmp(first, sums[t][0], sizeof first) == 0 && memcmp(second, sums[t][1], sizeof second) == 0;
    }
    SB_CHECK_MSG(same_sums, "the decoded copy changes the taylor sums");
    memset(filled, 0, (size_t)(rows * cols) * sizeof(float));
    sb_tile_store_fill(&two, choice, 0, rows, 0, cols, filled, cols);
    SB_CHECK(memcmp(matrix, filled, (size_t)(rows * cols) * sizeof(float)) == 0);
    /* only the chosen options kept: they still come out as the quantizer made them */
    SB_CHECK(sb_tile_store_keep_only(&two, choice, &err) == SB_OK);
    for (int64_t t = 0; t < ntiles; t++) {
        sb_stored_tile kept = sb_tile_store_output(&two, t, choice[t]), full = sb_tile_store_output(&one, t, choice[t]);
        SB_CHECK(kept.code_bytes == full.code_bytes && memcmp(kept.codes, full.codes, (size_t)kept.code_bytes) == 0 &&
                 kept.tile_scale == full.tile_scale);
    }
    SB_CHECK(sb_tile_store_bytes(&two) < sb_tile_store_bytes(&one));
    sb_tile_store_free(&one);
    sb_tile_store_free(&two);
    for (int64_t t = 0; factors && t < tiling.tiles_across; t++)
        sb_gptq_factor_free(&factors[t]);
    free(factors);
    free(sums);
    free(work);
    free(grad);
    free(choice);
    free(matrix);
    free(filled);
    free(w);
    free(w16);
    free(importance);
}

int main(void)
{
    sb_test_rng rng = {5};
    for (int format = 0; format < 2; format++)
        for (int gptq = 0; gptq < 2; gptq++) {
            check_case(&rng, 64, 64, 32, 16, (sb_scale_format)format, gptq, false);
            check_case(&rng, 70, 50, 32, 16, (sb_scale_format)format, gptq, gptq); /* ragged edges */
            check_case(&rng, 40, 96, 32, 32, (sb_scale_format)format, gptq, true);
        }
    return sb_test_finish("test_tile_store");
}
