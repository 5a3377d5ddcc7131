/* bench-layout: can the stored layout (docs/FORMAT.md: each tile one dense LSB-first bit
 * stream, rows one after another) be decoded at memory speed, or does the kernel layout
 * (docs/KERNELS.md: 8-row panels, bit planes) pay for its repacking? The measurement behind
 * that choice, on this machine:
 *
 *   stream  STREAM-style read of a buffer far larger than the last-level cache
 *   dense   matrix-vector product read straight from dense rows of b-bit codes (AVX2: the
 *           codes unpacked to bytes in registers, int8 dot products, a horizontal sum per
 *           row; activations pre-permuted to the unpacked order, which a kernel would do once
 *           per token), one scale per 32 columns
 *   kernel  sb_qmatrix_mul on the kernel layout, same size (the chosen kernel path)
 *
 * for b = 2, 3, 4 on one thread, each as GB/s of codes read and its ratio to stream.
 *
 *   bench-layout [--mb 256] [--repeat 3]      (--mb: size of each matrix's codes)
 *   bench-layout --gemm N [--bits B] [--tile 128|32]  (the batch kernels' compute rate on N
 *                                             tokens, per width 1..8 or only width B)
 *   bench-layout --decode [--mb 256] [--bits B] [--tile 128|32]  (the decode kernel per width,
 *                                             or only width B (1..8, or mix): in cache and not)
 *
 * --decode: for each width 1..8 and for a 2/3-bit mix (the tiles of a 2.75-bpw file), a
 * 4096-wide matrix of 128x128 tiles with affine-q8 groups of 128 (what scalebits-mpi writes):
 * GB/s of sb_qmatrix_bytes on CPU time, once for a 256 KiB matrix that stays in the L2 cache
 * (the kernel's compute rate: what it could reach with infinite memory bandwidth) and once for
 * one of --mb MiB (what it reaches from memory), with STREAM of the same size. --tile 32: 32x32
 * tiles with groups of 32 (a tile, a group and its metadata per super-block and panel).
 *
 * --gemm: for each width 1..8 a 1024 x 8192 matrix of 128x128 tiles with affine-q8 groups of
 * 128, or with --tile 32 of 32x32 tiles with groups of 32 (a group per super-block: the
 * metadata's share of the work is 4 times larger), times N tokens with int8 and with 16-bit
 * activations (what prefill uses): GMAC/s and tokens per CPU-second, one thread.
 */
#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_error.h"
#include "sb_half.h"
#include "sb_kernel.h"
#include "sb_log.h"

enum { COLS = 8192 };

static uint64_t sum_words(const uint64_t *words, size_t count)
{
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= count; i += 4) {
        a += words[i];
        b += words[i + 1];
        c += words[i + 2];
        d += words[i + 3];
    }
    return a + b + c + d;
}

#define TARGET __attribute__((target("avx2,fma")))

TARGET static float hsum(__m256 v)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_hadd_ps(h, h);
    h = _mm_hadd_ps(h, h);
    return _mm_cvtss_f32(h);
}

/* 2-bit rows: byte j holds columns 4j..4j+3; 32 bytes = 128 codes = 4 planes of 32. */
TARGET static void dense2(const uint8_t *w, int64_t rows, const int8_t *a, const float *d, float *y)
{
    const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * (COLS / 4);
        __m256 acc = _mm256_setzero_ps();
        for (int s = 0; s < COLS / 128; s++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(row + 32 * s));
            __m256i s32 = _mm256_setzero_si256();
            for (int k = 0; k < 4; k++) {
                __m256i c = _mm256_and_si256(_mm256_srli_epi16(v, 2 * k), m3);
                __m256i x = _mm256_loadu_si256((const __m256i *)(a + 128 * s + 32 * k));
                s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(_mm256_maddubs_epi16(c, x), ones));
            }
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_set1_ps(d[s]), acc);
        }
        y[r] = hsum(acc);
    }
}

/* 3-bit rows: 8 codes in 3 bytes; 24 bytes = 64 codes, spread to 8 dword lanes by a shuffle,
 * then 8 shift-and-mask steps and packs back to bytes. */
