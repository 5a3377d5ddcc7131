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
 *   SB_LINEAR_STORAGE_F32   float32 row-major: `f32` holds rows x cols floats. Calibration,
 *                           reference evaluation, and everything that reads or edits weights
 *                           (reordering, the taylor search's quantized reference points).
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

typedef enum sb_linear_storage {
    SB_LINEAR_STORAGE_F32 = 0,
} sb_linear_storage;

typedef struct sb_linear {
    int64_t rows, cols;        /* out_features, in_features */
    sb_linear_storage storage;
    float *f32;                /* SB_LINEAR_STORAGE_F32: [rows x cols] row-major; NULL otherwise */
} sb_linear;

/* A float32 view of `rows x cols` floats at `values` (not owned). */
static inline sb_linear sb_linear_f32(float *values, int64_t rows, int64_t cols)
{
    sb_linear linear = {rows, cols, SB_LINEAR_STORAGE_F32, values};
    return linear;
}

/* Y [n x rows] = X [n x cols] W^T + beta Y (ld of X is cols, of Y rows). */
sb_status sb_linear_forward(const sb_linear *weight, const float *x, int64_t n, float beta, float *y, int threads,
                            sb_error *err);

/* dX [n x cols] = dY [n x rows] W + beta dX: the input gradient of the forward product. */
sb_status sb_linear_backward_input(const sb_linear *weight, const float *dy, int64_t n, float beta, float *dx,
                                   int threads, sb_error *err);

/* "F32", ...: for messages and logs. */
const char *sb_linear_storage_name(sb_linear_storage storage);

#endif
