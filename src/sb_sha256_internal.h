/* sb_sha256_internal: what the portable (sb_sha256.c) and the SHA-NI (sb_sha256_x86.c)
 * compressions share, so that the round constants exist once. Not for callers of sb_sha256.h. */
#ifndef SB_SHA256_INTERNAL_H
#define SB_SHA256_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* FIPS 180-4 section 4.2.2: K[0..63], the first 32 bits of the fractional parts of the cube
 * roots of the first 64 primes. */
extern const uint32_t sb_sha256_round_constants[64];

#ifdef SB_SHA256_X86
/* Compresses `blocks` consecutive 64-byte blocks of `data` (any alignment) into `state` with the
 * SHA extensions. Call only when sb_cpu_detect() reports sha and sse41. */
void sb_sha256_blocks_x86(uint32_t state[8], const uint8_t *data, size_t blocks);
#endif

#endif
