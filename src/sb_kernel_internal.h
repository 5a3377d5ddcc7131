/* sb_kernel_internal: the kernel layout as structs (docs/KERNELS.md), shared by the builder
 * (sb_kernel.c) and the per-ISA kernels (sb_kernel_scalar.c, sb_kernel_avx2.c,
 * sb_kernel_avx512.c). Not a public API.
 *
 * A panel is 8 output rows of one tile row. In memory it is its metadata, then its codes:
 *
 *   panel := meta[groups_per_row] (padded to 32 bytes), then for each tile of the tile row in
 *            storage order (by bitwidth, then column: sb_qmatrix.tile_order) its
 *            ceil(cols of the tile / 32) super-blocks at the tile's bitwidth
 *
 * A super-block holds 8 rows x 32 columns as 8 chunks of 8 rows x 4 columns. Byte i of a
 * chunk is row i / 4, column i % 4 (so a 32-bit lane is a row and its 4 columns, the unit of
 * an int8 dot product). The codes of the 8 chunks are stored as bit planes, in this order:
 *   4-bit plane (widths 4..7): word m holds chunk 2m in its low nibbles, 2m+1 in its high ones
 *   2-bit plane (2, 3, 6, 7):  word m holds chunk 4m+j in bits 2j..2j+1
 *   1-bit plane (1, 3, 5, 7):  bit j of its one word holds chunk j
 * The planes hold a code's bits from the least significant up: 5 = 4-bit plane (bits 0-3) +
 * 1-bit plane (bit 4); 6 = 4 + 2; 7 = 4 + 2 + 1. Width 8 is 8 chunk words of the code minus 128
 * as int8 (so a signed-times-signed dot product cannot overflow 16 bits). Width 3 has its own
 * three words, because as 2 + 1 planes it cost 5 vector operations a chunk and was the one
 * width that kept decode from memory speed: word j (j = 0, 1, 2) holds chunk 2j in bits 0-2
 * and chunk 2j+1 in bits 4-6 of each byte (unpacked like 4-bit codes, masked to 3 bits), and
 * bit j of chunk 6 in bit 3, bit j of chunk 7 in bit 7.
 */
#ifndef SB_KERNEL_INTERNAL_H
#define SB_KERNEL_INTERNAL_H

#include <assert.h>
#include <stdint.h>

#include "sb_kernel.h"

typedef struct sb_kword {
    uint8_t bytes[32]; /* one 256-bit vector: 8 lanes (rows) x 4 bytes (columns) */
} sb_kword;

/* Per panel and group: the stored metadata of its 8 rows, unchanged (affine-q8 / affine-f16). */
typedef struct sb_kmeta_q8 {
    uint8_t scale_code[SB_PANEL_ROWS]; /* s: scale = D_t x 2^(-s/32) */
    uint8_t zero_code[SB_PANEL_ROWS];  /* c: zero point z = c x 2^b / 256 */
} sb_kmeta_q8;
typedef struct sb_kmeta_f16 {
    uint16_t scale[SB_PANEL_ROWS]; /* F16 bits */
    uint16_t zero[SB_PANEL_ROWS];
} sb_kmeta_f16;

/* One super-block per bitwidth: 8 rows x 32 columns x b bits = 32 b bytes. */
typedef struct sb_ksuper1 { sb_kword p1; } sb_ksuper1;
typedef struct sb_ksuper2 { sb_kword p2[2]; } sb_ksuper2;
typedef struct sb_ksuper3 { sb_kword w[3]; } sb_ksuper3;
typedef struct sb_ksuper4 { sb_kword p4[4]; } sb_ksuper4;
typedef struct sb_ksuper5 { sb_kword p4[4], p1; } sb_ksuper5;
typedef struct sb_ksuper6 { sb_kword p4[4], p2[2]; } sb_ksuper6;
typedef struct sb_ksuper7 { sb_kword p4[4], p2[2], p1; } sb_ksuper7;
typedef struct sb_ksuper8 { sb_kword chunk[8]; } sb_ksuper8;

