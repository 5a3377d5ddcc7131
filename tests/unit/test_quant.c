/* The in-tile quantizer: min-max RTN against its closed form, reported errors against an
 * independent decode, the weighted search never worse than min-max and close to a brute-force
 * search over (scale, zero) on small groups, and edge cases (constant groups, zero weights). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_cpu.h"
#include "sb_half.h"
#include "sb_quant.h"
#include "sb_quant_kernels.h"
#include "sb_test.h"

static double decode_error(const float *x, const float *w, int n, const uint8_t *codes, uint16_t scale,
                           uint16_t zero)
{
    float out[256];
    sb_dequantize_group(codes, n, scale, zero, out);
    double error = 0;
    for (int i = 0; i < n; i++)
        error += (w ? w[i] : 1.0) * ((double)out[i] - x[i]) * ((double)out[i] - x[i]);
    return error;
}

static void fill(sb_test_rng *rng, float *x, int n, int heavy)
{
    for (int i = 0; i < n; i++) {
        double v = sb_test_normal(rng) * 0.02;
        if (heavy && sb_test_uniform(rng) < 0.05)
            v *= 8; /* outliers, as in real LLM weights */
        x[i] = (float)v;
    }
}

static void check_minmax(void)
{
    sb_test_rng rng = {1};
    sb_quant_options minmax = {SB_SEARCH_MINMAX, SB_SCALES_F16, 0, 0, 0};
    for (int bits = 1; bits <= 8; bits++) {
        for (int trial = 0; trial < 200; trial++) {
            int n = 1 + (int)(sb_test_next(&rng) % 64);
            float x[64];
            fill(&rng, x, n, trial % 2);
            uint8_t codes[64];
            uint16_t scale, zero;
            double error = sb_quantize_group(x, NULL, n, bits, &minmax, codes, &scale, &zero);
            float lo = x[0], hi = x[0];
            for (int i = 0; i < n; i++) {
                lo = fminf(lo, x[i]);
                hi = fmaxf(hi, x[i]);
            }
            if (hi > lo) {
                SB_CHECK(scale == sb_f32_to_f16((hi - lo) / (float)((1 << bits) - 1)));
                SB_CHECK(zero == sb_f32_to_f16(lo));
            }
            SB_CHECK_NEAR(error, decode_error(x, NULL, n, codes, scale, zero), 1e-12);
            /* every code is the nearest level to its value */
            float s = sb_f16_to_f32(scale), z = sb_f16_to_f32(zero);
            for (int i = 0; i < n; i++) {
                SB_CHECK(codes[i] < (1 << bits));
                float here = fabsf(s * codes[i] + z - x[i]);
                if (codes[i] + 1 < (1 << bits))
                    SB_CHECK(here <= fabsf(s * (codes[i] + 1) + z - x[i]));
                if (codes[i] > 0)
                    SB_CHECK(here <= fabsf(s * (codes[i] - 1) + z - x[i]));
            }
        }
    }
}

/* Brute force: the best (scale, zero) over a fine grid, codes by nearest rounding. */
static double brute_force(const float *x, const float *w, int n, int bits)
{
    int max_code = (1 << bits) - 1;
    float lo = x[0], hi = x[0];
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    double best = INFINITY;
    float range = hi - lo;
    for (int a = 0; a <= 120; a++) {
        float scale = range / max_code * (0.4f + 0.6f * (float)a / 120.0f);
        for (int b = 0; b <= 120; b++) {
            float zero = lo - scale + 2.0f * scale * (float)b / 120.0f + 0.25f * range * ((float)b / 120.0f);
            double error = 0;
            for (int i = 0; i < n; i++) {
                long q = lrintf((x[i] - zero) / scale);
                q = q < 0 ? 0 : q > max_code ? max_code : q;
                double d = (double)(scale * (float)q + zero) - x[i];
                error += (w ? w[i] : 1.0) * d * d;
            }
            best = fmin(best, error);
        }
    }
    return best;
}

