/* sb_kernel: a quantized weight matrix held in memory in its packed form, and the products
 * y = W x (decode, one token) and Y = W X (a batch of tokens) computed straight from it.
 *
 * The stored layout (docs/FORMAT.md: one dense LSB-first bit stream per tile, tile after tile)
 * is repacked ONCE, when the matrix is built, into the kernel layout of docs/KERNELS.md:
 * panels of 8 output rows in which every 32-bit SIMD lane is one output row and holds 4
 * consecutive input columns, codes split into bit planes (4, 2 and 1 bits: a 3-bit tile is a
 * 2-bit plane plus a 1-bit plane), each panel's group scales and zeros kept in their stored
 * encoding right before its codes. The repacked matrix has the stored size (codes at their
 * stored bitwidth, 8 or 16 bits of metadata per row and group) plus the padding of ragged
 * edges to 8 rows and 32 columns. Measured on the dense layout, a 3-bit tile decoded at a
 * quarter of memory speed; the planes decode at memory speed (docs/KERNELS.md has figures).
 *
 * Arithmetic. Activations are quantized per token in blocks of 32 columns to int8 (x'_c = d_b
 * a_c, a_c in -127..127, d_b = max|x| over the block / 127) or, for batches, to 16 bits held
 * as two int8 parts (sb_act_precision), and
 *     y_r = sum over segments  s_{r,g} * d_b * (sum_c q_{r,c} a_c)  +  sum over groups  o_{r,g} * S_g
 * where a segment is the columns a group and an activation block share, the inner sums are
 * exact integers, S_g = sum of x'_c over group g, and (s, o) is the group's affine decoding
 * (affine-f16: s = scale, o = zero; affine-q8: s = D_t M[s_code], o = -s z). So the result is
 * dequantize(W) times the int8-rounded x, up to float rounding: within a few ulps of
 * sum |w x'| of that product (tests/unit/test_kernels.c checks every path against
 * sb_dequantize_tile and the stored decoding rule). The rounding of x costs at most d_b / 2
 * per element; scalebits-eval measures what it costs in perplexity. Batches on the AVX2 and
 * scalar paths keep x as floats instead (SB_ACT_F32): w = s q + o decoded a block at a time and
 * y_r = sum over columns w_{r,c} x_c, one FMA chain per row and token.
 *
 * Determinism. Each output row is computed by one thread in a fixed order (a tile row's tiles
 * by bitwidth, then column: the order they are stored in, so a panel is read front to back and
 * the kernel switches width at most 7 times a panel), so results are the same bits for any
 * thread count and any batch size on one kernel path. Paths (scalar, AVX2, AVX-512) agree to
 * float rounding (FMA contraction and summation order differ), not bit for bit.
 *
 * Memory. Products never build a dequantized copy of the matrix: a thread holds at most one
 * 8 x 32 block of unpacked codes and the float accumulators of its tokens, or with float
 * activations (SB_ACT_F32) 16 rows x SB_F32_SPAN_COLS columns of one tile row as floats
 * (128 KiB, heap; 8 KiB on the stack if that fails).
 *
 * Thread-safety: a built matrix is read-only and may be used by concurrent products; an
 * sb_qact is written by sb_qact_quantize and read by products.
 */
#ifndef SB_KERNEL_H
#define SB_KERNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_cpu.h"
#include "sb_error.h"
#include "sb_quant.h"
#include "sb_tiling.h"

/* Kernel layout constants (docs/KERNELS.md). */
enum {
    SB_PANEL_ROWS = 8,  /* output rows per panel: one per 32-bit lane of a 256-bit vector */
    SB_CHUNK_COLS = 4,  /* input columns per lane: the 4 bytes one int8 dot product sums */
    SB_SUPER_COLS = 32, /* columns per super-block (8 chunks); also the activation block */
};

/* ---- The packed matrix ------------------------------------------------------------------------ */

/* What the stored tiles are (the attributes of a /tensors/<name> group). */
typedef struct sb_qmatrix_desc {
    const char *name;                  /* for messages (copied) */
    int64_t rows, cols;
    int tile_rows, tile_cols, group;   /* group must divide tile_cols and be a multiple of 4 */
    sb_scale_format format;
    uint32_t allowed_bits;             /* bit b set: bitwidth b may appear (the file's bit set); 0: 1..8 */
} sb_qmatrix_desc;

