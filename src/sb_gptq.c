#include "sb_gptq.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---- Statistics --------------------------------------------------------------------------- */

void sb_hessian_accumulate(const float *x, int64_t ntokens, int64_t cols, int block_cols, float *blocks)
{
    /* BLAS sizes are int: long calibration batches go in slices of tokens */
    const int64_t max_slice = (int64_t)1 << 30;
    for (int64_t col0 = 0; col0 < cols; col0 += block_cols) {
        int width = (int)(cols - col0 < block_cols ? cols - col0 : block_cols);
        float *block = blocks + col0 * block_cols; /* block b = col0 / block_cols at b * block_cols^2 */
        for (int64_t token0 = 0; token0 < ntokens; token0 += max_slice) {
            int slice = (int)(ntokens - token0 < max_slice ? ntokens - token0 : max_slice);
            /* upper triangle of block += X_b^T X_b, X_b = [slice x width] with leading dimension cols */
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, width, slice, 1.0f, x + token0 * cols + col0, (int)cols,
                        1.0f, block, width);
        }
        for (int i = 0; i < width; i++)
            for (int j = 0; j < i; j++)
                block[i * width + j] = block[j * width + i];
    }
}

/* ---- The factor: U with U^T U = (H + lambda I)^-1 ------------------------------------------ */

/* In-place lower Cholesky factor of the symmetric positive definite a [n x n] (a = L L^T, the
 * strict upper triangle is left as it was); false if a pivot is not positive. Dot-product
 * form: the inner loops run along rows. */
static bool cholesky_lower(double *a, int n)
{
    for (int j = 0; j < n; j++) {
        double *row_j = a + (int64_t)j * n;
        double pivot = row_j[j];
        for (int k = 0; k < j; k++)
            pivot -= row_j[k] * row_j[k];
        if (!(pivot > 0) || !isfinite(pivot))
            return false;
        row_j[j] = sqrt(pivot);
        for (int i = j + 1; i < n; i++) {
            double *row_i = a + (int64_t)i * n;
            double sum = row_i[j];
            for (int k = 0; k < j; k++)
                sum -= row_i[k] * row_j[k];
            row_i[j] = sum / row_j[j];
        }
    }
    return true;
}

/* inverse [n x n] of the lower triangular l (lower triangle read), lower triangular, by
 * forward substitution column by column. */
static void invert_lower(const double *l, int n, double *inverse)
{
    memset(inverse, 0, (size_t)n * (size_t)n * sizeof *inverse);
    for (int j = 0; j < n; j++) {
        inverse[(int64_t)j * n + j] = 1.0 / l[(int64_t)j * n + j];
        for (int i = j + 1; i < n; i++) {
            double sum = 0;
            for (int k = j; k < i; k++)
                sum += l[(int64_t)i * n + k] * inverse[(int64_t)k * n + j];
            inverse[(int64_t)i * n + j] = -sum / l[(int64_t)i * n + i];
        }
    }
}

/* U from the damped block without forming (H + lambda I)^-1: with J the order-reversing
 * permutation and J H J = L L^T, H^-1 = (J L^-T J)(J L^-1 J) and J L^-1 J is upper triangular
 * with a positive diagonal, hence the (unique) upper Cholesky factor of H^-1. One Cholesky and
 * one triangular inverse instead of GPTQ's Cholesky, inverse and second Cholesky. */
static bool inverse_upper_factor(const double *damped, int n, double *work, double *upper)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            work[(int64_t)i * n + j] = damped[(int64_t)(n - 1 - i) * n + (n - 1 - j)];
    if (!cholesky_lower(work, n))
        return false;
    double *inverse = upper; /* L^-1, then reversed in place into U */
    invert_lower(work, n, inverse);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            work[(int64_t)i * n + j] = inverse[(int64_t)(n - 1 - i) * n + (n - 1 - j)];
    memcpy(upper, work, (size_t)n * (size_t)n * sizeof *upper);
    return true;
}

void sb_gptq_factor_free(sb_gptq_factor *factor)
{
    free(factor->hessian);
    free(factor->importance);
    free(factor->upper);
    free(factor->dead);
    memset(factor, 0, sizeof *factor);
}

