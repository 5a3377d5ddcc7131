/* src/sb_linear.h: a weight held as bfloat16, or made on demand by a fill function (PANELS),
 * multiplies exactly as the same values held as float32 (forward and input gradient, beta 0 and 1, shapes that span several 512-wide blocks
 * and ragged ones, 1 and 2 threads): the bits are the same, so holding a BF16 checkpoint's
 * experts as BF16 (half the memory) changes no statistic and no allocation. */
#include <stdlib.h>
#include <string.h>

#include "sb_gemm.h"
#include "sb_half.h"
#include "sb_linear.h"
#include "sb_test.h"

/* A PANELS weight that copies its rectangles out of a float32 matrix (and counts the calls). */
typedef struct matrix_source {
    const float *w;
    int64_t cols;
} matrix_source;

static void fill_from_matrix(const void *user, int64_t row0, int64_t rows, int64_t col0, int64_t cols, float *dst,
                             int64_t ld)
{
    const matrix_source *source = user;
    for (int64_t i = 0; i < rows; i++)
        memcpy(dst + i * ld, source->w + (row0 + i) * source->cols + col0, (size_t)cols * sizeof(float));
}

static void check_shape(sb_test_rng *rng, int64_t rows, int64_t cols, int64_t n, int threads)
{
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    uint16_t *w16 = malloc((size_t)(rows * cols) * sizeof *w16);
    float *x = malloc((size_t)(n * cols) * sizeof *x), *dy = malloc((size_t)(n * rows) * sizeof *dy);
    float *y[3], *dx[3];
    for (int k = 0; k < 3; k++) {
        y[k] = malloc((size_t)(n * rows) * sizeof(float));
        dx[k] = malloc((size_t)(n * cols) * sizeof(float));
    }
    for (int64_t i = 0; i < rows * cols; i++) {
        w16[i] = sb_f32_to_bf16((float)(0.05 * sb_test_normal(rng)));
        w[i] = sb_bf16_to_f32(w16[i]);
    }
    for (int64_t i = 0; i < n * cols; i++)
        x[i] = (float)sb_test_normal(rng);
    for (int64_t i = 0; i < n * rows; i++)
        dy[i] = (float)sb_test_normal(rng);
    sb_linear f32 = sb_linear_f32(w, rows, cols), bf16 = sb_linear_bf16(w16, rows, cols);
    matrix_source source = {w, cols};
    sb_linear_panels fill = {fill_from_matrix, &source};
    sb_linear panels = sb_linear_panels_of(&fill, rows, cols);
    sb_error err;
    int held = sb_blas_hold(threads);
    for (int beta = 0; beta <= 1; beta++) {
        for (int k = 0; k < 3; k++) {
            for (int64_t i = 0; i < n * rows; i++)
                y[k][i] = (float)(i % 7) * 0.25f;
            for (int64_t i = 0; i < n * cols; i++)
                dx[k][i] = (float)(i % 5) * 0.5f;
            const sb_linear *weight = k == 0 ? &f32 : k == 1 ? &bf16 : &panels;
            SB_CHECK(sb_linear_forward(weight, x, n, (float)beta, y[k], threads, &err) == SB_OK);
            SB_CHECK(sb_linear_backward_input(weight, dy, n, (float)beta, dx[k], threads, &err) == SB_OK);
        }
        SB_CHECK_MSG(memcmp(y[0], y[1], (size_t)(n * rows) * sizeof(float)) == 0,
                     "forward %lldx%lld, n %lld, beta %d, %d thread(s): BF16 differs from F32", (long long)rows,
                     (long long)cols, (long long)n, beta, threads);
        SB_CHECK_MSG(memcmp(dx[0], dx[1], (size_t)(n * cols) * sizeof(float)) == 0,
                     "input gradient %lldx%lld, n %lld, beta %d, %d thread(s): BF16 differs from F32", (long long)rows,
                     (long long)cols, (long long)n, beta, threads);
        SB_CHECK_MSG(memcmp(y[0], y[2], (size_t)(n * rows) * sizeof(float)) == 0,
                     "forward %lldx%lld, n %lld, beta %d, %d thread(s): panels differ from F32", (long long)rows,
                     (long long)cols, (long long)n, beta, threads);
        SB_CHECK_MSG(memcmp(dx[0], dx[2], (size_t)(n * cols) * sizeof(float)) == 0,
                     "input gradient %lldx%lld, n %lld, beta %d, %d thread(s): panels differ from F32",
                     (long long)rows, (long long)cols, (long long)n, beta, threads);
    }
    sb_blas_release(held);
    SB_CHECK(sb_linear_bytes(&bf16) * 2 == sb_linear_bytes(&f32));
    SB_CHECK(sb_linear_bytes(&panels) == 0);
    free(w);
    free(w16);
    free(x);
    free(dy);
    for (int k = 0; k < 3; k++) {
        free(y[k]);
        free(dx[k]);
    }
}

int main(void)
{
    sb_test_rng rng = {12};
    const int64_t shapes[][3] = {{64, 48, 5}, {700, 1100, 37}, {1030, 513, 130}, {512, 512, 1}, {3, 1500, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int threads = 1; threads <= 2; threads++)
            check_shape(&rng, shapes[s][0], shapes[s][1], shapes[s][2], threads);
    SB_CHECK(strcmp(sb_linear_storage_name(SB_LINEAR_STORAGE_BF16), "BF16") == 0);
    return sb_test_finish("test_linear");
}
