/* sb_sha256: SHA-256 (FIPS 180-4) for fingerprints: source headers, options, output shards.
 * Streaming interface; no allocation; tested against the FIPS example vectors. */
#ifndef SB_SHA256_H
#define SB_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sb_sha256 {
    uint32_t state[8];
    uint64_t total_bytes;
    uint8_t block[64];
    size_t block_fill;
} sb_sha256;

void sb_sha256_init(sb_sha256 *hash);
void sb_sha256_update(sb_sha256 *hash, const void *data, size_t bytes);
void sb_sha256_final(sb_sha256 *hash, uint8_t digest[32]);
/* One-shot convenience. */
void sb_sha256_bytes(const void *data, size_t bytes, uint8_t digest[32]);
/* Lower-case hex, 64 characters plus the terminator. */
void sb_sha256_hex(const uint8_t digest[32], char hex[65]);

#endif