typedef struct sb_qmatrix {
    char *name;
    int64_t rows, cols;
    sb_tiling tiling;
    sb_scale_format format;
    int padded_tile_cols;      /* tile_cols rounded up to SB_SUPER_COLS */
    int segment_cols;          /* gcd(group, 32): columns sharing one group and one activation block */
    int64_t panels;            /* sum over tile rows of ceil(rows of the tile row / 8) */
    int64_t meta_bytes;        /* per panel: groups_per_row x (16 q8 | 32 f16), rounded up to 32 */
    uint8_t *bits_per_tile;    /* [tiles] 1..8 */
    float *tile_bounds;        /* [tiles] affine-q8 bound D_t (the stored F16, widened); NULL for affine-f16 */
    struct sb_kcolumn *columns; /* [tiles_across] what every tile of a tile column shares */
    int64_t *panel_offset;     /* [panels + 1]: byte offset of each panel in `data` */
    int64_t *panel_row0;       /* [panels]: first output row of each panel */
    int64_t *code_offset;      /* [tiles]: offset of a tile's codes after its panel's metadata */
    int32_t *tile_order;       /* [tiles]: per tile row, its tile columns in storage order: by
                                * bitwidth, then column (products sum tiles in this order) */
    uint8_t *data;             /* 64-byte aligned: the panels (docs/KERNELS.md) */
    int64_t data_bytes;
    const float *q8_table;     /* sb_q8_scale_table() */
    int64_t tile_rows_filled;  /* tile rows given to sb_qmatrix_fill_tile_row so far (in order) */
} sb_qmatrix;

/* Checks the description and the bit map (every width 1..8 and in allowed_bits) and allocates
 * the matrix (contents undefined until every tile row is filled). Errors name desc->name:
 * SB_ERR_FORMAT for a bit map or tiling a file cannot hold, SB_ERR_INPUT for a group the
 * kernels cannot run (not a multiple of 4), SB_ERR_NOMEM. On failure nothing needs freeing. */
sb_status sb_qmatrix_create(const sb_qmatrix_desc *desc, const uint8_t *bits_per_tile, const uint16_t *tile_scales,
                            sb_qmatrix *matrix, sb_error *err);

/* Bytes of stored codes of tile row `tile_row` (its tiles' dense streams, one after another). */
int64_t sb_qmatrix_stored_row_bytes(const sb_qmatrix *matrix, int64_t tile_row);

/* Repacks tile row `tile_row` (tile rows in order 0, 1, ...) from its stored form: `codes` the
 * tiles' dense streams as stored (`code_bytes` must equal sb_qmatrix_stored_row_bytes),
 * `scales` and `zeros` [rows of the tile row x groups_per_row] as stored (F16 bits, or the
 * 8-bit codes of affine-q8). Errors (naming the matrix, tile, row and group): codes of
 * another length, a non-finite F16 scale or zero, a non-finite or negative Q8 bound, a Q8
 * code above 255. */
sb_status sb_qmatrix_fill_tile_row(sb_qmatrix *matrix, int64_t tile_row, const uint8_t *codes, int64_t code_bytes,
                                   const uint16_t *scales, const uint16_t *zeros, sb_error *err);

/* The whole matrix from memory at once: create + every tile row (for tests and converters);
 * `codes` holds every tile as stored, `scales`/`zeros` are [rows x groups_per_row]. */
sb_status sb_qmatrix_from_stored(const sb_qmatrix_desc *desc, const uint8_t *bits_per_tile,
                                 const uint16_t *tile_scales, const uint8_t *codes, int64_t code_bytes,
                                 const uint16_t *scales, const uint16_t *zeros, sb_qmatrix *matrix, sb_error *err);

void sb_qmatrix_free(sb_qmatrix *matrix);

/* Bytes a product reads per token from the matrix: the panels and the tile bounds (4 bytes
 * each: widened once at build time instead of per panel). */
int64_t sb_qmatrix_bytes(const sb_qmatrix *matrix);

/* ---- Quantized activations -------------------------------------------------------------------- */

/* How finely activations are rounded (per block of 32 positions, m = the block's max |x|):
 *   SB_ACT_INT8   a_c = round(x_c / d) in -127..127, d = m / 127: one int8 dot product per
 *                 chunk. Costs up to 0.17% in perplexity on a heavily quantized small model
 *                 (stories260K at 3.5 bits per weight; docs/KERNELS.md), well below that on the
 *                 others: the decode (one token) path, where speed is memory-bound.
 *   SB_ACT_INT16  v_c = round(x_c / d) in -32512..32512, d = m / 32512, held as two int8 parts
 *                 hi = round(v / 255) and lo = v - 255 hi (both -127..127), and the dot product
 *                 is 255 (q . hi) + (q . lo): exact integers, twice the multiply-adds, 256 times
 *                 finer rounding. For batches (evaluation, prefill) where it is the faster
 *                 (sb_kernel_batch_precision).
 *   SB_ACT_F32    x as given (no rounding): a pair of panels is decoded to floats a span of at
 *                 most SB_F32_SPAN_COLS columns at a time (16 rows x 2048 columns, 128 KiB,
 *                 held in L2 by one thread) and multiplied by float FMAs, every weight used by
 *                 all the batch's tokens: for batches where it is the faster
 *                 (sb_kernel_batch_precision). The result is dequantize(W) x to float
 *                 rounding: no activation rounding at all.
 *                 Per (row, token) one FMA chain over the columns in storage order, started
 *                 from 0 (or y when accumulating): the same bits for any batch size and
 *                 thread count on one path. */
typedef enum sb_act_precision { SB_ACT_INT8 = 0, SB_ACT_INT16, SB_ACT_F32 } sb_act_precision;

/* Columns of a panel pair decoded to floats at a time by the SB_ACT_F32 products. */
enum { SB_F32_SPAN_COLS = 2048 };