static void check_search(void)
{
    sb_test_rng rng = {2};
    sb_quant_options minmax = {SB_SEARCH_MINMAX, SB_SCALES_F16, 0, 0, 0};
    sb_quant_options search = sb_quant_default_options();
    double ratio_sum[9] = {0}, brute_ratio_worst[9] = {0}, brute_ratio_sum[9] = {0};
    int brute_count[9] = {0};
    int count[9] = {0};
    for (int bits = 1; bits <= 8; bits++) {
        for (int trial = 0; trial < 300; trial++) {
            int n = 32;
            float x[32], w[32];
            fill(&rng, x, n, trial % 2);
            for (int i = 0; i < n; i++)
                w[i] = (float)(0.1 + sb_test_uniform(&rng) * (trial % 3 == 0 ? 10.0 : 1.0));
            const float *weights = trial % 4 == 0 ? NULL : w;
            uint8_t codes[32], codes_mm[32];
            uint16_t scale, zero, scale_mm, zero_mm;
            double searched = sb_quantize_group(x, weights, n, bits, &search, codes, &scale, &zero);
            double plain = sb_quantize_group(x, weights, n, bits, &minmax, codes_mm, &scale_mm, &zero_mm);
            SB_CHECK_MSG(searched <= plain * (1 + 1e-12), "bits %d: search %g worse than min-max %g", bits, searched,
                         plain);
            SB_CHECK_NEAR(searched, decode_error(x, weights, n, codes, scale, zero), 1e-12);
            ratio_sum[bits] += plain > 0 ? searched / plain : 1;
            count[bits]++;
            if (bits <= 4 && trial < 40) {
                double brute = brute_force(x, weights, n, bits);
                double ratio = searched / brute;
                brute_ratio_worst[bits] = fmax(brute_ratio_worst[bits], ratio);
                brute_ratio_sum[bits] += ratio;
                brute_count[bits]++;
                /* the search is a heuristic; it must stay close to the grid optimum */
                SB_CHECK_MSG(ratio < 1.20, "bits %d: search %g vs brute force %g", bits, searched, brute);
            }
        }
    }
    for (int bits = 1; bits <= 8; bits++)
        printf("bits %d: weighted search error / min-max error = %.3f (mean)\n", bits, ratio_sum[bits] / count[bits]);
    for (int bits = 1; bits <= 4; bits++)
    {
        double mean = brute_ratio_sum[bits] / brute_count[bits];
        printf("bits %d: search / brute-force grid: mean %.3f, worst %.3f\n", bits, mean, brute_ratio_worst[bits]);
        SB_CHECK(mean < 1.03);
    }
}

static void check_edges(void)
{
    sb_quant_options search = sb_quant_default_options();
    float constant[16];
    for (int i = 0; i < 16; i++)
        constant[i] = 0.125f;
    uint8_t codes[16];
    uint16_t scale, zero;
    double error = sb_quantize_group(constant, NULL, 16, 2, &search, codes, &scale, &zero);
    SB_CHECK(error == 0 && sb_f16_to_f32(zero) == 0.125f);
    float zeros[16] = {0};
    SB_CHECK(sb_quantize_group(zeros, NULL, 16, 3, &search, codes, &scale, &zero) == 0);
    /* all-zero importance falls back to plain error and still describes the weights */
    float x[16], w[16] = {0};
    sb_test_rng rng = {3};
    fill(&rng, x, 16, 0);
    error = sb_quantize_group(x, w, 16, 4, &search, codes, &scale, &zero);
    SB_CHECK(isfinite(error) && error < 1e-4);
    /* 8 bits is near-lossless */
    float row[128];
    fill(&rng, row, 128, 1);
    uint8_t codes128[128];
    double e8 = sb_quantize_group(row, NULL, 128, 8, &search, codes128, &scale, &zero);
    double energy = 0;
    for (int i = 0; i < 128; i++)
        energy += (double)row[i] * row[i];
    SB_CHECK(e8 < 1e-4 * energy);
}

