/* The OpenBLAS core decision (src/sb_cpu.h) on injected (CPU features, core name) pairs: the
 * issue's Xeon (AVX-512) that OpenBLAS 0.3.21 calls Prescott, this Zen 3 (AVX2) it calls Zen,
 * an explicit match, an older CPU, unknown names; and the vector level of the running CPU is
 * consistent with the compiler's view of it. */
#include <string.h>

#include "sb_cpu.h"
#include "sb_test.h"

static int same(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

int main(void)
{
    sb_cpu_features sse = {0};
    sb_cpu_features avx = {.avx = true};
    sb_cpu_features zen3 = {.avx = true, .avx2 = true, .fma = true};
    sb_cpu_features xeon = {.avx = true, .avx2 = true, .fma = true, .avx512f = true, .avx512bw = true,
                            .avx512vl = true, .avx512dq = true, .avx512cd = true};
    sb_cpu_features knl = xeon; /* AVX-512 F and CD without BW/VL/DQ: not SkylakeX's kernels */
    knl.avx512bw = knl.avx512vl = knl.avx512dq = false;

    SB_CHECK(sb_cpu_level_of(&sse) == SB_CPU_BASELINE);
    SB_CHECK(sb_cpu_level_of(&avx) == SB_CPU_AVX);
    SB_CHECK(sb_cpu_level_of(&zen3) == SB_CPU_AVX2);
    SB_CHECK(sb_cpu_level_of(&xeon) == SB_CPU_AVX512);
    SB_CHECK(sb_cpu_level_of(&knl) == SB_CPU_AVX2);

    /* the case: a new Xeon OpenBLAS does not know */
    SB_CHECK(same(sb_blas_core_for(&xeon, "Prescott"), "SkylakeX"));
    SB_CHECK(same(sb_blas_core_for(&xeon, "prescott"), "SkylakeX")); /* names compare without case */
    SB_CHECK(same(sb_blas_core_for(&xeon, "Haswell"), "SkylakeX"));
    SB_CHECK(same(sb_blas_core_for(&xeon, "Sandybridge"), "SkylakeX"));
    SB_CHECK(same(sb_blas_core_for(&xeon, "SkylakeX"), NULL));
    SB_CHECK(same(sb_blas_core_for(&xeon, "Cooperlake"), NULL));
    /* this machine: Zen 3 is Zen, which suits it; Prescott on it gets Haswell (never SkylakeX,
     * which OpenBLAS would accept and then crash on) */
    SB_CHECK(same(sb_blas_core_for(&zen3, "Zen"), NULL));
    SB_CHECK(same(sb_blas_core_for(&zen3, "Prescott"), "Haswell"));
    SB_CHECK(same(sb_blas_core_for(&zen3, "Nehalem"), "Haswell"));
    SB_CHECK(same(sb_blas_core_for(&zen3, "SkylakeX"), NULL)); /* higher than the CPU: the user's business */
    SB_CHECK(same(sb_blas_core_for(&knl, "Prescott"), "Haswell"));
    SB_CHECK(same(sb_blas_core_for(&avx, "Prescott"), "Sandybridge"));
    SB_CHECK(same(sb_blas_core_for(&avx, "Sandybridge"), NULL));
    SB_CHECK(same(sb_blas_core_for(&sse, "Prescott"), NULL));
    /* unknown names (a newer OpenBLAS, another architecture) are left alone */
    SB_CHECK(same(sb_blas_core_for(&xeon, "NeoverseN1"), NULL));
    SB_CHECK(same(sb_blas_core_for(&xeon, "GraniteRapids"), NULL));
    SB_CHECK(same(sb_blas_core_for(&xeon, ""), NULL));
    SB_CHECK(same(sb_blas_core_for(&xeon, NULL), NULL));
    SB_CHECK(sb_blas_core_level("Zen") == 2 && sb_blas_core_level("Prescott") == 0 && sb_blas_core_level("x") == -1);

    /* the running CPU: what the detection says agrees with what the compiler assumed */
    sb_cpu_features here = sb_cpu_detect();
#ifdef __AVX2__
    SB_CHECK(here.avx2);
#endif
    SB_CHECK(!here.avx2 || here.avx);
    return sb_test_finish("test_cpu");
}
