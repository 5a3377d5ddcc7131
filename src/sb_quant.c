#include "sb_quant.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sb_half.h"

sb_quant_options sb_quant_default_options(void)
{
    sb_quant_options options = {.search = SB_SEARCH_WEIGHTED, .format = SB_SCALES_F16, .trials = 16, .refits = 3};
    return options;
}

static inline float weight_of(const float *w, int i) { return w ? w[i] : 1.0f; }

/* Round half to even for 0 <= v < 2^22 with plain float arithmetic (adding 2^23 forces the
 * rounding at the integer position), so the compiler can vectorise the search loops. */
static inline float round_code(float v) { return (v + 0x1p23f) - 0x1p23f; }

static inline float clamp_level(float v, float max_code) { return v < 0.0f ? 0.0f : v > max_code ? max_code : v; }

/* max(a, 0) without a branch, exact for any finite a: a + |a| is 2a or 0 exactly. */
static inline float positive_part(float a) { return (a + fabsf(a)) * 0.5f; }

/* The code of v on levels 0..max_code: round, then clamp. Branch-free and exact on the
 * integer-valued floats involved, so the loops below vectorise without -ffast-math. */
static inline float level_of(float v, float max_code)
{
    float q = round_code(v);
    q -= positive_part(q - max_code);
    return positive_part(q);
}

/* E for fixed (scale, zero), codes by rounding; single precision, for ranking search trials.
 * Eight partial sums in a fixed order: vectorised, and the result does not depend on the
 * machine. This loop is where quantization spends most of its time. */
enum { LANES = 8 };

static float trial_error(const float *x, const float *w, int n, float max_code, float scale, float zero)
{
    float inverse = 1.0f / scale;
    float partial[LANES] = {0};
    int blocked = n / LANES * LANES;
    if (w) {
        for (int i = 0; i < blocked; i += LANES)
            for (int j = 0; j < LANES; j++) {
                float d = scale * level_of((x[i + j] - zero) * inverse, max_code) + zero - x[i + j];
                partial[j] += w[i + j] * d * d;
            }
    } else {
        for (int i = 0; i < blocked; i += LANES)
            for (int j = 0; j < LANES; j++) {
                float d = scale * level_of((x[i + j] - zero) * inverse, max_code) + zero - x[i + j];
                partial[j] += d * d;
            }
    }
    float error = 0.0f;
    for (int i = blocked; i < n; i++) {
        float d = scale * level_of((x[i] - zero) * inverse, max_code) + zero - x[i];
        error += (w ? w[i] : 1.0f) * d * d;
    }
    for (int j = 0; j < LANES; j++)
        error += partial[j];
    return error;
}

/* trial_error that also writes the codes: the round step of the refinement loop. */
static double round_fast(const float *x, const float *w, int n, int max_code, float scale, float zero,
                          uint8_t *codes)
{
    float inverse = 1.0f / scale, levels = (float)max_code;
    float partial[LANES] = {0};
    int blocked = n / LANES * LANES;
    for (int i = 0; i < blocked; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float q = level_of((x[i + j] - zero) * inverse, levels);
            codes[i + j] = (uint8_t)q;
            float d = scale * q + zero - x[i + j];
            partial[j] += (w ? w[i + j] : 1.0f) * d * d;
        }
    float error = 0.0f;
    for (int i = blocked; i < n; i++) {
        float q = level_of((x[i] - zero) * inverse, levels);
        codes[i] = (uint8_t)q;
        float d = scale * q + zero - x[i];
        error += (w ? w[i] : 1.0f) * d * d;
    }
    for (int j = 0; j < LANES; j++)
        error += partial[j];
    return error;
}