static_assert(sizeof(sb_kword) == 32, "a word is one 256-bit vector");
static_assert(sizeof(sb_kmeta_q8) == 16, "affine-q8: 16 bits per row and group, as stored");
static_assert(sizeof(sb_kmeta_f16) == 32, "affine-f16: 32 bits per row and group, as stored");
static_assert(sizeof(sb_ksuper1) == 32 * 1, "1 bit per weight");
static_assert(sizeof(sb_ksuper2) == 32 * 2, "2 bits per weight");
static_assert(sizeof(sb_ksuper3) == 32 * 3, "3 bits per weight");
static_assert(sizeof(sb_ksuper4) == 32 * 4, "4 bits per weight");
static_assert(sizeof(sb_ksuper5) == 32 * 5, "5 bits per weight");
static_assert(sizeof(sb_ksuper6) == 32 * 6, "6 bits per weight");
static_assert(sizeof(sb_ksuper7) == 32 * 7, "7 bits per weight");
static_assert(sizeof(sb_ksuper8) == 32 * 8, "8 bits per weight");

/* Which planes a width uses (widths 1, 2, 4..7; 3 and 8 have their own words). */
static inline int sb_kplane4_words(int bits) { return bits >= 4 && bits <= 7 ? 4 : 0; }
static inline int sb_kplane2_words(int bits) { return bits == 2 || bits == 6 || bits == 7 ? 2 : 0; }
static inline int sb_kplane1_words(int bits) { return bits == 1 || bits == 5 || bits == 7 ? 1 : 0; }

/* The most 16-bit partial sums of one width that can be added without overflow: each int8
 * product pair is at most 2 x 127 x (2^b - 1) (width 8: 2 x 128 x 127), capped at the 8
 * chunks of a super-block. */
static inline int sb_kdepth(int bits)
{
    static const int depth[9] = {0, 8, 8, 8, 8, 4, 2, 1, 1};
    return depth[bits];
}

/* Where a panel's pieces are. */
static inline const uint8_t *sb_kpanel(const sb_qmatrix *m, int64_t panel) { return m->data + m->panel_offset[panel]; }
static inline int64_t sb_kpanel_tile_row(const sb_qmatrix *m, int64_t panel)
{
    return m->panel_row0[panel] / m->tiling.tile_rows;
}
/* Valid rows of a panel (8, or fewer in the last panel of a tile row). */
static inline int sb_kpanel_rows(const sb_qmatrix *m, int64_t panel)
{
    int64_t row0 = m->panel_row0[panel], tile_row_end = (sb_kpanel_tile_row(m, panel) + 1) * m->tiling.tile_rows;
    if (tile_row_end > m->rows)
        tile_row_end = m->rows;
    int64_t left = tile_row_end - row0;
    return (int)(left < SB_PANEL_ROWS ? left : SB_PANEL_ROWS);
}
/* Bytes of one stored meta entry (one group of a panel). */
static inline int sb_kmeta_bytes(sb_scale_format format)
{
    return format == SB_SCALES_Q8 ? (int)sizeof(sb_kmeta_q8) : (int)sizeof(sb_kmeta_f16);
}

/* What the tiles of one tile column share (computed once per matrix). */
typedef struct sb_kcolumn {
    int cols;              /* valid columns */
    int supers;            /* super-blocks: ceil(cols / 32) */
    int segments;          /* valid segments: ceil(cols / segment_cols) */
    int groups;            /* groups: ceil(cols / group) */
    int64_t first_group;   /* global index of its first group */
    int64_t first_block;   /* activation block of its first column */
    int64_t meta_offset;   /* its first group's meta entry, from the panel's start */
} sb_kcolumn;

