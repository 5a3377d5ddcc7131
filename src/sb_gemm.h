/* sb_gemm: float32 matrix products whose results do not depend on the thread count.
 *
 * The runtime (src/sb_model.h) and the linear-weight products (src/sb_linear.h) multiply
 * through sb_gemm: OpenBLAS SGEMMs over a fixed grid of blocks of C, run on the caller's
 * OpenMP threads. Calibration statistics, and the allocation built on them, are therefore the
 * same bits for any number of cores.
 */
#ifndef SB_GEMM_H
#define SB_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* The block of C per SGEMM call in sb_gemm: large enough that packing costs little next to
 * the multiply-adds, small enough that even a 256-wide weight gradient gives every thread
 * work. Fixed, so that results do not depend on the thread count. */
enum { SB_GEMM_ROWS = 128, SB_GEMM_COLS = 512 };

/* C = alpha op(A) op(B) + beta C, row-major, as cblas_sgemm, computed as fixed blocks of
 * SB_GEMM_ROWS x SB_GEMM_COLS of C, each one single-threaded OpenBLAS call, run on up to `threads`
 * OpenMP threads. The blocks do not depend on `threads`, so neither does the result. The
 * caller must hold OpenBLAS at one thread (sb_blas_hold). */
void sb_gemm(int threads, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
             int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* Sets OpenBLAS to one thread and returns the count to restore: the runtime parallelises its
 * GEMMs itself, over fixed blocks (reproducible for any thread count), and a pthreads OpenBLAS
 * must not start its own threads from inside an OpenMP region (its idle workers spin-yield
 * against the OpenMP team: both pools of 2 threads on 2 cores ran 2x slower than either). */
int sb_blas_hold(int threads);
void sb_blas_release(int previous);

#endif
