/* The kernels compiled for AVX2 (sb_quant_kernels.h: the same results as the baseline's). */
#include "sb_quant_kernels.h"

#if defined(__x86_64__)
#pragma GCC target("avx2")
#define KERNEL(name) name##_avx2
#define KERNEL_NAME "avx2"
#include "sb_quant_kernels.inc"
#endif
