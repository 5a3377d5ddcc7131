/* The packed-matrix kernels (src/sb_kernel.h) on every path this CPU runs equal
 * dequantize-then-multiply: the weights decoded tile by tile by sb_dequantize_tile (the
 * stored decoding rule, independent of the kernel layout), times the int8-rounded
 * activations, summed in double. Every bitwidth 1..8 and a random mix, both scale encodings,
 * tiles 32x32 / 128x128 / 64x256 and a 24x48 tile (not a multiple of 32 wide) with groups of
 * 12, ragged edges, 1 to 70 tokens, int8, 16-bit and float activations (float: against x itself,
 * no rounding; chains started from y when accumulating). Also: a batch gives the same
 * bits as one token at a time (check_batch_bits: every width and encoding, 32x32 and 128x128
 * tiles, 13 and 70 tokens) and as any thread count; the int8 activations stay within half a
 * step of x; bad input (short codes, widths outside the bit set, non-finite scales, odd
 * groups) is refused with a message; a non-finite activation poisons only its own token. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_half.h"
#include "sb_kernel.h"
#include "sb_kernel_internal.h"
#include "sb_pack.h"
#include "sb_quant.h"
#include "sb_test.h"

/* A quantized matrix as a file stores it, plus the decoded reference weights. */
typedef struct stored {
    sb_qmatrix_desc desc;
    sb_tiling tiling;
    uint8_t *bits;           /* [tiles] */
    uint16_t *tile_scales;   /* [tiles] */
    uint8_t *codes;          /* dense streams, tile after tile */
    int64_t code_bytes;
    uint16_t *scales, *zeros; /* [rows x groups_per_row] */
    float *weights;          /* [rows x cols] sb_dequantize_tile of every tile */
    float *magnitude;        /* [rows x cols] |scale q| + |offset|: the size of the terms a kernel adds */
} stored;

static void stored_free(stored *s)
{
    free(s->bits);
    free(s->tile_scales);
    free(s->codes);
    free(s->scales);
    free(s->zeros);
    free(s->weights);
    free(s->magnitude);
    memset(s, 0, sizeof *s);
}

/* bits_mode 1..8: every tile at that width; 0: a random width per tile from {1..8}.
 * scramble_scale_codes (affine-q8): replace the quantizer's scale codes by codes covering
 * 0..255, so the kernels' decoding of the log scale is checked at every code. */