/* Codes for fixed (scale, zero) by nearest rounding, and their E in double precision. */
static double round_and_error(const float *x, const float *w, int n, int max_code, float scale, float zero,
                              uint8_t *codes)
{
    double error = 0;
    float inverse = scale > 0 ? 1.0f / scale : 0.0f;
    for (int i = 0; i < n; i++) {
        int q = scale > 0 ? (int)round_code(clamp_level((x[i] - zero) * inverse, (float)max_code)) : 0;
        /* the inverse may be off by an ulp: check the neighbours so rounding is truly nearest */
        if (scale > 0) {
            float here = fabsf(scale * (float)q + zero - x[i]);
            if (q < max_code && fabsf(scale * (float)(q + 1) + zero - x[i]) < here)
                q++;
            else if (q > 0 && fabsf(scale * (float)(q - 1) + zero - x[i]) < here)
                q--;
        }
        if (codes)
            codes[i] = (uint8_t)q;
        double diff = (double)(scale * (float)q + zero) - (double)x[i];
        error += (double)weight_of(w, i) * diff * diff;
    }
    return error;
}

/* Weighted least squares for x ~ d * l + m at fixed codes; false if degenerate. The sums run
 * in eight double-precision lanes (vectorised, fixed order). */
static int refit(const float *x, const float *w, int n, const uint8_t *codes, float *scale, float *zero)
{
    double lane_w[LANES] = {0}, lane_l[LANES] = {0}, lane_ll[LANES] = {0}, lane_x[LANES] = {0}, lane_lx[LANES] = {0};
    int blocked = n / LANES * LANES;
    for (int i = 0; i < blocked; i += LANES)
        for (int j = 0; j < LANES; j++) {
            double wi = w ? w[i + j] : 1.0, l = codes[i + j], xi = x[i + j];
            lane_w[j] += wi;
            lane_l[j] += wi * l;
            lane_ll[j] += wi * l * l;
            lane_x[j] += wi * xi;
            lane_lx[j] += wi * l * xi;
        }
    double sw = 0, sl = 0, sll = 0, sx = 0, slx = 0;
    for (int i = blocked; i < n; i++) {
        double wi = weight_of(w, i), l = codes[i];
        sw += wi;
        sl += wi * l;
        sll += wi * l * l;
        sx += wi * x[i];
        slx += wi * l * x[i];
    }
    for (int j = 0; j < LANES; j++) {
        sw += lane_w[j];
        sl += lane_l[j];
        sll += lane_ll[j];
        sx += lane_x[j];
        slx += lane_lx[j];
    }
    double det = sw * sll - sl * sl;
    if (sw <= 0 || det <= 1e-9 * sw * sll)
        return 0;
    double d = (sw * slx - sl * sx) / det;
    double m = (sll * sx - sl * slx) / det;
    if (!(d > 0) || !isfinite(d) || !isfinite(m))
        return 0;
    *scale = (float)d;
    *zero = (float)m;
    return 1;
}

/* The F16-stored version of (scale, zero): what the file holds and a reader decodes. */
static double stored_error(const float *x, const float *w, int n, int max_code, float scale, float zero,
                           uint16_t *scale_f16, uint16_t *zero_f16, uint8_t *codes)
{
    *scale_f16 = sb_f32_to_f16(scale);
    *zero_f16 = sb_f32_to_f16(zero);
    return round_and_error(x, w, n, max_code, sb_f16_to_f32(*scale_f16), sb_f16_to_f32(*zero_f16), codes);
}

enum { REFINED_STARTS = 4 };

/* The best (scale, zero) for x ~ scale * q + zero found by the search, unrounded. With
 * `include_zero`, the start range is widened to hold 0 (the Q8 format's grid always does).
 * Returns false for a degenerate group (constant, or a range below F16 resolution), with
 * *zero the value to represent. `work` holds n codes. */