static void check_tile(void)
{
    /* a 5 x 45 tile with group 16: groups of 16, 16, 13; broadcast per-column importance */
    sb_test_rng rng = {4};
    enum { R = 5, C = 45, G = 16 };
    float x[R * 50], w[C], out[R * 50];
    for (int i = 0; i < R * 50; i++)
        x[i] = (float)sb_test_normal(&rng);
    for (int c = 0; c < C; c++)
        w[c] = (float)(0.5 + sb_test_uniform(&rng));
    uint8_t codes[R * C];
    uint16_t scales[R * 3], zeros[R * 3];
    sb_tile_in in = {x, 50, w, 0, R, C, G};
    sb_tile_out result = {codes, scales, zeros, 0, 0, SB_SCALES_F16, NULL};
    sb_quant_options options = sb_quant_default_options();
    double error = sb_quantize_tile(&in, 3, &options, &result);
    sb_dequantize_tile(&result, R, C, G, out, 50);
    double check = 0;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            check += w[c] * ((double)out[r * 50 + c] - x[r * 50 + c]) * ((double)out[r * 50 + c] - x[r * 50 + c]);
    SB_CHECK_NEAR(error, check, 1e-9 * check);
    SB_CHECK(sb_tile_groups(45, 16) == 3);
}

/* Q8 scales: the reported E is the E of the decoded tile, an all-zero tile is exact, and the
 * 16-bit metadata costs little accuracy against F16's 32 bits, even with groups whose scales
 * differ 100-fold inside one tile. */
static void check_q8(void)
{
    sb_test_rng rng = {8};
    enum { R = 16, C = 64, G = 16 };
    float x[R * C], w[C], out[R * C];
    uint8_t codes[R * C];
    uint16_t scales[R * 4], zeros[R * 4];
    double ratio_sum[9] = {0};
    int count[9] = {0};
    for (int trial = 0; trial < 60; trial++) {
        for (int r = 0; r < R; r++) {
            double magnitude = trial % 3 == 0 ? pow(10.0, -2.0 * sb_test_uniform(&rng)) : 1.0;
            for (int c = 0; c < C; c++)
                x[r * C + c] = (float)(0.02 * magnitude * sb_test_normal(&rng) * (sb_test_uniform(&rng) < 0.05 ? 6 : 1));
        }
        for (int c = 0; c < C; c++)
            w[c] = (float)(0.2 + sb_test_uniform(&rng));
        for (int bits = 1; bits <= 8; bits++) {
            sb_tile_in in = {x, C, trial % 2 ? w : NULL, 0, R, C, G};
            sb_quant_options q8 = sb_quant_default_options(), f16 = sb_quant_default_options();
            q8.format = SB_SCALES_Q8;
            f16.format = SB_SCALES_F16;
            sb_tile_out result = {codes, scales, zeros, 0, 0, SB_SCALES_F16, NULL};
            double e_q8 = sb_quantize_tile(&in, bits, &q8, &result);
            SB_CHECK(result.format == SB_SCALES_Q8 && result.bits == bits);
            sb_dequantize_tile(&result, R, C, G, out, C);
            double check = 0;
            for (int r = 0; r < R; r++)
                for (int c = 0; c < C; c++) {
                    double d = (double)out[r * C + c] - x[r * C + c];
                    check += (trial % 2 ? w[c] : 1.0) * d * d;
                }
            SB_CHECK_NEAR(e_q8, check, 1e-9 * check + 1e-30);
            for (int i = 0; i < R * C; i++)
                SB_CHECK(codes[i] < (1 << bits));
            double e_f16 = sb_quantize_tile(&in, bits, &f16, &result);
            ratio_sum[bits] += e_f16 > 0 ? e_q8 / e_f16 : 1;
            count[bits]++;
        }
    }
    for (int bits = 1; bits <= 8; bits++) {
        double mean = ratio_sum[bits] / count[bits];
        printf("bits %d: Q8 error / F16 error = %.3f (mean; Q8 stores half the metadata)\n", bits, mean);
        /* a few per cent at low bits, more at 7-8 bits where the 2.2% scale steps show */
        SB_CHECK(mean < (bits <= 4 ? 1.03 : 1.6));
    }
    /* an all-zero tile is stored exactly */
    float zero_tile[R * C] = {0};
    sb_tile_in in = {zero_tile, C, NULL, 0, R, C, G};
    sb_quant_options q8 = sb_quant_default_options();
    q8.format = SB_SCALES_Q8;
    sb_tile_out result = {codes, scales, zeros, 0, 0, SB_SCALES_Q8, NULL};
    SB_CHECK(sb_quantize_tile(&in, 3, &q8, &result) == 0);
    /* the table: M[0] = 1, M[32] = 1/2, M[255] = 2^(-255/32) */
    const float *table = sb_q8_scale_table();
    SB_CHECK(table[0] == 1.0f && table[32] == 0.5f && table[64] == 0.25f);
    SB_CHECK_NEAR(table[255], exp2(-255.0 / 32.0), 1e-7 * exp2(-255.0 / 32.0));
    SB_CHECK(sb_scale_bits(SB_SCALES_Q8, 64, 6, 12) == 64 * 6 * 16 + 12 * 16);
    SB_CHECK(sb_scale_bits(SB_SCALES_F16, 64, 6, 12) == 64 * 6 * 32);
}

