/* GPTQ error feedback inside a tile (sb_gptq.h): a diagonal H gives exactly sb_quantize_tile's
 * result; with correlated inputs the output error (w - w^)^T H (w - w^) drops below the plain
 * quantizer's; the reported errors equal an independent recomputation from the decoded tile;
 * the codes decode with sb_dequantize_tile as they are (F16, Q8, ragged shapes and groups) and
 * match a plain reimplementation of the feedback loop; the factor satisfies U^T U = H^-1; the
 * block-diagonal X^T X accumulator matches a triple loop. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_gptq.h"
#include "sb_half.h"
#include "sb_quant.h"
#include "sb_test.h"

/* ---- Test data ------------------------------------------------------------------------------ */

/* Calibration-like inputs [ntokens x cols]: an AR(1) process along the columns (neighbouring
 * inputs correlated with `rho`), a shared component, and per-column scales spread like LLM
 * activations (a few channels much louder). */
static void correlated_inputs(sb_test_rng *rng, float *x, int ntokens, int cols, double rho)
{
    double *column_scale = malloc((size_t)cols * sizeof *column_scale);
    for (int c = 0; c < cols; c++)
        column_scale[c] = exp(0.5 * sb_test_normal(rng)) * (sb_test_uniform(rng) < 0.03 ? 6.0 : 1.0);
    for (int t = 0; t < ntokens; t++) {
        double common = sb_test_normal(rng), previous = sb_test_normal(rng);
        for (int c = 0; c < cols; c++) {
            previous = rho * previous + sqrt(1 - rho * rho) * sb_test_normal(rng);
            x[(int64_t)t * cols + c] = (float)(column_scale[c] * (previous + 0.5 * common));
        }
    }
    free(column_scale);
}

/* H = X^T X / ntokens by a plain triple loop in double. */
static void naive_hessian(const float *x, int ntokens, int cols, int col0, int width, int64_t ld, double *h)
{
    for (int i = 0; i < width; i++)
        for (int j = 0; j < width; j++) {
            double sum = 0;
            for (int t = 0; t < ntokens; t++)
                sum += (double)x[(int64_t)t * ld + col0 + i] * x[(int64_t)t * ld + col0 + j];
            h[i * width + j] = sum / ntokens;
        }
    (void)cols;
}

static void random_hessian(sb_test_rng *rng, int cols, double rho, float *h)
{
    int ntokens = 4 * cols + 64;
    float *x = malloc((size_t)ntokens * (size_t)cols * sizeof *x);
    double *hd = malloc((size_t)cols * (size_t)cols * sizeof *hd);
    correlated_inputs(rng, x, ntokens, cols, rho);
    naive_hessian(x, ntokens, cols, 0, cols, cols, hd);
    for (int i = 0; i < cols * cols; i++)
        h[i] = (float)hd[i];
    free(x);
    free(hd);
}

static void random_weights(sb_test_rng *rng, float *w, int n)
{
    for (int i = 0; i < n; i++) {
        double v = 0.02 * sb_test_normal(rng);
        if (sb_test_uniform(rng) < 0.02)
            v *= 6; /* outliers, as in real LLM weights */
        w[i] = (float)v;
    }
}

typedef struct tile_buffers {
    uint8_t *codes;
    uint16_t *scales, *zeros;
    float *decoded;
} tile_buffers;

static tile_buffers buffers_make(int rows, int cols, int group)
{
    int groups = sb_tile_groups(cols, group);
    tile_buffers b = {malloc((size_t)rows * cols), malloc((size_t)rows * groups * 2), malloc((size_t)rows * groups * 2),
                      malloc((size_t)rows * cols * sizeof(float))};
    return b;
}

static void buffers_free(tile_buffers *b)
{
    free(b->codes);
    free(b->scales);
    free(b->zeros);
    free(b->decoded);
}

static sb_tile_out out_of(tile_buffers *b)
{
    sb_tile_out out = {b->codes, b->scales, b->zeros, 0, 0, SB_SCALES_F16, NULL};
    return out;
}