TARGET static void dense3(const uint8_t *w, int64_t rows, const int8_t *a, const float *d, float *y)
{
    const __m256i spread = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1, 0, 1, 2, -1, 3, 4,
                                            5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    const __m256i m7 = _mm256_set1_epi32(7), ones = _mm256_set1_epi16(1);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * (COLS * 3 / 8);
        __m256 acc = _mm256_setzero_ps();
        for (int s = 0; s < COLS / 64; s++) {
            __m128i lo = _mm_loadu_si128((const __m128i *)(row + 24 * s));
            __m128i hi = _mm_loadu_si128((const __m128i *)(row + 24 * s + 12));
            __m256i v = _mm256_shuffle_epi8(_mm256_set_m128i(hi, lo), spread);
            __m256i c[8];
            for (int k = 0; k < 8; k++)
                c[k] = _mm256_and_si256(_mm256_srli_epi32(v, 3 * k), m7);
            __m256i b0 = _mm256_packus_epi16(_mm256_packus_epi32(c[0], c[1]), _mm256_packus_epi32(c[2], c[3]));
            __m256i b1 = _mm256_packus_epi16(_mm256_packus_epi32(c[4], c[5]), _mm256_packus_epi32(c[6], c[7]));
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(a + 64 * s));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(a + 64 * s + 32));
            __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(b0, x0), _mm256_maddubs_epi16(b1, x1));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones)), _mm256_set1_ps(d[s / 2]), acc);
        }
        y[r] = hsum(acc);
    }
}

/* 4-bit rows: byte j holds columns 2j (low nibble) and 2j+1. */
TARGET static void dense4(const uint8_t *w, int64_t rows, const int8_t *a, const float *d, float *y)
{
    const __m256i m15 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * (COLS / 2);
        __m256 acc = _mm256_setzero_ps();
        for (int s = 0; s < COLS / 64; s++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(row + 32 * s));
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(a + 64 * s));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(a + 64 * s + 32));
            __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v, m15), x0),
                                           _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m15), x1));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones)), _mm256_set1_ps(d[s / 2]), acc);
        }
        y[r] = hsum(acc);
    }
}

/* A rows x cols matrix in the kernel layout, random codes, tile x tile tiles, groups of
 * `group`: tile widths `bits`, or (bits == 0) a random mix of 2 and 3 bits with 60% 3-bit tiles
 * (a 2.75-bpw file); affine-f16 or affine-q8 metadata. */
static sb_status kernel_matrix_tiled(int64_t rows, int64_t cols, int bits, sb_scale_format format, int tile, int group,
                                     sb_qmatrix *m, sb_error *err)
{
    sb_qmatrix_desc desc = {"layout", rows, cols, tile, tile, group, format, 0};
    int64_t across = cols / tile, tiles = (rows / tile) * across;
    uint8_t *bits_per_tile = malloc((size_t)tiles);
    uint16_t *bounds = malloc((size_t)tiles * sizeof(uint16_t));
    for (int64_t t = 0; t < tiles; t++) {
        bits_per_tile[t] = (uint8_t)(bits ? bits : (t * 2654435761u >> 7) % 10 < 6 ? 3 : 2);
        bounds[t] = sb_f32_to_f16(0.01f);
    }
    sb_status status = sb_qmatrix_create(&desc, bits_per_tile, format == SB_SCALES_Q8 ? bounds : NULL, m, err);
    free(bounds);
    if (status != SB_OK) {
        free(bits_per_tile);
        return status;
    }
    int64_t code_bytes = 0, groups = cols / group;
    for (int64_t tile_row = 0; tile_row < rows / tile; tile_row++) {
        int64_t row_bytes = sb_qmatrix_stored_row_bytes(m, tile_row);
        code_bytes = row_bytes > code_bytes ? row_bytes : code_bytes;
    }
    uint8_t *codes = malloc((size_t)code_bytes);
    uint16_t *scales = malloc((size_t)(tile * groups) * sizeof(uint16_t)), *zeros = malloc((size_t)(tile * groups) * 2);
    for (int64_t i = 0; i < code_bytes; i++)
        codes[i] = (uint8_t)(i * 2654435761u >> 13);
    for (int64_t i = 0; i < tile * groups; i++) {
        scales[i] = format == SB_SCALES_Q8 ? (uint16_t)(i * 7 % 64) : sb_f32_to_f16(0.001f);
        zeros[i] = format == SB_SCALES_Q8 ? (uint16_t)(i * 13 % 256) : sb_f32_to_f16(-0.01f);
    }
    for (int64_t tile_row = 0; status == SB_OK && tile_row < rows / tile; tile_row++)
        status = sb_qmatrix_fill_tile_row(m, tile_row, codes, sb_qmatrix_stored_row_bytes(m, tile_row), scales, zeros,
                                          err);
    free(bits_per_tile);
    free(codes);
    free(scales);
    free(zeros);
    return status;
}

