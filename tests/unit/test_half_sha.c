/* F16/BF16 conversions against the compiler's own _Float16 (an independent implementation),
 * exhaustively over all 65536 half values and on 10 million random floats; SHA-256 against the
 * FIPS 180-4 example vectors. */
#include <math.h>
#include <string.h>

#include "sb_half.h"
#include "sb_sha256.h"
#include "sb_test.h"

static void check_f16(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 reference;
        uint16_t bits = (uint16_t)h;
        memcpy(&reference, &bits, 2);
        float expected = (float)reference;
        float actual = sb_f16_to_f32(bits);
        if (isnan(expected))
            SB_CHECK(isnan(actual));
        else
            SB_CHECK_MSG(memcmp(&expected, &actual, 4) == 0, "half 0x%04x -> %g, expected %g", h, actual, expected);
        if (!isnan(expected))
            SB_CHECK_MSG(sb_f32_to_f16(actual) == bits, "round trip of half 0x%04x", h);
    }
    sb_test_rng rng = {42};
    int mismatches = 0;
    for (int i = 0; i < 10000000; i++) {
        uint32_t u = (uint32_t)sb_test_next(&rng);
        /* concentrate on the interesting exponent range: subnormals to overflow */
        if (i % 2)
            u = (u & 0x807fffffu) | ((uint32_t)(96 + (u >> 24) % 48) << 23);
        float f = sb_bits_f32(u);
        if (isnan(f))
            continue;
        _Float16 reference = (_Float16)f;
        uint16_t expected;
        memcpy(&expected, &reference, 2);
        if (sb_f32_to_f16(f) != expected && mismatches++ < 5)
            fprintf(stderr, "f32 %a -> 0x%04x, expected 0x%04x\n", f, sb_f32_to_f16(f), expected);
    }
    SB_CHECK(mismatches == 0);
}

static void check_bf16(void)
{
    SB_CHECK(sb_f32_to_bf16(1.0f) == 0x3f80);
    SB_CHECK(sb_bf16_to_f32(0x3f80) == 1.0f);
    /* ties to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 -> 1 */
    SB_CHECK(sb_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);
    SB_CHECK(sb_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);
    SB_CHECK(sb_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82); /* halfway, rounds to even 0x3f82 */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sb_bf16_to_f32((uint16_t)h);
        if (!isnan(f))
            SB_CHECK(sb_f32_to_bf16(f) == h);
    }
}

static void check_sha256(void)
{
    char hex[65];
    uint8_t digest[32];
    sb_sha256_bytes("abc", 3, digest);
    sb_sha256_hex(digest, hex);
    SB_CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    sb_sha256_bytes("", 0, digest);
    sb_sha256_hex(digest, hex);
    SB_CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sb_sha256_bytes(two_blocks, strlen(two_blocks), digest);
    sb_sha256_hex(digest, hex);
    SB_CHECK(strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
    /* streaming in odd pieces equals one shot: one million 'a' */
    sb_sha256 hash;
    sb_sha256_init(&hash);
    char chunk[997];
    memset(chunk, 'a', sizeof chunk);
    size_t left = 1000000;
    while (left) {
        size_t take = left < sizeof chunk ? left : sizeof chunk;
        sb_sha256_update(&hash, chunk, take);
        left -= take;
    }
    sb_sha256_final(&hash, digest);
    sb_sha256_hex(digest, hex);
    SB_CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
}

int main(void)
{
    check_f16();
    check_bf16();
    check_sha256();
    return sb_test_finish("test_half_sha");
}