/* Each kernel of every vector level returns the baseline's bits, alone: a difference in a
 * ranking sum (q8_rank, trial_error) seldom changes which candidate wins, so the tile checks
 * above could miss it. Lengths 1..300 cover the eight- and sixteen-element steps, their rests and
 * the bounded sums' stops (a bound from the unbounded sum, so that some calls stop). */
static void check_kernels_directly(void)
{
    sb_cpu_features cpu = sb_cpu_detect();
    int best = (int)sb_cpu_level_of(&cpu);
    const sb_quant_kernels *base = sb_quant_kernels_for(SB_CPU_BASELINE);
    sb_test_rng rng = {17};
    static float x[300], w[300];
    int compared = 0, stopped = 0;
    for (int trial = 0; trial < 600; trial++) {
        int n = 1 + (int)(sb_test_uniform(&rng) * 300);
        fill(&rng, x, n, 1);
        for (int i = 0; i < n; i++)
            w[i] = (float)(sb_test_uniform(&rng) < 0.1 ? 0.0 : 0.1 + sb_test_uniform(&rng));
        const float *weights = trial % 2 ? w : NULL;
        int bits = 1 + trial % 8, max_code = (1 << bits) - 1;
        float lo, hi;
        base->group_range(x, weights, n, &lo, &hi);
        float range = hi - lo > 0 ? hi - lo : 1.0f;
        float scale = range * (0.4f + 0.6f * (float)sb_test_uniform(&rng)) / (float)max_code;
        float zero = lo + (float)sb_test_uniform(&rng) * 0.3f * range;
        float z = -zero / scale;
        z = z < 0 ? 0 : z > (float)max_code ? (float)max_code : z;
        double constants[2], sums_a[5], sums_b[5];
        base->fit_constants(x, weights, n, constants);
        float trial_a = base->trial_error(x, weights, n, (float)max_code, scale, zero, INFINITY);
        float rank_a = base->q8_rank(x, weights, n, max_code, scale, z, INFINITY);
        double fit_a = base->round_fit(x, weights, n, max_code, scale, zero, constants, sums_a);
        double q8_a = base->q8_error(x, weights, n, max_code, scale, z, NULL, INFINITY);
        /* a bound some calls cannot beat: they may stop early, and must do so alike */
        float bound = (float)(0.3 + sb_test_uniform(&rng)) * trial_a;
        float trial_bound_a = base->trial_error(x, weights, n, (float)max_code, scale, zero, bound);
        float rank_bound = (float)(0.3 + sb_test_uniform(&rng)) * rank_a;
        float rank_bound_a = base->q8_rank(x, weights, n, max_code, scale, z, rank_bound);
        stopped += isinf(trial_bound_a);
        for (int level = 0; level <= best; level++) {
            const sb_quant_kernels *k = sb_quant_kernels_for(level);
            double fit_b = k->round_fit(x, weights, n, max_code, scale, zero, constants, sums_b);
            float trial_b = k->trial_error(x, weights, n, (float)max_code, scale, zero, INFINITY);
            float rank_b = k->q8_rank(x, weights, n, max_code, scale, z, INFINITY);
            double q8_b = k->q8_error(x, weights, n, max_code, scale, z, NULL, INFINITY);
            float trial_bound_b = k->trial_error(x, weights, n, (float)max_code, scale, zero, bound);
            float rank_bound_b = k->q8_rank(x, weights, n, max_code, scale, z, rank_bound);
            /* q8_rank_many and trial_error_many: each candidate as the one-candidate kernel alone, for
             * counts that take the fused path zero, one and two times with and without a rest
             * (candidate c a neighbour of candidate 0) */
            enum { MANY = 7 };
            float many_scales[MANY], many_zs[MANY], many_zeros[MANY], many[MANY], trials[MANY];
            for (int c = 0; c < MANY; c++) {
                many_scales[c] = scale * (1.0f + 0.03125f * (float)(c % 3));
                many_zs[c] = z + (float)(c % 5 - 2) * 0.25f;
                many_zs[c] = many_zs[c] < 0 ? 0 : many_zs[c] > (float)max_code ? (float)max_code : many_zs[c];
                many_zeros[c] = zero + 0.125f * (float)c * scale;
            }
            int count = 1 + trial % MANY;
            k->q8_rank_many(x, weights, n, max_code, many_scales, many_zs, count, many);
            k->trial_error_many(x, weights, n, (float)max_code, many_scales, many_zeros, count, trials);
            for (int c = 0; c < count; c++) {
                float alone = base->q8_rank(x, weights, n, max_code, many_scales[c], many_zs[c], INFINITY);
                float trial_alone =
                    base->trial_error(x, weights, n, (float)max_code, many_scales[c], many_zeros[c], INFINITY);
                SB_CHECK_MSG(memcmp(&trials[c], &trial_alone, sizeof trial_alone) == 0,
                             "trial_error_many of level %d differs from trial_error: n %d bits %d candidate %d of %d",
                             level, n, bits, c, count);
                SB_CHECK_MSG(memcmp(&many[c], &alone, sizeof alone) == 0,
                             "q8_rank_many of level %d differs from q8_rank: n %d bits %d candidate %d of %d", level,
                             n, bits, c, count);
            }
            SB_CHECK_MSG(memcmp(&trial_a, &trial_b, sizeof trial_a) == 0 && memcmp(&rank_a, &rank_b, sizeof rank_a) == 0 &&
                             memcmp(&fit_a, &fit_b, sizeof fit_a) == 0 && memcmp(sums_a, sums_b, sizeof sums_a) == 0 &&
                             memcmp(&q8_a, &q8_b, sizeof q8_a) == 0 &&
                             memcmp(&trial_bound_a, &trial_bound_b, sizeof trial_bound_a) == 0 &&
                             memcmp(&rank_bound_a, &rank_bound_b, sizeof rank_bound_a) == 0,
                         "kernel level %d differs from the baseline: n %d bits %d trial %d", level, n, bits, trial);
            compared++;
        }
    }
    printf("kernels compared with the baseline: %d calls each, %d bounded trial sums stopped early\n", compared,
           stopped);
}