static bool search_group(const float *x, const float *w, int n, int bits, const sb_quant_options *options,
                         bool include_zero, uint8_t *work, float *scale_out, float *zero_out)
{
    const int max_code = (1 << bits) - 1;
    float lo = x[0], hi = x[0];
    float weight_sum = 0;
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
        weight_sum += weight_of(w, i);
    }
    if (include_zero) {
        lo = lo < 0 ? lo : 0;
        hi = hi > 0 ? hi : 0;
    }
    /* Importance zero everywhere (dead input columns): any codes are free; fall back to plain MSE
     * so the stored values still describe the weights. */
    if (w && !(weight_sum > 0))
        w = NULL;
    float range = hi - lo;
    float minmax_scale = range / (float)max_code;
    if (!(range > 0) || sb_f32_to_f16(minmax_scale) == 0) {
        *scale_out = 0;
        *zero_out = 0.5f * (lo + hi);
        return false;
    }
    *scale_out = minmax_scale;
    *zero_out = lo;
    if (options->search == SB_SEARCH_MINMAX)
        return true;

    /* 1. Starts: the code range narrowed to `shrink` of the group's range (down to 40%) and slid
     *    to the bottom, the middle or the top. Clipping the side that holds an outlier lets the
     *    codes resolve the bulk better. Ranked by E without refitting (cheap, vectorised). */
    float start_scale[REFINED_STARTS], start_zero[REFINED_STARTS], start_error[REFINED_STARTS];
    for (int s = 0; s < REFINED_STARTS; s++)
        start_error[s] = INFINITY;
    int trials = options->trials > 0 ? options->trials : 1;
    /* With 64 or more levels clipping buys little (test_quant: the search gains 10-15% of the
     * error at 6-8 bits against 20-50% at 2-4): a quarter of the trials, over the same span. */
    if (bits >= 6 && trials >= 8)
        trials /= 4;
    for (int t = 0; t <= trials; t++) {
        float width = range * (1.0f - 0.6f * (float)t / (float)trials);
        float scale = width / (float)max_code;
        for (int anchor = 0; anchor < (t == 0 ? 1 : 3); anchor++) {
            float zero = anchor == 0 ? lo + 0.5f * (range - width) : anchor == 1 ? lo : hi - width;
            float error = trial_error(x, w, n, (float)max_code, scale, zero);
            /* keep the REFINED_STARTS best, sorted */
            for (int s = 0; s < REFINED_STARTS; s++) {
                if (error < start_error[s]) {
                    for (int m = REFINED_STARTS - 1; m > s; m--) {
                        start_error[m] = start_error[m - 1];
                        start_scale[m] = start_scale[m - 1];
                        start_zero[m] = start_zero[m - 1];
                    }
                    start_error[s] = error;
                    start_scale[s] = scale;
                    start_zero[s] = zero;
                    break;
                }
            }
        }
    }
    /* 2. Refine the best starts: alternate least-squares refits of (scale, zero) with re-rounding;
     *    neither step can raise E, so stop at the first that does not lower it. */
    float best_scale = minmax_scale, best_zero = lo;
    double best_error = trial_error(x, w, n, (float)max_code, best_scale, best_zero);
    for (int s = 0; s < REFINED_STARTS && start_error[s] < INFINITY; s++) {
        float scale = start_scale[s], zero = start_zero[s];
        double error = round_fast(x, w, n, max_code, scale, zero, work);
        for (int r = 0; r < options->refits; r++) {
            float new_scale = scale, new_zero = zero;
            if (!refit(x, w, n, work, &new_scale, &new_zero))
                break;
            double new_error = round_fast(x, w, n, max_code, new_scale, new_zero, work);
            if (!(new_error < error))
                break;
            scale = new_scale;
            zero = new_zero;
            error = new_error;
        }
        if (error < best_error) {
            best_error = error;
            best_scale = scale;
            best_zero = zero;
        }
    }
    *scale_out = best_scale;
    *zero_out = best_zero;
    return true;
}

