/* Packing is exact for every bitwidth 1..8 on random codes and ragged counts, and its layout
 * matches a bit-by-bit reference written straight from docs/FORMAT.md. */
#include <stdlib.h>
#include <string.h>

#include "sb_pack.h"
#include "sb_test.h"

/* The format's definition, one bit at a time: code i, bit j -> stream bit i*bits + j. */
static void reference_pack(const uint8_t *codes, int64_t count, int bits, uint8_t *packed)
{
    memset(packed, 0, (size_t)sb_packed_bytes(count, bits));
    for (int64_t i = 0; i < count; i++)
        for (int j = 0; j < bits; j++) {
            int64_t k = i * bits + j;
            packed[k / 8] |= (uint8_t)(((codes[i] >> j) & 1) << (k % 8));
        }
}

int main(void)
{
    sb_test_rng rng = {7};
    static const int64_t counts[] = {0, 1, 2, 3, 5, 7, 8, 9, 12 * 32, 31, 33, 172, 1000, 4096, 16384, 12345};
    for (int bits = 1; bits <= 8; bits++) {
        for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
            int64_t count = counts[c];
            uint8_t *codes = malloc((size_t)count + 1), *back = malloc((size_t)count + 1);
            int64_t bytes = sb_packed_bytes(count, bits);
            uint8_t *packed = malloc((size_t)bytes + 1), *expected = malloc((size_t)bytes + 1);
            for (int64_t i = 0; i < count; i++)
                codes[i] = (uint8_t)(sb_test_next(&rng) & ((1u << bits) - 1));
            sb_pack_codes(codes, count, bits, packed);
            reference_pack(codes, count, bits, expected);
            SB_CHECK_MSG(memcmp(packed, expected, (size_t)bytes) == 0, "layout, bits %d count %lld", bits,
                         (long long)count);
            sb_unpack_codes(packed, count, bits, back);
            SB_CHECK_MSG(memcmp(codes, back, (size_t)count) == 0, "round trip, bits %d count %lld", bits,
                         (long long)count);
            free(codes); free(back); free(packed); free(expected);
        }
        /* exhaustive over every code value at every position phase: all 2^bits codes, repeated */
        int64_t count = (int64_t)(1 << bits) * 8 + 3;
        uint8_t *codes = malloc((size_t)count), *back = malloc((size_t)count);
        uint8_t *packed = malloc((size_t)sb_packed_bytes(count, bits));
        for (int64_t i = 0; i < count; i++)
            codes[i] = (uint8_t)((i * 7 + i / (1 << bits)) & ((1 << bits) - 1));
        sb_pack_codes(codes, count, bits, packed);
        sb_unpack_codes(packed, count, bits, back);
        SB_CHECK(memcmp(codes, back, (size_t)count) == 0);
        free(codes); free(back); free(packed);
    }
    SB_CHECK(sb_packed_bytes(12 * 32, 3) == 144);
    SB_CHECK(sb_packed_bytes(5, 3) == 2);
    /* bit map: 4 bits per tile, low nibble first */
    for (int64_t tiles = 0; tiles < 40; tiles++) {
        uint8_t bits_per_tile[40], back[40], packed[20];
        for (int64_t t = 0; t < tiles; t++)
            bits_per_tile[t] = (uint8_t)(1 + sb_test_next(&rng) % 8);
        sb_pack_bitmap(bits_per_tile, tiles, packed);
        sb_unpack_bitmap(packed, tiles, back);
        SB_CHECK(tiles == 0 || memcmp(bits_per_tile, back, (size_t)tiles) == 0);
        if (tiles >= 2)
            SB_CHECK(packed[0] == (uint8_t)(bits_per_tile[0] | bits_per_tile[1] << 4));
    }
    return sb_test_finish("test_pack");
}
