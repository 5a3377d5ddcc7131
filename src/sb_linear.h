/* sb_linear: a linear layer's weight W [rows x cols] (out_features x in_features) in whatever
 * storage the runtime holds it, and the products the model needs from it.
 *
 * This is the one place where the model runtime (src/sb_model.h) meets weight storage: layer
 * code multiplies through sb_linear_forward and sb_linear_backward_input and never looks
 * inside a weight. A new storage (packed tiles read straight from a scalebits file, weights
 * kept in their source dtype, ...) is a new sb_linear_storage value plus one case in each
 * product below; nothing in the layers changes.
 *
 * Storages:
 *   SB_LINEAR_STORAGE_F32     float32 row-major: `f32` holds rows x cols floats. Calibration,
 *                             reference evaluation, and everything that reads or edits weights
 *                             (reordering, the taylor search's quantized reference points).
 *   SB_LINEAR_STORAGE_BF16    bfloat16 bit patterns row-major: `bf16` holds rows x cols values,
 *                             as a BF16 checkpoint stores them (half the memory of F32). Each
 *                             product widens a block of 512 rows (forward) or columns (input
 *                             gradient) of W to float32 at a time, in a buffer it allocates for
 *                             the call, and multiplies exactly the blocks the F32 product would:
 *                             the results are the F32 storage's, bit for bit
 *                             (tests/unit/test_model_grad.c). Weights read whole or edited need F32.
 *   SB_LINEAR_STORAGE_PANELS  a weight that exists only as a function: `panels->fill` writes any
 *                             rectangle of W as float32 (the taylor search's reference point,
 *                             decoded from its quantized tiles, mpi/sb_refine.h). Products fill
 *                             the same 512-row or -column blocks as BF16, SB_LINEAR_FILL_ROWS rows
 *                             per call on the caller's threads, and multiply them as BF16 does:
 *                             the results are those of the same values held as F32, bit for bit
 *                             (tests/unit/test_linear.c). Nothing is held: a product costs one
 *                             fill of W (and a 512 x cols or rows x 512 float buffer).
 *   SB_LINEAR_STORAGE_PACKED  the packed tiles of a scalebits file in the kernel layout
 *                             (`packed`, src/sb_kernel.h), multiplied on `kernel`'s path: a
 *                             batch of n > 1 rows with float or 16-bit activations, whichever
 *                             is faster there (sb_kernel_batch_precision), one row with int8
 *                             activations; forward only (inference). Each product allocates
 *                             its copy of X (float, or 1-2 bytes x n x cols plus scales) for
 *                             the length of the call; beta must be 0 or 1.
 *
 * Ownership: `owned` is what sb_linear_release frees (a packed matrix, or an array the linear
 * was given to keep); NULL for a view of memory owned elsewhere (the float32 arrays of
 * sb_layer_weights_alloc, the bfloat16 experts of the model's arena).
 *
 * Contract of every product: results depend only on the inputs, never on `threads` (the F32
 * products run on sb_gemm's fixed block grid); the caller holds OpenBLAS at one thread
 * (sb_blas_hold, as the model's stage functions do). A storage that cannot do a product
 * returns SB_ERR_INTERNAL naming it (a caller bug: e.g. backward through weights stored for
 * inference only).
 */
#ifndef SB_LINEAR_H
#define SB_LINEAR_H

#include <stdint.h>

#include "sb_error.h"
#include "sb_kernel.h"

typedef enum sb_linear_storage {
    SB_LINEAR_STORAGE_F32 = 0,
    SB_LINEAR_STORAGE_BF16,
    SB_LINEAR_STORAGE_PANELS,
    SB_LINEAR_STORAGE_PACKED,
} sb_linear_storage;

/* What SB_LINEAR_STORAGE_PANELS multiplies by: fill(user, row0, rows, col0, cols, dst, ld)
 * writes W[row0 + i][col0 + j] to dst[i * ld + j] for i < rows, j < cols. Called concurrently
 * from the product's OpenMP threads for disjoint rectangles (so it must be thread-safe and must
 * not start a parallel region of its own), and must give the same values on every call. */