/* Independent recomputation from a decoded tile: E and sum_r d^T H d, in long double. */
static void recompute(const sb_tile_in *tile, const float *importance, const float *h, const float *decoded,
                      double *error, double *output_error)
{
    long double e = 0, o = 0;
    for (int r = 0; r < tile->rows; r++) {
        const float *w = tile->w ? tile->w + r * tile->w_row_stride : importance;
        for (int i = 0; i < tile->cols; i++) {
            long double di = (long double)tile->x[r * tile->x_ld + i] - decoded[r * tile->cols + i];
            e += (long double)w[i] * di * di;
            for (int j = 0; j < tile->cols; j++) {
                long double dj = (long double)tile->x[r * tile->x_ld + j] - decoded[r * tile->cols + j];
                o += di * (long double)h[i * tile->cols + j] * dj;
            }
        }
    }
    *error = (double)e;
    *output_error = (double)o;
}

static int same_result(const sb_tile_out *a, const sb_tile_out *b, int rows, int cols, int group)
{
    int groups = sb_tile_groups(cols, group);
    return a->tile_scale == b->tile_scale && memcmp(a->codes, b->codes, (size_t)rows * cols) == 0 &&
           memcmp(a->scales, b->scales, (size_t)rows * groups * 2) == 0 &&
           memcmp(a->zeros, b->zeros, (size_t)rows * groups * 2) == 0;
}

/* ---- (a) a diagonal H: no feedback, exactly sb_quantize_tile ------------------------------- */

static void check_diagonal(void)
{
    sb_test_rng rng = {11};
    const int shapes[][3] = {{16, 128, 32}, {37, 100, 32}, {9, 12, 32}, {20, 64, 64}, {5, 70, 16}};
    for (int format = 0; format < 2; format++) {
        sb_quant_options options = sb_quant_default_options();
        options.format = format ? SB_SCALES_Q8 : SB_SCALES_F16;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int rows = shapes[s][0], cols = shapes[s][1], group = shapes[s][2];
            float *x = malloc((size_t)rows * cols * sizeof *x), *h = calloc((size_t)cols * cols, sizeof *h);
            float *diag = malloc((size_t)cols * sizeof *diag),
                  *element_w = malloc((size_t)rows * cols * sizeof *element_w);
            random_weights(&rng, x, rows * cols);
            for (int i = 0; i < rows * cols; i++)
                element_w[i] = (float)(0.2 + sb_test_uniform(&rng));
            tile_buffers plain = buffers_make(rows, cols, group), gptq = buffers_make(rows, cols, group);
            for (int bits = 1; bits <= 8; bits++) {
                for (int variant = 0; variant < 3; variant++) {
                    /* 0: H = I vs importance NULL; 1: random positive diagonal vs importance diag(H)
                     * broadcast; 2: H = I with per-element importance in the tile, both sides */
                    for (int c = 0; c < cols; c++) {
                        diag[c] = variant == 1 ? (float)exp(sb_test_normal(&rng)) : 1.0f;
                        h[c * cols + c] = diag[c];
                    }
                    sb_tile_in plain_in = {x, cols, NULL, 0, rows, cols, group};
                    sb_tile_in gptq_in = plain_in;
                    if (variant == 1)
                        plain_in.w = diag;
                    if (variant == 2) {
                        plain_in.w = gptq_in.w = element_w;
                        plain_in.w_row_stride = gptq_in.w_row_stride = cols;
                    }
                    sb_tile_out a = out_of(&plain), b = out_of(&gptq);
                    double plain_error = sb_quantize_tile(&plain_in, bits, &options, &a);
                    double output_error;
                    double gptq_error = sb_quantize_tile_gptq(&gptq_in, h, bits, &options, &b, &output_error);
                    SB_CHECK_MSG(same_result(&a, &b, rows, cols, group), "%s %dx%d group %d, %d bits, variant %d",
                                 sb_scale_format_name(options.format), rows, cols, group, bits, variant);
                    SB_CHECK_NEAR(gptq_error, plain_error, 1e-9 * plain_error + 1e-30);
                }
            }
            buffers_free(&plain);
            buffers_free(&gptq);
            free(x);
            free(h);
            free(diag);
            free(element_w);
        }
    }
}