static void make_stored(stored *s, int64_t rows, int64_t cols, int tile_rows, int tile_cols, int group,
                        sb_scale_format format, int bits_mode, bool scramble_scale_codes, sb_test_rng *rng)
{
    memset(s, 0, sizeof *s);
    s->desc = (sb_qmatrix_desc){"test.weight", rows, cols, tile_rows, tile_cols, group, format, 0};
    sb_error err;
    SB_CHECK(sb_tiling_init(&s->tiling, rows, cols, tile_rows, tile_cols, group, &err) == SB_OK);
    int64_t tiles = sb_tiling_count(&s->tiling), groups = s->tiling.groups_per_row;
    s->bits = malloc((size_t)tiles);
    s->tile_scales = calloc((size_t)tiles, sizeof(uint16_t));
    s->scales = calloc((size_t)(rows * groups), sizeof(uint16_t));
    s->zeros = calloc((size_t)(rows * groups), sizeof(uint16_t));
    s->weights = malloc((size_t)(rows * cols) * sizeof(float));
    s->magnitude = malloc((size_t)(rows * cols) * sizeof(float));
    s->codes = malloc((size_t)(rows * cols) + 16);
    float *x = malloc((size_t)(rows * cols) * sizeof(float));
    for (int64_t i = 0; i < rows * cols; i++) /* heavy-ish tails, and a per-row offset so zeros matter */
        x[i] = (float)(0.02 * sb_test_normal(rng) * (1.0 + 3.0 * (sb_test_uniform(rng) < 0.02)) + 0.01 * ((i / cols) % 3));
    sb_quant_options options = sb_quant_default_options();
    options.search = SB_SEARCH_MINMAX;
    options.format = format;
    uint8_t *tile_codes = malloc((size_t)(tile_rows * tile_cols));
    uint16_t *tile_s = malloc((size_t)(tile_rows * tile_cols) * sizeof(uint16_t));
    uint16_t *tile_z = malloc((size_t)(tile_rows * tile_cols) * sizeof(uint16_t));
    for (int64_t t = 0; t < tiles; t++) {
        sb_tile_rect rect = sb_tiling_rect(&s->tiling, t);
        int bits = bits_mode ? bits_mode : 1 + (int)(sb_test_next(rng) % 8);
        s->bits[t] = (uint8_t)bits;
        sb_tile_in in = {x + rect.row0 * cols + rect.col0, cols, NULL, 0, rect.rows, rect.cols, group};
        sb_tile_out out = {.codes = tile_codes, .scales = tile_s, .zeros = tile_z, .format = format};
        sb_quantize_tile(&in, bits, &options, &out);
        if (format == SB_SCALES_Q8 && scramble_scale_codes) /* every scale code 0..255 appears */
            for (int i = 0; i < rect.rows * sb_tile_groups(rect.cols, group); i++)
                tile_s[i] = (uint16_t)((t * 131 + i * 37) & 255);
        s->tile_scales[t] = out.tile_scale;
        sb_pack_codes(tile_codes, (int64_t)rect.rows * rect.cols, bits, s->codes + s->code_bytes);
        s->code_bytes += sb_packed_bytes((int64_t)rect.rows * rect.cols, bits);
        sb_dequantize_tile(&out, rect.rows, rect.cols, group, s->weights + rect.row0 * cols + rect.col0, cols);
        int tile_groups = sb_tile_groups(rect.cols, group);
        for (int r = 0; r < rect.rows; r++)
            for (int g = 0; g < tile_groups; g++) {
                int64_t at = (rect.row0 + r) * groups + rect.col0 / group + g;
                s->scales[at] = tile_s[r * tile_groups + g];
                s->zeros[at] = tile_z[r * tile_groups + g];
                float scale, offset;
                if (format == SB_SCALES_Q8) {
                    scale = sb_f16_to_f32(out.tile_scale) * sb_q8_scale_table()[s->scales[at]];
                    offset = scale * (float)s->zeros[at] * (float)(1 << bits) / 256.0f;
                } else {
                    scale = sb_f16_to_f32(s->scales[at]);
                    offset = sb_f16_to_f32(s->zeros[at]);
                }
                int c1 = (g + 1) * group < rect.cols ? (g + 1) * group : rect.cols;
                for (int c = g * group; c < c1; c++) {
                    int q = tile_codes[r * rect.cols + c];
                    s->magnitude[(rect.row0 + r) * cols + rect.col0 + c] = fabsf(scale * (float)q) + fabsf(offset) +
                                                                            fabsf(scale) * 128.0f * (bits == 8);
                }
            }
    }
    free(tile_codes);
    free(tile_s);
    free(tile_z);
    free(x);
}

static sb_status build(const stored *s, sb_qmatrix *m, sb_error *err)
{
    return sb_qmatrix_from_stored(&s->desc, s->bits, s->tile_scales, s->codes, s->code_bytes, s->scales, s->zeros, m,
                                  err);
}

static float *random_activations(int64_t ntokens, int64_t cols, sb_test_rng *rng)
{
    float *x = malloc((size_t)(ntokens * cols) * sizeof(float));
    for (int64_t i = 0; i < ntokens * cols; i++)
        x[i] = (float)(sb_test_normal(rng) * (sb_test_uniform(rng) < 0.01 ? 20.0 : 1.0));
    return x;
}