double sb_quantize_group(const float *x, const float *w, int n, int bits, const sb_quant_options *options,
                         uint8_t *codes, uint16_t *scale_f16, uint16_t *zero_f16)
{
    const int max_code = (1 << bits) - 1;
    uint8_t trial_codes[256];
    uint8_t *work = n <= 256 ? trial_codes : codes; /* codes doubles as scratch for long groups */
    float scale, zero;
    if (!search_group(x, w, n, bits, options, false, work, &scale, &zero))
        return stored_error(x, w, n, max_code, 0.0f, zero, scale_f16, zero_f16, codes);
    if (options->search == SB_SEARCH_MINMAX)
        return stored_error(x, w, n, max_code, scale, zero, scale_f16, zero_f16, codes);
    double stored = stored_error(x, w, n, max_code, scale, zero, scale_f16, zero_f16, codes);
    /* F16 rounding of a searched (scale, zero) could in rare cases lose to min-max's; keep the better. */
    float lo = x[0], hi = x[0];
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    uint16_t mm_scale, mm_zero;
    float minmax_scale = (hi - lo) / (float)max_code;
    double minmax_stored = stored_error(x, w, n, max_code, minmax_scale, lo, &mm_scale, &mm_zero, NULL);
    if (minmax_stored < stored)
        return stored_error(x, w, n, max_code, minmax_scale, lo, scale_f16, zero_f16, codes);
    return stored;
}

/* ---- Q8: log-scale and zero-point codes under a per-tile F16 scale bound ------------------- */

static float q8_table[256];

__attribute__((constructor)) static void init_q8_table(void)
{
    for (int s = 0; s < 256; s++)
        q8_table[s] = (float)exp2(-(double)s / 32.0);
}

const float *sb_q8_scale_table(void) { return q8_table; }

const char *sb_scale_format_name(sb_scale_format format)
{
    return format == SB_SCALES_Q8 ? "affine-q8" : "affine-f16";
}

int64_t sb_scale_bits(sb_scale_format format, int64_t rows, int64_t groups_per_row, int64_t tiles)
{
    if (format == SB_SCALES_Q8)
        return rows * groups_per_row * 16 + tiles * 16;
    return rows * groups_per_row * 32;
}

/* E of a Q8 group at (scale, zero point z in levels), codes by nearest rounding (exact:
 * neighbours checked with the decode formula itself). */
static double q8_error(const float *x, const float *w, int n, int max_code, float scale, float z, uint8_t *codes)
{
    double error = 0;
    float inverse = scale > 0 ? 1.0f / scale : 0.0f;
    for (int i = 0; i < n; i++) {
        int q = 0;
        if (scale > 0) {
            q = (int)round_code(clamp_level(x[i] * inverse + z, (float)max_code));
            float here = fabsf(scale * ((float)q - z) - x[i]);
            if (q < max_code && fabsf(scale * ((float)(q + 1) - z) - x[i]) < here)
                q++;
            else if (q > 0 && fabsf(scale * ((float)(q - 1) - z) - x[i]) < here)
                q--;
        }
        if (codes)
            codes[i] = (uint8_t)q;
        double diff = (double)(scale * ((float)q - z)) - (double)x[i];
        error += (double)weight_of(w, i) * diff * diff;
    }
    return error;
}

static int clamp_code8(long v) { return v < 0 ? 0 : v > 255 ? 255 : (int)v; }

/* Q8 for a whole tile: every group's best (scale, zero point) with its grid reaching 0, the
 * tile's bound D from the largest scale, then each group's codes (building blocks below). */
