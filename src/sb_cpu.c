#include "sb_cpu.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define SB_X86 1
#endif

static const char *const isa_names[SB_ISA_COUNT] = {"scalar", "avx2", "avx512"};

const char *sb_isa_name(sb_isa isa) { return isa >= 0 && isa < SB_ISA_COUNT ? isa_names[isa] : "?"; }

bool sb_isa_parse(const char *text, sb_isa *isa)
{
    for (int i = 0; i < SB_ISA_COUNT; i++)
        if (strcmp(text, isa_names[i]) == 0) {
            *isa = (sb_isa)i;
            return true;
        }
    return false;
}

#ifdef SB_X86
/* XCR0: which register states the OS saves on a context switch. Read only after CPUID says
 * OSXSAVE, because XGETBV faults otherwise. */
static uint64_t xcr0(void)
{
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

bool sb_cpu_supports(sb_isa isa)
{
    if (isa == SB_ISA_SCALAR)
        return true;
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return false;
    bool fma = ecx & (1u << 12), osxsave = ecx & (1u << 27), avx = ecx & (1u << 28), f16c = ecx & (1u << 29);
    if (!osxsave || !avx || !fma || !f16c)
        return false;
    uint64_t xcr = xcr0();
    if ((xcr & 0x6) != 0x6) /* SSE and AVX (YMM) state */
        return false;
    if (__get_cpuid_max(0, NULL) < 7)
        return false;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    bool avx2 = ebx & (1u << 5);
    if (isa == SB_ISA_AVX2)
        return avx2;
    bool avx512f = ebx & (1u << 16), avx512bw = ebx & (1u << 30), avx512vl = ebx & (1u << 31);
    bool vnni = ecx & (1u << 11);
    bool zmm_state = (xcr & 0xe6) == 0xe6; /* opmask, ZMM0-15 upper halves, ZMM16-31 */
    return isa == SB_ISA_AVX512 && avx2 && avx512f && avx512bw && avx512vl && vnni && zmm_state;
}
#else
bool sb_cpu_supports(sb_isa isa) { return isa == SB_ISA_SCALAR; }
#endif

sb_isa sb_cpu_best_isa(void)
{
    for (int i = SB_ISA_COUNT - 1; i > 0; i--)
        if (sb_cpu_supports((sb_isa)i))
            return (sb_isa)i;
    return SB_ISA_SCALAR;
}

sb_status sb_cpu_choose_isa(sb_isa *isa, sb_error *err)
{
    const char *forced = getenv("SCALEBITS_ISA");
    sb_isa best = sb_cpu_best_isa();
    if (!forced || !forced[0]) {
        *isa = best;
        return SB_OK;
    }
    sb_isa wanted;
    if (!sb_isa_parse(forced, &wanted))
        return sb_error_set(err, SB_ERR_USAGE, "SCALEBITS_ISA=%.32s is not a kernel path (scalar, avx2 or avx512)",
                            forced);
    if (!sb_cpu_supports(wanted))
        return sb_error_set(err, SB_ERR_INPUT,
                            "SCALEBITS_ISA=%s: this CPU cannot run the %s kernels (its best path is %s)", forced,
                            sb_isa_name(wanted), sb_isa_name(best));
    *isa = wanted;
    return SB_OK;
}