static sb_status kernel_matrix_as(int64_t rows, int64_t cols, int bits, sb_scale_format format, sb_qmatrix *m,
                                  sb_error *err)
{
    return kernel_matrix_tiled(rows, cols, bits, format, 128, 128, m, err);
}

static sb_status kernel_matrix(int64_t rows, int bits, sb_qmatrix *m, sb_error *err)
{
    return kernel_matrix_as(rows, COLS, bits, SB_SCALES_F16, m, err);
}

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The best of `repeat` timed reads of `bytes` (one warm-up read first), on `clock`. */
static double best_read_seconds(const uint64_t *buffer, size_t bytes, int repeat, double (*clock)(void))
{
    double best = INFINITY;
    volatile uint64_t sink = 0;
    for (int run = 0; run <= repeat; run++) {
        double start = clock();
        sink += sum_words(buffer, bytes / 8);
        double s = clock() - start;
        best = run && s < best ? s : best;
    }
    (void)sink;
    return best;
}

/* Matrix-matrix products (a batch of `tokens`) on a 1024 x COLS matrix per width (all, or only
 * `only_bits`), affine-q8 on `tile` x `tile` tiles with groups of `tile`, int8 and 16-bit
 * activations: GMAC/s and tokens per CPU-second (the matrix stays in the last-level cache: this
 * is the compute rate). */
static int gemm_rates(const sb_kernel *kernel, int64_t tokens, int repeat, int only_bits, int tile)
{
    sb_error err;
    float *x = malloc((size_t)(tokens * COLS) * sizeof(float)), *y = malloc((size_t)(tokens * 1024) * sizeof(float));
    for (int64_t i = 0; i < tokens * COLS; i++)
        x[i] = (float)sin((double)i * 0.37);
    printf("kernel path %s; batch of %lld tokens, 1024 x %d matrix, %dx%d tiles, affine-q8 groups of %d; "
           "GMAC/s and tokens per CPU-second, 1 thread:\n",
           sb_isa_name(kernel->isa), (long long)tokens, COLS, tile, tile, tile);
    printf("%-5s %-26s %s\n", "bits", "int8 GMAC/s (tok/cpu-s)", "16-bit GMAC/s (tok/cpu-s)");
    for (int bits = 1; bits <= 8; bits++) {
        if (only_bits > 0 && bits != only_bits)
            continue;
        sb_qmatrix m;
        if (kernel_matrix_tiled(1024, COLS, bits, SB_SCALES_Q8, tile, tile, &m, &err) != SB_OK) {
            fprintf(stderr, "bench-layout: %s\n", err.message);
            return 1;
        }
        printf("%-5d", bits);
        for (int precision = 0; precision < 2; precision++) {
            sb_qact act;
            if (sb_qact_create(&m, tokens, (sb_act_precision)precision, &act, &err) != SB_OK) {
                fprintf(stderr, "bench-layout: %s\n", err.message);
                return 1;
            }
            sb_qact_quantize(&act, x, tokens, COLS, 1);
            double best = INFINITY;
            for (int run = 0; run <= repeat; run++) {
                double start = cpu_now();
                sb_qmatrix_mul(kernel, &m, &act, y, 1024, false, 1);
                double s = cpu_now() - start;
                best = run && s < best ? s : best;
            }
            printf(" %6.1f (%8.1f)          ", 1024.0 * COLS * (double)tokens / best / 1e9, (double)tokens / best);
            sb_qact_free(&act);
        }
        printf("\n");
        fflush(stdout);
        sb_qmatrix_free(&m);
    }
    free(x);
    free(y);
    return 0;
}