/* ---- (b) correlated inputs: GPTQ's output error below the plain quantizer's ----------------- */

static void check_gain(void)
{
    sb_test_rng rng = {22};
    const int rows = 64, cols = 128, group = 32, tiles = 6;
    float *x = malloc((size_t)rows * cols * sizeof *x), *h = malloc((size_t)cols * cols * sizeof *h);
    tile_buffers plain = buffers_make(rows, cols, group), gptq = buffers_make(rows, cols, group);
    for (int format = 0; format < 2; format++) {
        sb_quant_options options = sb_quant_default_options();
        options.format = format ? SB_SCALES_Q8 : SB_SCALES_F16;
        for (int bits = 2; bits <= 4; bits++) {
            double ratio_sum = 0, worst = 0;
            for (int t = 0; t < tiles; t++) {
                random_weights(&rng, x, rows * cols);
                random_hessian(&rng, cols, 0.8, h);
                sb_gptq_factor factor;
                SB_CHECK(sb_gptq_factor_init(&factor, h, cols, NULL) == SB_OK);
                /* the plain quantizer with the same importance diag(H), the 'act' sensitivity */
                sb_tile_in plain_in = {x, cols, factor.importance, 0, rows, cols, group};
                sb_tile_in gptq_in = {x, cols, NULL, 0, rows, cols, group};
                sb_tile_out a = out_of(&plain), b = out_of(&gptq);
                sb_quantize_tile(&plain_in, bits, &options, &a);
                sb_dequantize_tile(&a, rows, cols, group, plain.decoded, cols);
                double plain_output = sb_output_error(h, cols, x, cols, plain.decoded, cols, rows);
                double gptq_output;
                sb_quantize_tile_gptq_factored(&gptq_in, &factor, bits, &options, &b, &gptq_output);
                double ratio = gptq_output / plain_output;
                ratio_sum += ratio;
                worst = ratio > worst ? ratio : worst;
                sb_gptq_factor_free(&factor);
            }
            double mean = ratio_sum / tiles;
            printf("output error GPTQ / plain, %s, %d bits, %dx%d group %d, rho 0.8: mean %.3f, worst %.3f\n",
                   sb_scale_format_name(options.format), bits, rows, cols, group, mean, worst);
            SB_CHECK_MSG(mean < 0.9, "%d bits: mean ratio %.3f", bits, mean);
            SB_CHECK_MSG(worst < 1.0, "%d bits: worst ratio %.3f", bits, worst);
        }
    }
    buffers_free(&plain);
    buffers_free(&gptq);
    free(x);
    free(h);
}

/* ---- (c, d) reported errors, decoding, ragged shapes, and a reference feedback loop ---------- */

/* The feedback written out plainly from the factor, for F16 (sb_quant's public group
 * quantizer at each group's first column, nearest rounding after), to compare codes with. */
static void reference_f16(const sb_tile_in *tile, const sb_gptq_factor *factor, int bits,
                          const sb_quant_options *options, uint8_t *codes, uint16_t *scales, uint16_t *zeros)
{
    int cols = tile->cols, groups = sb_tile_groups(cols, tile->group);
    double row[256];
    float group_values[256];
    uint8_t scratch[256];
    for (int r = 0; r < tile->rows; r++) {
        for (int c = 0; c < cols; c++)
            row[c] = factor->dead[c] ? 0.0 : tile->x[r * tile->x_ld + c];
        for (int j = 0; j < cols; j++) {
            int g = j / tile->group, c0 = g * tile->group;
            int n = cols - c0 < tile->group ? cols - c0 : tile->group;
            if (j == c0) {
                for (int i = 0; i < n; i++)
                    group_values[i] = (float)row[c0 + i];
                sb_quantize_group(group_values, factor->importance + c0, n, bits, options, scratch,
                                  &scales[r * groups + g], &zeros[r * groups + g]);
            }
            float value = (float)row[j], s = sb_f16_to_f32(scales[r * groups + g]),
                  z = sb_f16_to_f32(zeros[r * groups + g]);
            /* nearest level by exhaustive search (ties: the lower code, as the library's rounding
             * keeps its first candidate only on exact ties, which random data never hits) */
            int best = 0;
            for (int q = 1; q < (1 << bits); q++)
                if (fabsf(s * (float)q + z - value) < fabsf(s * (float)best + z - value))
                    best = q;
            codes[r * cols + j] = (uint8_t)best;
            double err = (row[j] - (double)(s * (float)best + z)) / factor->upper[j * cols + j];
            for (int k = j + 1; k < cols; k++)
                row[k] -= err * factor->upper[j * cols + k];
        }
    }
}