static double quantize_tile_q8(const sb_tile_in *tile, int bits, const sb_quant_options *options, sb_tile_out *out)
{
    const int groups = sb_tile_groups(tile->cols, tile->group);
    float group_scale[64], group_z[64];
    float *scales = groups * tile->rows <= 64 ? group_scale : malloc((size_t)(groups * tile->rows) * sizeof(float));
    float *zs = groups * tile->rows <= 64 ? group_z : malloc((size_t)(groups * tile->rows) * sizeof(float));
    uint8_t work[256];
    float bound = 0;
    for (int r = 0; r < tile->rows; r++) {
        const float *row = tile->x + (int64_t)r * tile->x_ld;
        const float *row_w = tile->w ? tile->w + (int64_t)r * tile->w_row_stride : NULL;
        for (int g = 0; g < groups; g++) {
            int c0 = g * tile->group, n = tile->cols - c0 < tile->group ? tile->cols - c0 : tile->group;
            uint8_t *scratch = n <= 256 ? work : out->codes + (int64_t)r * tile->cols + c0;
            sb_search_group_q8(row + c0, row_w ? row_w + c0 : NULL, n, bits, options, scratch, &scales[r * groups + g],
                               &zs[r * groups + g]);
            bound = scales[r * groups + g] > bound ? scales[r * groups + g] : bound;
        }
    }
    out->tile_scale = sb_q8_tile_bound(bound);
    double total = 0;
    for (int r = 0; r < tile->rows; r++) {
        const float *row = tile->x + (int64_t)r * tile->x_ld;
        const float *row_w = tile->w ? tile->w + (int64_t)r * tile->w_row_stride : NULL;
        for (int g = 0; g < groups; g++) {
            int c0 = g * tile->group, n = tile->cols - c0 < tile->group ? tile->cols - c0 : tile->group;
            total += sb_choose_codes_q8(row + c0, row_w ? row_w + c0 : NULL, n, bits, out->tile_scale,
                                        scales[r * groups + g], zs[r * groups + g],
                                        out->codes + (int64_t)r * tile->cols + c0, &out->scales[r * groups + g],
                                        &out->zeros[r * groups + g]);
        }
    }
    if (scales != group_scale)
        free(scales);
    if (zs != group_z)
        free(zs);
    return total;
}

/* The steps of quantize_tile_q8 one group at a time (sb_quant.h, "Building blocks"), which it
 * and the GPTQ quantizer share: test_gptq checks that a tile built from them without error
 * feedback is bit-identical to sb_quantize_tile's. */
void sb_search_group_q8(const float *x, const float *w, int n, int bits, const sb_quant_options *options,
                        uint8_t *work, float *scale, float *zero_point)
{
    const int max_code = (1 << bits) - 1;
    float zero;
    if (!search_group(x, w, n, bits, options, true, work, scale, &zero)) {
        *scale = 0;
        zero = 0;
    }
    /* as quantize_tile_q8: a one-sided grid is stretched to reach 0 from its far end */
    float top = zero + (float)max_code * *scale;
    if (*scale > 0 && zero > 0) {
        *scale = top / (float)max_code;
        zero = 0;
    } else if (*scale > 0 && top < 0) {
        *scale = -zero / (float)max_code;
    }
    *zero_point = *scale > 0 ? -zero / *scale : 0;
}

uint16_t sb_q8_tile_bound(float max_scale)
{
    uint16_t bound_f16 = sb_f32_to_f16(max_scale);
    if (sb_f16_to_f32(bound_f16) < max_scale)
        bound_f16++;
    return bound_f16;
}

double sb_choose_codes_q8(const float *x, const float *w, int n, int bits, uint16_t tile_scale_f16, float scale,
                          float zero_point, uint8_t *codes, uint16_t *scale_code, uint16_t *zero_code)
{
    const int max_code = (1 << bits) - 1;
    const float zero_unit = (float)(1 << bits) / 256.0f;
    float D = sb_f16_to_f32(tile_scale_f16);
    int s0 = scale > 0 && D > 0 ? clamp_code8(lrint(-32.0 * log2((double)scale / D))) : 255;
    int c0_code = clamp_code8(lrintf(zero_point / zero_unit));
    double best = INFINITY;
    int best_s = s0, best_c = c0_code;
    for (int ds = -1; ds <= 1; ds++) {
        int sc = s0 + ds;
        if (sc < 0 || sc > 255)
            continue;
        float q_scale = D * q8_table[sc];
        for (int dc = -2; dc <= 2; dc++) {
            int cc = c0_code + dc;
            if (cc < 0 || cc > 255)
                continue;
            double error = q8_error(x, w, n, max_code, q_scale, (float)cc * zero_unit, NULL);
            if (error < best) {
                best = error;
                best_s = sc;
                best_c = cc;
            }
        }
    }
    *scale_code = (uint16_t)best_s;
    *zero_code = (uint16_t)best_c;
    return q8_error(x, w, n, max_code, D * q8_table[best_s], (float)best_c * zero_unit, codes);
}

