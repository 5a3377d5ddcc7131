#include "sb_sha256.h"

#include <string.h>

#include "sb_cpu.h"
#include "sb_sha256_internal.h"

const uint32_t sb_sha256_round_constants[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotate_right(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void compress_portable(uint32_t state[8], const uint8_t block[64])
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
               (uint32_t)block[4 * i + 2] << 8 | (uint32_t)block[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotate_right(w[i - 15], 7) ^ rotate_right(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotate_right(w[i - 2], 17) ^ rotate_right(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i++) {
        uint32_t s1 = rotate_right(e, 6) ^ rotate_right(e, 11) ^ rotate_right(e, 25);
        uint32_t choose = (e & f) ^ (~e & g);
        uint32_t t1 = h + s1 + choose + sb_sha256_round_constants[i] + w[i];
        uint32_t s0 = rotate_right(a, 2) ^ rotate_right(a, 13) ^ rotate_right(a, 22);
        uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = s0 + majority;
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    state[0] += a; state[1] += b; state[2] += c; state[3] += d;
    state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

/* Compresses whole blocks on the hash's path. */
static void compress_blocks(sb_sha256 *hash, const uint8_t *data, size_t blocks)
{
#ifdef SB_SHA256_X86
    if (hash->use_extensions) {
        sb_sha256_blocks_x86(hash->state, data, blocks);
        return;
    }
#endif
    for (size_t i = 0; i < blocks; i++)
        compress_portable(hash->state, data + 64 * i);
}

void sb_sha256_init_portable(sb_sha256 *hash)
{
    static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(hash->state, initial, sizeof initial);
    hash->total_bytes = 0;
    hash->block_fill = 0;
    hash->use_extensions = false;
}

void sb_sha256_init(sb_sha256 *hash)
{
    sb_sha256_init_portable(hash);
#ifdef SB_SHA256_X86
    /* SHA-NI needs only the XMM registers, which every x86-64 OS saves: no XGETBV check */
    sb_cpu_features cpu = sb_cpu_detect();
    hash->use_extensions = cpu.sha && cpu.sse41;
#endif
}

void sb_sha256_update(sb_sha256 *hash, const void *data, size_t bytes)
{
    if (bytes == 0)
        return; /* data may be NULL then */
    const uint8_t *p = data;
    hash->total_bytes += bytes;
    if (hash->block_fill > 0) {
        size_t take = 64 - hash->block_fill;
        if (take > bytes)
            take = bytes;
        memcpy(hash->block + hash->block_fill, p, take);
        hash->block_fill += take;
        p += take;
        bytes -= take;
        if (hash->block_fill < 64)
            return;
        compress_blocks(hash, hash->block, 1);
        hash->block_fill = 0;
    }
    /* whole blocks straight from the caller's buffer: no copy */
    size_t blocks = bytes / 64;
    if (blocks > 0)
        compress_blocks(hash, p, blocks);
    p += 64 * blocks;
    bytes -= 64 * blocks;
    if (bytes > 0)
        memcpy(hash->block, p, bytes);
    hash->block_fill = bytes;
}

void sb_sha256_final(sb_sha256 *hash, uint8_t digest[32])
{
    /* FIPS 180-4 section 5.1.1: a 1 bit, zeros up to 56 mod 64 bytes, the length in bits (big-endian) */
    uint64_t bit_length = hash->total_bytes * 8;
    hash->block[hash->block_fill++] = 0x80;
    if (hash->block_fill > 56) {
        memset(hash->block + hash->block_fill, 0, 64 - hash->block_fill);
        compress_blocks(hash, hash->block, 1);
        hash->block_fill = 0;
    }
    memset(hash->block + hash->block_fill, 0, 56 - hash->block_fill);
    for (int i = 0; i < 8; i++)
        hash->block[56 + i] = (uint8_t)(bit_length >> (56 - 8 * i));
    compress_blocks(hash, hash->block, 1);
    hash->block_fill = 0;
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (uint8_t)(hash->state[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(hash->state[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(hash->state[i] >> 8);
        digest[4 * i + 3] = (uint8_t)hash->state[i];
    }
}

void sb_sha256_bytes(const void *data, size_t bytes, uint8_t digest[32])
{
    sb_sha256 hash;
    sb_sha256_init(&hash);
    sb_sha256_update(&hash, data, bytes);
    sb_sha256_final(&hash, digest);
}

void sb_sha256_hex(const uint8_t digest[32], char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = '\0';
}