/* The value code q decodes to in group g of row r, by the library's own group decoders. */
static float level_value(const sb_tile_out *out, int r, int groups, int g, int q)
{
    uint8_t code = (uint8_t)q;
    float value;
    if (out->format == SB_SCALES_Q8)
        sb_dequantize_group_q8(&code, 1, out->bits, out->tile_scale, out->scales[r * groups + g],
                               out->zeros[r * groups + g], &value);
    else
        sb_dequantize_group(&code, 1, out->scales[r * groups + g], out->zeros[r * groups + g], &value);
    return value;
}

static void check_consistency(void)
{
    sb_test_rng rng = {33};
    const int shapes[][3] = {{32, 128, 32}, {37, 100, 32}, {9, 12, 32}, {20, 64, 64}, {5, 70, 16}, {3, 128, 128}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], cols = shapes[s][1], group = shapes[s][2];
        float *x = malloc((size_t)rows * cols * sizeof *x), *h = malloc((size_t)cols * cols * sizeof *h);
        tile_buffers gptq = buffers_make(rows, cols, group), ref = buffers_make(rows, cols, group);
        random_weights(&rng, x, rows * cols);
        random_hessian(&rng, cols, 0.9, h);
        if (s == 1) { /* two dead columns: rows and columns of H zero */
            for (int i = 0; i < cols; i++)
                h[i * cols + 7] = h[7 * cols + i] = h[i * cols + 40] = h[40 * cols + i] = 0;
        }
        sb_gptq_factor factor;
        SB_CHECK(sb_gptq_factor_init(&factor, h, cols, NULL) == SB_OK);
        for (int format = 0; format < 2; format++) {
            sb_quant_options options = sb_quant_default_options();
            options.format = format ? SB_SCALES_Q8 : SB_SCALES_F16;
            for (int bits = 1; bits <= 8; bits++) {
                sb_tile_in in = {x, cols, NULL, 0, rows, cols, group};
                sb_tile_out out = out_of(&gptq);
                double output_error;
                double error = sb_quantize_tile_gptq_factored(&in, &factor, bits, &options, &out, &output_error);
                SB_CHECK(out.bits == bits && out.format == options.format);
                /* every code and scale code in range */
                int groups = sb_tile_groups(cols, group), in_range = 1;
                for (int i = 0; i < rows * cols; i++)
                    in_range &= gptq.codes[i] < (1 << bits);
                if (format)
                    for (int i = 0; i < rows * groups; i++)
                        in_range &= gptq.scales[i] < 256 && gptq.zeros[i] < 256;
                SB_CHECK(in_range);
                sb_dequantize_tile(&out, rows, cols, group, gptq.decoded, cols);
                double error_again, output_again;
                recompute(&in, factor.importance, h, gptq.decoded, &error_again, &output_again);
                SB_CHECK_MSG(fabs(error - error_again) <= 1e-10 * error_again + 1e-30,
                             "%s %dx%d/%d %d bits: E %.12g vs %.12g", sb_scale_format_name(options.format), rows, cols,
                             group, bits, error, error_again);
                SB_CHECK_MSG(fabs(output_error - output_again) <= 1e-10 * output_again + 1e-30,
                             "%s %dx%d/%d %d bits: output error %.12g vs %.12g", sb_scale_format_name(options.format),
                             rows, cols, group, bits, output_error, output_again);
                /* dead columns decode to the level nearest 0 (GPTQ zeroes their weights) */
                if (s == 1) {
                    for (int r = 0; r < rows; r++)
                        for (int c = 7; c <= 40; c += 33) {
                            int q = gptq.codes[r * cols + c];
                            for (int step = -1; step <= 1; step += 2)
                                if (q + step >= 0 && q + step < (1 << bits))
                                    SB_CHECK(fabsf(level_value(&out, r, groups, c / group, q)) <=
                                             fabsf(level_value(&out, r, groups, c / group, q + step)));
                        }
                }
                if (format == 0 && cols <= 256) {
                    reference_f16(&in, &factor, bits, &options, ref.codes, ref.scales, ref.zeros);
                    SB_CHECK_MSG(memcmp(ref.codes, gptq.codes, (size_t)rows * cols) == 0 &&
                                     memcmp(ref.scales, gptq.scales, (size_t)rows * groups * 2) == 0 &&
                                     memcmp(ref.zeros, gptq.zeros, (size_t)rows * groups * 2) == 0,
                                 "reference feedback differs: %dx%d/%d %d bits", rows, cols, group, bits);
                }
            }
        }
        sb_gptq_factor_free(&factor);
        buffers_free(&gptq);
        buffers_free(&ref);
        free(x);
        free(h);
    }
}