sb_status sb_gptq_factor_init(sb_gptq_factor *factor, const float *hessian, int cols, sb_error *err)
{
    memset(factor, 0, sizeof *factor);
    if (cols < 1)
        return sb_error_set(err, SB_ERR_INPUT, "gptq: a Hessian block of %d columns", cols);
    size_t n2 = (size_t)cols * (size_t)cols;
    factor->cols = cols;
    factor->hessian = sb_malloc(n2 * sizeof(float), "gptq hessian block", err);
    factor->importance = factor->hessian ? sb_malloc((size_t)cols * sizeof(float), "gptq importance", err) : NULL;
    factor->upper = factor->importance ? sb_malloc(n2 * sizeof(double), "gptq factor", err) : NULL;
    factor->dead = factor->upper ? sb_calloc((size_t)cols, 1, "gptq dead columns", err) : NULL;
    double *damped = factor->dead ? sb_malloc(2 * n2 * sizeof(double), "gptq work", err) : NULL;
    if (!damped) {
        sb_gptq_factor_free(factor);
        return SB_ERR_NOMEM;
    }
    double *work = damped + n2;
    memcpy(factor->hessian, hessian, n2 * sizeof(float));
    for (size_t i = 0; i < n2; i++) {
        if (!isfinite(hessian[i])) {
            free(damped);
            sb_gptq_factor_free(factor);
            return sb_error_set(err, SB_ERR_INPUT, "gptq: Hessian block entry %zu is not finite", i);
        }
        damped[i] = hessian[i];
    }
    double diagonal_sum = 0;
    for (int j = 0; j < cols; j++) {
        double h = hessian[(int64_t)j * cols + j];
        if (h < 0) {
            free(damped);
            sb_gptq_factor_free(factor);
            return sb_error_set(err, SB_ERR_INPUT, "gptq: Hessian block diagonal %d is negative (%g)", j, h);
        }
        factor->importance[j] = (float)h;
        if (h == 0) { /* GPTQ: H[dead, dead] = 1, W[:, dead] = 0 */
            factor->dead[j] = 1;
            damped[(int64_t)j * cols + j] = 1.0;
        }
        diagonal_sum += damped[(int64_t)j * cols + j];
    }
    /* GPTQ's percdamp = 0.01: lambda = 1% of the mean diagonal. A larger lambda only if the
     * factorisation fails (an H that is not quite PSD from rounding). */
    double mean_diagonal = diagonal_sum / cols;
    bool factored = false;
    for (double fraction = 0.01; fraction <= 1.0 && !factored; fraction *= 10) {
        factor->damping = fraction * mean_diagonal;
        for (int j = 0; j < cols; j++)
            damped[(int64_t)j * cols + j] += factor->damping;
        factored = inverse_upper_factor(damped, cols, work, factor->upper);
        for (int j = 0; j < cols; j++)
            damped[(int64_t)j * cols + j] -= factor->damping;
    }
    free(damped);
    if (!factored) {
        sb_gptq_factor_free(factor);
        return sb_error_set(err, SB_ERR_INPUT,
                            "gptq: Hessian block is not positive semi-definite (Cholesky fails "
                            "with 100%% damping)");
    }
    return SB_OK;
}

/* ---- Error feedback inside a tile ---------------------------------------------------------- */

double sb_output_error(const float *hessian, int cols, const float *x, int64_t x_ld, const float *xhat, int64_t xhat_ld,
                       int rows)
{
    double total = 0;
    for (int r = 0; r < rows; r++) {
        const float *x_row = x + r * x_ld, *xhat_row = xhat + r * xhat_ld;
        for (int i = 0; i < cols; i++) {
            /* delta_i (H delta)_i, (H delta)_i in four partial sums in a fixed order */
            const float *h = hessian + (int64_t)i * cols;
            double partial[4] = {0, 0, 0, 0};
            int blocked = cols / 4 * 4;
            for (int j = 0; j < blocked; j += 4)
                for (int k = 0; k < 4; k++)
                    partial[k] += (double)h[j + k] * ((double)x_row[j + k] - (double)xhat_row[j + k]);
            double h_delta = (partial[0] + partial[1]) + (partial[2] + partial[3]);
            for (int j = blocked; j < cols; j++)
                h_delta += (double)h[j] * ((double)x_row[j] - (double)xhat_row[j]);
            total += ((double)x_row[i] - (double)xhat_row[i]) * h_delta;
        }
    }
    return total;
}