/* GB/s (CPU time) of one-token products on a 4096-wide matrix of about `bytes`, best of `repeat`. */
static double decode_rate(const sb_kernel *kernel, int bits, int64_t bytes, int repeat, int tile, sb_error *err)
{
    enum { DECODE_COLS = 4096 };
    double bits_per_weight = bits ? bits : 2.6;
    int64_t rows = (int64_t)((double)bytes * 8 / bits_per_weight / DECODE_COLS) / 128 * 128;
    rows = rows < 128 ? 128 : rows;
    sb_qmatrix m;
    sb_qact act;
    if (kernel_matrix_tiled(rows, DECODE_COLS, bits, SB_SCALES_Q8, tile, tile, &m, err) != SB_OK ||
        sb_qact_create(&m, 1, SB_ACT_INT8, &act, err) != SB_OK)
        return -1.0;
    float *x = malloc(DECODE_COLS * sizeof(float)), *y = malloc((size_t)rows * sizeof(float));
    for (int i = 0; i < DECODE_COLS; i++)
        x[i] = (float)sin(i * 0.1);
    sb_qact_quantize(&act, x, 1, DECODE_COLS, 1);
    /* enough products per measurement that the timer's resolution does not matter */
    int64_t inner = (64 << 20) / sb_qmatrix_bytes(&m);
    inner = inner < 1 ? 1 : inner;
    double best = INFINITY;
    for (int run = 0; run <= repeat; run++) {
        double start = cpu_now();
        for (int64_t i = 0; i < inner; i++)
            sb_qmatrix_mul(kernel, &m, &act, y, rows, false, 1);
        double s = (cpu_now() - start) / (double)inner;
        best = run && s < best ? s : best;
    }
    double rate = (double)sb_qmatrix_bytes(&m) / best / 1e9;
    free(x);
    free(y);
    sb_qact_free(&act);
    sb_qmatrix_free(&m);
    return rate;
}

