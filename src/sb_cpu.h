/* sb_cpu: what vector instructions this CPU has, and which OpenBLAS core type suits it.
 *
 * Two users: the quantizer picks its kernels by sb_cpu_level (sb_quant.h: every level gives
 * the same bits), and start-up checks the core type OpenBLAS chose (mpi/sb_blas_start.h).
 * Debian 12's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not know CPUs newer than it, e.g. a Xeon of
 * family 6 model 207 with AVX-512, and falls back to `Prescott` (SSE3) kernels: 3x slower GEMMs.
 * The decision is a pure function of (features, core name) so that it is testable with any
 * pair; sb_cpu_detect reads the real features.
 */
#ifndef SB_CPU_H
#define SB_CPU_H

#include <stdbool.h>

typedef struct sb_cpu_features {
    bool avx, avx2, fma;
    bool avx512f, avx512bw, avx512vl, avx512dq, avx512cd;
} sb_cpu_features;

/* Vector levels: what kernels (ours and OpenBLAS's) can use. */
typedef enum sb_cpu_level {
    SB_CPU_BASELINE = 0, /* SSE2/SSE3 on x86-64; whatever the compiler targets elsewhere */
    SB_CPU_AVX = 1,
    SB_CPU_AVX2 = 2,     /* AVX2 and FMA (Haswell, Zen) */
    SB_CPU_AVX512 = 3,   /* AVX-512 F, CD, BW, DQ, VL (Skylake-X and later) */
} sb_cpu_level;

/* The running CPU's features (all false off x86-64). */
sb_cpu_features sb_cpu_detect(void);

sb_cpu_level sb_cpu_level_of(const sb_cpu_features *cpu);

/* The vector level an OpenBLAS core type's kernels use (case-insensitive name as
 * openblas_get_corename() returns it); -1 for a name we do not know. */
int sb_blas_core_level(const char *corename);

/* The OPENBLAS_CORETYPE to ask for on a CPU with `cpu` when OpenBLAS picked `corename`, or NULL
 * to keep OpenBLAS's choice: a core is asked for only when OpenBLAS's is a known x86 core of a
 * lower vector level than the CPU has (SkylakeX for AVX-512, Haswell for AVX2 + FMA, Sandybridge
 * for AVX). An unknown name is kept (a newer OpenBLAS, another architecture). */
const char *sb_blas_core_for(const sb_cpu_features *cpu, const char *corename);

#endif