/* Runs every path on `s` with `ntokens` tokens and checks them against the reference. */
static void check_matrix(const stored *s, int64_t ntokens, sb_act_precision precision, const sb_kernel *kernels,
                         int nkernels, sb_test_rng *rng, const char *label)
{
    sb_error err;
    sb_qmatrix m;
    if (build(s, &m, &err) != SB_OK) {
        SB_CHECK_MSG(0, "%s: build failed: %s", label, err.message);
        return;
    }
    int64_t rows = s->desc.rows, cols = s->desc.cols;
    float *x = random_activations(ntokens, cols, rng);
    sb_qact act;
    SB_CHECK(sb_qact_create(&m, ntokens, precision, &act, &err) == SB_OK);
    SB_CHECK(sb_qact_fits(&act, &m));
    sb_qact_quantize(&act, x, ntokens, cols, 2);
    const bool floats = precision == SB_ACT_F32;
    /* float activations are x itself */
    bool kept = true;
    for (int64_t t = 0; t < ntokens && floats; t++)
        for (int64_t c = 0; c < cols; c++)
            kept &= sb_qact_value(&act, t, c) == x[t * cols + c];
    SB_CHECK_MSG(kept, "%s: float activations are not x", label);
    /* the int8 activations: within half a step of x, the step being the block's max / 127 */
    double worst_rounding = 0.0;
    for (int64_t t = 0; t < ntokens && !floats; t++)
        for (int64_t c = 0; c < cols; c++) {
            int64_t tile_col = c / s->desc.tile_cols;
            int64_t position = tile_col * m.padded_tile_cols + c - tile_col * s->desc.tile_cols;
            float d = act.block_scales[t * act.blocks + position / 32];
            /* half a step, and the float rounding of d x v itself */
            double excess = fabs((double)sb_qact_value(&act, t, c) - x[t * cols + c]) - 0.5 * d * 1.0001 -
                            1e-6 * fabs(x[t * cols + c]);
            worst_rounding = excess > worst_rounding ? excess : worst_rounding;
        }
    SB_CHECK_MSG(worst_rounding <= 0.0, "%s: an activation is %g beyond half a step", label, worst_rounding);
    /* the step: a block's max over 127 (int8) or over 32512 (16-bit) */
    for (int64_t b = 0; b < act.blocks && !floats; b++) {
        float d = act.block_scales[b];
        bool matches = true;
        if (d > 0.0f) {
            int64_t tile_col = b * 32 / m.padded_tile_cols, first = tile_col * s->desc.tile_cols + b * 32 - tile_col * m.padded_tile_cols;
            float max = 0.0f;
            for (int64_t c = first; c < first + 32 && c < (tile_col + 1) * s->desc.tile_cols && c < cols; c++)
                max = fmaxf(max, fabsf(x[c]));
            matches = d == max / (precision == SB_ACT_INT16 ? 32512.0f : 127.0f);
        }
        SB_CHECK_MSG(matches, "%s: block %lld's step is not its max over the levels", label, (long long)b);
    }
    /* reference: dequantized weights times the int8-rounded activations, in double */
    double *reference = malloc((size_t)(ntokens * rows) * sizeof(double));
    double *tolerance = malloc((size_t)(ntokens * rows) * sizeof(double));
    double *float_bound = malloc((size_t)(ntokens * rows) * sizeof(double));
    double *float_reference = malloc((size_t)(ntokens * rows) * sizeof(double));
    for (int64_t t = 0; t < ntokens; t++)
        for (int64_t r = 0; r < rows; r++) {
            double sum = 0.0, size = 0.0, exact = 0.0, rounding = 0.0;
            for (int64_t c = 0; c < cols; c++) {
                double xq = sb_qact_value(&act, t, c), w = s->weights[r * cols + c];
                sum += w * xq;
                size += s->magnitude[r * cols + c] * fabs(xq);
                exact += w * x[t * cols + c];
                rounding += fabs(w) * fabs(xq - x[t * cols + c]);
            }
            reference[t * rows + r] = sum;
            tolerance[t * rows + r] = 4e-6 * size + 1e-30;
            float_reference[t * rows + r] = exact;
            float_bound[t * rows + r] = rounding + 4e-6 * size + 1e-30;
        }
    float *y = malloc((size_t)(ntokens * rows) * sizeof(float));
    float *y_first = malloc((size_t)(ntokens * rows) * sizeof(float));
    float *y_other = malloc((size_t)(ntokens * rows) * sizeof(float));
    for (int k = 0; k < nkernels; k++) {
        const char *isa = sb_isa_name(kernels[k].isa);
        sb_qmatrix_mul(&kernels[k], &m, &act, y, rows, false, 1);
        double worst = 0.0, worst_float = 0.0;
        for (int64_t i = 0; i < ntokens * rows; i++) {
            double excess = fabs(y[i] - reference[i]) / tolerance[i];
            worst = excess > worst ? excess : worst;
            double excess_float = fabs(y[i] - float_reference[i]) / float_bound[i];
            worst_float = excess_float > worst_float ? excess_float : worst_float;
        }
        SB_CHECK_MSG(worst <= 1.0, "%s %s: %lld tokens: error %.3g x the float tolerance", label, isa,
                     (long long)ntokens, worst);
        SB_CHECK_MSG(worst_float <= 1.0, "%s %s: beyond the int8 activation bound (%.3g x)", label, isa, worst_float);
        /* any thread count: the same bits */
        for (int threads = 2; threads <= 3; threads++) {
            sb_qmatrix_mul(&kernels[k], &m, &act, y_other, rows, false, threads);
            SB_CHECK_MSG(memcmp(y, y_other, (size_t)(ntokens * rows) * sizeof(float)) == 0, "%s %s: %d threads differ",
                         label, isa, threads);
        }
        /* one token at a time: the same bits as the batch */
        if (ntokens > 1) {
            sb_qact one;
            SB_CHECK(sb_qact_create(&m, 1, precision, &one, &err) == SB_OK);
            bool same = true;
            for (int64_t t = 0; t < ntokens; t++) {
                sb_qact_quantize(&one, x + t * cols, 1, cols, 1);
                sb_qmatrix_mul(&kernels[k], &m, &one, y_other, rows, false, 1);
                same &= memcmp(y_other, y + t * rows, (size_t)rows * sizeof(float)) == 0;
            }
            SB_CHECK_MSG(same, "%s %s: one token at a time differs from the batch", label, isa);
            sb_qact_free(&one);
        }
        /* accumulate: y += W x' */
        for (int64_t i = 0; i < ntokens * rows; i++)
            y_other[i] = 1.0f;
        sb_qmatrix_mul(&kernels[k], &m, &act, y_other, rows, true, 2);
        bool added = true;
        for (int64_t i = 0; i < ntokens * rows; i++) /* float: the chains start from y */
            added &= floats ? fabs(y_other[i] - (1.0 + reference[i])) <= tolerance[i] + 2e-7 * (1.0 + fabs(reference[i]))
                            : y_other[i] == 1.0f + y[i];
        SB_CHECK_MSG(added, "%s %s: accumulate is not y + W x", label, isa);
        if (k == 0)
            memcpy(y_first, y, (size_t)(ntokens * rows) * sizeof(float));
    }
    sb_qact_free(&act);
    sb_qmatrix_free(&m);
    free(x);
    free(reference);
    free(tolerance);
    free(float_bound);
    free(float_reference);
    free(y);
    free(y_first);
    free(y_other);
}

