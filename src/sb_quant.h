/* sb_quant: the in-tile quantizer. Asymmetric uniform codes, q in 0 .. 2^bits - 1, bits in
 * 1..8, with a scale and an offset per (row, group) stored in one of two formats:
 *
 *   F16  x ~ scale * q + zero, scale and zero F16 each: 32 bits per group.
 *   Q8   x ~ scale * (q - z), scale = D * 2^(-s/32) and z = c * 2^bits / 256, with an 8-bit
 *        scale code s and an 8-bit zero-point code c per group and one F16 scale bound D per
 *        tile: 16 bits per group + 16 per tile. The log-scale code gives every group the same
 *        relative precision (2.2% steps over a 256:1 range below the tile's largest scale) and
 *        the zero point is a fraction of a level (1/64 at 2 bits, a whole level at 8).
 *     Q8 halves the metadata: with groups of 32, 0.52 instead of 1.03 bits per weight.
 *
 * Every routine minimises the importance-weighted squared error  E = sum_i w_i (x_i - xhat_i)^2
 * (w = NULL means all ones, the data-free `mse` sensitivity) and reports E measured with the
 * scale and zero as stored (rounded to F16) and the codes re-rounded against those stored
 * values, so the error a curve records is the error a reader of the file gets.
 *
 * Pure functions on caller-owned buffers; thread-safe; no allocation (but see sb_tile_out.work).
 * The search runs in kernels compiled for each vector level (sb_quant_kernels.h), with the same
 * results on every CPU.
 */
#ifndef SB_QUANT_H
#define SB_QUANT_H

#include <stdint.h>

enum { SB_MAX_BITS = 8, SB_MAX_REFITS = 16 };

typedef enum sb_scale_search {
    /* scale = (max - min) / (2^b - 1), zero = min: the reference RTN of ../shared/reference.md */
    SB_SEARCH_MINMAX = 0,
    /* Trial inverse scales around the min-max one (clipping the range when that lowers E), each
     * followed by weighted least-squares refits of (scale, zero) alternating with re-rounding;
     * the best trial wins. Never worse than MINMAX (it is one of the trials). */
    SB_SEARCH_WEIGHTED,
} sb_scale_search;

typedef enum sb_scale_format { SB_SCALES_F16 = 0, SB_SCALES_Q8 } sb_scale_format;

const char *sb_scale_format_name(sb_scale_format format); /* "affine-f16", "affine-q8" */

/* Metadata bits of a quantized tensor, independent of the bitwidths: scales and zeros of every
 * (row, group) and the per-tile scale bounds (Q8). The bit map is counted by the caller. */
int64_t sb_scale_bits(sb_scale_format format, int64_t rows, int64_t groups_per_row, int64_t tiles);

/* The Q8 scale multipliers: table[s] = the float nearest to 2^(-s/32), s = 0..255. */
const float *sb_q8_scale_table(void);

typedef struct sb_quant_options {
    sb_scale_search search;
    sb_scale_format format;
    int trials;      /* trial scales for SB_SEARCH_WEIGHTED (default 8) */
    int refits;      /* round/refit alternations per trial (default 3, at most SB_MAX_REFITS) */
    /* Which compiled kernels run the search (sb_quant_kernels.h): 0 (default) the best this CPU
     * has; 1 + an sb_cpu_level that one, or the best the CPU has below it. The results are the
     * same bits for every choice: this exists for the tests that check it. */
    int kernels;
} sb_quant_options;

/* The defaults: weighted search, 8 trials, 3 refits. */
sb_quant_options sb_quant_default_options(void);

/* Quantizes one group of `n` contiguous values (importance `w`, contiguous, or NULL). Writes `n`
 * codes, the F16 bit patterns of scale and zero; returns E. */
double sb_quantize_group(const float *x, const float *w, int n, int bits, const sb_quant_options *options,
                         uint8_t *codes, uint16_t *scale_f16, uint16_t *zero_f16);

/* Decodes one F16 group: xhat_i = f16(scale) * q_i + f16(zero), computed in float32. */
void sb_dequantize_group(const uint8_t *codes, int n, uint16_t scale_f16, uint16_t zero_f16, float *out);
/* Decodes one Q8 group: xhat_i = (f16(tile_scale) * table[s]) * (q_i - c * 2^bits / 256), in
 * float32, in exactly that order of operations. */