typedef struct sb_linear_panels {
    void (*fill)(const void *user, int64_t row0, int64_t rows, int64_t col0, int64_t cols, float *dst, int64_t ld);
    const void *user;
} sb_linear_panels;

/* Rows of W per fill call of a PANELS product (the unit of its parallel filling). */
enum { SB_LINEAR_FILL_ROWS = 16 };

typedef struct sb_linear {
    int64_t rows, cols;        /* out_features, in_features */
    sb_linear_storage storage;
    float *f32;                /* SB_LINEAR_STORAGE_F32: [rows x cols] row-major; NULL otherwise */
    uint16_t *bf16;            /* SB_LINEAR_STORAGE_BF16: [rows x cols] row-major; NULL otherwise */
    const sb_linear_panels *panels; /* SB_LINEAR_STORAGE_PANELS (not owned); NULL otherwise */
    sb_qmatrix *packed;        /* SB_LINEAR_STORAGE_PACKED: the matrix; NULL otherwise */
    sb_kernel kernel;          /* SB_LINEAR_STORAGE_PACKED: the path its products run on */
    void *owned;               /* freed by sb_linear_release; NULL for a view */
} sb_linear;

/* A float32 view of `rows x cols` floats at `values` (not owned). */
static inline sb_linear sb_linear_f32(float *values, int64_t rows, int64_t cols)
{
    sb_linear linear = {.rows = rows, .cols = cols, .storage = SB_LINEAR_STORAGE_F32, .f32 = values};
    return linear;
}

/* A bfloat16 view of `rows x cols` values at `values` (not owned). */
static inline sb_linear sb_linear_bf16(uint16_t *values, int64_t rows, int64_t cols)
{
    sb_linear linear = {.rows = rows, .cols = cols, .storage = SB_LINEAR_STORAGE_BF16, .bf16 = values};
    return linear;
}

/* A weight made on demand by `panels` (not owned; it must outlive the linear). */
static inline sb_linear sb_linear_panels_of(const sb_linear_panels *panels, int64_t rows, int64_t cols)
{
    sb_linear linear = {.rows = rows, .cols = cols, .storage = SB_LINEAR_STORAGE_PANELS, .panels = panels};
    return linear;
}

/* A packed matrix, heap-allocated by the caller and owned by the linear from now on (released
 * with sb_qmatrix_free and free), run on `kernel`'s path. */
static inline sb_linear sb_linear_packed(sb_qmatrix *matrix, const sb_kernel *kernel)
{
    sb_linear linear = {.rows = matrix->rows, .cols = matrix->cols, .storage = SB_LINEAR_STORAGE_PACKED,
                        .packed = matrix, .kernel = *kernel, .owned = matrix};
    return linear;
}

/* Frees what the linear owns (nothing for a view) and leaves it empty (rows and cols kept). */
void sb_linear_release(sb_linear *linear);

/* Bytes the weight holds, which a forward product reads per token (rows x cols x 4 for F32, x 2
 * for BF16, the packed matrix's bytes; 0 for PANELS: whoever fills them holds them): for memory
 * and bandwidth reports. */
int64_t sb_linear_bytes(const sb_linear *linear);

/* Y [n x rows] = X [n x cols] W^T + beta Y (ld of X is cols, of Y rows). */
sb_status sb_linear_forward(const sb_linear *weight, const float *x, int64_t n, float beta, float *y, int threads,
                            sb_error *err);

/* dX [n x cols] = dY [n x rows] W + beta dX: the input gradient of the forward product. */
sb_status sb_linear_backward_input(const sb_linear *weight, const float *dy, int64_t n, float beta, float *dx,
                                   int threads, sb_error *err);

/* "F32", "BF16", "panels", "packed": for messages and logs. */
const char *sb_linear_storage_name(sb_linear_storage storage);

#endif
