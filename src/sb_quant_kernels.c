/* The baseline kernels (whatever the compiler targets: SSE2 on x86-64) and the run-time choice. */
#include "sb_quant_kernels.h"

#define KERNEL(name) name##_baseline
#define KERNEL_NAME "baseline"
#include "sb_quant_kernels.inc"

const sb_quant_kernels *sb_quant_kernels_for(int level)
{
    sb_cpu_features cpu = sb_cpu_detect();
    int have = (int)sb_cpu_level_of(&cpu);
    if (level < 0 || level > have)
        level = have;
#if defined(__x86_64__)
    if (level >= SB_CPU_AVX512)
        return &sb_quant_kernels_avx512;
    if (level >= SB_CPU_AVX2)
        return &sb_quant_kernels_avx2;
#endif
    return &sb_quant_kernels_baseline;
}