/* ---- The factor: U upper, U^T U (H + lambda I) = I; dead columns; bad input ----------------- */

static void check_factor(void)
{
    sb_test_rng rng = {44};
    const int sizes[] = {1, 2, 17, 128};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int n = sizes[s];
        float *h = malloc((size_t)n * n * sizeof *h);
        random_hessian(&rng, n, 0.95, h);
        if (n > 2)
            for (int i = 0; i < n; i++)
                h[i * n + 1] = h[1 * n + i] = 0; /* column 1 dead */
        sb_gptq_factor factor;
        SB_CHECK(sb_gptq_factor_init(&factor, h, n, NULL) == SB_OK);
        double mean = 0;
        for (int j = 0; j < n; j++)
            mean += h[j * n + j] == 0 ? 1.0 : h[j * n + j];
        SB_CHECK_NEAR(factor.damping, 0.01 * mean / n, 1e-12 * mean);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            SB_CHECK(factor.upper[i * n + i] > 0);
            for (int j = 0; j < i; j++)
                SB_CHECK(factor.upper[i * n + j] == 0);
            SB_CHECK(factor.dead[i] == (n > 2 && i == 1));
            for (int j = 0; j < n; j++) {
                /* (U^T U H_damped)_ij */
                double sum = 0;
                for (int k = 0; k < n; k++) {
                    double utu = 0;
                    for (int m = 0; m < n; m++)
                        utu += factor.upper[m * n + i] * factor.upper[m * n + k];
                    double hd = factor.dead[k] && k == j ? 1.0 : h[k * n + j];
                    sum += utu * (hd + (k == j ? factor.damping : 0));
                }
                worst = fmax(worst, fabs(sum - (i == j)));
            }
        }
        SB_CHECK_MSG(worst < 1e-9, "n %d: |U^T U H - I| = %g", n, worst);
        sb_gptq_factor_free(&factor);
        free(h);
    }
    /* bad blocks are refused with a reason; the convenience call returns NaN */
    sb_gptq_factor factor;
    sb_error err;
    float not_finite[4] = {1, NAN, NAN, 1}, negative[4] = {-1, 0, 0, 1}, indefinite[4] = {1, 3, 3, 1};
    SB_CHECK(sb_gptq_factor_init(&factor, not_finite, 2, &err) == SB_ERR_INPUT && strstr(err.message, "finite"));
    SB_CHECK(sb_gptq_factor_init(&factor, negative, 2, &err) == SB_ERR_INPUT && strstr(err.message, "negative"));
    SB_CHECK(sb_gptq_factor_init(&factor, indefinite, 2, &err) == SB_ERR_INPUT && strstr(err.message, "definite"));
    float x[4] = {0.1f, -0.2f, 0.3f, 0.05f};
    uint8_t codes[4];
    uint16_t scales[2], zeros[2];
    sb_tile_out out = {codes, scales, zeros, 0, 0, SB_SCALES_F16, NULL};
    sb_tile_in in = {x, 2, NULL, 0, 2, 2, 2};
    double output_error = 0;
    sb_quant_options options = sb_quant_default_options();
    SB_CHECK(isnan(sb_quantize_tile_gptq(&in, indefinite, 3, &options, &out, &output_error)) && isnan(output_error));
    /* an all-dead block: every weight goes to the level nearest 0, no error is counted */
    float zero_h[4] = {0, 0, 0, 0};
    double error = sb_quantize_tile_gptq(&in, zero_h, 3, &options, &out, &output_error);
    SB_CHECK(error == 0 && output_error == 0);
}

