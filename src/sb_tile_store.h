/* sb_tile_store: one weight matrix's tiles quantized at every allowed bitwidth, packed: what a
 * search that moves tiles between bitwidths needs instead of the weights (the taylor search,
 * mpi/sb_refine.h). A (tile, option)'s quantized values depend only on the FP weights, the
 * quantizer's importance and the GPTQ factors, none of which a search changes, so each is
 * quantized once, by exactly the call the curves and the write use (sb_quantize_tile or
 * sb_quantize_tile_gptq_factored), and decoded when needed.
 *
 * Layout: per (tile, option), in tile order then option order, the tile's scales and zeros
 * (uint16 per (row, group), as sb_tile_out has them) and its codes as one packed stream in the
 * file's format (sb_pack.h: rows in order, LSB first, padded to a byte); the Q8 bound D per
 * (tile, option) apart. Memory per weight: the sum over the options of bits / 8, plus 4 bytes per
 * group per option: with bits {2,3,4,8} and groups of 128, 2.25 bytes (a BF16 weight is 2).
 * Optionally (sb_tile_store_decode_all) every (tile, option) also decoded to float32: 4 bytes
 * per weight and option more, for the searches of models small enough to afford it (decoding is
 * then a copy); the values are the same either way.
 *
 * Decoding gives exactly sb_dequantize_tile's floats (the same per-group operations), so a
 * model made of decoded tiles multiplies as one made of the quantized file's decoded weights.
 * Thread-safety: after filling, every function is read-only and may run on any thread.
 */
#ifndef SB_TILE_STORE_H
#define SB_TILE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_curves.h"
#include "sb_error.h"
#include "sb_linear.h"
#include "sb_tiling.h"

struct sb_gptq_factor;

typedef struct sb_tile_store {
    sb_tiling tiling;
    int noptions;
    int bits[8];             /* ascending, as the curve options */
    sb_scale_format format;
    int64_t ntiles;
    int64_t *offset;         /* [ntiles * noptions + 1] byte offset of each (tile, option) in data */
    uint8_t *data;
    uint16_t *tile_scale;    /* [ntiles * noptions] Q8 bound D (0 for F16) */
    double *error;           /* [ntiles * noptions] the quantizer's E (what sb_quantize_block sums) */
    float *decoded;          /* NULL, or every (tile, option) decoded: rows x cols floats each, at */
    int64_t *decoded_offset; /* [ntiles * noptions] (float index) */
} sb_tile_store;

/* Bytes a store of `tiling` at these options holds (without, and with the decoded copy). */
int64_t sb_tile_store_bytes_for(const sb_tiling *tiling, const sb_curve_options *options, bool decoded);

/* Quantizes every tile of `weights` (F32 or BF16 storage, tiling->rows x tiling->cols) at every
 * option, on `threads` OpenMP threads (tiles are independent: the result does not depend on
 * the thread count). `importance` (per column, or NULL) and `gptq` (one factor per tile
 * column, or NULL) as for sb_curves_compute. On failure the store is empty. */
sb_status sb_tile_store_build(sb_tile_store *store, const sb_tiling *tiling, const sb_curve_options *options,
                              const sb_linear *weights, const float *importance,
                              const struct sb_gptq_factor *gptq, int threads, sb_error *err);
void sb_tile_store_free(sb_tile_store *store);
int64_t sb_tile_store_bytes(const sb_tile_store *store);

/* Also keeps every (tile, option) decoded (4 bytes per weight and option). */
sb_status sb_tile_store_decode_all(sb_tile_store *store, int threads, sb_error *err);
/* Drops every option of every tile but choice[tile] (kept for writing, sb_tile_store_output)
 * and the decoded copy; the store then only serves sb_tile_store_output for that choice. */
sb_status sb_tile_store_keep_only(sb_tile_store *store, const uint8_t *choice, sb_error *err);

/* Decodes rows [row0, row0 + rows) and columns [col0, col0 + cols) of tile `tile` at `option`
 * (coordinates inside the tile) into dst[i * ld + j]. `scratch`: tile_cols bytes. */
void sb_tile_store_decode(const sb_tile_store *store, int64_t tile, int option, int row0, int rows, int col0, int cols,
                          float *dst, int64_t ld, uint8_t *scratch);

/* W[row0 .. row0 + rows) x [col0 .. col0 + cols) of the matrix whose tile t is at option
 * choice[t], into dst[i * ld + j] (an sb_linear_panels fill: see sb_tile_store_panels). */
void sb_tile_store_fill(const sb_tile_store *store, const uint8_t *choice, int64_t row0, int64_t rows, int64_t col0,
                        int64_t cols, float *dst, int64_t ld);

/* For tile `tile` at option `current` and every option o < current, adds over the tile's
 * weights, g their gradient (the tile's block of `grad`, leading dimension `ld`):
 *     first[o]  += sum g (Q_o - Q_current),     second[o] += sum (g (Q_o - Q_current))^2
 * the first- and second-order terms of the taylor estimate of moving the tile to o (summed over
 * calibration batches, second is the Fisher term). Each row is summed in 8 float lanes, the
 * rows into the double sums in order: the same bits on every CPU and thread count. `scratch`:
 * (noptions + 1) x tile_cols floats + tile_cols bytes. */
void sb_tile_store_taylor_add(const sb_tile_store *store, int64_t tile, int current, const float *grad, int64_t ld,
                              double *first, double *second, float *scratch);
int64_t sb_tile_store_taylor_scratch_bytes(const sb_tile_store *store);

/* A tile's result at `option` as the write stage stores it: packed codes (*code_bytes of them),
 * scales and zeros [rows x groups] and the Q8 bound. */
typedef struct sb_stored_tile {
    const uint8_t *codes;
    int64_t code_bytes;
    const uint16_t *scales, *zeros;
    uint16_t tile_scale;
    double error;            /* the quantizer's E for it */
} sb_stored_tile;
sb_stored_tile sb_tile_store_output(const sb_tile_store *store, int64_t tile, int option);

#endif
