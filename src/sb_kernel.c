/* sb_kernel: building the kernel layout from stored tiles, quantizing activations, and running
 * a product on the chosen path over threads. The per-ISA loops are in sb_kernel_<isa>.c. */
#include "sb_kernel.h"

#include <float.h>
#include <stdio.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "sb_half.h"
#include "sb_kernel_internal.h"
#include "sb_pack.h"

static int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

static int gcd(int a, int b)
{
    while (b) {
        int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void *aligned_bytes(int64_t bytes, const char *what, sb_error *err)
{
    void *p = NULL;
    if (bytes < 0 || posix_memalign(&p, 64, (size_t)(bytes > 0 ? bytes : 64)) != 0) {
        sb_error_set(err, SB_ERR_NOMEM, "cannot allocate %lld bytes for %s", (long long)bytes, what);
        return NULL;
    }
    return p;
}

/* The packed weights: 2 MiB aligned and backed by huge pages where the kernel allows it
 * (transparent huge pages in "madvise" mode, Debian's default). A decode product streams the
 * whole matrix once per token: with 4 KiB pages every 4 KiB of each of the 4 panel streams is a
 * TLB miss and a new page for the hardware prefetcher (docs/KERNELS.md, Measurements). */
static void *weight_bytes(int64_t bytes, const char *what, sb_error *err)
{
    enum { HUGE_PAGE = 2 << 20 };
    if (bytes < HUGE_PAGE)
        return aligned_bytes(bytes, what, err);
    void *p = NULL;
    if (posix_memalign(&p, HUGE_PAGE, (size_t)bytes) != 0) {
        sb_error_set(err, SB_ERR_NOMEM, "cannot allocate %lld bytes for %s", (long long)bytes, what);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    /* whole huge pages only: a partly used last one would cost up to 2 MiB a matrix */
    (void)madvise(p, (size_t)bytes / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE); /* advice: 4 KiB pages still work */
#endif
    return p;
}

/* ---- Building ----------------------------------------------------------------------------------- */

void sb_qmatrix_free(sb_qmatrix *m)
{
    free(m->name);
    free(m->bits_per_tile);
    free(m->tile_bounds);
    free(m->columns);
    free(m->panel_offset);
    free(m->panel_row0);
    free(m->code_offset);
    free(m->tile_order);
    free(m->data);
    memset(m, 0, sizeof *m);
}

static int tile_cols_of(const sb_tiling *tiling, int64_t tile_col)
{
    int64_t left = tiling->cols - tile_col * tiling->tile_cols;
    return (int)(left < tiling->tile_cols ? left : tiling->tile_cols);
}

static int tile_rows_of(const sb_tiling *tiling, int64_t tile_row)
{
    int64_t left = tiling->rows - tile_row * tiling->tile_rows;
    return (int)(left < tiling->tile_rows ? left : tiling->tile_rows);
}

sb_status sb_qmatrix_create(const sb_qmatrix_desc *desc, const uint8_t *bits_per_tile, const uint16_t *tile_scales,
                            sb_qmatrix *m, sb_error *err)
{
    memset(m, 0, sizeof *m);
    const char *name = desc->name ? desc->name : "matrix";
    sb_status status = sb_tiling_init(&m->tiling, desc->rows, desc->cols, desc->tile_rows, desc->tile_cols,
                                      desc->group, err);
    if (status != SB_OK)
        return sb_error_prefix(err, "tensor '%s'", name);
    const sb_tiling *tiling = &m->tiling;
    if (desc->group % SB_CHUNK_COLS != 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "tensor '%s': group %d is not a multiple of %d columns, which the packed kernels need "
                            "(evaluate it dequantized instead)",
                            name, desc->group, SB_CHUNK_COLS);
    if (desc->format != SB_SCALES_F16 && desc->format != SB_SCALES_Q8)
        return sb_error_set(err, SB_ERR_INPUT, "tensor '%s': unknown scale encoding %d", name, (int)desc->format);
    uint32_t allowed = desc->allowed_bits ? desc->allowed_bits : 0x1feu;
    int64_t tiles = sb_tiling_count(tiling);
    for (int64_t t = 0; t < tiles; t++) {
        int bits = bits_per_tile[t];
        if (bits < 1 || bits > SB_MAX_BITS || !(allowed & (1u << bits))) {
            char set[40] = "";
            for (int b = 1; b <= SB_MAX_BITS; b++)
                if (allowed & (1u << b))
                    snprintf(set + strlen(set), sizeof set - strlen(set), "%s%d", set[0] ? "," : "", b);
            return sb_error_set(err, SB_ERR_FORMAT,
                                "tensor '%s': bit map gives tile %lld a bitwidth of %d, outside the file's bit set {%s}",
                                name, (long long)t, bits, set);
        }
        if (desc->format == SB_SCALES_Q8) {
            float bound = sb_f16_to_f32(tile_scales[t]);
            if (!isfinite(bound) || bound < 0.0f)
                return sb_error_set(err, SB_ERR_FORMAT, "tensor '%s': tile %lld has a scale bound of %g (not finite and >= 0)",
                                    name, (long long)t, (double)bound);
        }
    }
    m->rows = desc->rows;
    m->cols = desc->cols;
    m->format = desc->format;
    m->padded_tile_cols = (int)round_up(tiling->tile_cols, SB_SUPER_COLS);
    m->segment_cols = gcd(tiling->group, SB_SUPER_COLS);
    m->q8_table = sb_q8_scale_table();
    m->meta_bytes = round_up(tiling->groups_per_row * sb_kmeta_bytes(m->format), 32);
    for (int64_t tile_row = 0; tile_row < tiling->tiles_down; tile_row++)
        m->panels += (tile_rows_of(tiling, tile_row) + SB_PANEL_ROWS - 1) / SB_PANEL_ROWS;
    m->name = strdup(name);
    m->bits_per_tile = sb_malloc((size_t)tiles, "bit map", err);
    m->tile_bounds = desc->format == SB_SCALES_Q8 ? sb_malloc((size_t)tiles * sizeof(float), "tile scales", err) : NULL;
    m->columns = sb_malloc((size_t)tiling->tiles_across * sizeof(sb_kcolumn), "tile columns", err);
    m->panel_offset = sb_malloc((size_t)(m->panels + 1) * sizeof(int64_t), "panel offsets", err);
    m->panel_row0 = sb_malloc((size_t)m->panels * sizeof(int64_t), "panel rows", err);
    m->code_offset = sb_malloc((size_t)tiles * sizeof(int64_t), "tile offsets", err);
    m->tile_order = sb_malloc((size_t)tiles * sizeof(int32_t), "tile order", err);
    if (!m->name || !m->bits_per_tile || (desc->format == SB_SCALES_Q8 && !m->tile_bounds) || !m->columns ||
        !m->panel_offset || !m->panel_row0 || !m->code_offset || !m->tile_order) {
        sb_qmatrix_free(m);
        return sb_error_set(err, SB_ERR_NOMEM, "tensor '%s': out of memory for its tables", name);
    }
    memcpy(m->bits_per_tile, bits_per_tile, (size_t)tiles);
    for (int64_t t = 0; m->tile_bounds && t < tiles; t++)
        m->tile_bounds[t] = sb_f16_to_f32(tile_scales[t]);
    for (int64_t tile_col = 0; tile_col < tiling->tiles_across; tile_col++) {
        sb_kcolumn *column = &m->columns[tile_col];
        column->cols = tile_cols_of(tiling, tile_col);
        column->supers = (column->cols + SB_SUPER_COLS - 1) / SB_SUPER_COLS;
        column->segments = (column->cols + m->segment_cols - 1) / m->segment_cols;
        column->groups = (column->cols + tiling->group - 1) / tiling->group;
        column->first_group = tile_col * tiling->tile_cols / tiling->group;
        column->first_block = tile_col * (m->padded_tile_cols / SB_SUPER_COLS);
        column->meta_offset = column->first_group * sb_kmeta_bytes(m->format);
    }
    /* Sizes: every term is at most rows x padded cols x 8 bits plus small metadata, and rows and
     * cols are below 2^40 (the reader's limit), so a panel fits easily in int64; the total is
     * checked against overflow anyway, a corrupt shape must not wrap it. */
    int64_t offset = 0, panel = 0;
    for (int64_t tile_row = 0; tile_row < tiling->tiles_down; tile_row++) {
        /* storage order: the tile row's tiles by bitwidth, then by column (docs/KERNELS.md) */
        int64_t code_bytes = 0, position = tile_row * tiling->tiles_across;
        for (int bits = 1; bits <= SB_MAX_BITS; bits++)
            for (int64_t tile_col = 0; tile_col < tiling->tiles_across; tile_col++) {
                int64_t t = tile_row * tiling->tiles_across + tile_col;
                if (bits_per_tile[t] != bits)
                    continue;
                m->tile_order[position++] = (int32_t)tile_col;
                m->code_offset[t] = code_bytes;
                int64_t supers = (tile_cols_of(tiling, tile_col) + SB_SUPER_COLS - 1) / SB_SUPER_COLS;
                code_bytes += supers * 32 * bits;
            }
        int64_t panel_bytes = m->meta_bytes + code_bytes;
        int rows = tile_rows_of(tiling, tile_row);
        for (int r = 0; r < rows; r += SB_PANEL_ROWS, panel++) {
            m->panel_row0[panel] = tile_row * tiling->tile_rows + r;
            m->panel_offset[panel] = offset;
            if (__builtin_add_overflow(offset, panel_bytes, &offset)) {
                sb_qmatrix_free(m);
                return sb_error_set(err, SB_ERR_FORMAT, "tensor '%s': its packed size overflows", name);
            }
        }
    }
    m->panel_offset[m->panels] = offset;
    m->data_bytes = offset;
    m->data = weight_bytes(offset, "packed weights", err);
    if (!m->data) {
        sb_error_prefix(err, "tensor '%s'", name);
        sb_qmatrix_free(m);
        return SB_ERR_NOMEM;
    }
    return SB_OK;
}

int64_t sb_qmatrix_stored_row_bytes(const sb_qmatrix *m, int64_t tile_row)
{
    const sb_tiling *tiling = &m->tiling;
    int rows = tile_rows_of(tiling, tile_row);
    int64_t bytes = 0;
    for (int64_t tile_col = 0; tile_col < tiling->tiles_across; tile_col++)
        bytes += sb_tile_code_bytes(rows, tile_cols_of(tiling, tile_col),
                                    m->bits_per_tile[tile_row * tiling->tiles_across + tile_col]);
    return bytes;
}

/* Unpacks whole groups of 8 codes of `bits` bits (8 codes fill exactly `bits` bytes) with
 * 8-byte loads while 8 bytes of the stream remain; returns how many codes it unpacked. */
static inline __attribute__((always_inline)) int64_t unpack_groups(const uint8_t *packed, int64_t count,
                                                                    const int bits, uint8_t *codes)
{
    const uint64_t mask = (1u << bits) - 1;
    int64_t i = 0, stream_bytes = (count * bits + 7) / 8;
    for (; i + 8 <= count && i / 8 * bits + 8 <= stream_bytes; i += 8, packed += bits) {
        uint64_t word;
        memcpy(&word, packed, sizeof word);
        for (int j = 0; j < 8; j++)
            codes[i + j] = (uint8_t)((word >> (j * bits)) & mask);
    }
    return i;
}

/* Unpacks `count` codes of a tile's dense stream (docs/FORMAT.md): a word at a time, with the
 * width a constant (a bit-at-a-time reader, or a `bits`-byte load that stalls on store
 * forwarding, made repacking 5x slower). */
static void unpack_stream(const uint8_t *packed, int64_t count, int bits, uint8_t *codes)
{
    int64_t done;
    switch (bits) {
    case 1: done = unpack_groups(packed, count, 1, codes); break;
    case 2: done = unpack_groups(packed, count, 2, codes); break;
    case 3: done = unpack_groups(packed, count, 3, codes); break;
    case 4: done = unpack_groups(packed, count, 4, codes); break;
    case 5: done = unpack_groups(packed, count, 5, codes); break;
    case 6: done = unpack_groups(packed, count, 6, codes); break;
    case 7: done = unpack_groups(packed, count, 7, codes); break;
    default: memcpy(codes, packed, (size_t)count); return;
    }
    if (done < count) /* the last few codes: their bytes end the stream */
        sb_unpack_codes(packed + done / 8 * bits, count - done, bits, codes + done);
}

/* Writes one super-block: codes[r * ld + c] for r < rows, c < cols (the rest is padding, 0)
 * into the planes of `bits` (sb_kernel_internal.h). */
static void pack_super(const uint8_t *codes, int64_t ld, int rows, int cols, int bits, uint8_t *out)
{
    uint8_t chunk[8][32];
    if (rows == SB_PANEL_ROWS && cols == SB_SUPER_COLS) {
        for (int r = 0; r < SB_PANEL_ROWS; r++)
            for (int k = 0; k < 8; k++)
                memcpy(&chunk[k][4 * r], codes + r * ld + 4 * k, 4);
    } else {
        memset(chunk, 0, sizeof chunk);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                chunk[c / 4][4 * r + c % 4] = codes[r * ld + c];
    }
    if (bits == 8) {
        for (int k = 0; k < 8; k++)
            for (int i = 0; i < 32; i++)
                out[32 * k + i] = (uint8_t)(chunk[k][i] ^ 0x80); /* code - 128 as int8 */
        return;
    }
    if (bits == 3) {
        for (int j = 0; j < 3; j++)
            for (int i = 0; i < 32; i++)
                out[32 * j + i] = (uint8_t)((chunk[2 * j][i] & 7) | ((chunk[6][i] >> j) & 1) << 3 |
                                            (chunk[2 * j + 1][i] & 7) << 4 | ((chunk[7][i] >> j) & 1) << 7);
        return;
    }
    int shift = 0;
    if (sb_kplane4_words(bits)) {
        for (int m = 0; m < 4; m++)
            for (int i = 0; i < 32; i++)
                out[32 * m + i] = (uint8_t)((chunk[2 * m][i] & 15) | (chunk[2 * m + 1][i] & 15) << 4);
        out += 4 * 32;
        shift = 4;
    }
    if (sb_kplane2_words(bits)) {
        for (int m = 0; m < 2; m++)
            for (int i = 0; i < 32; i++) {
                uint8_t byte = 0;
                for (int j = 0; j < 4; j++)
                    byte |= (uint8_t)(((chunk[4 * m + j][i] >> shift) & 3) << (2 * j));
                out[32 * m + i] = byte;
            }
        out += 2 * 32;
        shift += 2;
    }
    if (sb_kplane1_words(bits)) {
        for (int i = 0; i < 32; i++) {
            uint8_t byte = 0;
            for (int j = 0; j < 8; j++)
                byte |= (uint8_t)(((chunk[j][i] >> shift) & 1) << j);
            out[i] = byte;
        }
    }
}

sb_status sb_qmatrix_fill_tile_row(sb_qmatrix *m, int64_t tile_row, const uint8_t *codes, int64_t code_bytes,
                                   const uint16_t *scales, const uint16_t *zeros, sb_error *err)
{
    const sb_tiling *tiling = &m->tiling;
    if (tile_row != m->tile_rows_filled || tile_row >= tiling->tiles_down)
        return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': tile row %lld given out of order (expected %lld of %lld)",
                            m->name, (long long)tile_row, (long long)m->tile_rows_filled,
                            (long long)tiling->tiles_down);
    int64_t expected = sb_qmatrix_stored_row_bytes(m, tile_row);
    if (code_bytes != expected)
        return sb_error_set(err, SB_ERR_FORMAT,
                            "tensor '%s': tile row %lld has %lld bytes of codes, but its shape and bit map need %lld",
                            m->name, (long long)tile_row, (long long)code_bytes, (long long)expected);
    int rows = tile_rows_of(tiling, tile_row);
    int64_t groups = tiling->groups_per_row, row0 = tile_row * tiling->tile_rows;
    /* Check the metadata before touching the layout. */
    for (int r = 0; r < rows; r++)
        for (int64_t j = 0; j < groups; j++) {
            uint16_t s = scales[r * groups + j], z = zeros[r * groups + j];
            if (m->format == SB_SCALES_F16) {
                if (!isfinite(sb_f16_to_f32(s)) || !isfinite(sb_f16_to_f32(z))) {
                    /* worded as the other readers word it (io/sb_h5_reader.c) */
                    const char *what = isfinite(sb_f16_to_f32(s)) ? "zero" : "scale";
                    return sb_error_set(err, SB_ERR_FORMAT,
                                        "tensor '%s': non-finite %s: the %s at row %lld, group %lld is %g", m->name,
                                        what, what, (long long)(row0 + r), (long long)j,
                                        (double)sb_f16_to_f32(isfinite(sb_f16_to_f32(s)) ? z : s));
                }
            } else if (s > 255 || z > 255) {
                return sb_error_set(err, SB_ERR_FORMAT, "tensor '%s': row %lld group %lld has a scale or zero code above 255",
                                    m->name, (long long)(row0 + r), (long long)j);
            }
        }
    uint8_t *unpacked = sb_malloc((size_t)tiling->tile_rows * (size_t)tiling->tile_cols, "unpacked tile", err);
    if (!unpacked)
        return sb_error_prefix(err, "tensor '%s'", m->name);
    int64_t first_panel = 0;
    while (m->panel_row0[first_panel] < row0)
        first_panel++;
    int npanels = (rows + SB_PANEL_ROWS - 1) / SB_PANEL_ROWS;
    int meta_size = sb_kmeta_bytes(m->format);
    for (int p = 0; p < npanels; p++) {
        uint8_t *panel = m->data + m->panel_offset[first_panel + p];
        memset(panel, 0, (size_t)m->meta_bytes);
        int panel_rows = rows - p * SB_PANEL_ROWS < SB_PANEL_ROWS ? rows - p * SB_PANEL_ROWS : SB_PANEL_ROWS;
        for (int64_t j = 0; j < groups; j++) {
            uint8_t *entry = panel + j * meta_size;
            for (int r = 0; r < panel_rows; r++) {
                int64_t at = (int64_t)(p * SB_PANEL_ROWS + r) * groups + j;
                if (m->format == SB_SCALES_Q8) {
                    sb_kmeta_q8 *meta = (sb_kmeta_q8 *)entry;
                    meta->scale_code[r] = (uint8_t)scales[at];
                    meta->zero_code[r] = (uint8_t)zeros[at];
                } else {
                    sb_kmeta_f16 *meta = (sb_kmeta_f16 *)entry;
                    meta->scale[r] = scales[at];
                    meta->zero[r] = zeros[at];
                }
            }
        }
    }
    int64_t in = 0;
    for (int64_t tile_col = 0; tile_col < tiling->tiles_across; tile_col++) {
        int64_t t = tile_row * tiling->tiles_across + tile_col;
        int cols = tile_cols_of(tiling, tile_col), bits = m->bits_per_tile[t];
        unpack_stream(codes + in, (int64_t)rows * cols, bits, unpacked);
        in += sb_tile_code_bytes(rows, cols, bits);
        int supers = (cols + SB_SUPER_COLS - 1) / SB_SUPER_COLS;
        for (int p = 0; p < npanels; p++) {
            uint8_t *out = m->data + m->panel_offset[first_panel + p] + m->meta_bytes + m->code_offset[t];
            int panel_rows = rows - p * SB_PANEL_ROWS < SB_PANEL_ROWS ? rows - p * SB_PANEL_ROWS : SB_PANEL_ROWS;
            for (int s = 0; s < supers; s++) {
                int super_cols = cols - s * SB_SUPER_COLS < SB_SUPER_COLS ? cols - s * SB_SUPER_COLS : SB_SUPER_COLS;
                pack_super(unpacked + (int64_t)p * SB_PANEL_ROWS * cols + s * SB_SUPER_COLS, cols, panel_rows,
                           super_cols, bits, out + (int64_t)s * 32 * bits);
            }
        }
    }
    free(unpacked);
    m->tile_rows_filled++;
    return SB_OK;
}

sb_status sb_qmatrix_from_stored(const sb_qmatrix_desc *desc, const uint8_t *bits_per_tile,
                                 const uint16_t *tile_scales, const uint8_t *codes, int64_t code_bytes,
                                 const uint16_t *scales, const uint16_t *zeros, sb_qmatrix *m, sb_error *err)
{
    SB_TRY(sb_qmatrix_create(desc, bits_per_tile, tile_scales, m, err));
    const sb_tiling *tiling = &m->tiling;
    int64_t in = 0;
    for (int64_t tile_row = 0; tile_row < tiling->tiles_down; tile_row++) {
        int64_t bytes = sb_qmatrix_stored_row_bytes(m, tile_row);
        if (in + bytes > code_bytes) {
            sb_status status = sb_error_set(err, SB_ERR_FORMAT,
                                            "tensor '%s': %lld bytes of codes, but its shape and bit map need %lld or more",
                                            m->name, (long long)code_bytes, (long long)(in + bytes));
            sb_qmatrix_free(m);
            return status;
        }
        int64_t row0 = tile_row * tiling->tile_rows;
        sb_status status = sb_qmatrix_fill_tile_row(m, tile_row, codes + in, bytes, scales + row0 * tiling->groups_per_row,
                                                    zeros + row0 * tiling->groups_per_row, err);
        if (status != SB_OK) {
            sb_qmatrix_free(m);
            return status;
        }
        in += bytes;
    }
    if (in != code_bytes) {
        sb_status status = sb_error_set(err, SB_ERR_FORMAT,
                                        "tensor '%s': %lld bytes of codes, but its shape and bit map need %lld",
                                        m->name, (long long)code_bytes, (long long)in);
        sb_qmatrix_free(m);
        return status;
    }
    return SB_OK;
}

int64_t sb_qmatrix_bytes(const sb_qmatrix *m)
{
    return m->data_bytes + (m->tile_bounds ? sb_tiling_count(&m->tiling) * (int64_t)sizeof(float) : 0);
}

/* ---- Activations -------------------------------------------------------------------------------- */

void sb_qact_free(sb_qact *act)
{
    free(act->storage);
    memset(act, 0, sizeof *act);
}

sb_status sb_qact_create(const sb_qmatrix *m, int64_t max_tokens, sb_act_precision precision, sb_qact *act,
                         sb_error *err)
{
    memset(act, 0, sizeof *act);
    act->precision = precision;
    act->max_tokens = max_tokens > 0 ? max_tokens : 1;
    act->cols = m->cols;
    act->tile_cols = m->tiling.tile_cols;
    act->group = m->tiling.group;
    act->padded_tile_cols = m->padded_tile_cols;
    act->width = m->tiling.tiles_across * m->padded_tile_cols;
    act->stride = round_up(act->width, 64);
    if (act->stride % 4096 == 0)
        act->stride += 64;
    act->blocks = act->width / SB_SUPER_COLS;
    act->groups = m->tiling.groups_per_row;
    /* every size below is at most max_tokens x this (plus alignment): refuse what would wrap */
    int64_t per_token = 2 * act->stride + 4 * (act->blocks + act->groups) + 4 * (act->cols + 32);
    if (act->max_tokens > (INT64_MAX - 4096) / per_token)
        return sb_error_set(err, SB_ERR_NOMEM, "%s activations: room for %lld tokens of %lld columns overflows",
                            precision == SB_ACT_F32 ? "float" : "quantized", (long long)act->max_tokens,
                            (long long)act->cols);
    if (precision == SB_ACT_F32) {
        act->float_stride = round_up(act->cols, 16);
        if (act->float_stride % 1024 == 0)
            act->float_stride += 16;
        float *floats = (float *)aligned_bytes(act->max_tokens * act->float_stride * (int64_t)sizeof(float),
                                               "float activations", err);
        if (!floats)
            return SB_ERR_NOMEM;
        act->storage = floats;
        act->floats = floats;
        return SB_OK;
    }
    int64_t value_bytes = round_up(act->max_tokens * act->stride, 64);
    int64_t scale_bytes = round_up(act->max_tokens * act->blocks * (int64_t)sizeof(float), 64);
    int64_t sum_bytes = act->max_tokens * act->groups * (int64_t)sizeof(float);
    int64_t parts = precision == SB_ACT_INT16 ? 2 : 1;
    uint8_t *storage = aligned_bytes(parts * value_bytes + scale_bytes + sum_bytes, "quantized activations", err);
    if (!storage)
        return SB_ERR_NOMEM;
    act->storage = storage;
    act->values = (int8_t *)storage;
    act->low = parts == 2 ? (int8_t *)(storage + value_bytes) : NULL;
    act->block_scales = (float *)(storage + parts * value_bytes);
    act->group_sums = (float *)(storage + parts * value_bytes + scale_bytes);
    memset(act->values, 0, (size_t)(parts * value_bytes)); /* padding stays 0 */
    return SB_OK;
}

bool sb_qact_fits(const sb_qact *act, const sb_qmatrix *m)
{
    return act->cols == m->cols && act->tile_cols == m->tiling.tile_cols && act->group == m->tiling.group;
}

/* The integer value of position `i` of a token (a, or 255 hi + lo). */
static inline int32_t act_integer(const int8_t *values, const int8_t *low, int64_t i)
{
    return low ? 255 * (int32_t)values[i] + low[i] : values[i];
}

/* One token: blocks of 32 padded positions, each scaled by its largest magnitude. */
static void quantize_token(const sb_qact *act, const float *x, int8_t *values, int8_t *low, float *scales,
                           float *sums)
{
    const float levels = low ? 32512.0f : 127.0f; /* the largest integer value */
    int64_t tiles_across = act->width / act->padded_tile_cols;
    for (int64_t tile_col = 0; tile_col < tiles_across; tile_col++) {
        int64_t col0 = tile_col * act->tile_cols;
        int64_t cols = act->cols - col0 < act->tile_cols ? act->cols - col0 : act->tile_cols;
        for (int64_t b0 = 0; b0 < act->padded_tile_cols; b0 += SB_SUPER_COLS) {
            int64_t block = (tile_col * act->padded_tile_cols + b0) / SB_SUPER_COLS;
            int n = (int)(cols - b0 < SB_SUPER_COLS ? (cols - b0 > 0 ? cols - b0 : 0) : SB_SUPER_COLS);
            const float *in = x + col0 + b0;
            int64_t at = tile_col * act->padded_tile_cols + b0;
            float max = 0.0f;
            int finite = 1;
            for (int i = 0; i < n; i++) {
                float v = fabsf(in[i]);
                finite &= v <= FLT_MAX;
                max = v > max ? v : max;
            }
            memset(values + at, 0, SB_SUPER_COLS);
            if (low)
                memset(low + at, 0, SB_SUPER_COLS);
            if (!finite || max == 0.0f) {
                scales[block] = finite ? 0.0f : NAN;
                continue;
            }
            float inverse = levels / max;
            for (int i = 0; i < n; i++) {
                float q = rintf(in[i] * inverse);
                q = q > levels ? levels : q < -levels ? -levels : q;
                int32_t v = (int32_t)q;
                if (low) {
                    /* hi = v / 255 rounded (halves down), lo = v - 255 hi: both in -127..127 */
                    int32_t hi = v >= 0 ? (v + 127) / 255 : -((-v + 127) / 255);
                    values[at + i] = (int8_t)hi;
                    low[at + i] = (int8_t)(v - 255 * hi);
                } else {
                    values[at + i] = (int8_t)v;
                }
            }
            scales[block] = max / levels;
        }
    }
    /* S_g: the group's x' summed block by block (integers, then one product per block). */
    for (int64_t g = 0; g < act->groups; g++) {
        int64_t c0 = g * act->group, c1 = c0 + act->group < act->cols ? c0 + act->group : act->cols;
        float sum = 0.0f;
        int64_t c = c0;
        while (c < c1) {
            int64_t tile_col = c / act->tile_cols;
            int64_t position = tile_col * act->padded_tile_cols + (c - tile_col * act->tile_cols);
            int64_t block = position / SB_SUPER_COLS;
            int64_t block_end = (block + 1) * SB_SUPER_COLS - position + c; /* first column past the block */
            int64_t end = block_end < c1 ? block_end : c1;
            int32_t isum = 0;
            for (int64_t k = 0; k < end - c; k++)
                isum += act_integer(values, low, position + k);
            sum += (float)isum * scales[block];
            c = end;
        }
        sums[g] = sum;
    }
}

void sb_qact_quantize(sb_qact *act, const float *x, int64_t ntokens, int64_t ldx, int threads)
{
    act->ntokens = ntokens;
    if (act->precision == SB_ACT_F32) {
        for (int64_t t = 0; t < ntokens; t++)
            memcpy(act->floats + t * act->float_stride, x + t * ldx, (size_t)act->cols * sizeof(float));
        return;
    }
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static) if (ntokens > 1)
    for (int64_t t = 0; t < ntokens; t++)
        quantize_token(act, x + t * ldx, act->values + t * act->stride, act->low ? act->low + t * act->stride : NULL,
                       act->block_scales + t * act->blocks, act->group_sums + t * act->groups);
}

float sb_qact_value(const sb_qact *act, int64_t token, int64_t col)
{
    if (act->precision == SB_ACT_F32)
        return act->floats[token * act->float_stride + col];
    int64_t tile_col = col / act->tile_cols;
    int64_t position = tile_col * act->padded_tile_cols + (col - tile_col * act->tile_cols);
    const int8_t *low = act->low ? act->low + token * act->stride : NULL;
    return act->block_scales[token * act->blocks + position / SB_SUPER_COLS] *
           (float)act_integer(act->values + token * act->stride, low, position);
}

/* ---- Dispatch ----------------------------------------------------------------------------------- */

sb_status sb_kernel_select(sb_isa isa, sb_kernel *kernel, sb_error *err)
{
    if (!sb_cpu_supports(isa))
        return sb_error_set(err, SB_ERR_INPUT, "this CPU cannot run the %s kernels (its best path is %s)",
                            sb_isa_name(isa), sb_isa_name(sb_cpu_best_isa()));
    kernel->isa = isa;
    switch (isa) {
    case SB_ISA_AVX2: kernel->panels = sb_kernel_panels_avx2; break;
    case SB_ISA_AVX512: {
        /* GFNI where the CPU has it (Ice Lake, Zen 4 and later; not Cascade Lake), unless
         * SCALEBITS_NO_GFNI is set (the tests run the other decode code that way too) */
        sb_cpu_features cpu = sb_cpu_detect();
        bool gfni = cpu.gfni && !getenv("SCALEBITS_NO_GFNI");
        kernel->panels = gfni ? sb_kernel_panels_avx512_gfni : sb_kernel_panels_avx512;
        break;
    }
    default: kernel->panels = sb_kernel_panels_scalar; break;
    }
    return SB_OK;
}

sb_act_precision sb_kernel_batch_precision(const sb_kernel *kernel, const sb_qmatrix *matrix, int64_t ntokens)
{
    /* float decodes the whole matrix per call: fewer than 8 tokens do not repay it */
    if (kernel->isa == SB_ISA_AVX512 || ntokens < SB_F32_MIN_TOKENS)
        return SB_ACT_INT16;
    if (matrix->tiling.group < 64)
        return SB_ACT_F32;
    /* 16-bit tiles wider than 4 bits run the general loop at about 60% of the tile pairs' rate:
     * past ~10% of them the float path, flat over the widths, is ahead (docs/KERNELS.md) */
    int64_t tiles = sb_tiling_count(&matrix->tiling), wide = 0;
    for (int64_t t = 0; t < tiles; t++)
        wide += matrix->bits_per_tile[t] > 4;
    return wide * 20 < tiles ? SB_ACT_INT16 : SB_ACT_F32;
}

sb_status sb_kernel_choose(sb_kernel *kernel, sb_error *err)
{
    sb_isa isa;
    SB_TRY(sb_cpu_choose_isa(&isa, err));
    return sb_kernel_select(isa, kernel, err);
}

/* Ranges of panels per thread in a product (sb_qmatrix_mul): decode ranges of a 4096 x 4096
 * matrix at 2.75 bits per weight hold 360 KB each; batch ranges keep whole tile rows together
 * more often (a batch runs up to 16 panels of a tile row at a time). */
enum { DECODE_RANGES = 8, BATCH_RANGES = 2 };

/* Where range `thread` of `count` starts: the panels are split by the bytes they hold (tile
 * rows of wider tiles take longer), at a multiple of 4 panels from the start of a tile row (the
 * SIMD paths run 4 panels of a tile row at a time, and a group cut short repeats a panel). */
static int64_t split_panel(const sb_qmatrix *m, int thread, int count)
{
    if (thread <= 0)
        return 0;
    if (thread >= count)
        return m->panels;
    int64_t target = m->panel_offset[m->panels] / count * thread;
    int64_t lo = 0, hi = m->panels;
    while (lo < hi) { /* the first panel starting at or after target */
        int64_t mid = lo + (hi - lo) / 2;
        if (m->panel_offset[mid] < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    int64_t per_tile_row = (m->tiling.tile_rows + SB_PANEL_ROWS - 1) / SB_PANEL_ROWS;
    return lo < m->panels ? lo - lo % per_tile_row % 4 : lo;
}

void sb_qmatrix_mul(const sb_kernel *kernel, const sb_qmatrix *m, const sb_qact *act, float *y, int64_t ldy,
                    bool accumulate, int threads)
{
    sb_qmatrix_args args = {m, act, y, ldy, accumulate};
    if (threads < 1)
        threads = 1;
    if (threads > m->panels)
        threads = (int)m->panels;
    if (threads <= 1) {
        kernel->panels(&args, 0, m->panels);
        return;
    }
    /* Contiguous ranges of panels, several per thread, taken in turn by whichever thread is
     * free: a thread that starts late (a sleeping OpenMP worker takes tens of microseconds to
     * wake, and a decode token runs ~28 products) or is descheduled on a shared machine leaves
     * its ranges to the others instead of holding up the product. Each range streams its own
     * part of the matrix; a row's result does not depend on which range or thread computes it. */
    int ranges = threads * (act->ntokens == 1 ? DECODE_RANGES : BATCH_RANGES);
    int64_t next = 0;
#pragma omp parallel num_threads(threads)
    {
        for (;;) {
            int64_t range;
#pragma omp atomic capture
            range = next++;
            if (range >= ranges)
                break;
            int64_t begin = split_panel(m, (int)range, ranges), end = split_panel(m, (int)range + 1, ranges);
            if (begin < end)
                kernel->panels(&args, begin, end);
        }
    }
}
