#include "sb_gemm.h"

#include <cblas.h>

extern int openblas_get_num_threads(void);
extern void openblas_set_num_threads(int threads);

int sb_blas_hold(int threads)
{
    (void)threads;
    int previous = openblas_get_num_threads();
    if (previous > 1)
        openblas_set_num_threads(1);
    return previous;
}

void sb_blas_release(int previous)
{
    if (previous > 1)
        openblas_set_num_threads(previous);
}

void sb_gemm(int threads, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
             int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    CBLAS_TRANSPOSE op_a = trans_a ? CblasTrans : CblasNoTrans, op_b = trans_b ? CblasTrans : CblasNoTrans;
    /* A fixed decomposition: C in blocks of SB_GEMM_ROWS x SB_GEMM_COLS, each one single-threaded SGEMM,
     * whatever the thread count. OpenBLAS's result for an element depends on the shape of the
     * call it is computed in, so a split that followed the threads would make the results (and
     * the calibration statistics, and then the allocation) depend on how many cores a rank has. */
    int64_t row_blocks = (m + SB_GEMM_ROWS - 1) / SB_GEMM_ROWS, col_blocks = (n + SB_GEMM_COLS - 1) / SB_GEMM_COLS;
    int64_t blocks = row_blocks * col_blocks;
    int team = threads > 1 && (double)m * (double)n * (double)k >= 65536.0 ? threads : 1;
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int64_t block = 0; block < blocks; block++) {
        int64_t m0 = block / col_blocks * SB_GEMM_ROWS, n0 = block % col_blocks * SB_GEMM_COLS;
        int64_t m1 = m0 + SB_GEMM_ROWS < m ? m0 + SB_GEMM_ROWS : m, n1 = n0 + SB_GEMM_COLS < n ? n0 + SB_GEMM_COLS : n;
        const float *a_block = trans_a ? a + m0 : a + m0 * lda;
        const float *b_block = trans_b ? b + n0 * ldb : b + n0;
        cblas_sgemm(CblasRowMajor, op_a, op_b, (int)(m1 - m0), (int)(n1 - n0), (int)k, alpha, a_block, (int)lda,
                    b_block, (int)ldb, beta, c + m0 * ldc + n0, (int)ldc);
    }
}

