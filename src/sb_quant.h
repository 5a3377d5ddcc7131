/* sb_quant: the in-tile quantizer. Asymmetric uniform codes with an F16 scale and zero per
 * (row, group):  x ~ scale * q + zero,  q in 0 .. 2^bits - 1,  bits in 1..8.
 *
 * Every routine minimises the importance-weighted squared error  E = sum_i w_i (x_i - xhat_i)^2
 * (w = NULL means all ones, the data-free `mse` sensitivity) and reports E measured with the
 * scale and zero as stored (rounded to F16) and the codes re-rounded against those stored
 * values, so the error a curve records is the error a reader of the file gets.
 *
 * Pure functions on caller-owned buffers; thread-safe; no allocation.
 */
#ifndef SB_QUANT_H
#define SB_QUANT_H

#include <stdint.h>

enum { SB_MAX_BITS = 8 };

typedef enum sb_scale_search {
    /* scale = (max - min) / (2^b - 1), zero = min: the reference RTN of ../shared/reference.md */
    SB_SEARCH_MINMAX = 0,
    /* Trial inverse scales around the min-max one (clipping the range when that lowers E), each
     * followed by weighted least-squares refits of (scale, zero) alternating with re-rounding;
     * the best trial wins. Never worse than MINMAX (it is one of the trials). */
    SB_SEARCH_WEIGHTED,
} sb_scale_search;

typedef struct sb_quant_options {
    sb_scale_search search;
    int trials;      /* trial scales for SB_SEARCH_WEIGHTED (default 16) */
    int refits;      /* round/refit alternations per trial (default 3) */
} sb_quant_options;

/* The defaults: weighted search, 16 trials, 3 refits. */
sb_quant_options sb_quant_default_options(void);

/* Quantizes one group of `n` contiguous values (importance `w`, contiguous, or NULL). Writes `n`
 * codes, the F16 bit patterns of scale and zero; returns E. */
double sb_quantize_group(const float *x, const float *w, int n, int bits, const sb_quant_options *options,
                         uint8_t *codes, uint16_t *scale_f16, uint16_t *zero_f16);

/* Decodes one group: xhat_i = f16(scale) * q_i + f16(zero), computed in float32. */
void sb_dequantize_group(const uint8_t *codes, int n, uint16_t scale_f16, uint16_t zero_f16, float *out);

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
 * within the tile) scales[r * groups + g], zeros[...], groups = ceil(cols / group). */
typedef struct sb_tile_out {
    uint8_t *codes;
    uint16_t *scales;
    uint16_t *zeros;
} sb_tile_out;

static inline int sb_tile_groups(int cols, int group) { return (cols + group - 1) / group; }

/* Quantizes a tile at `bits`; returns its total E. */
double sb_quantize_tile(const sb_tile_in *tile, int bits, const sb_quant_options *options, sb_tile_out *out);

/* Decodes a tile into out[r * out_ld + c]. */
void sb_dequantize_tile(const sb_tile_out *quantized, int rows, int cols, int group, float *out, int64_t out_ld);

#endif