static void expect_error(sb_status status, sb_status expected, const sb_error *err, const char *needle,
                         const char *label)
{
    SB_CHECK_MSG(status == expected, "%s: status %d, expected %d", label, (int)status, (int)expected);
    if (status != SB_OK)
        SB_CHECK_MSG(strstr(err->message, needle) && strstr(err->message, "test.weight"), "%s: message '%s' lacks '%s'",
                     label, err->message, needle);
}

static void check_bad_input(sb_test_rng *rng)
{
    sb_error err;
    sb_qmatrix m;
    stored s;
    make_stored(&s, 40, 70, 32, 32, 32, SB_SCALES_F16, 0, false, rng);
    /* codes shorter (and longer) than the shape and bit map need */
    sb_status status = sb_qmatrix_from_stored(&s.desc, s.bits, s.tile_scales, s.codes, s.code_bytes - 1, s.scales,
                                              s.zeros, &m, &err);
    expect_error(status, SB_ERR_FORMAT, &err, "codes", "short codes");
    status = sb_qmatrix_from_stored(&s.desc, s.bits, s.tile_scales, s.codes, s.code_bytes + 1, s.scales, s.zeros, &m,
                                    &err);
    expect_error(status, SB_ERR_FORMAT, &err, "codes", "long codes");
    /* a width outside the file's bit set, and outside 1..8 */
    s.desc.allowed_bits = 0;
    for (int b = 1; b <= 8; b++)
        if (b != s.bits[0])
            s.desc.allowed_bits |= 1u << b;
    status = build(&s, &m, &err);
    expect_error(status, SB_ERR_FORMAT, &err, "bit set", "width outside the bit set");
    s.desc.allowed_bits = 0;
    uint8_t saved = s.bits[1];
    s.bits[1] = 9;
    expect_error(build(&s, &m, &err), SB_ERR_FORMAT, &err, "bitwidth of 9", "width 9");
    s.bits[1] = 0;
    expect_error(build(&s, &m, &err), SB_ERR_FORMAT, &err, "bitwidth of 0", "width 0");
    s.bits[1] = saved;
    /* non-finite F16 scale and zero */
    uint16_t saved_scale = s.scales[5];
    s.scales[5] = 0x7c00; /* +inf */
    expect_error(build(&s, &m, &err), SB_ERR_FORMAT, &err, "non-finite scale", "infinite scale");
    s.scales[5] = saved_scale;
    uint16_t saved_zero = s.zeros[7];
    s.zeros[7] = 0x7e00; /* NaN */
    expect_error(build(&s, &m, &err), SB_ERR_FORMAT, &err, "non-finite zero", "NaN zero");
    s.zeros[7] = saved_zero;
    SB_CHECK(build(&s, &m, &err) == SB_OK);
    sb_qmatrix_free(&m);
    /* a group the kernels cannot run */
    s.desc.group = 2;
    s.desc.tile_cols = 32;
    expect_error(build(&s, &m, &err), SB_ERR_INPUT, &err, "multiple of 4", "group of 2");
    stored_free(&s);
    /* Q8: a non-finite or negative bound, a code above 255 */
    make_stored(&s, 40, 70, 32, 32, 32, SB_SCALES_Q8, 0, false, rng);
    uint16_t saved_bound = s.tile_scales[2];
    s.tile_scales[2] = 0x7e00;
    expect_error(build(&s, &m, &err), SB_ERR_FORMAT, &err, "scale bound", "NaN bound");
    s.tile_scales[2] = sb_f32_to_f16(-1.0f);
    expect_error(build(&s, &m, &err), SB_ERR_FORMAT, &err, "scale bound", "negative bound");
    s.tile_scales[2] = saved_bound;
    s.scales[3] = 256;
    expect_error(build(&s, &m, &err), SB_ERR_FORMAT, &err, "above 255", "code 256");
    stored_free(&s);
}

