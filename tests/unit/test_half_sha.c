/* F16/BF16 conversions against the compiler's own _Float16 (an independent implementation),
 * exhaustively over all 65536 half values and on 10 million random floats; SHA-256 on both its
 * paths (SHA-NI and portable) against the FIPS 180-2 example vectors and against each other. */
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

/* The two SHA-256 paths (sb_sha256.h): "fast" is what sb_sha256_init picks (SHA-NI where the CPU
 * has it), "portable" the C compression. */
typedef void (*sha256_init_fn)(sb_sha256 *hash);

/* Hashes `bytes` of `data` on one path, fed to update in the pieces `splits` gives (ascending
 * offsets inside the data; none means one call). */
static void sha256_split(sha256_init_fn init, const uint8_t *data, size_t bytes, const size_t *splits, int nsplits,
                         uint8_t digest[32])
{
    sb_sha256 hash;
    init(&hash);
    size_t done = 0;
    for (int i = 0; i <= nsplits; i++) {
        size_t end = i < nsplits ? splits[i] : bytes;
        sb_sha256_update(&hash, data + done, end - done);
        done = end;
    }
    sb_sha256_final(&hash, digest);
}

/* FIPS 180-2 appendix B (and its 896-bit message, the SHA-384/512 example, whose SHA-256 digest
 * NIST's example sheets give) and one million 'a' in odd pieces. */
static void check_sha256_vectors(const char *path, sha256_init_fn init)
{
    static const struct {
        const char *message, *digest;
    } vectors[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", /* 448 bits: two blocks */
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"}, /* 896 bits */
    };
    char hex[65];
    uint8_t digest[32];
    for (size_t v = 0; v < sizeof vectors / sizeof vectors[0]; v++) {
        sha256_split(init, (const uint8_t *)vectors[v].message, strlen(vectors[v].message), NULL, 0, digest);
        sb_sha256_hex(digest, hex);
        SB_CHECK_MSG(strcmp(hex, vectors[v].digest) == 0, "%s path, %zu-byte vector: %s", path,
                     strlen(vectors[v].message), hex);
    }
    sb_sha256 hash;
    init(&hash);
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
    SB_CHECK_MSG(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
                 "%s path, one million 'a': %s", path, hex);
}

static void check_sha256(void)
{
    sb_sha256 probe;
    sb_sha256_init(&probe);
    if (probe.use_extensions)
        printf("test_half_sha: SHA-256 checks both paths, SHA-NI and portable\n");
    else
        printf("test_half_sha: this CPU or build has no SHA-NI: SHA-256 checks the portable path only\n");
    check_sha256_vectors(probe.use_extensions ? "SHA-NI" : "default", sb_sha256_init);
    check_sha256_vectors("portable", sb_sha256_init_portable);
    uint8_t digest[32]; /* the one-shot form, on the default path */
    sb_sha256_bytes("abc", 3, digest);
    SB_CHECK(digest[0] == 0xba && digest[31] == 0xad);

    /* the two paths against each other: random data of random lengths 0..10000, each fed in
     * up to four pieces at random offsets (partial blocks, whole blocks in place, both mixed) */
    enum { MAX_BYTES = 10000, CASES = 2000 };
    static uint8_t data[MAX_BYTES];
    sb_test_rng rng = {7};
    for (int i = 0; i < MAX_BYTES; i++)
        data[i] = (uint8_t)sb_test_next(&rng);
    int mismatches = 0;
    for (int c = 0; c < CASES; c++) {
        size_t bytes = (size_t)(sb_test_next(&rng) % (MAX_BYTES + 1));
        size_t start = (size_t)(sb_test_next(&rng) % (MAX_BYTES - bytes + 1)); /* any alignment */
        size_t splits[3] = {0};
        int nsplits = (int)(sb_test_next(&rng) % 4);
        for (int s = 0; s < nsplits; s++)
            splits[s] = (size_t)(sb_test_next(&rng) % (bytes + 1));
        for (int s = 1; s < nsplits; s++) /* insertion sort: ascending offsets */
            for (int t = s; t > 0 && splits[t - 1] > splits[t]; t--) {
                size_t swap = splits[t];
                splits[t] = splits[t - 1];
                splits[t - 1] = swap;
            }
        uint8_t fast[32], portable[32], whole[32];
        sha256_split(sb_sha256_init, data + start, bytes, splits, nsplits, fast);
        sha256_split(sb_sha256_init_portable, data + start, bytes, splits, nsplits, portable);
        sha256_split(sb_sha256_init_portable, data + start, bytes, NULL, 0, whole);
        if ((memcmp(fast, portable, 32) != 0 || memcmp(portable, whole, 32) != 0) && mismatches++ < 5)
            fprintf(stderr, "SHA-256 paths differ: %zu bytes at offset %zu in %d pieces\n", bytes, start,
                    nsplits + 1);
    }
    SB_CHECK_MSG(mismatches == 0, "%d of %d random messages hash differently on the two paths", mismatches, CASES);
}

int main(void)
{
    check_f16();
    check_bf16();
    check_sha256();
    return sb_test_finish("test_half_sha");
}
