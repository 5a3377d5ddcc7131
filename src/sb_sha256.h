/* sb_sha256: SHA-256 (FIPS 180-4) for fingerprints: source headers, options, output shards.
 * Streaming interface; no allocation; tested against the FIPS example vectors.
 *
 * Two compression paths giving the same digest: the x86 SHA extensions (SHA-NI, with SSE4.1),
 * used when the build has them (SB_SHA256_X86, x86-64) and sb_cpu_detect says the CPU runs
 * them, and portable C for any other CPU. sb_sha256_init chooses; bench/bench_sha256.c measures
 * both. */
#ifndef SB_SHA256_H
#define SB_SHA256_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sb_sha256 {
    uint32_t state[8];
    uint64_t total_bytes;
    uint8_t block[64];   /* a partial block waiting for more input (whole blocks are hashed in place) */
    size_t block_fill;
    bool use_extensions; /* SHA-NI compression (set by sb_sha256_init when the CPU has it) */
} sb_sha256;

/* Starts a hash on the fastest path this CPU and build run. */
void sb_sha256_init(sb_sha256 *hash);
/* Starts a hash on the portable C path whatever the CPU has (tests and benchmarks). */
void sb_sha256_init_portable(sb_sha256 *hash);
void sb_sha256_update(sb_sha256 *hash, const void *data, size_t bytes);
void sb_sha256_final(sb_sha256 *hash, uint8_t digest[32]);
/* One-shot convenience. */
void sb_sha256_bytes(const void *data, size_t bytes, uint8_t digest[32]);
/* Lower-case hex, 64 characters plus the terminator. */
void sb_sha256_hex(const uint8_t digest[32], char hex[65]);

#endif