/* The kernels of every vector level this CPU has give the same bits (sb_quant_kernels.h):
 * codes, scales, zeros, the Q8 bound and E, for both formats, weighted or not, groups whose
 * length is and is not a multiple of the eight lanes, ragged tiles. */
static void check_kernel_levels(void)
{
    sb_cpu_features cpu = sb_cpu_detect();
    int best = (int)sb_cpu_level_of(&cpu);
    printf("vector level of this CPU: %d (0 baseline, 2 AVX2, 3 AVX-512)\n", best);
    sb_test_rng rng = {11};
    /* 200: longer than the kernels' CHUNK, so that their bounded sums stop early at times; the
     * lengths cover the 16-element steps of AVX-512 with and without an eight-element rest */
    enum { R = 9, C = 200 };
    static const int groups[] = {7, 13, 32, 50, 100, 200};
    static float x[R * C], w[R * C];
    static uint8_t codes[2][R * C];
    static uint16_t scales[2][R * 32], zeros[2][R * 32];
    int compared = 0;
    for (int trial = 0; trial < 36; trial++) {
        fill(&rng, x, R * C, 1);
        for (int i = 0; i < R * C; i++)
            w[i] = (float)(sb_test_uniform(&rng) < 0.1 ? 0.0 : 0.1 + sb_test_uniform(&rng));
        int group = groups[trial / 6]; /* each with every (format, weighting) pair below */
        for (int bits = 1; bits <= 8; bits++) {
            sb_tile_in in = {x, C, trial % 3 == 0 ? NULL : w, trial % 3 == 1 ? 0 : C, R, C, group};
            sb_quant_options options = sb_quant_default_options();
            options.format = trial % 2 ? SB_SCALES_Q8 : SB_SCALES_F16;
            options.kernels = 1; /* baseline */
            sb_tile_out a = {codes[0], scales[0], zeros[0], 0, 0, SB_SCALES_F16, NULL};
            double error_a = sb_quantize_tile(&in, bits, &options, &a);
            for (int level = 1; level <= best; level++) {
                options.kernels = 1 + level;
                sb_tile_out b = {codes[1], scales[1], zeros[1], 0, 0, SB_SCALES_F16, NULL};
                double error_b = sb_quantize_tile(&in, bits, &options, &b);
                int groups_per_row = sb_tile_groups(C, group);
                SB_CHECK_MSG(memcmp(&error_a, &error_b, sizeof error_a) == 0 && a.tile_scale == b.tile_scale &&
                                 memcmp(codes[0], codes[1], R * C) == 0 &&
                                 memcmp(scales[0], scales[1], (size_t)(R * groups_per_row) * 2) == 0 &&
                                 memcmp(zeros[0], zeros[1], (size_t)(R * groups_per_row) * 2) == 0,
                             "level %d differs from the baseline: bits %d group %d trial %d", level, bits, group, trial);
                compared++;
            }
        }
    }
    printf("kernel levels compared with the baseline on %d tiles\n", compared);
}