/* delta^T H delta for a symmetric H from its upper triangle: sum_i H_ii delta_i^2 + 2 sum_{i<j}
 * H_ij delta_i delta_j, half the work of the full product; in double, in a fixed order. */
static double quadratic_form(const float *hessian, int cols, const double *delta)
{
    double diagonal = 0, off_diagonal = 0;
    for (int i = 0; i < cols; i++) {
        const float *h = hessian + (int64_t)i * cols;
        double partial[4] = {0, 0, 0, 0};
        int j = i + 1, blocked = j + (cols - j) / 4 * 4;
        for (; j < blocked; j += 4)
            for (int k = 0; k < 4; k++)
                partial[k] += (double)h[j + k] * delta[j + k];
        double row = (partial[0] + partial[1]) + (partial[2] + partial[3]);
        for (; j < cols; j++)
            row += (double)h[j] * delta[j];
        diagonal += (double)h[i] * delta[i] * delta[i];
        off_diagonal += delta[i] * row;
    }
    return diagonal + 2 * off_diagonal;
}

/* Per-call scratch of one tile. */
typedef struct gptq_work {
    double *row;                           /* the row being quantized, updated by the feedback [cols]; then x - x^ */
    float *group;                          /* the current group's values as float, for the search [group] */
    uint8_t *scratch;                      /* search scratch [group] */
    float *decoded;                        /* one decoded row [cols] */
    float *first_scale, *first_zero_point; /* Q8: each row's first group as searched for D [rows] */
} gptq_work;

/* The feedback over every row of the tile; Q8 groups are coded under the bound `tile_scale`. */
static void feedback_pass(const sb_tile_in *tile, const sb_gptq_factor *factor, int bits,
                          const sb_quant_options *options, uint16_t tile_scale, sb_tile_out *out, gptq_work *work)
{
    const int cols = tile->cols, groups = sb_tile_groups(cols, tile->group);
    const bool q8 = options->format == SB_SCALES_Q8;
    for (int r = 0; r < tile->rows; r++) {
        const float *x = tile->x + (int64_t)r * tile->x_ld;
        const float *importance = tile->w ? tile->w + (int64_t)r * tile->w_row_stride : factor->importance;
        uint8_t *codes = out->codes + (int64_t)r * cols;
        for (int c = 0; c < cols; c++)
            work->row[c] = factor->dead[c] ? 0.0 : (double)x[c];
        for (int g = 0; g < groups; g++) {
            int c0 = g * tile->group, n = cols - c0 < tile->group ? cols - c0 : tile->group;
            uint16_t *scale = &out->scales[r * groups + g], *zero = &out->zeros[r * groups + g];
            /* the group's scale and zero, from its weights as the feedback has left them */
            for (int i = 0; i < n; i++)
                work->group[i] = (float)work->row[c0 + i];
            if (q8) {
                /* a row's first group meets no feedback: its search for D holds */
                float searched_scale = work->first_scale[r], zero_point = work->first_zero_point[r];
                if (g > 0)
                    sb_search_group_q8(work->group, importance + c0, n, bits, options, work->scratch, &searched_scale,
                                       &zero_point);
                sb_choose_codes_q8(work->group, importance + c0, n, bits, options, tile_scale, searched_scale, zero_point,
                                   work->scratch, scale, zero);
            } else {
                sb_quantize_group(work->group, importance + c0, n, bits, options, work->scratch, scale, zero);
            }
            /* its columns one at a time, each rounding error fed to the columns right of it */
            for (int j = c0; j < c0 + n; j++) {
                float value = (float)work->row[j], decoded;
                if (q8) {
                    sb_code_group_q8(&value, importance + j, 1, bits, tile_scale, *scale, *zero, &codes[j]);
                    sb_dequantize_group_q8(&codes[j], 1, bits, tile_scale, *scale, *zero, &decoded);
                } else {
                    sb_code_group(&value, importance + j, 1, bits, *scale, *zero, &codes[j]);
                    sb_dequantize_group(&codes[j], 1, *scale, *zero, &decoded);
                }
                const double *u = factor->upper + (int64_t)j * cols;
                double error = (work->row[j] - (double)decoded) / u[j];
                for (int k = j + 1; k < cols; k++)
                    work->row[k] -= error * u[k];
            }
        }
    }
}