/* What every kernel needs about one tile of a panel. */
typedef struct sb_ktile {
    const uint8_t *codes;  /* its super-blocks */
    const uint8_t *meta;   /* the panel's meta entry of the tile's first group */
    int bits;
    int cols, supers, segments, groups;
    int64_t first_group, first_block;
    float tile_scale;      /* affine-q8: D_t */
} sb_ktile;

/* The tile column stored at `position` (0 .. tiles_across - 1) of tile row `tile_row`. */
static inline int64_t sb_ktile_col(const sb_qmatrix *m, int64_t tile_row, int64_t position)
{
    return m->tile_order[tile_row * m->tiling.tiles_across + position];
}

/* The affine-q8 bound D_t of tile (tile_row, tile_col); 0 with affine-f16 scales. */
static inline float sb_ktile_bound(const sb_qmatrix *m, int64_t tile_row, int64_t tile_col)
{
    return m->tile_bounds ? m->tile_bounds[tile_row * m->tiling.tiles_across + tile_col] : 0.0f;
}

/* The one-token loops' start of the stored tile at `position` of tile row `tile_row`, for
 * `panels` panels at once (their data at base[p]): each panel's codes of the tile (tile_codes[p]
 * = codes[p], which then moves past the tile) and its first group's meta entry (meta[p]).
 * Returns the tile's column; *tile_col is its index. */
static inline const sb_kcolumn *sb_kdecode_tile(const sb_qmatrix *m, int64_t tile_row, int64_t position, int bits,
                                                int panels, const uint8_t *const *base, const uint8_t **codes,
                                                const uint8_t **tile_codes, const uint8_t **meta, int64_t *tile_col)
{
    *tile_col = sb_ktile_col(m, tile_row, position);
    const sb_kcolumn *column = &m->columns[*tile_col];
    for (int p = 0; p < panels; p++) {
        tile_codes[p] = codes[p];
        codes[p] += (int64_t)column->supers * 32 * bits;
        meta[p] = base[p] + column->meta_offset;
    }
    return column;
}

/* Tile `tile_col` of a panel (panel data at `panel`, of tile row `tile_row`) whose codes start
 * at `codes`; the next stored tile's codes start at codes + supers x 32 x bits. */
static inline sb_ktile sb_ktile_at(const sb_qmatrix *m, const uint8_t *panel, int64_t tile_row, int64_t tile_col,
                                   const uint8_t *codes)
{
    const sb_kcolumn *column = &m->columns[tile_col];
    int64_t tile = tile_row * m->tiling.tiles_across + tile_col;
    sb_ktile t;
    t.codes = codes;
    t.meta = panel + column->meta_offset;
    t.bits = m->bits_per_tile[tile];
    t.cols = column->cols;
    t.supers = column->supers;
    t.segments = column->segments;
    t.groups = column->groups;
    t.first_group = column->first_group;
    t.first_block = column->first_block;
    t.tile_scale = m->tile_bounds ? m->tile_bounds[tile] : 0.0f;
    return t;
}

/* The codes of a panel's first tile. */
static inline const uint8_t *sb_kpanel_codes(const sb_qmatrix *m, const uint8_t *panel) { return panel + m->meta_bytes; }

/* The per-ISA panel loops (sb_qmatrix_panels_fn). */
void sb_kernel_panels_scalar(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end);
void sb_kernel_panels_avx2(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end);
void sb_kernel_panels_avx512(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end);
/* The same with GFNI bit-field extraction in decode (call only where sb_cpu_detect().gfni). */
void sb_kernel_panels_avx512_gfni(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end);

/* The affine-q8 multipliers 2^(-s/32) for s = 0..255 as the AVX2 path computes them (from two
 * small factor tables, not from sb_q8_scale_table): for the tests, which require them to equal
 * sb_q8_scale_table() exactly. Call only where sb_cpu_supports(SB_ISA_AVX2). */
void sb_kernel_avx2_q8_table(float table[256]);

#endif
