#include "sb_quant.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sb_half.h"
#include "sb_quant_kernels.h"

sb_quant_options sb_quant_default_options(void)
{
    sb_quant_options options = {.search = SB_SEARCH_WEIGHTED, .format = SB_SCALES_F16, .trials = 8, .refits = 3,
                                .kernels = 0};
    return options;
}

static inline float weight_of(const float *w, int i) { return w ? w[i] : 1.0f; }

/* Round half to even for 0 <= v < 2^22 with plain float arithmetic (adding 2^23 forces the
 * rounding at the integer position), so the compiler can vectorise the search loops. */
static inline float round_code(float v) { return (v + 0x1p23f) - 0x1p23f; }

static inline float clamp_level(float v, float max_code) { return v < 0.0f ? 0.0f : v > max_code ? max_code : v; }

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

/* Weighted least squares for x ~ d * l + m from the sums of round_fit over fixed codes
 * ({w, w l, w l^2, w x, w l x}); false if degenerate. */
static int refit(const double sums[5], float *scale, float *zero)
{
    double sw = sums[0], sl = sums[1], sll = sums[2], sx = sums[3], slx = sums[4];
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

/* Three starts refined, with 8 trials (25 candidates): bench-curves --rows 256 loss sums within
 * 0.05% of the former 16 trials and four starts (q8 596.84 against 597.16, f16 598.52 against
 * 598.31), for 39% fewer instructions in the curves; a fourth start would buy 0.3% of the
 * loss for 11% more. */
enum { REFINED_STARTS = 3 };

/* Trial c of the search's starts (search_group, step 1): its width, scale and zero. */
static float trial_width(float range, int trials, int c)
{
    int t = c == 0 ? 0 : 1 + (c - 1) / 3;
    return range * (1.0f - 0.6f * (float)t / (float)trials);
}

static float trial_zero_of(float lo, float hi, float range, float width, int c)
{
    int anchor = c == 0 ? 0 : (c - 1) % 3;
    return anchor == 0 ? lo + 0.5f * (range - width) : anchor == 1 ? lo : hi - width;
}

static void trial_range(float lo, float hi, float range, int max_code, int trials, int c, float *scale, float *zero)
{
    float width = trial_width(range, trials, c);
    *scale = width / (float)max_code;
    *zero = trial_zero_of(lo, hi, range, width, c);
}

/* The best (scale, zero) for x ~ scale * q + zero found by the search, unrounded. With
 * `include_zero`, the start range is widened to hold 0 (the Q8 format's grid always does).
 * Returns false for a degenerate group (constant, or a range below F16 resolution), with
 * *zero the value to represent. `work` holds n codes. */
static bool search_group(const sb_quant_kernels *k, const float *x, const float *w, int n, int bits,
                         const sb_quant_options *options, bool include_zero, uint8_t *work, float *scale_out,
                         float *zero_out)
{
    const int max_code = (1 << bits) - 1;
    float lo, hi;
    bool weighted = k->group_range(x, w, n, &lo, &hi);
    if (include_zero) {
        lo = lo < 0 ? lo : 0;
        hi = hi > 0 ? hi : 0;
    }
    /* Importance zero everywhere (dead input columns): any codes are free; fall back to plain MSE
     * so the stored values still describe the weights. */
    if (w && !weighted)
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
    float minmax_error = INFINITY;
    /* trial c: c = 0 is the min-max range; then for t = 1..trials the narrowed width at its three
     * anchors (middle, bottom, top) */
    const int ntrials = 1 + 3 * trials;
    enum { AT_ONCE_TRIALS = 1 + 3 * 32 };
    float trial_scale[AT_ONCE_TRIALS], trial_zero[AT_ONCE_TRIALS], trial_errors[AT_ONCE_TRIALS];
    /* a group the kernels never cut short: every trial at once (the same sums) */
    bool at_once = n <= SB_QUANT_KERNEL_CHUNK && ntrials <= AT_ONCE_TRIALS;
    /* trial_range, with the two divisions once per width (its three anchors share them) */
    float width = range;
    for (int c = 0; c < ntrials && at_once; c++) {
        if (c <= 1 || (c - 1) % 3 == 0) {
            width = trial_width(range, trials, c);
            trial_scale[c] = width / (float)max_code;
        } else {
            trial_scale[c] = trial_scale[c - 1];
        }
        trial_zero[c] = trial_zero_of(lo, hi, range, width, c);
    }
    if (at_once)
        k->trial_error_many(x, w, n, (float)max_code, trial_scale, trial_zero, ntrials, trial_errors);
    for (int c = 0; c < ntrials; c++) {
        float scale, zero;
        if (at_once) {
            scale = trial_scale[c];
            zero = trial_zero[c];
        } else {
            trial_range(lo, hi, range, max_code, trials, c, &scale, &zero);
        }
        /* a trial that cannot beat the worst start kept is dropped as soon as that shows */
        float error = at_once ? trial_errors[c]
                              : k->trial_error(x, w, n, (float)max_code, scale, zero, start_error[REFINED_STARTS - 1]);
        if (c == 0)
            minmax_error = error; /* the first trial is (minmax_scale, lo) exactly, never dropped */
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
    /* 2. Refine the best starts: alternate least-squares refits of (scale, zero) with re-rounding;
     *    neither step can raise E, so stop at the first that does not lower it.
     *    Chains from different starts often meet. A chain is a fixed function of where it is,
     *    so one that reaches a pair an earlier chain made current at the same step or earlier
     *    can only follow it, with no more refits left: it ends no lower than that chain did,
     *    which the best already accounts for. It stops there (the result is unchanged), and a
     *    pair seen before is not evaluated again. */
    float best_scale = minmax_scale, best_zero = lo;
    double best_error = minmax_error;
    enum { NO_STEP = 1 << 30 };
    struct { float scale, zero; double error; int step; } seen[REFINED_STARTS * (SB_MAX_REFITS + 1)];
    int nseen = 0;
    const int refits = options->refits < SB_MAX_REFITS ? options->refits : SB_MAX_REFITS;
    double constants[2];
    k->fit_constants(x, w, n, constants);
    for (int s = 0; s < REFINED_STARTS && start_error[s] < INFINITY; s++) {
        float scale = start_scale[s], zero = start_zero[s];
        double sums[5], error = 0;
        bool dominated = false;
        for (int step = 0; step <= refits; step++) {
            float new_scale = scale, new_zero = zero;
            if (step > 0 && !refit(sums, &new_scale, &new_zero))
                break;
            int m = 0;
            while (m < nseen && !(seen[m].scale == new_scale && seen[m].zero == new_zero))
                m++;
            if (m < nseen) {
                bool accepted = step == 0 || seen[m].error < error;
                if (!accepted)
                    break;
                if (seen[m].step <= step) {
                    dominated = true;
                    break;
                }
                seen[m].step = step;
            }
            double new_error = k->round_fit(x, w, n, max_code, new_scale, new_zero, constants, sums);
            bool accepted = step == 0 || new_error < error;
            if (m == nseen && nseen < (int)(sizeof seen / sizeof seen[0]))
                seen[nseen++] = (__typeof__(seen[0])){new_scale, new_zero, new_error, accepted ? step : NO_STEP};
            if (!accepted)
                break;
            scale = new_scale;
            zero = new_zero;
            error = new_error;
        }
        if (!dominated && error < best_error) {
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
    const sb_quant_kernels *kernels = sb_quant_kernels_for(options->kernels - 1);
    if (!search_group(kernels, x, w, n, bits, options, false, work, &scale, &zero))
        return stored_error(x, w, n, max_code, 0.0f, zero, scale_f16, zero_f16, codes);
    if (options->search == SB_SEARCH_MINMAX)
        return stored_error(x, w, n, max_code, scale, zero, scale_f16, zero_f16, codes);
    double stored = stored_error(x, w, n, max_code, scale, zero, scale_f16, zero_f16, codes);
    /* F16 rounding of a searched (scale, zero) could in rare cases lose to min-max's; keep the better. */
    float lo, hi;
    kernels->group_range(x, NULL, n, &lo, &hi);
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
 * neighbours checked with the decode formula itself); the kernel's, but for a zero scale. */
static double q8_error(const sb_quant_kernels *k, const float *x, const float *w, int n, int max_code, float scale,
                       float z, uint8_t *codes, double bound)
{
    if (scale > 0)
        return k->q8_error(x, w, n, max_code, scale, z, codes, bound);
    double error = 0;
    for (int i = 0; i < n; i++) {
        if (codes)
            codes[i] = 0;
        double diff = (double)(scale * (0.0f - z)) - (double)x[i];
        error += (double)weight_of(w, i) * diff * diff;
    }
    return error;
}

static int clamp_code8(long v) { return v < 0 ? 0 : v > 255 ? 255 : (int)v; }

/* Q8 for a whole tile: every group's best (scale, zero point) with its grid reaching 0, the
 * tile's bound D from the largest scale, then each group's codes (building blocks below).
 * `scales` and `zs` hold rows x groups floats. */
static double quantize_tile_q8(const sb_tile_in *tile, int bits, const sb_quant_options *options, sb_tile_out *out,
                               float *scales, float *zs)
{
    const int groups = sb_tile_groups(tile->cols, tile->group);
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
            total += sb_choose_codes_q8(row + c0, row_w ? row_w + c0 : NULL, n, bits, options, out->tile_scale,
                                        scales[r * groups + g], zs[r * groups + g],
                                        out->codes + (int64_t)r * tile->cols + c0, &out->scales[r * groups + g],
                                        &out->zeros[r * groups + g]);
        }
    }
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
    if (!search_group(sb_quant_kernels_for(options->kernels - 1), x, w, n, bits, options, true, work, scale, &zero)) {
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

double sb_choose_codes_q8(const float *x, const float *w, int n, int bits, const sb_quant_options *options,
                          uint16_t tile_scale_f16, float scale, float zero_point, uint8_t *codes, uint16_t *scale_code,
                          uint16_t *zero_code)
{
    const sb_quant_kernels *k = sb_quant_kernels_for(options->kernels - 1);
    const int max_code = (1 << bits) - 1;
    const float zero_unit = (float)(1 << bits) / 256.0f;
    float D = sb_f16_to_f32(tile_scale_f16);
    int s0 = scale > 0 && D > 0 ? clamp_code8(lrint(-32.0 * log2((double)scale / D))) : 255;
    int c0_code = clamp_code8(lrintf(zero_point / zero_unit));
    /* The best of the 3 x 5 neighbours (ds, dc) by E summed in float (ranking only: the E
     * returned is the chosen one's in double), ties to the first in (ds, dc) order. The middle
     * one goes first: it is usually best, and in a group longer than the kernels' chunk the
     * others stop as soon as their partial E exceeds the best so far (exactly: see
     * sb_quant_kernels.h). */
    enum { CENTRE = 1 * 5 + 2 };
    int indices[15], count = 0;
    float q_scales[15], q_zeros[15], errors[15];
    for (int step = 0; step < 15; step++) {
        int index = step == 0 ? CENTRE : step <= CENTRE ? step - 1 : step;
        int sc = s0 + index / 5 - 1, cc = c0_code + index % 5 - 2;
        if (sc < 0 || sc > 255 || cc < 0 || cc > 255)
            continue;
        float q_scale = D * q8_table[sc];
        if (!(q_scale > 0))
            continue; /* a zero bound: every neighbour codes 0 (below) */
        indices[count] = index;
        q_scales[count] = q_scale;
        q_zeros[count++] = (float)cc * zero_unit;
    }
    /* a group the kernels never cut short: its candidates at once (the same sums) */
    bool at_once = n <= SB_QUANT_KERNEL_CHUNK;
    if (at_once)
        k->q8_rank_many(x, w, n, max_code, q_scales, q_zeros, count, errors);
    float best = INFINITY;
    int best_index = -1;
    for (int c = 0; c < count; c++) {
        int index = indices[c];
        /* a later neighbour needs a smaller E, an earlier one an equal E at most */
        float bound = best_index < 0 ? INFINITY : index < best_index ? nextafterf(best, INFINITY) : best;
        float error = at_once ? errors[c] : k->q8_rank(x, w, n, max_code, q_scales[c], q_zeros[c], bound);
        if (error < best || (error == best && error < INFINITY && index < best_index)) {
            best = error;
            best_index = index;
        }
    }
    int best_s = best_index < 0 ? s0 : s0 + best_index / 5 - 1, best_c = best_index < 0 ? c0_code : c0_code + best_index % 5 - 2;
    *scale_code = (uint16_t)best_s;
    *zero_code = (uint16_t)best_c;
    return q8_error(k, x, w, n, max_code, D * q8_table[best_s], (float)best_c * zero_unit, codes, INFINITY);
}

double sb_code_group_q8(const float *x, const float *w, int n, int bits, uint16_t tile_scale_f16,
                        uint16_t scale_code, uint16_t zero_code, uint8_t *codes)
{
    const float zero_unit = (float)(1 << bits) / 256.0f;
    /* short groups (GPTQ codes one value at a time) gain nothing from vectors */
    const sb_quant_kernels *k = n < 16 ? &sb_quant_kernels_baseline : sb_quant_kernels_for(-1);
    return q8_error(k, x, w, n, (1 << bits) - 1, sb_f16_to_f32(tile_scale_f16) * q8_table[scale_code & 255],
                    (float)(zero_code & 255) * zero_unit, codes, INFINITY);
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
    if (options->format == SB_SCALES_Q8) {
        /* the groups' searched scales and zero points until D is known: the caller's scratch,
         * else the stack, else the heap (NaN if that fails) */
        size_t cells = (size_t)tile->rows * (size_t)sb_tile_groups(tile->cols, tile->group);
        float stack[2 * 512];
        float *search = out->work ? out->work : cells <= 512 ? stack : malloc(2 * cells * sizeof(float));
        if (!search)
            return NAN;
        double error = quantize_tile_q8(tile, bits, options, out, search, search + cells);
        if (search != out->work && search != stack)
            free(search);
        return error;
    }
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
