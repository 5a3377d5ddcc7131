#include "sb_linear.h"

#include <stdlib.h>

#include "sb_gemm.h"

const char *sb_linear_storage_name(sb_linear_storage storage)
{
    switch (storage) {
    case SB_LINEAR_STORAGE_F32: return "F32";
    case SB_LINEAR_STORAGE_PACKED: return "packed";
    }
    return "?";
}

sb_status sb_linear_forward(const sb_linear *weight, const float *x, int64_t n, float beta, float *y, int threads,
                            sb_error *err)
{
    switch (weight->storage) {
    case SB_LINEAR_STORAGE_F32:
        sb_gemm(threads, false, true, n, weight->rows, weight->cols, 1.0f, x, weight->cols, weight->f32, weight->cols,
                beta, y, weight->rows);
        return SB_OK;
    case SB_LINEAR_STORAGE_PACKED: {
        if (!weight->packed || (beta != 0.0f && beta != 1.0f))
            return sb_error_set(err, SB_ERR_INTERNAL, "linear forward: packed weight %s with beta %g",
                                weight->packed ? "given" : "missing", (double)beta);
        sb_qact act;
        /* batches are compute-bound: 16-bit activations keep the float model's perplexity;
         * one token (decode) is memory-bound and runs int8 (src/sb_kernel.h) */
        SB_TRY(sb_qact_create(weight->packed, n, n > 1 ? SB_ACT_INT16 : SB_ACT_INT8, &act, err));
        sb_qact_quantize(&act, x, n, weight->cols, threads);
        sb_qmatrix_mul(&weight->kernel, weight->packed, &act, y, weight->rows, beta == 1.0f, threads);
        sb_qact_free(&act);
        return SB_OK;
    }
    }
    return sb_error_set(err, SB_ERR_INTERNAL, "linear forward: unknown weight storage %d", (int)weight->storage);
}

sb_status sb_linear_backward_input(const sb_linear *weight, const float *dy, int64_t n, float beta, float *dx,
                                   int threads, sb_error *err)
{
    switch (weight->storage) {
    case SB_LINEAR_STORAGE_F32:
        sb_gemm(threads, false, false, n, weight->cols, weight->rows, 1.0f, dy, weight->rows, weight->f32, weight->cols,
                beta, dx, weight->cols);
        return SB_OK;
    case SB_LINEAR_STORAGE_PACKED:
        break;
    }
    return sb_error_set(err, SB_ERR_INTERNAL, "linear backward: weights stored as %s have no input gradient",
                        sb_linear_storage_name(weight->storage));
}

void sb_linear_release(sb_linear *linear)
{
    if (linear->owned) {
        if (linear->storage == SB_LINEAR_STORAGE_PACKED && linear->packed == linear->owned)
            sb_qmatrix_free(linear->packed);
        free(linear->owned);
    }
    *linear = (sb_linear){.rows = linear->rows, .cols = linear->cols, .storage = linear->storage};
}

int64_t sb_linear_bytes(const sb_linear *linear)
{
    if (linear->storage == SB_LINEAR_STORAGE_PACKED)
        return linear->packed ? sb_qmatrix_bytes(linear->packed) : 0;
    return linear->rows * linear->cols * (int64_t)sizeof(float);
}
