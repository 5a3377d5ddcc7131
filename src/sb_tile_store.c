#include "sb_tile_store.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_gptq.h"
#include "sb_half.h"
#include "sb_pack.h"

static int64_t meta_count(const sb_tiling *tiling, sb_tile_rect rect)
{
    return (int64_t)rect.rows * sb_tile_groups(rect.cols, tiling->group);
}

/* Bytes of one (tile, option): scales and zeros, then the packed codes. */
static int64_t slot_bytes(const sb_tiling *tiling, sb_tile_rect rect, int bits)
{
    return 2 * meta_count(tiling, rect) * (int64_t)sizeof(uint16_t) + sb_tile_code_bytes(rect.rows, rect.cols, bits);
}

int64_t sb_tile_store_bytes_for(const sb_tiling *tiling, const sb_curve_options *options, bool decoded)
{
    int64_t bytes = 0;
    for (int64_t t = 0; t < sb_tiling_count(tiling); t++) {
        sb_tile_rect rect = sb_tiling_rect(tiling, t);
        for (int o = 0; o < options->noptions; o++)
            bytes += slot_bytes(tiling, rect, options->bits[o]) +
                     (decoded ? (int64_t)rect.rows * rect.cols * (int64_t)sizeof(float) : 0);
    }
    return bytes + sb_tiling_count(tiling) * options->noptions * (int64_t)(sizeof(uint16_t) + sizeof(int64_t) + sizeof(double));
}

void sb_tile_store_free(sb_tile_store *store)
{
    free(store->offset);
    free(store->data);
    free(store->tile_scale);
    free(store->error);
    free(store->decoded);
    free(store->decoded_offset);
    memset(store, 0, sizeof *store);
}

int64_t sb_tile_store_bytes(const sb_tile_store *store)
{
    int64_t slots = store->ntiles * store->noptions;
    int64_t bytes = store->offset ? store->offset[slots] : 0;
    if (store->decoded)
        bytes += store->decoded_offset[slots - 1] * (int64_t)sizeof(float) +
                 (int64_t)store->tiling.tile_rows * store->tiling.tile_cols * (int64_t)sizeof(float);
    return bytes + slots * (int64_t)(sizeof(uint16_t) + sizeof(int64_t) + sizeof(double));
}

static uint16_t *slot_scales(const sb_tile_store *store, int64_t slot)
{
    return (uint16_t *)(store->data + store->offset[slot]);
}

sb_stored_tile sb_tile_store_output(const sb_tile_store *store, int64_t tile, int option)
{
    int64_t slot = tile * store->noptions + option;
    sb_tile_rect rect = sb_tiling_rect(&store->tiling, tile);
    int64_t nmeta = meta_count(&store->tiling, rect);
    sb_stored_tile out;
    out.scales = slot_scales(store, slot);
    out.zeros = out.scales + nmeta;
    out.codes = (const uint8_t *)(out.zeros + nmeta);
    out.code_bytes = sb_tile_code_bytes(rect.rows, rect.cols, store->bits[option]);
    out.tile_scale = store->tile_scale[slot];
    out.error = store->error[slot];
    return out;
}

/* The tile's FP values as float32 rows: a view into F32 weights, or widened from BF16. */
static const float *tile_values(const sb_linear *weights, const sb_tiling *tiling, sb_tile_rect rect, float *buffer,
                                int64_t *ld)
{
    if (weights->storage == SB_LINEAR_STORAGE_F32) {
        *ld = tiling->cols;
        return weights->f32 + rect.row0 * tiling->cols + rect.col0;
    }
    for (int r = 0; r < rect.rows; r++)
        for (int c = 0; c < rect.cols; c++)
            buffer[(int64_t)r * rect.cols + c] = sb_bf16_to_f32(weights->bf16[(rect.row0 + r) * tiling->cols + rect.col0 + c]);
    *ld = rect.cols;
    return buffer;
}

