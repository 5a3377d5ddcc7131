#include "sb_linear.h"

#include <stdlib.h>

#include "sb_gemm.h"
#include "sb_half.h"

/* BF16 products widen this many rows or columns of W at a time: SB_GEMM_COLS, so that each
 * block is exactly one column block of sb_gemm's grid and the products are the F32 ones. */
enum { WIDEN_BLOCK = SB_GEMM_COLS };

const char *sb_linear_storage_name(sb_linear_storage storage)
{
    switch (storage) {
    case SB_LINEAR_STORAGE_F32: return "F32";
    case SB_LINEAR_STORAGE_BF16: return "BF16";
    case SB_LINEAR_STORAGE_PANELS: return "panels";
    case SB_LINEAR_STORAGE_PACKED: return "packed";
    }
    return "?";
}

static float *widen_buffer(int64_t floats, sb_error *err)
{
    return sb_malloc((size_t)(floats > 0 ? floats : 1) * sizeof(float), "widened weights", err);
}

/* W[:, c0 : c0 + width] (or, with width = cols and c0 = 0, whole rows) of a PANELS weight into
 * block [rows x width], SB_LINEAR_FILL_ROWS rows per call, in parallel. */
static void fill_panel(const sb_linear *weight, int64_t row0, int64_t rows, int64_t c0, int64_t width, float *block,
                       int threads)
{
    int64_t chunks = (rows + SB_LINEAR_FILL_ROWS - 1) / SB_LINEAR_FILL_ROWS;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && chunks > 1)
    for (int64_t chunk = 0; chunk < chunks; chunk++) {
        int64_t r = chunk * SB_LINEAR_FILL_ROWS, count = rows - r < SB_LINEAR_FILL_ROWS ? rows - r : SB_LINEAR_FILL_ROWS;
        weight->panels->fill(weight->panels->user, row0 + r, count, c0, width, block + r * width, width);
    }
}

/* W[row0 : row0 + rows, c0 : c0 + width] as float32 into block [rows x width]: widened from
 * BF16, or filled from the PANELS source. The BF16 and PANELS products are the F32 product on
 * these blocks, which are exactly sb_gemm's column blocks. */
static void widen_block(const sb_linear *weight, int64_t row0, int64_t rows, int64_t c0, int64_t width, float *block,
                        int threads)
{
    if (weight->storage == SB_LINEAR_STORAGE_PANELS) {
        fill_panel(weight, row0, rows, c0, width, block, threads);
        return;
    }
    const uint16_t *src = weight->bf16 + row0 * weight->cols + c0;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < width; c++)
            block[r * width + c] = sb_bf16_to_f32(src[r * weight->cols + c]);
}

sb_status sb_linear_forward(const sb_linear *weight, const float *x, int64_t n, float beta, float *y, int threads,
                            sb_error *err)
{
    switch (weight->storage) {
    case SB_LINEAR_STORAGE_F32:
        sb_gemm(threads, false, true, n, weight->rows, weight->cols, 1.0f, x, weight->cols, weight->f32, weight->cols,
                beta, y, weight->rows);
        return SB_OK;
    case SB_LINEAR_STORAGE_BF16:
    case SB_LINEAR_STORAGE_PANELS: {
        /* Y[:, r0 : r0 + B] = X W[r0 : r0 + B, :]^T: the column block of Y the F32 grid has */
        int64_t cols = weight->cols;
        float *block = widen_buffer(WIDEN_BLOCK * cols, err);
        if (!block)
            return SB_ERR_NOMEM;
        for (int64_t r0 = 0; r0 < weight->rows; r0 += WIDEN_BLOCK) {
            int64_t count = weight->rows - r0 < WIDEN_BLOCK ? weight->rows - r0 : WIDEN_BLOCK;
            widen_block(weight, r0, count, 0, cols, block, threads);
            sb_gemm(threads, false, true, n, count, cols, 1.0f, x, cols, block, cols, beta, y + r0, weight->rows);
        }
        free(block);
        return SB_OK;
    }
    case SB_LINEAR_STORAGE_PACKED: {
        if (!weight->packed || (beta != 0.0f && beta != 1.0f))
            return sb_error_set(err, SB_ERR_INTERNAL, "linear forward: packed weight %s with beta %g",
                                weight->packed ? "given" : "missing", (double)beta);
        sb_qact act;
        /* batches are compute-bound: float or 16-bit activations keep the float model's
         * perplexity, whichever the path runs faster; one token (decode) is memory-bound and
         * runs int8 (src/sb_kernel.h) */
        sb_act_precision precision = n > 1 ? sb_kernel_batch_precision(&weight->kernel, weight->packed, n) : SB_ACT_INT8;
        SB_TRY(sb_qact_create(weight->packed, n, precision, &act, err));
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
    case SB_LINEAR_STORAGE_BF16:
    case SB_LINEAR_STORAGE_PANELS: {
        /* dX[:, c0 : c0 + B] = dY W[:, c0 : c0 + B], the whole reduction over the rows at once */
        int64_t rows = weight->rows, cols = weight->cols;
        float *block = widen_buffer(rows * WIDEN_BLOCK, err);
        if (!block)
            return SB_ERR_NOMEM;
        for (int64_t c0 = 0; c0 < cols; c0 += WIDEN_BLOCK) {
            int64_t width = cols - c0 < WIDEN_BLOCK ? cols - c0 : WIDEN_BLOCK;
            widen_block(weight, 0, rows, c0, width, block, threads);
            sb_gemm(threads, false, false, n, width, rows, 1.0f, dy, rows, block, width, beta, dx + c0, cols);
        }
        free(block);
        return SB_OK;
    }
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
    if (linear->storage == SB_LINEAR_STORAGE_PANELS)
        return 0; /* whoever fills them holds them */
    return linear->rows * linear->cols * (linear->storage == SB_LINEAR_STORAGE_BF16 ? 2 : 4);
}
