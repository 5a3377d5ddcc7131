/* sb_quant_kernels: the loops the scale search spends its time in (sb_quant.c), compiled once per
 * vector level (sb_cpu.h) and chosen at run time.
 *
 * Every kernel does the same float/double operations in the same order on every level: sums run
 * in eight lanes (lane j takes elements j, j + 8, ...; the elements past the last whole block of
 * eight go first, then lanes 0..7), with no contraction into FMA (the build says
 * -ffp-contract=off) and no reassociation. A wider vector unit only runs more lanes at once, so
 * the results, and the allocation and file bytes made from them, are the same bits on any CPU;
 * test_quant checks it on every level the CPU has.
 *
 * `bound`: a kernel may stop early and return +infinity once its partial sum shows the result
 * will be >= bound (the terms are non-negative, and float addition is monotone, so a result it
 * returns is exact and one it abandons would not have been below bound). INFINITY: never.
 * A group of at most SB_QUANT_KERNEL_CHUNK elements is never cut short: its bounded sums are its
 * unbounded ones.
 * Importance weights must be non-negative (they are: E[x^2], Fisher diagonals, diag(H)).
 * Internal to src/ (sb_quant.c).
 */
#ifndef SB_QUANT_KERNELS_H
#define SB_QUANT_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_cpu.h"

enum { SB_QUANT_KERNEL_CHUNK = 128 }; /* how often a bounded sum checks its bound */

typedef struct sb_quant_kernels {
    const char *name;
    /* the smallest and largest of n >= 1 finite x, as a scan from x[0] keeping the first of
     * equal values finds them; returns whether sum w > 0 (true for w NULL) */
    bool (*group_range)(const float *x, const float *w, int n, float *lo, float *hi);
    /* E (float) of x ~ scale * level(x) + zero with levels 0..max_code by nearest rounding; for
     * trials, whose (x - zero) / scale lie within 2^22 of 0 (the level is then a min/max clamp) */
    float (*trial_error)(const float *x, const float *w, int n, float max_code, float scale, float zero, float bound);
    /* errors[c] = trial_error(x, w, n, max_code, scales[c], zeros[c], INFINITY) for c < count */
    void (*trial_error_many)(const float *x, const float *w, int n, float max_code, const float *scales,
                             const float *zeros, int count, float *errors);
    /* the sums of round_fit that do not depend on the levels: constants = {sum w, sum w x} */
    void (*fit_constants)(const float *x, const float *w, int n, double constants[2]);
    /* trial_error's E (no bound), and the weighted least-squares sums of (x ~ d * l + m) over those
     * levels l: sums = {sum w, sum w l, sum w l^2, sum w x, sum w l x}, the first and fourth
     * copied from `constants` (fit_constants of the same x and w) */
    double (*round_fit)(const float *x, const float *w, int n, int max_code, float scale, float zero,
                        const double constants[2], double sums[5]);
    /* E (double) of a Q8 group at (scale > 0, zero point z in levels): codes by exact nearest
     * rounding under x^ = scale * (q - z), neighbours checked with that formula; codes written
     * if non-NULL (then bound must be INFINITY) */
    double (*q8_error)(const float *x, const float *w, int n, int max_code, float scale, float z, uint8_t *codes,
                       double bound);
    /* q8_error's E summed in float, without codes: for ranking a group's candidate codes */
    float (*q8_rank)(const float *x, const float *w, int n, int max_code, float scale, float z, float bound);
    /* errors[c] = q8_rank(x, w, n, max_code, scales[c], zs[c], INFINITY) for c < count */
    void (*q8_rank_many)(const float *x, const float *w, int n, int max_code, const float *scales, const float *zs,
                         int count, float *errors);
} sb_quant_kernels;

/* The kernels for a vector level, or for the best level this CPU has at or below it; `level`
 * -1 means the best this CPU has. */
const sb_quant_kernels *sb_quant_kernels_for(int level);

extern const sb_quant_kernels sb_quant_kernels_baseline;
#if defined(__x86_64__)
extern const sb_quant_kernels sb_quant_kernels_avx2;
extern const sb_quant_kernels sb_quant_kernels_avx512;
#endif

#endif
