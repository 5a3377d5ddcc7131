/* sb_cpu: what vector instructions this CPU has, which OpenBLAS core type suits it, and which
 * path the packed-matrix kernels run.
 *
 * Four users: sb_sha256_init picks SHA-NI or the portable compression (src/sb_sha256.h); the quantizer picks its kernels by sb_cpu_level (sb_quant.h: every level gives
 * the same bits), start-up checks the core type OpenBLAS chose (mpi/sb_blas_start.h), and the
 * runtime picks the packed kernels' path by sb_isa (src/sb_kernel.h) once at start-up.
 * Debian 12's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not know CPUs newer than it, e.g. a Xeon of
 * family 6 model 207 with AVX-512, and falls back to `Prescott` (SSE3) kernels: 3x slower GEMMs.
 * The decision is a pure function of (features, core name) so that it is testable with any
 * pair; sb_cpu_detect reads the real features.
 */
#ifndef SB_CPU_H
#define SB_CPU_H

#include <stdbool.h>

#include "sb_error.h"

typedef struct sb_cpu_features {
    bool avx, avx2, fma;
    bool avx512f, avx512bw, avx512vl, avx512dq, avx512cd;
    bool f16c, avx512vnni;
    bool sse41, sha; /* SSE4.1 (CPUID 1 ECX bit 19), SHA extensions (CPUID 7 EBX bit 29): sb_sha256 */
    bool gfni;       /* GF2P8AFFINEQB: the AVX-512 decode path's bit-field extraction (optional) */
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

/* ---- The packed-matrix kernels' paths (src/sb_kernel.h) ---------------------------------------
 *
 *   SB_ISA_SCALAR  portable C, any CPU
 *   SB_ISA_AVX2    AVX2 + FMA + F16C (Haswell, Zen and later)
 *   SB_ISA_AVX512  AVX-512 F + BW + VL + VNNI (Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4);
 *                  a CPU with AVX-512 but without VNNI (Skylake-SP) gets the AVX2 path
 *
 * The environment variable SCALEBITS_ISA=scalar|avx2|avx512 forces a path (for tests and
 * comparisons); asking for one the CPU cannot run is an error, never a silent fallback. */
typedef enum sb_isa { SB_ISA_SCALAR = 0, SB_ISA_AVX2, SB_ISA_AVX512, SB_ISA_COUNT } sb_isa;

/* "scalar", "avx2", "avx512"; sb_isa_parse is its inverse (false for anything else). */
const char *sb_isa_name(sb_isa isa);
bool sb_isa_parse(const char *text, sb_isa *isa);

/* Whether a CPU with `cpu` runs `isa`, and the best path it runs (pure: testable on any CPU). */
bool sb_isa_supported(const sb_cpu_features *cpu, sb_isa isa);
sb_isa sb_isa_best(const sb_cpu_features *cpu);

/* The same for this CPU (sb_cpu_detect). */
bool sb_cpu_supports(sb_isa isa);
sb_isa sb_cpu_best_isa(void);

/* The path to use: SCALEBITS_ISA if set (SB_ERR_USAGE if it names no path, SB_ERR_INPUT if this
 * CPU lacks it, with the CPU's best path in the message), else sb_cpu_best_isa(). */
sb_status sb_cpu_choose_isa(sb_isa *isa, sb_error *err);

#endif
