#include "sb_cpu.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

sb_cpu_features sb_cpu_detect(void)
{
    sb_cpu_features cpu = {0};
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    cpu.avx = __builtin_cpu_supports("avx");
    cpu.avx2 = __builtin_cpu_supports("avx2");
    cpu.fma = __builtin_cpu_supports("fma");
    cpu.avx512f = __builtin_cpu_supports("avx512f");
    cpu.avx512bw = __builtin_cpu_supports("avx512bw");
    cpu.avx512vl = __builtin_cpu_supports("avx512vl");
    cpu.avx512dq = __builtin_cpu_supports("avx512dq");
    cpu.avx512cd = __builtin_cpu_supports("avx512cd");
    cpu.f16c = __builtin_cpu_supports("f16c");
    cpu.avx512vnni = __builtin_cpu_supports("avx512vnni");
    cpu.sse41 = __builtin_cpu_supports("sse4.1");
    cpu.sha = __builtin_cpu_supports("sha");
    cpu.gfni = __builtin_cpu_supports("gfni");
#endif
    return cpu;
}

sb_cpu_level sb_cpu_level_of(const sb_cpu_features *cpu)
{
    if (cpu->avx512f && cpu->avx512bw && cpu->avx512vl && cpu->avx512dq && cpu->avx512cd && cpu->avx2 && cpu->fma)
        return SB_CPU_AVX512;
    if (cpu->avx2 && cpu->fma)
        return SB_CPU_AVX2;
    if (cpu->avx)
        return SB_CPU_AVX;
    return SB_CPU_BASELINE;
}

/* OpenBLAS 0.3.21's x86-64 core names (driver/others/dynamic.c) by the vector level of their
 * kernels; later releases add names, which are kept as unknown. */
static const struct {
    const char *name;
    int level;
} blas_cores[] = {
    {"Katmai", 0},      {"Coppermine", 0},  {"Northwood", 0},   {"Prescott", 0},   {"Banias", 0},
    {"Atom", 0},        {"Core2", 0},       {"Penryn", 0},      {"Dunnington", 0}, {"Nehalem", 0},
    {"Athlon", 0},      {"Opteron", 0},     {"Opteron_SSE3", 0}, {"Barcelona", 0},  {"Nano", 0},
    {"Bobcat", 0},      {"Sandybridge", 1}, {"Bulldozer", 1},   {"Piledriver", 1}, {"Steamroller", 1},
    {"Excavator", 1},   {"Haswell", 2},     {"Zen", 2},         {"SkylakeX", 3},   {"Cooperlake", 3},
    {"SapphireRapids", 3},
};

int sb_blas_core_level(const char *corename)
{
    if (!corename)
        return -1;
    for (size_t i = 0; i < sizeof blas_cores / sizeof blas_cores[0]; i++)
        if (strcasecmp(corename, blas_cores[i].name) == 0)
            return blas_cores[i].level;
    return -1;
}

const char *sb_blas_core_for(const sb_cpu_features *cpu, const char *corename)
{
    int have = sb_blas_core_level(corename);
    sb_cpu_level level = sb_cpu_level_of(cpu);
    if (have < 0 || have >= (int)level)
        return NULL;
    switch (level) {
    case SB_CPU_AVX512: return "SkylakeX";
    case SB_CPU_AVX2: return "Haswell";
    case SB_CPU_AVX: return "Sandybridge";
    default: return NULL;
    }
}

/* ---- The packed-matrix kernels' paths ------------------------------------------------------------ */

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

bool sb_isa_supported(const sb_cpu_features *cpu, sb_isa isa)
{
    /* the compiler's feature tests include the OS's saving of the wide registers (XGETBV) */
    bool avx2 = cpu->avx && cpu->avx2 && cpu->fma && cpu->f16c;
    switch (isa) {
    case SB_ISA_SCALAR: return true;
    case SB_ISA_AVX2: return avx2;
    case SB_ISA_AVX512: return avx2 && cpu->avx512f && cpu->avx512bw && cpu->avx512vl && cpu->avx512vnni;
    default: return false;
    }
}

sb_isa sb_isa_best(const sb_cpu_features *cpu)
{
    for (int i = SB_ISA_COUNT - 1; i > 0; i--)
        if (sb_isa_supported(cpu, (sb_isa)i))
            return (sb_isa)i;
    return SB_ISA_SCALAR;
}

bool sb_cpu_supports(sb_isa isa)
{
    sb_cpu_features cpu = sb_cpu_detect();
    return sb_isa_supported(&cpu, isa);
}

sb_isa sb_cpu_best_isa(void)
{
    sb_cpu_features cpu = sb_cpu_detect();
    return sb_isa_best(&cpu);
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