/* A non-finite activation makes its own token's outputs non-finite (NaN with rounded
 * activations, whose block scale becomes NaN; inf or NaN with float ones, as a float product's)
 * and leaves the others alone. */
static void check_nonfinite_activation(const sb_kernel *kernels, int nkernels, sb_test_rng *rng)
{
    sb_error err;
    stored s;
    make_stored(&s, 24, 64, 32, 32, 32, SB_SCALES_Q8, 3, false, rng);
    sb_qmatrix m;
    SB_CHECK(build(&s, &m, &err) == SB_OK);
    float *x = random_activations(2, 64, rng);
    x[64 + 10] = INFINITY;
    const sb_act_precision precisions[] = {SB_ACT_INT8, SB_ACT_F32};
    for (int i = 0; i < 2; i++) {
        sb_qact act;
        SB_CHECK(sb_qact_create(&m, 2, precisions[i], &act, &err) == SB_OK);
        sb_qact_quantize(&act, x, 2, 64, 1);
        float y[48];
        for (int k = 0; k < nkernels; k++) {
            sb_qmatrix_mul(&kernels[k], &m, &act, y, 24, false, 1);
            bool first_finite = true, second_poisoned = true;
            for (int r = 0; r < 24; r++) {
                first_finite &= isfinite(y[r]) != 0;
                second_poisoned &= precisions[i] == SB_ACT_F32 ? !isfinite(y[24 + r]) : isnan(y[24 + r]) != 0;
            }
            SB_CHECK_MSG(first_finite && second_poisoned, "%s %s: a non-finite activation is not confined to its token",
                         sb_isa_name(kernels[k].isa), precisions[i] == SB_ACT_F32 ? "float" : "int8");
        }
        sb_qact_free(&act);
    }
    sb_qmatrix_free(&m);
    free(x);
    stored_free(&s);
}

/* Which activations batches run at (sb_kernel_batch_precision): float for groups of 32 and for
 * matrices with 5% or more of their tiles wider than 4 bits on the AVX2 and scalar paths, from 8
 * tokens; 16-bit otherwise and always on AVX-512. */