/* ---- (e) the accumulator against a triple loop ----------------------------------------------- */

static void check_accumulate(void)
{
    sb_test_rng rng = {55};
    const int cols = 300, block = 128, batches[] = {97, 200};
    const int64_t total = (int64_t)cols * block;
    float *blocks = malloc((size_t)(total + 16) * sizeof *blocks);
    float *again = malloc((size_t)(total + 16) * sizeof *again);
    for (int64_t i = 0; i < total + 16; i++)
        blocks[i] = i < total ? 0.0f : 12345.0f; /* sentinels past the end */
    float *x_all = malloc((size_t)(97 + 200) * cols * sizeof *x_all);
    correlated_inputs(&rng, x_all, 97 + 200, cols, 0.7);
    sb_hessian_accumulate(x_all, batches[0], cols, block, blocks);
    sb_hessian_accumulate(x_all + (int64_t)batches[0] * cols, batches[1], cols, block, blocks);
    sb_hessian_accumulate(x_all, 0, cols, block, blocks); /* no tokens: no change */
    double worst = 0;
    for (int b = 0; b * block < cols; b++) {
        int width = cols - b * block < block ? cols - b * block : block;
        const float *hb = sb_hessian_block(blocks, block, b);
        double *naive = malloc((size_t)width * width * sizeof *naive);
        naive_hessian(x_all, 97 + 200, cols, b * block, width, cols, naive);
        for (int i = 0; i < width; i++)
            for (int j = 0; j < width; j++) {
                double expected = naive[i * width + j] * (97 + 200);
                double scale = sqrt(naive[i * width + i] * naive[j * width + j]) * (97 + 200);
                worst = fmax(worst, fabs(hb[i * width + j] - expected) / scale);
                SB_CHECK(hb[i * width + j] == hb[j * width + i]);
            }
        free(naive);
    }
    SB_CHECK_MSG(worst < 1e-5, "accumulated X^T X off by %g (relative)", worst);
    int untouched = 1;
    for (int i = 0; i < 16; i++)
        untouched &= blocks[total + i] == 12345.0f;
    SB_CHECK(untouched);
    /* the same sums with two OpenBLAS threads: bit-identical */
    int threads = openblas_get_num_threads();
    openblas_set_num_threads(2);
    memset(again, 0, (size_t)total * sizeof *again);
    sb_hessian_accumulate(x_all, batches[0], cols, block, again);
    sb_hessian_accumulate(x_all + (int64_t)batches[0] * cols, batches[1], cols, block, again);
    openblas_set_num_threads(threads);
    SB_CHECK(memcmp(again, blocks, (size_t)((int64_t)2 * block * block + (int64_t)44 * 44) * sizeof(float)) == 0);
    free(x_all);
    free(blocks);
    free(again);
}

int main(void)
{
    check_diagonal();
    check_gain();
    check_consistency();
    check_factor();
    check_accumulate();
    return sb_test_finish("test_gptq");
}