sb_status sb_tile_store_build(sb_tile_store *store, const sb_tiling *tiling, const sb_curve_options *options,
                              const sb_linear *weights, const float *importance, const sb_gptq_factor *gptq,
                              int threads, sb_error *err)
{
    memset(store, 0, sizeof *store);
    if (weights->storage != SB_LINEAR_STORAGE_F32 && weights->storage != SB_LINEAR_STORAGE_BF16)
        return sb_error_set(err, SB_ERR_INTERNAL, "tile store: weights held as %s cannot be quantized",
                            sb_linear_storage_name(weights->storage));
    store->tiling = *tiling;
    store->noptions = options->noptions;
    memcpy(store->bits, options->bits, sizeof store->bits);
    store->format = options->quant.format;
    store->ntiles = sb_tiling_count(tiling);
    int64_t slots = store->ntiles * store->noptions;
    store->offset = sb_malloc((size_t)(slots + 1) * sizeof *store->offset, "tile store", err);
    store->tile_scale = sb_calloc((size_t)(slots > 0 ? slots : 1), sizeof *store->tile_scale, "tile store", err);
    store->error = sb_calloc((size_t)(slots > 0 ? slots : 1), sizeof *store->error, "tile store", err);
    if (!store->offset || !store->tile_scale || !store->error) {
        sb_tile_store_free(store);
        return SB_ERR_NOMEM;
    }
    store->offset[0] = 0;
    for (int64_t t = 0; t < store->ntiles; t++) {
        sb_tile_rect rect = sb_tiling_rect(tiling, t);
        for (int o = 0; o < store->noptions; o++) {
            int64_t slot = t * store->noptions + o;
            /* keep every slot 2-byte aligned: its scales come first */
            store->offset[slot + 1] = (store->offset[slot] + slot_bytes(tiling, rect, store->bits[o]) + 1) & ~(int64_t)1;
        }
    }
    /* calloc: the padding bytes between slots are defined (stores compare equal) */
    store->data = sb_calloc((size_t)(store->offset[slots] > 0 ? store->offset[slots] : 1), 1, "tile store", err);
    if (!store->data) {
        sb_tile_store_free(store);
        return SB_ERR_NOMEM;
    }
    size_t cells = (size_t)tiling->tile_rows * (size_t)tiling->tile_cols;
    size_t groups = (size_t)tiling->tile_rows * (size_t)sb_tile_groups(tiling->tile_cols, tiling->group);
    int failed = 0;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        uint8_t *codes = malloc(cells);
        uint16_t *scales = malloc(groups * sizeof *scales), *zeros = malloc(groups * sizeof *zeros);
        float *buffer = malloc(cells * sizeof *buffer);
        float *work = malloc((size_t)sb_tile_work_floats(tiling->tile_rows, tiling->tile_cols, tiling->group) *
                             sizeof(float));
        int ok = codes && scales && zeros && buffer && work;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < store->ntiles; t++) {
            if (!ok)
                continue;
            sb_tile_rect rect = sb_tiling_rect(tiling, t);
            sb_tile_in in;
            in.x = tile_values(weights, tiling, rect, buffer, &in.x_ld);
            in.w = importance ? importance + rect.col0 : NULL;
            in.w_row_stride = 0;
            in.rows = rect.rows;
            in.cols = rect.cols;
            in.group = tiling->group;
            const sb_gptq_factor *factor = gptq ? &gptq[rect.col0 / tiling->tile_cols] : NULL;
            int64_t nmeta = meta_count(tiling, rect);
            for (int o = 0; o < store->noptions; o++) {
                sb_tile_out out = {codes, scales, zeros, 0, store->bits[o], options->quant.format, work};
                double error = factor ? sb_quantize_tile_gptq_factored(&in, factor, store->bits[o], &options->quant, &out,
                                                                       NULL)
                                      : sb_quantize_tile(&in, store->bits[o], &options->quant, &out);
                if (isnan(error)) {
#pragma omp atomic write
                    failed = 1;
                    break;
                }
                int64_t slot = t * store->noptions + o;
                uint16_t *slot_meta = slot_scales(store, slot);
                memcpy(slot_meta, scales, (size_t)nmeta * sizeof *scales);
                memcpy(slot_meta + nmeta, zeros, (size_t)nmeta * sizeof *zeros);
                sb_pack_codes(codes, (int64_t)rect.rows * rect.cols, store->bits[o], (uint8_t *)(slot_meta + 2 * nmeta));
                store->tile_scale[slot] = out.tile_scale;
                store->error[slot] = error;
            }
        }
        free(codes);
        free(scales);
        free(zeros);
        free(buffer);
        free(work);
    }
    if (failed) {
        sb_tile_store_free(store);
        return sb_error_set(err, SB_ERR_NOMEM, "cannot allocate tile buffers for the tile store");
    }
    return SB_OK;
}

/* Codes [first, first + count) of a packed stream of `bits`-bit codes. */
static void unpack_range(const uint8_t *packed, int bits, int64_t first, int count, uint8_t *codes)
{
    if (bits == 8) {
        memcpy(codes, packed + first, (size_t)count);
        return;
    }
    int64_t bit = first * bits;
    const uint8_t *in = packed + bit / 8;
    uint64_t window = 0;
    int filled = 0, skip = (int)(bit % 8);
    const uint64_t mask = (1u << bits) - 1;
    if (skip) {
        window = (uint64_t)(*in++) >> skip;
        filled = 8 - skip;
    }
    for (int i = 0; i < count; i++) {
        while (filled < bits) {
            window |= (uint64_t)(*in++) << filled;
            filled += 8;
        }
        codes[i] = (uint8_t)(window & mask);
        window >>= bits;
        filled -= bits;
    }
}