void sb_dequantize_group_q8(const uint8_t *codes, int n, int bits, uint16_t tile_scale_f16, uint16_t scale_code,
                            uint16_t zero_code, float *out);

/* A tile to quantize: `rows x cols` floats at x[r * x_ld + c]; importance at
 * w[r * w_row_stride + c] (w_row_stride = 0 broadcasts one row of per-column weights, as the
 * `act` sensitivity does), or w = NULL. */
typedef struct sb_tile_in {
    const float *x;
    int64_t x_ld;
    const float *w;
    int64_t w_row_stride;
    int rows, cols;
    int group;
} sb_tile_in;

/* Results for one tile: codes[r * cols + c] (one code per byte, unpacked), and per (row, group
 * within the tile) scales[r * groups + g], zeros[...], groups = ceil(cols / group): F16 bit
 * patterns (F16) or the 8-bit codes s and c (Q8). `tile_scale` is the Q8 bound D (F16 bits);
 * `bits` and `format` are filled in by sb_quantize_tile for sb_dequantize_tile. */
typedef struct sb_tile_out {
    uint8_t *codes;
    uint16_t *scales;
    uint16_t *zeros;
    uint16_t tile_scale;
    int bits;
    sb_scale_format format;
    /* Optional scratch of sb_tile_work_floats(rows, cols, group) floats for the Q8 search. NULL:
     * sb_quantize_tile uses its stack, or the heap for tiles of more than 512 groups, and
     * returns NaN if that allocation fails. */
    float *work;
} sb_tile_out;

static inline int sb_tile_groups(int cols, int group) { return (cols + group - 1) / group; }
static inline int64_t sb_tile_work_floats(int rows, int cols, int group)
{
    return 2 * (int64_t)rows * sb_tile_groups(cols, group);
}

/* Quantizes a tile at `bits` in options->format; returns its total E, or NaN if out->work is
 * NULL and the tile's Q8 scratch cannot be allocated. */
double sb_quantize_tile(const sb_tile_in *tile, int bits, const sb_quant_options *options, sb_tile_out *out);

/* Decodes a tile into out[r * out_ld + c] (in the format it was quantized in). */
void sb_dequantize_tile(const sb_tile_out *quantized, int rows, int cols, int group, float *out, int64_t out_ld);

/* ---- Building blocks for quantizers that fix a tile's groups one at a time (sb_gptq.h) -----
 * sb_quantize_tile is these steps in order; a caller that changes the values between them
 * (error feedback) uses them directly and gets codes sb_dequantize_tile decodes as they are. */

/* Codes of `n` values at a fixed stored F16 (scale, zero): each the nearest level under
 * sb_dequantize_group's rule, exactly as sb_quantize_group rounds. Returns E. */
double sb_code_group(const float *x, const float *w, int n, int bits, uint16_t scale_f16, uint16_t zero_f16,
                     uint8_t *codes);
/* The same for a Q8 group (tile bound D, scale code s, zero-point code c). */
double sb_code_group_q8(const float *x, const float *w, int n, int bits, uint16_t tile_scale_f16,
                        uint16_t scale_code, uint16_t zero_code, uint8_t *codes);

/* Q8 step 1: a group's best unrounded scale and zero point (in levels) with the grid holding 0;
 * scale 0 for an all-zero group. `work` is n bytes of scratch. The tile's bound D is
 * sb_q8_tile_bound of the largest scale over its groups. */
void sb_search_group_q8(const float *x, const float *w, int n, int bits, const sb_quant_options *options,
                        uint8_t *work, float *scale, float *zero_point);
/* The F16 bound D (bits) for a largest group scale: rounded up, so no scale exceeds it. */
uint16_t sb_q8_tile_bound(float max_scale);
/* Q8 step 2: the scale and zero-point codes of a group under D from its searched (scale, zero
 * point): the best of their neighbours against the group's E. Writes the codes; returns E. */
double sb_choose_codes_q8(const float *x, const float *w, int n, int bits, const sb_quant_options *options,
                          uint16_t tile_scale_f16, float scale, float zero_point, uint8_t *codes, uint16_t *scale_code,
                          uint16_t *zero_code);

#endif
