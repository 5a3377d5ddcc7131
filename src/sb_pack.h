/* sb_pack: dense bit packing of quantization codes and of the per-tile bitwidth map.
 *
 * Codes: `count` codes of `bits` bits (1..8) form one little-endian bit stream: code i occupies
 * stream bits [i*bits, (i+1)*bits), least significant bit first, and stream bit k is bit (k % 8)
 * of byte k / 8. The stream ends padded with zero bits to a whole byte. A tile's codes (its rows
 * in order, each row's columns in order) are one such stream: docs/FORMAT.md.
 * Bit map: one 4-bit entry per tile holding its bitwidth; tile t is the low nibble of byte t/2
 * when t is even, the high nibble when odd.
 */
#ifndef SB_PACK_H
#define SB_PACK_H

#include <stdint.h>

static inline int64_t sb_packed_bytes(int64_t count, int bits) { return (count * bits + 7) / 8; }

/* Packs codes (each < 2^bits) into sb_packed_bytes(count, bits) bytes of `packed`. */
void sb_pack_codes(const uint8_t *codes, int64_t count, int bits, uint8_t *packed);
/* Exact inverse of sb_pack_codes. */
void sb_unpack_codes(const uint8_t *packed, int64_t count, int bits, uint8_t *codes);

static inline int64_t sb_bitmap_bytes(int64_t tiles) { return (tiles + 1) / 2; }
/* Packs per-tile bitwidths (1..8) into sb_bitmap_bytes(tiles) bytes. */
void sb_pack_bitmap(const uint8_t *bits_per_tile, int64_t tiles, uint8_t *packed);
void sb_unpack_bitmap(const uint8_t *packed, int64_t tiles, uint8_t *bits_per_tile);

#endif