void sb_tile_store_decode(const sb_tile_store *store, int64_t tile, int option, int row0, int rows, int col0, int cols,
                          float *dst, int64_t ld, uint8_t *scratch)
{
    int64_t slot = tile * store->noptions + option;
    sb_tile_rect rect = sb_tiling_rect(&store->tiling, tile);
    if (store->decoded) {
        const float *values = store->decoded + store->decoded_offset[slot];
        for (int r = 0; r < rows; r++)
            memcpy(dst + (int64_t)r * ld, values + (int64_t)(row0 + r) * rect.cols + col0, (size_t)cols * sizeof(float));
        return;
    }
    int group = store->tiling.group, groups = sb_tile_groups(rect.cols, group), bits = store->bits[option];
    int64_t nmeta = meta_count(&store->tiling, rect);
    const uint16_t *scales = slot_scales(store, slot), *zeros = scales + nmeta;
    const uint8_t *codes = (const uint8_t *)(zeros + nmeta);
    for (int r = 0; r < rows; r++) {
        int row = row0 + r;
        unpack_range(codes, bits, (int64_t)row * rect.cols + col0, cols, scratch);
        /* group by group, each piece decoded as sb_dequantize_tile decodes it */
        for (int c = 0; c < cols;) {
            int g = (col0 + c) / group, end = (g + 1) * group - col0;
            int n = (end < cols ? end : cols) - c;
            if (store->format == SB_SCALES_Q8)
                sb_dequantize_group_q8(scratch + c, n, bits, store->tile_scale[slot], scales[row * groups + g],
                                       zeros[row * groups + g], dst + (int64_t)r * ld + c);
            else
                sb_dequantize_group(scratch + c, n, scales[row * groups + g], zeros[row * groups + g],
                                    dst + (int64_t)r * ld + c);
            c += n;
        }
    }
}

sb_status sb_tile_store_decode_all(sb_tile_store *store, int threads, sb_error *err)
{
    int64_t slots = store->ntiles * store->noptions, floats = 0;
    store->decoded_offset = sb_malloc((size_t)(slots > 0 ? slots : 1) * sizeof *store->decoded_offset, "decoded tiles", err);
    if (!store->decoded_offset)
        return SB_ERR_NOMEM;
    for (int64_t s = 0; s < slots; s++) {
        sb_tile_rect rect = sb_tiling_rect(&store->tiling, s / store->noptions);
        store->decoded_offset[s] = floats;
        floats += (int64_t)rect.rows * rect.cols;
    }
    float *decoded = sb_malloc((size_t)(floats > 0 ? floats : 1) * sizeof *decoded, "decoded tiles", err);
    if (!decoded) {
        free(store->decoded_offset);
        store->decoded_offset = NULL;
        return SB_ERR_NOMEM;
    }
    int failed = 0;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        uint8_t *codes = malloc((size_t)store->tiling.tile_cols);
        if (!codes) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t s = 0; s < slots; s++) {
            sb_tile_rect rect = sb_tiling_rect(&store->tiling, s / store->noptions);
            if (codes)
                sb_tile_store_decode(store, s / store->noptions, (int)(s % store->noptions), 0, rect.rows, 0, rect.cols,
                                     decoded + store->decoded_offset[s], rect.cols, codes);
        }
        free(codes);
    }
    if (failed) {
        free(decoded);
        free(store->decoded_offset);
        store->decoded_offset = NULL;
        return sb_error_set(err, SB_ERR_NOMEM, "cannot allocate buffers to decode tiles");
    }
    store->decoded = decoded;
    return SB_OK;
}

sb_status sb_tile_store_keep_only(sb_tile_store *store, const uint8_t *choice, sb_error *err)
{
    int64_t *offset = sb_malloc((size_t)(store->ntiles * store->noptions + 1) * sizeof *offset, "tile store", err);
    if (!offset)
        return SB_ERR_NOMEM;
    int64_t bytes = 0;
    for (int64_t t = 0; t < store->ntiles; t++) {
        int64_t slot = t * store->noptions + choice[t];
        for (int o = 0; o < store->noptions; o++)
            offset[t * store->noptions + o] = bytes;
        bytes += store->offset[slot + 1] - store->offset[slot];
    }
    offset[store->ntiles * store->noptions] = bytes;
    uint8_t *data = sb_malloc((size_t)(bytes > 0 ? bytes : 1), "tile store", err);
    if (!data) {
        free(offset);
        return SB_ERR_NOMEM;
    }
    for (int64_t t = 0; t < store->ntiles; t++) {
        int64_t slot = t * store->noptions + choice[t];
        memcpy(data + offset[slot], store->data + store->offset[slot], (size_t)(store->offset[slot + 1] - store->offset[slot]));
    }
    free(store->data);
    free(store->offset);
    free(store->decoded);
    free(store->decoded_offset);
    store->decoded = NULL;
    store->decoded_offset = NULL;
    store->data = data;
    store->offset = offset;
    return SB_OK;
}