static int decode_rates(const sb_kernel *kernel, int64_t mb, int repeat, int only_bits, int tile)
{
    sb_error err;
    size_t bytes = (size_t)mb << 20;
    uint64_t *buffer = aligned_alloc(64, bytes);
    memset(buffer, 3, bytes);
    double best = best_read_seconds(buffer, bytes, repeat, cpu_now);
    free(buffer);
    printf("kernel path %s; decode (one token, int8), 4096-wide, %dx%d tiles, affine-q8 groups of %d; GB/s on CPU "
           "time, 1 thread; stream read %.2f GB/s (%lld MiB)\n",
           sb_isa_name(kernel->isa), tile, tile, tile, (double)bytes / best / 1e9, (long long)mb);
    printf("%-6s %-14s %-14s\n", "bits", "in L2 (256K)", "from memory");
    for (int bits = 0; bits <= 8; bits++) {
        if (only_bits >= 0 && bits != only_bits)
            continue;
        double hot = decode_rate(kernel, bits, 256 << 10, repeat, tile, &err);
        double cold = decode_rate(kernel, bits, (int64_t)bytes, repeat, tile, &err);
        if (hot < 0 || cold < 0) {
            fprintf(stderr, "bench-layout: %s\n", err.message);
            return 1;
        }
        printf("%-6s %8.2f       %8.2f\n", bits ? (const char *[]){"", "1", "2", "3", "4", "5", "6", "7", "8"}[bits] : "2+3",
               hot, cold);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int64_t mb = 256, gemm = 0;
    int repeat = 3, only_bits = -1, tile = 128;
    bool decode = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--decode") == 0)
            decode = true;
        else if (i + 1 < argc && strcmp(argv[i], "--mb") == 0)
            mb = atoll(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--repeat") == 0)
            repeat = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--bits") == 0)
            only_bits = strcmp(argv[++i], "mix") == 0 ? 0 : atoi(argv[i]);
        else if (i + 1 < argc && strcmp(argv[i], "--gemm") == 0)
            gemm = atoll(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--tile") == 0 && (atoi(argv[i + 1]) == 32 || atoi(argv[i + 1]) == 128))
            tile = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-layout [--mb 256] [--repeat 3] [--gemm N | --decode] [--tile 128|32] [--bits 1..8|mix]\n");
            return 2;
        }
    }
    sb_error err;
    sb_kernel kernel;
    if (sb_kernel_choose(&kernel, &err) != SB_OK || !__builtin_cpu_supports("avx2")) {
        fprintf(stderr, "bench-layout: needs AVX2 (%s)\n", err.message);
        return 1;
    }
    if (gemm > 0)
        return gemm_rates(&kernel, gemm, repeat, only_bits, tile);
    if (decode)
        return decode_rates(&kernel, mb, repeat, only_bits, tile);
    size_t bytes = (size_t)mb << 20;
    uint64_t *buffer = aligned_alloc(64, bytes);
    memset(buffer, 3, bytes);
    int8_t *act = aligned_alloc(64, COLS);
    float *d = malloc(COLS / 32 * sizeof(float)), *y = malloc(sizeof(float) * (bytes / 128 + 64));
    float *x = malloc(COLS * sizeof(float));
    for (int i = 0; i < COLS; i++) {
        act[i] = (int8_t)((i * 37) % 255 - 127);
        x[i] = (float)sin(i * 0.1);
    }
    for (int i = 0; i < COLS / 32; i++)
        d[i] = 0.01f;
    double best = best_read_seconds(buffer, bytes, repeat, sb_now);
    double stream = (double)bytes / best / 1e9;
    printf("kernel path %s; codes %lld MiB per matrix; stream read %.2f GB/s (1 thread)\n", sb_isa_name(kernel.isa),
           (long long)mb, stream);
    printf("%-5s %-22s %-22s\n", "bits", "dense layout GB/s", "kernel layout GB/s");
    for (int bits = 2; bits <= 4; bits++) {
        int64_t rows = (int64_t)bytes * 8 / bits / COLS / 128 * 128;
        best = INFINITY;
        for (int run = 0; run <= repeat; run++) {
            double start = sb_now();
            if (bits == 2)
                dense2((const uint8_t *)buffer, rows, act, d, y);
            else if (bits == 3)
                dense3((const uint8_t *)buffer, rows, act, d, y);
            else
                dense4((const uint8_t *)buffer, rows, act, d, y);
            double s = sb_now() - start;
            best = run && s < best ? s : best;
        }
        double dense = (double)rows * COLS * bits / 8 / best / 1e9;
        sb_qmatrix m;
        sb_qact qx;
        if (kernel_matrix(rows, bits, &m, &err) != SB_OK || sb_qact_create(&m, 1, SB_ACT_INT8, &qx, &err) != SB_OK) {
            fprintf(stderr, "bench-layout: %s\n", err.message);
            return 1;
        }
        sb_qact_quantize(&qx, x, 1, COLS, 1);
        best = INFINITY;
        for (int run = 0; run <= repeat; run++) {
            double start = sb_now();
            sb_qmatrix_mul(&kernel, &m, &qx, y, rows, false, 1);
            double s = sb_now() - start;
            best = run && s < best ? s : best;
        }
        double packed = (double)sb_qmatrix_bytes(&m) / best / 1e9;
        printf("%-5d %6.2f (%3.0f%% of stream)   %6.2f (%3.0f%% of stream)\n", bits, dense, 100 * dense / stream, packed,
               100 * packed / stream);
        sb_qact_free(&qx);
        sb_qmatrix_free(&m);
    }
    free(buffer);
    free(act);
    free(d);
    free(y);
    free(x);
    return 0;
}