static void check_batch_precision(sb_test_rng *rng)
{
    sb_kernel scalar = {SB_ISA_SCALAR, sb_kernel_panels_scalar}, avx512 = {SB_ISA_AVX512, sb_kernel_panels_scalar};
    struct {
        int tile, group, wide_tiles; /* tiles of 8 bits among 16 4-bit ones */
        int64_t ntokens;
        sb_act_precision expected;
    } cases[] = {{32, 32, 0, 64, SB_ACT_F32},    {32, 32, 0, 8, SB_ACT_F32},      {32, 32, 0, 7, SB_ACT_INT16},
                 {128, 128, 0, 64, SB_ACT_INT16}, {128, 64, 0, 64, SB_ACT_INT16}, {128, 128, 1, 64, SB_ACT_F32},
                 {128, 128, 1, 2, SB_ACT_INT16}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        stored s;
        make_stored(&s, 4 * cases[i].tile, 4 * cases[i].tile, cases[i].tile, cases[i].tile, cases[i].group, SB_SCALES_Q8,
                    4, false, rng);
        sb_error err;
        sb_qmatrix m;
        SB_CHECK(build(&s, &m, &err) == SB_OK);
        /* 1 of 16 tiles (6%) made 8 bits wide; the kernels' choice only reads the bit map */
        for (int t = 0; t < cases[i].wide_tiles; t++)
            m.bits_per_tile[t] = 8;
        sb_act_precision got = sb_kernel_batch_precision(&scalar, &m, cases[i].ntokens);
        SB_CHECK_MSG(got == cases[i].expected, "tiles %d group %d, %d wide tiles, %lld tokens: batch precision %d, expected %d",
                     cases[i].tile, cases[i].group, cases[i].wide_tiles, (long long)cases[i].ntokens, (int)got,
                     (int)cases[i].expected);
        SB_CHECK(sb_kernel_batch_precision(&avx512, &m, cases[i].ntokens) == SB_ACT_INT16);
        sb_qmatrix_free(&m);
        stored_free(&s);
    }
}

/* Room for an absurd number of tokens is refused with a message, not wrapped around. */
static void check_activation_room(sb_test_rng *rng)
{
    stored s;
    make_stored(&s, 32, 64, 32, 32, 32, SB_SCALES_Q8, 2, false, rng);
    sb_error err;
    sb_qmatrix m;
    SB_CHECK(build(&s, &m, &err) == SB_OK);
    sb_qact act;
    /* 2^56 + 1 tokens of 64 floats: 2^64 + 256 bytes, which wraps to 256; the rounded ones
     * (64-byte rows) the same */
    const sb_act_precision precisions[] = {SB_ACT_F32, SB_ACT_INT8, SB_ACT_INT16};
    for (int i = 0; i < 3; i++) {
        SB_CHECK(sb_qact_create(&m, ((int64_t)1 << 56) + 1, precisions[i], &act, &err) == SB_ERR_NOMEM);
        SB_CHECK_MSG(strstr(err.message, "overflows") != NULL, "message '%s'", err.message);
    }
    sb_qmatrix_free(&m);
    stored_free(&s);
}

/* The AVX2 path takes affine-q8's 2^(-s/32) as the product of two small factor tables
 * (sb_kernel_avx2.c), not from the table: it must give the table's floats exactly, for every
 * code, or its results would drift from the scalar path's. */
static void check_q8_multipliers(void)
{
    if (!sb_cpu_supports(SB_ISA_AVX2))
        return;
    float table[256];
    sb_kernel_avx2_q8_table(table);
    const float *reference = sb_q8_scale_table();
    int wrong = 0;
    for (int s = 0; s < 256; s++)
        wrong += memcmp(&table[s], &reference[s], sizeof(float)) != 0;
    SB_CHECK_MSG(wrong == 0, "avx2: %d of 256 affine-q8 multipliers differ from sb_q8_scale_table()", wrong);
}

/* Bit for bit, every token of a batch equals that token alone (int8: the decode path, its own
 * code; 16-bit: the batch path with one token), on every path: the batch kernels (AVX2 tile
 * pairs, 4 tokens a step) must sum the same integers and do the same float operations in the
 * same order per (row, token). Widths 1..8, both encodings, ragged 32x32 and 128x128 tiles
 * (odd panel counts in the last tile row: a panel without a partner), groups of 32 in 128-wide
 * tiles, token counts that are not a multiple of the step, and one that crosses the 64-token
 * block. */