double sb_code_group_q8(const float *x, const float *w, int n, int bits, uint16_t tile_scale_f16,
                        uint16_t scale_code, uint16_t zero_code, uint8_t *codes)
{
    const float zero_unit = (float)(1 << bits) / 256.0f;
    return q8_error(x, w, n, (1 << bits) - 1, sb_f16_to_f32(tile_scale_f16) * q8_table[scale_code & 255],
                    (float)(zero_code & 255) * zero_unit, codes);
}

double sb_code_group(const float *x, const float *w, int n, int bits, uint16_t scale_f16, uint16_t zero_f16,
                     uint8_t *codes)
{
    return round_and_error(x, w, n, (1 << bits) - 1, sb_f16_to_f32(scale_f16), sb_f16_to_f32(zero_f16), codes);
}

void sb_dequantize_group_q8(const uint8_t *codes, int n, int bits, uint16_t tile_scale_f16, uint16_t scale_code,
                            uint16_t zero_code, float *out)
{
    float scale = sb_f16_to_f32(tile_scale_f16) * q8_table[scale_code & 255];
    float z = (float)(zero_code & 255) * ((float)(1 << bits) / 256.0f);
    for (int i = 0; i < n; i++)
        out[i] = scale * ((float)codes[i] - z);
}

void sb_dequantize_group(const uint8_t *codes, int n, uint16_t scale_f16, uint16_t zero_f16, float *out)
{
    float scale = sb_f16_to_f32(scale_f16), zero = sb_f16_to_f32(zero_f16);
    for (int i = 0; i < n; i++)
        out[i] = scale * (float)codes[i] + zero;
}

double sb_quantize_tile(const sb_tile_in *tile, int bits, const sb_quant_options *options, sb_tile_out *out)
{
    out->bits = bits;
    out->format = options->format;
    out->tile_scale = 0;
    if (options->format == SB_SCALES_Q8)
        return quantize_tile_q8(tile, bits, options, out);
    int groups = sb_tile_groups(tile->cols, tile->group);
    double error = 0;
    for (int r = 0; r < tile->rows; r++) {
        const float *row = tile->x + (int64_t)r * tile->x_ld;
        const float *row_w = tile->w ? tile->w + (int64_t)r * tile->w_row_stride : NULL;
        for (int g = 0; g < groups; g++) {
            int c0 = g * tile->group;
            int n = tile->cols - c0 < tile->group ? tile->cols - c0 : tile->group;
            error += sb_quantize_group(row + c0, row_w ? row_w + c0 : NULL, n, bits, options,
                                       out->codes + (int64_t)r * tile->cols + c0, &out->scales[r * groups + g],
                                       &out->zeros[r * groups + g]);
        }
    }
    return error;
}

void sb_dequantize_tile(const sb_tile_out *quantized, int rows, int cols, int group, float *out, int64_t out_ld)
{
    int groups = sb_tile_groups(cols, group);
    for (int r = 0; r < rows; r++) {
        for (int g = 0; g < groups; g++) {
            int c0 = g * group;
            int n = cols - c0 < group ? cols - c0 : group;
            const uint8_t *codes = quantized->codes + (int64_t)r * cols + c0;
            if (quantized->format == SB_SCALES_Q8)
                sb_dequantize_group_q8(codes, n, quantized->bits, quantized->tile_scale, quantized->scales[r * groups + g],
                                       quantized->zeros[r * groups + g], out + (int64_t)r * out_ld + c0);
            else
                sb_dequantize_group(codes, n, quantized->scales[r * groups + g], quantized->zeros[r * groups + g],
                                    out + (int64_t)r * out_ld + c0);
        }
    }
}