/* A batch of tokens' input vectors in the layout a matrix's kernels read: per token, int8
 * values at the matrix's padded column positions (tile column j starts at j x padded_tile_cols;
 * padding is 0), one float scale per 32 positions, and the sum of x' over each group. */
typedef struct sb_qact {
    int64_t max_tokens, ntokens;
    int64_t cols;
    int tile_cols, group, padded_tile_cols;
    sb_act_precision precision;
    int64_t width;           /* positions per token (tiles_across x padded_tile_cols) */
    int64_t stride;          /* bytes from one token's row to the next: width rounded up to 64, plus 64
                              * when that is a multiple of 4096 (else the 8 rows a batch kernel reads
                              * at once share L1 sets: measured 2x slower at hidden 4096) */
    int64_t blocks;          /* width / 32 */
    int64_t groups;          /* ceil(cols / group) */
    int8_t *values;          /* [max_tokens x stride], 32-byte aligned rows: a (INT8) or hi (INT16);
                              * NULL for F32 */
    int8_t *low;             /* [max_tokens x stride]: lo (INT16); NULL for INT8 */
    float *block_scales;     /* [max_tokens x blocks] d_b */
    float *group_sums;       /* [max_tokens x groups] S_g */
    float *floats;           /* F32 only: [max_tokens x float_stride] x at its own column positions
                              * (no padding between tiles); NULL otherwise */
    int64_t float_stride;    /* floats from one token's row to the next: cols rounded up to 16,
                              * plus 16 when a multiple of 1024 (L1 sets, as `stride`) */
    void *storage;
} sb_qact;

/* Room for `max_tokens` tokens of a matrix's input (its cols, tile_cols and group). */
sb_status sb_qact_create(const sb_qmatrix *matrix, int64_t max_tokens, sb_act_precision precision, sb_qact *act,
                         sb_error *err);
void sb_qact_free(sb_qact *act);

/* Whether `act` was made for matrices shaped like `matrix` (same cols, tile width and group). */
bool sb_qact_fits(const sb_qact *act, const sb_qmatrix *matrix);

/* Quantizes `ntokens` (<= max_tokens) rows x[t * ldx + c], c < cols (F32: copies them). A
 * non-finite value makes its block's scale NaN (the token's outputs become NaN, as a float
 * product's would). */
void sb_qact_quantize(sb_qact *act, const float *x, int64_t ntokens, int64_t ldx, int threads);

/* x'_c of token t, as the kernels see it (for references and tests). */
float sb_qact_value(const sb_qact *act, int64_t token, int64_t col);

/* ---- Products --------------------------------------------------------------------------------- */

typedef struct sb_qmatrix_args {
    const sb_qmatrix *matrix;
    const sb_qact *act;
    float *y;          /* y[t * ldy + r], t < act->ntokens, r < rows */
    int64_t ldy;
    bool accumulate;   /* y += W x' instead of y = W x' */
} sb_qmatrix_args;

/* One kernel path: products over the panels [panel_begin, panel_end) for every token. */
typedef void (*sb_qmatrix_panels_fn)(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end);

typedef struct sb_kernel {
    sb_isa isa;
    sb_qmatrix_panels_fn panels;
} sb_kernel;

/* The kernels of `isa` (SB_ERR_INPUT if this CPU cannot run them). */
sb_status sb_kernel_select(sb_isa isa, sb_kernel *kernel, sb_error *err);

/* The activation precision a batch of `ntokens` (more than one) tokens of products with `matrix`
 * runs fastest at on this path without costing perplexity: AVX-512 INT16 (its VNNI dot
 * products); AVX2 and scalar, from SB_F32_MIN_TOKENS tokens, F32 for groups narrower than 64
 * columns (the 16-bit path closes a group per 32 columns and token: 34 against 55 tokens/s at
 * 32x32 tiles on a Zen 3) and for matrices with 5% or more of their tiles wider than 4 bits,
 * INT16 otherwise (5-8% faster there; and below 8 tokens, where decoding the matrix to floats
 * costs more than it saves: 2 tokens 11.8 against 22.0 tokens/s). docs/KERNELS.md, "Batches
 * with float activations". The choice depends on the batch size: results are the same bits for
 * any thread count, not for every way of cutting a sequence into batches. */
enum { SB_F32_MIN_TOKENS = 8 };
sb_act_precision sb_kernel_batch_precision(const sb_kernel *kernel, const sb_qmatrix *matrix, int64_t ntokens);

/* The kernels chosen at start-up: SCALEBITS_ISA or the CPU's best (sb_cpu_choose_isa). */
sb_status sb_kernel_choose(sb_kernel *kernel, sb_error *err);

/* y = W x' (or y += W x') for every token of `act` (which must fit the matrix), on up to
 * `threads` threads (panels split among them; results independent of `threads`). */
void sb_qmatrix_mul(const sb_kernel *kernel, const sb_qmatrix *matrix, const sb_qact *act, float *y, int64_t ldy,
                    bool accumulate, int threads);

#endif
