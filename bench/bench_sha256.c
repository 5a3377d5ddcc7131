/* bench-sha256: SHA-256 speed (src/sb_sha256.h) on both paths, the SHA extensions (SHA-NI, what
 * sb_sha256_init picks where the CPU has them) and portable C, over the same buffer:
 *
 *   bench-sha256 [MiB]      (default 256)
 *
 * Each path hashes the buffer once as a warm-up, then three times; the figure is the best of the
 * three in MB/s (10^6 bytes per second) of process CPU time (CLOCK_PROCESS_CPUTIME_ID), which a
 * shared machine's other load disturbs less than wall time. Both digests are printed: they must
 * agree. One line per path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_sha256.h"

typedef void (*init_fn)(sb_sha256 *hash);

static double cpu_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* Best MB/s of three timed passes after a warm-up; the digest in hex. */
static double hash_speed(init_fn init, const uint8_t *data, size_t bytes, char hex[65])
{
    double best = 0;
    for (int pass = 0; pass < 4; pass++) {
        double start = cpu_seconds();
        sb_sha256 hash;
        uint8_t digest[32];
        init(&hash);
        sb_sha256_update(&hash, data, bytes);
        sb_sha256_final(&hash, digest);
        double seconds = cpu_seconds() - start;
        sb_sha256_hex(digest, hex);
        if (pass > 0 && seconds > 0 && (double)bytes / seconds / 1e6 > best)
            best = (double)bytes / seconds / 1e6;
    }
    return best;
}

int main(int argc, char **argv)
{
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 256;
    if (argc > 2 || mib <= 0 || mib > 65536) {
        fprintf(stderr, "usage: bench-sha256 [MiB]   (1..65536, default 256)\n");
        return 2;
    }
    size_t bytes = (size_t)mib << 20;
    uint8_t *data = malloc(bytes);
    if (!data) {
        fprintf(stderr, "bench-sha256: cannot allocate %ld MiB\n", mib);
        return 1;
    }
    uint64_t x = 0x9e3779b97f4a7c15u; /* xorshift: data the compressor cannot shortcut (it cannot anyway) */
    for (size_t i = 0; i < bytes; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        data[i] = (uint8_t)x;
    }
    sb_sha256 probe;
    sb_sha256_init(&probe);
    char hex_fast[65], hex_portable[65];
    double fast = hash_speed(sb_sha256_init, data, bytes, hex_fast);
    double portable = hash_speed(sb_sha256_init_portable, data, bytes, hex_portable);
    printf("path=%s MiB=%ld MB/s=%.0f sha256=%s\n", probe.use_extensions ? "sha-ni" : "portable(no-sha-ni)", mib,
           fast, hex_fast);
    printf("path=portable MiB=%ld MB/s=%.0f sha256=%s\n", mib, portable, hex_portable);
    free(data);
    if (strcmp(hex_fast, hex_portable) != 0) {
        fprintf(stderr, "bench-sha256: the two paths' digests differ\n");
        return 1;
    }
    return 0;
}