static void check_batch_bits(const sb_kernel *kernels, int nkernels, sb_test_rng *rng)
{
    struct {
        int64_t rows, cols;
        int tile, group;
    } shapes[] = {
        {172, 172, 32, 32},   /* last tile row 12 rows (2 panels), last tile 12 columns */
        {200, 300, 128, 128}, /* last tile row 72 rows (9 panels), last tile 44 columns */
        {136, 256, 128, 32},  /* a group per super-block; a 1-panel tile row */
    };
    static const int64_t counts[] = {13, 70};
    int failures = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int format = 0; format < 2; format++)
            for (int bits = 1; bits <= 8; bits++) {
                stored s;
                make_stored(&s, shapes[i].rows, shapes[i].cols, shapes[i].tile, shapes[i].tile, shapes[i].group,
                            (sb_scale_format)format, bits, false, rng);
                sb_error err;
                sb_qmatrix m;
                SB_CHECK(build(&s, &m, &err) == SB_OK);
                int64_t rows = s.desc.rows, cols = s.desc.cols;
                for (int precision = 0; precision < 3; precision++)
                    for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
                        int64_t ntokens = counts[c];
                        float *x = random_activations(ntokens, cols, rng);
                        float *y = malloc((size_t)(ntokens * rows) * sizeof(float));
                        float *y_one = malloc((size_t)rows * sizeof(float));
                        sb_qact batch, one;
                        SB_CHECK(sb_qact_create(&m, ntokens, (sb_act_precision)precision, &batch, &err) == SB_OK);
                        SB_CHECK(sb_qact_create(&m, 1, (sb_act_precision)precision, &one, &err) == SB_OK);
                        sb_qact_quantize(&batch, x, ntokens, cols, 1);
                        for (int k = 0; k < nkernels; k++) {
                            sb_qmatrix_mul(&kernels[k], &m, &batch, y, rows, false, 1);
                            int64_t bad_token = -1, bad_row = -1;
                            for (int64_t t = 0; t < ntokens && bad_token < 0; t++) {
                                sb_qact_quantize(&one, x + t * cols, 1, cols, 1);
                                sb_qmatrix_mul(&kernels[k], &m, &one, y_one, rows, false, 1);
                                for (int64_t r = 0; r < rows && bad_row < 0; r++)
                                    if (memcmp(&y_one[r], &y[t * rows + r], sizeof(float)) != 0) {
                                        bad_token = t;
                                        bad_row = r;
                                    }
                            }
                            failures += bad_token >= 0;
                            SB_CHECK_MSG(bad_token < 0 || failures > 8,
                                         "%s: %lldx%lld tiles %d group %d %s bits %d %s, %lld tokens: token %lld row "
                                         "%lld differs from the token alone",
                                         sb_isa_name(kernels[k].isa), (long long)rows, (long long)cols, shapes[i].tile,
                                         shapes[i].group, sb_scale_format_name((sb_scale_format)format), bits,
                                         precision == SB_ACT_F32 ? "float" : precision ? "16-bit" : "int8", (long long)ntokens, (long long)bad_token,
                                         (long long)bad_row);
                        }
                        sb_qact_free(&batch);
                        sb_qact_free(&one);
                        free(x);
                        free(y);
                        free(y_one);
                    }
                sb_qmatrix_free(&m);
                stored_free(&s);
            }
    SB_CHECK_MSG(failures == 0, "batch bits: %d configurations differ from one token at a time", failures);
}