void sb_tile_store_fill(const sb_tile_store *store, const uint8_t *choice, int64_t row0, int64_t rows, int64_t col0,
                        int64_t cols, float *dst, int64_t ld)
{
    const sb_tiling *tiling = &store->tiling;
    uint8_t stack[256];
    uint8_t *scratch = tiling->tile_cols <= 256 ? stack : malloc((size_t)tiling->tile_cols);
    if (!scratch) { /* cannot happen for tiles up to 256 wide; NaN rather than garbage beyond */
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++)
                dst[i * ld + j] = NAN;
        return;
    }
    for (int64_t tr = row0 / tiling->tile_rows; tr * tiling->tile_rows < row0 + rows; tr++)
        for (int64_t tc = col0 / tiling->tile_cols; tc * tiling->tile_cols < col0 + cols; tc++) {
            int64_t tile = tr * tiling->tiles_across + tc;
            sb_tile_rect rect = sb_tiling_rect(tiling, tile);
            int64_t r0 = rect.row0 > row0 ? rect.row0 : row0, r1 = rect.row0 + rect.rows < row0 + rows ? rect.row0 + rect.rows : row0 + rows;
            int64_t c0 = rect.col0 > col0 ? rect.col0 : col0, c1 = rect.col0 + rect.cols < col0 + cols ? rect.col0 + rect.cols : col0 + cols;
            sb_tile_store_decode(store, tile, choice[tile], (int)(r0 - rect.row0), (int)(r1 - r0), (int)(c0 - rect.col0),
                                 (int)(c1 - c0), dst + (r0 - row0) * ld + (c0 - col0), ld, scratch);
        }
    if (scratch != stack)
        free(scratch);
}

int64_t sb_tile_store_taylor_scratch_bytes(const sb_tile_store *store)
{
    return (int64_t)(store->noptions + 1) * store->tiling.tile_cols * (int64_t)sizeof(float) + store->tiling.tile_cols;
}

enum { LANES = 8 };

/* sum over c < n of g d and (g d)^2, d = q - base, in LANES float lanes, lanes summed in order. */
static void row_terms(const float *g, const float *q, const float *base, int n, double *first, double *second)
{
    float a[LANES] = {0}, b[LANES] = {0};
    int c = 0;
    for (; c + LANES <= n; c += LANES)
        for (int l = 0; l < LANES; l++) {
            float gd = g[c + l] * (q[c + l] - base[c + l]);
            a[l] += gd;
            b[l] += gd * gd;
        }
    for (int l = 0; c + l < n; l++) {
        float gd = g[c + l] * (q[c + l] - base[c + l]);
        a[l] += gd;
        b[l] += gd * gd;
    }
    double sa = 0, sb = 0;
    for (int l = 0; l < LANES; l++) {
        sa += a[l];
        sb += b[l];
    }
    *first += sa;
    *second += sb;
}

void sb_tile_store_taylor_add(const sb_tile_store *store, int64_t tile, int current, const float *grad, int64_t ld,
                              double *first, double *second, float *scratch)
{
    if (current <= 0)
        return;
    sb_tile_rect rect = sb_tiling_rect(&store->tiling, tile);
    int width = store->tiling.tile_cols;
    float *base = scratch, *values = scratch + width;
    uint8_t *codes = (uint8_t *)(scratch + (int64_t)(store->noptions + 1) * width);
    for (int r = 0; r < rect.rows; r++) {
        const float *g = grad + (int64_t)r * ld;
        const float *row_base, *row_values;
        if (store->decoded) {
            row_base = store->decoded + store->decoded_offset[tile * store->noptions + current] + (int64_t)r * rect.cols;
        } else {
            sb_tile_store_decode(store, tile, current, r, 1, 0, rect.cols, base, rect.cols, codes);
            row_base = base;
        }
        for (int o = 0; o < current; o++) {
            if (store->decoded) {
                row_values = store->decoded + store->decoded_offset[tile * store->noptions + o] + (int64_t)r * rect.cols;
            } else {
                sb_tile_store_decode(store, tile, o, r, 1, 0, rect.cols, values, rect.cols, codes);
                row_values = values;
            }
            row_terms(g, row_values, row_base, rect.cols, &first[o], &second[o]);
        }
    }
}