/* sb_choose_codes_q8 ranks the 15 neighbours by E summed in float and skips them early
 * (partial sums against the best so far): its choice is the best of a plain scan of all 15
 * by E in double (or within float rounding of it), and the E it returns is the chosen codes'
 * own (sb_code_group_q8's, to the bit). */
static void check_q8_neighbours(void)
{
    sb_test_rng rng = {12};
    enum { N = 64 };
    float x[N], w[N];
    uint8_t codes[N], scratch[N];
    int disagreements = 0, off_centre = 0;
    for (int trial = 0; trial < 400; trial++) {
        int n = trial % 4 == 0 ? 37 : N;
        fill(&rng, x, n, trial % 2);
        for (int i = 0; i < n; i++)
            w[i] = (float)(0.1 + sb_test_uniform(&rng));
        if (trial % 5 == 0) /* quantized values repeat: exact ties between neighbours */
            for (int i = 0; i < n; i++)
                x[i] = (float)((int)(x[i] * 200.0f)) / 64.0f;
        int bits = 1 + trial % 8;
        sb_quant_options options = sb_quant_default_options();
        options.format = SB_SCALES_Q8;
        float scale, zero_point;
        sb_search_group_q8(x, trial % 3 ? w : NULL, n, bits, &options, scratch, &scale, &zero_point);
        /* a bound a little above the group's own scale, as a tile's largest would be */
        uint16_t bound = sb_q8_tile_bound(scale * (float)(1.0 + 3.0 * sb_test_uniform(&rng)));
        uint16_t s_code, z_code;
        double error = sb_choose_codes_q8(x, trial % 3 ? w : NULL, n, bits, &options, bound, scale, zero_point, codes,
                                          &s_code, &z_code);
        /* the reference scan, over the same neighbours */
        const float zero_unit = (float)(1 << bits) / 256.0f;
        float D = sb_f16_to_f32(bound);
        long s0 = scale > 0 && D > 0 ? lrint(-32.0 * log2((double)scale / D)) : 255;
        s0 = s0 < 0 ? 0 : s0 > 255 ? 255 : s0;
        long c0 = lrintf(zero_point / zero_unit);
        c0 = c0 < 0 ? 0 : c0 > 255 ? 255 : c0;
        double best = INFINITY;
        long best_s = s0, best_c = c0;
        for (long sc = s0 - 1; sc <= s0 + 1; sc++)
            for (long cc = c0 - 2; cc <= c0 + 2; cc++) {
                if (sc < 0 || sc > 255 || cc < 0 || cc > 255)
                    continue;
                double e = sb_code_group_q8(x, trial % 3 ? w : NULL, n, bits, bound, (uint16_t)sc, (uint16_t)cc, scratch);
                if (e < best) {
                    best = e;
                    best_s = sc;
                    best_c = cc;
                }
            }
        double own = sb_code_group_q8(x, trial % 3 ? w : NULL, n, bits, bound, s_code, z_code, scratch);
        SB_CHECK(memcmp(&own, &error, sizeof own) == 0);
        disagreements += (s_code != best_s || z_code != best_c) && !(error <= best * (1 + 1e-5));
        off_centre += best_s != s0 || best_c != c0;
    }
    printf("Q8 neighbours: %d of 400 groups chose away from the centre; %d disagreements with the full scan\n",
           off_centre, disagreements);
    SB_CHECK(disagreements == 0);
    SB_CHECK(off_centre > 0);
}

