#include "sb_pack.h"

#include <string.h>

void sb_pack_codes(const uint8_t *codes, int64_t count, int bits, uint8_t *packed)
{
    if (bits == 8) {
        memcpy(packed, codes, (size_t)count);
        return;
    }
    /* accumulate into a 64-bit window and flush whole bytes */
    uint64_t window = 0;
    int filled = 0;
    int64_t out = 0;
    const uint64_t mask = (1u << bits) - 1;
    for (int64_t i = 0; i < count; i++) {
        window |= ((uint64_t)codes[i] & mask) << filled;
        filled += bits;
        while (filled >= 8) {
            packed[out++] = (uint8_t)window;
            window >>= 8;
            filled -= 8;
        }
    }
    if (filled > 0)
        packed[out++] = (uint8_t)window;
}

void sb_unpack_codes(const uint8_t *packed, int64_t count, int bits, uint8_t *codes)
{
    if (bits == 8) {
        memcpy(codes, packed, (size_t)count);
        return;
    }
    uint64_t window = 0;
    int filled = 0;
    int64_t in = 0;
    const uint64_t mask = (1u << bits) - 1;
    for (int64_t i = 0; i < count; i++) {
        while (filled < bits) {
            window |= (uint64_t)packed[in++] << filled;
            filled += 8;
        }
        codes[i] = (uint8_t)(window & mask);
        window >>= bits;
        filled -= bits;
    }
}

void sb_pack_bitmap(const uint8_t *bits_per_tile, int64_t tiles, uint8_t *packed)
{
    memset(packed, 0, (size_t)sb_bitmap_bytes(tiles));
    for (int64_t t = 0; t < tiles; t++)
        packed[t / 2] |= (uint8_t)((bits_per_tile[t] & 15u) << (4 * (t % 2)));
}

void sb_unpack_bitmap(const uint8_t *packed, int64_t tiles, uint8_t *bits_per_tile)
{
    for (int64_t t = 0; t < tiles; t++)
        bits_per_tile[t] = (uint8_t)((packed[t / 2] >> (4 * (t % 2))) & 15u);
}
