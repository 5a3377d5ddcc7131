/* sb_cpu: which instruction sets this CPU runs, and which kernel path to use.
 *
 * The build targets baseline x86-64; the quantized-matrix kernels (src/sb_kernel.h) have one
 * path per instruction-set level, each compiled with its own flags, and a program picks one at
 * start-up from CPUID (and from XGETBV: the OS must save the wide registers too):
 *
 *   SB_ISA_SCALAR  portable C, any CPU
 *   SB_ISA_AVX2    AVX2 + FMA + F16C (Haswell, Zen and later)
 *   SB_ISA_AVX512  AVX-512 F + BW + VL + VNNI (Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4);
 *                  a CPU with AVX-512 but without VNNI (Skylake-SP) gets the AVX2 path
 *
 * The environment variable SCALEBITS_ISA=scalar|avx2|avx512 forces a path (for tests and
 * comparisons); asking for one this CPU cannot run is an error, never a silent fallback.
 * Pure queries: no state is kept (the caller stores the choice in its own context).
 */
#ifndef SB_CPU_H
#define SB_CPU_H

#include <stdbool.h>

#include "sb_error.h"

typedef enum sb_isa { SB_ISA_SCALAR = 0, SB_ISA_AVX2, SB_ISA_AVX512, SB_ISA_COUNT } sb_isa;

/* "scalar", "avx2", "avx512". */
const char *sb_isa_name(sb_isa isa);

/* Whether this CPU (and OS) can run `isa`. */
bool sb_cpu_supports(sb_isa isa);

/* The best path this CPU runs. */
sb_isa sb_cpu_best_isa(void);

/* The path to use: SCALEBITS_ISA if set (SB_ERR_USAGE if it names no path, SB_ERR_INPUT if
 * this CPU lacks it, with the CPU's best path in the message), else sb_cpu_best_isa(). */
sb_status sb_cpu_choose_isa(sb_isa *isa, sb_error *err);

/* Parses "scalar", "avx2", "avx512"; false otherwise. */
bool sb_isa_parse(const char *text, sb_isa *isa);

#endif
