#include "sb_linear.h"

#include "sb_gemm.h"

const char *sb_linear_storage_name(sb_linear_storage storage)
{
    switch (storage) {
    case SB_LINEAR_STORAGE_F32: return "F32";
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
    }
    return sb_error_set(err, SB_ERR_INTERNAL, "linear backward: weights stored as %s have no input gradient",
                        sb_linear_storage_name(weight->storage));
}