/* Q8 codes are the nearest level under the decode formula x^ = scale (q - z), element by
 * element, also for values within a hair of a midpoint between two levels (where the kernels'
 * shortcut, the rounded level without its neighbours checked, must not be taken) and outside
 * the code range. The reference tries every level in float, as the decoder computes x^. */
static void check_q8_nearest(void)
{
    sb_test_rng rng = {13};
    enum { N = 72 };
    const float *table = sb_q8_scale_table();
    float x[N], w[N];
    uint8_t codes[N];
    long near_ties = 0, wrong = 0;
    for (int trial = 0; trial < 2000; trial++) {
        int bits = 1 + trial % 8, max_code = (1 << bits) - 1, n = trial % 3 ? N : 37;
        uint16_t bound = sb_q8_tile_bound((float)(0.01 * (1.0 + sb_test_uniform(&rng))));
        int sc = (int)(sb_test_uniform(&rng) * 64), cc = (int)(sb_test_uniform(&rng) * 256);
        float scale = sb_f16_to_f32(bound) * table[sc], z = (float)cc * ((float)(1 << bits) / 256.0f);
        for (int i = 0; i < n; i++) {
            double level = (int)(sb_test_uniform(&rng) * (max_code + 2)) - 0.5; /* midpoints, two beyond the range */
            /* within 1/256 of a level's width of the midpoint, down to a few ulps */
            double off = (sb_test_uniform(&rng) - 0.5) * (i % 3 == 0 ? 4.0 / 256 : i % 3 == 1 ? 1e-4 : 1e-6);
            x[i] = i % 5 == 4 ? (float)(scale * (sb_test_uniform(&rng) * (max_code + 4) - 2 - z))
                              : (float)(scale * (level + off - z));
            w[i] = (float)(0.1 + sb_test_uniform(&rng));
            float v = x[i] * (1.0f / scale) + z;
            near_ties += fabsf(v - nearbyintf(v)) > 0.5f - 1.0f / 256;
        }
        sb_code_group_q8(x, trial % 2 ? w : NULL, n, bits, bound, (uint16_t)sc, (uint16_t)cc, codes);
        for (int i = 0; i < n; i++) {
            float best = INFINITY;
            for (int q = 0; q <= max_code; q++)
                best = fminf(best, fabsf(scale * ((float)q - z) - x[i]));
            wrong += codes[i] > max_code || fabsf(scale * ((float)codes[i] - z) - x[i]) != best;
        }
    }
    printf("Q8 nearest levels: %ld elements near a midpoint, %ld codes not the nearest\n", near_ties, wrong);
    SB_CHECK(near_ties > 10000);
    SB_CHECK(wrong == 0);
}

int main(void)
{
    check_kernel_levels();
    check_kernels_directly();
    check_q8_neighbours();
    check_q8_nearest();
    check_minmax();
    check_search();
    check_edges();
    check_tile();
    check_q8();
    return sb_test_finish("test_quant");
}