static void check_isa_choice(void)
{
    /* the choice as a function of the CPU's features */
    sb_cpu_features zen3 = {.avx = true, .avx2 = true, .fma = true, .f16c = true};
    sb_cpu_features skylake_sp = zen3, cascade_lake = zen3, no_f16c = zen3;
    skylake_sp.avx512f = skylake_sp.avx512bw = skylake_sp.avx512vl = skylake_sp.avx512dq = skylake_sp.avx512cd = true;
    cascade_lake = skylake_sp;
    cascade_lake.avx512vnni = true;
    no_f16c.f16c = false;
    SB_CHECK(sb_isa_best(&zen3) == SB_ISA_AVX2);
    SB_CHECK(sb_isa_best(&skylake_sp) == SB_ISA_AVX2); /* AVX-512 without VNNI */
    SB_CHECK(sb_isa_best(&cascade_lake) == SB_ISA_AVX512);
    SB_CHECK(sb_isa_best(&no_f16c) == SB_ISA_SCALAR);
    SB_CHECK(!sb_isa_supported(&zen3, SB_ISA_AVX512) && sb_isa_supported(&cascade_lake, SB_ISA_AVX2));
    sb_error err;
    sb_isa isa;
    setenv("SCALEBITS_ISA", "neon", 1);
    SB_CHECK(sb_cpu_choose_isa(&isa, &err) == SB_ERR_USAGE && strstr(err.message, "SCALEBITS_ISA=neon"));
    setenv("SCALEBITS_ISA", "scalar", 1);
    SB_CHECK(sb_cpu_choose_isa(&isa, &err) == SB_OK && isa == SB_ISA_SCALAR);
    for (int i = 0; i < SB_ISA_COUNT; i++)
        if (!sb_cpu_supports((sb_isa)i)) {
            setenv("SCALEBITS_ISA", sb_isa_name((sb_isa)i), 1);
            SB_CHECK(sb_cpu_choose_isa(&isa, &err) == SB_ERR_INPUT && strstr(err.message, "cannot run"));
        }
    unsetenv("SCALEBITS_ISA");
    SB_CHECK(sb_cpu_choose_isa(&isa, &err) == SB_OK && isa == sb_cpu_best_isa());
}

int main(void)
{
    sb_kernel kernels[SB_ISA_COUNT];
    int nkernels = sb_test_kernel_paths(kernels);
    printf("testing the paths:");
    for (int k = 0; k < nkernels; k++)
        printf(" %s", sb_isa_name(kernels[k].isa));
    printf("\n");
    sb_test_rng rng = {11};
    struct {
        int64_t rows, cols;
        int tile_rows, tile_cols, group;
    } shapes[] = {
        {172, 172, 32, 32, 32},   /* ragged both ways, like stories260K's FFN */
        {200, 300, 128, 128, 128}, /* ragged 128x128 */
        {136, 256, 128, 128, 32},  /* groups of 32 in 128-wide tiles */
        {100, 600, 64, 256, 64},   /* 64x256 tiles, ragged */
        {50, 100, 24, 48, 12},     /* tile width not a multiple of 32, groups of 12 */
        {40, 96, 16, 32, 16},      /* groups of 16 */
        {280, 64, 256, 32, 32},    /* 32 panels in a tile row: batches run them 16 at a time */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int format = 0; format < 2; format++)
            for (int bits = 0; bits <= 8; bits++) {
                stored s;
                make_stored(&s, shapes[i].rows, shapes[i].cols, shapes[i].tile_rows, shapes[i].tile_cols,
                            shapes[i].group, (sb_scale_format)format, bits, i == 0, &rng);
                char label[160];
                snprintf(label, sizeof label, "%lldx%lld tiles %dx%d group %d %s bits %s%d",
                         (long long)shapes[i].rows, (long long)shapes[i].cols, shapes[i].tile_rows,
                         shapes[i].tile_cols, shapes[i].group, sb_scale_format_name((sb_scale_format)format),
                         bits ? "" : "mixed ", bits);
                /* a batch crossing the 64-token block with a remainder, on the mixed widths */
                int64_t ntokens = bits == 0 ? 70 : bits % 2 ? 1 : 5;
                check_matrix(&s, ntokens, SB_ACT_INT8, kernels, nkernels, &rng, label);
                if (bits == 0 || bits == 3 || bits == 8) {
                    char precise[200];
                    snprintf(precise, sizeof precise, "%s 16-bit activations", label);
                    check_matrix(&s, ntokens, SB_ACT_INT16, kernels, nkernels, &rng, precise);
                }
                /* float activations: every width (each has its own decode to floats), and a
                 * batch long enough for several token steps with a remainder */
                snprintf(label + strlen(label), sizeof label - strlen(label), " float activations");
                check_matrix(&s, bits == 0 ? 70 : bits % 2 ? 1 : 13, SB_ACT_F32, kernels, nkernels, &rng, label);
                stored_free(&s);
            }
    check_batch_bits(kernels, nkernels, &rng);
    check_batch_precision(&rng);
    check_activation_room(&rng);
    check_bad_input(&rng);
    check_nonfinite_activation(kernels, nkernels, &rng);
    check_isa_choice();
    check_q8_multipliers();
    return sb_test_finish("test_kernels");
}