double sb_quantize_tile_gptq_factored(const sb_tile_in *tile, const sb_gptq_factor *factor, int bits,
                                      const sb_quant_options *options, sb_tile_out *out, double *output_error)
{
    const int cols = tile->cols, groups = sb_tile_groups(cols, tile->group);
    const int group_width = tile->group < cols ? tile->group : cols;
    out->bits = bits;
    out->format = options->format;
    out->tile_scale = 0;
    gptq_work work;
    work.row = malloc((size_t)cols * sizeof(double));
    work.group = malloc((size_t)group_width * sizeof(float));
    work.scratch = malloc((size_t)group_width);
    work.decoded = malloc((size_t)cols * sizeof(float));
    work.first_scale = malloc((size_t)(2 * tile->rows + 1) * sizeof(float));
    work.first_zero_point = work.first_scale ? work.first_scale + tile->rows : NULL;
    if (!work.row || !work.group || !work.scratch || !work.decoded || !work.first_scale || factor->cols != cols) {
        free(work.row);
        free(work.group);
        free(work.scratch);
        free(work.decoded);
        free(work.first_scale);
        if (output_error)
            *output_error = NAN;
        return NAN;
    }
    if (options->format == SB_SCALES_Q8) {
        /* D as sb_quantize_tile chooses it, from the weights before feedback ... */
        float bound = 0;
        for (int r = 0; r < tile->rows; r++) {
            const float *x = tile->x + (int64_t)r * tile->x_ld;
            const float *importance = tile->w ? tile->w + (int64_t)r * tile->w_row_stride : factor->importance;
            for (int g = 0; g < groups; g++) {
                int c0 = g * tile->group, n = cols - c0 < tile->group ? cols - c0 : tile->group;
                for (int i = 0; i < n; i++)
                    work.group[i] = factor->dead[c0 + i] ? 0.0f : x[c0 + i];
                float scale, zero_point;
                sb_search_group_q8(work.group, importance + c0, n, bits, options, work.scratch, &scale, &zero_point);
                bound = scale > bound ? scale : bound;
                if (g == 0) {
                    work.first_scale[r] = scale;
                    work.first_zero_point[r] = zero_point;
                }
            }
        }
        out->tile_scale = sb_q8_tile_bound(bound);
    }
    /* (a Q8 group the feedback makes outgrow D is clipped to it: sb_gptq.h says why) */
    feedback_pass(tile, factor, bits, options, out->tile_scale, out, &work);
    /* E against the tile's own weights, with the importance the groups were searched with, and
     * the output error with H as given */
    double error = 0, output = 0;
    for (int r = 0; r < tile->rows; r++) {
        const float *x = tile->x + (int64_t)r * tile->x_ld;
        const float *importance = tile->w ? tile->w + (int64_t)r * tile->w_row_stride : factor->importance;
        sb_tile_out row = *out;
        row.codes = out->codes + (int64_t)r * cols;
        row.scales = out->scales + (int64_t)r * groups;
        row.zeros = out->zeros + (int64_t)r * groups;
        sb_dequantize_tile(&row, 1, cols, tile->group, work.decoded, cols);
        for (int c = 0; c < cols; c++) {
            work.row[c] = (double)x[c] - (double)work.decoded[c];
            error += (double)importance[c] * work.row[c] * work.row[c];
        }
        if (output_error)
            output += quadratic_form(factor->hessian, cols, work.row);
    }
    if (output_error)
        *output_error = output;
    free(work.row);
    free(work.group);
    free(work.scratch);
    free(work.decoded);
    free(work.first_scale);
    return error;
}

double sb_quantize_tile_gptq(const sb_tile_in *tile, const float *hessian, int bits, const sb_quant_options *options,
                             sb_tile_out *out, double *output_error)
{
    sb_gptq_factor factor;
    if (sb_gptq_factor_init(&factor, hessian, tile->cols, NULL) != SB_OK) {
        if (output_error)
            *output_error = NAN;
        return NAN;
    }
    double error = sb_quantize_tile_gptq_factored(tile, &factor, bits, options, out, output_error);
    sb_gptq_factor_free(&factor);
    return error;
}
