#include "sb_curves.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sb_gptq.h"
#include "sb_pack.h"

/* Per-thread buffers for one tile: codes (unpacked), scales, zeros. */
typedef struct tile_buffers {
    uint8_t *codes;
    uint16_t *scales, *zeros;
    float *work;
} tile_buffers;

static int alloc_buffers(tile_buffers *b, const sb_tiling *tiling)
{
    int groups = sb_tile_groups(tiling->tile_cols, tiling->group);
    b->codes = malloc((size_t)tiling->tile_rows * (size_t)tiling->tile_cols);
    b->scales = malloc((size_t)tiling->tile_rows * (size_t)groups * sizeof(uint16_t));
    b->zeros = malloc((size_t)tiling->tile_rows * (size_t)groups * sizeof(uint16_t));
    b->work = malloc((size_t)sb_tile_work_floats(tiling->tile_rows, tiling->tile_cols, tiling->group) * sizeof(float));
    return b->codes && b->scales && b->zeros && b->work;
}

static void free_buffers(tile_buffers *b)
{
    free(b->codes);
    free(b->scales);
    free(b->zeros);
    free(b->work);
}

static sb_tile_in tile_view(const sb_tiling *tiling, int64_t tile_row_begin, const float *block,
                            const sb_importance *importance, sb_tile_rect rect)
{
    int64_t block_row = rect.row0 - tile_row_begin * tiling->tile_rows;
    sb_tile_in in;
    in.x = block + block_row * tiling->cols + rect.col0;
    in.x_ld = tiling->cols;
    in.w = NULL;
    in.w_row_stride = 0;
    if (importance && importance->values) {
        in.w = importance->values + block_row * importance->row_stride + rect.col0;
        in.w_row_stride = importance->row_stride;
    }
    in.rows = rect.rows;
    in.cols = rect.cols;
    in.group = tiling->group;
    return in;
}

/* D of one quantized tile: see sb_loss_model. */
static double tile_loss(const sb_tiling *tiling, int64_t tile_row_begin, const float *block, const sb_loss_model *model,
                        sb_tile_rect rect, const float *dequantized)
{
    int64_t block_row = rect.row0 - tile_row_begin * tiling->tile_rows;
    const sb_importance *second = model->loss.values || model->loss.scale != 0 ? &model->loss : &model->quant;
    double scale = second->scale != 0 ? second->scale : 1.0;
    double first_order = 0, second_order = 0;
    for (int r = 0; r < rect.rows; r++) {
        int64_t offset = (block_row + r) * tiling->cols + rect.col0;
        const float *reference = (model->reference ? model->reference : block) + offset;
        const float *w = second->values ? second->values + (block_row + r) * second->row_stride + rect.col0 : NULL;
        const float *g = model->gradient ? model->gradient + offset : NULL;
        const float *q = dequantized + (int64_t)r * rect.cols;
        for (int c = 0; c < rect.cols; c++) {
            double delta = (double)q[c] - reference[c];
            second_order += (w ? w[c] : 1.0) * delta * delta;
            if (g)
                first_order += (double)g[c] * delta;
        }
    }
    return first_order + scale * second_order;
}

/* A tile's stored parameters at one option into its params slot (sb_curve_params_slot). */
static void keep_params(const sb_tiling *tiling, sb_tile_rect rect, const sb_tile_out *out, uint16_t *slot)
{
    int64_t nmeta = (int64_t)rect.rows * sb_tile_groups(rect.cols, tiling->group);
    int64_t half = (sb_curve_params_slot(tiling) - 1) / 2;
    memcpy(slot, out->scales, (size_t)nmeta * sizeof *slot);
    memcpy(slot + half, out->zeros, (size_t)nmeta * sizeof *slot);
    slot[2 * half] = out->tile_scale;
}

sb_status sb_curves_compute(const sb_tiling *tiling, int64_t tile_row_begin, int64_t tile_row_end, const float *block,
                            const sb_loss_model *model, const sb_curve_options *options, double *loss,
                            int64_t *cost, uint16_t *params, sb_error *err)
{
    int64_t first = tile_row_begin * tiling->tiles_across;
    int64_t count = (tile_row_end - tile_row_begin) * tiling->tiles_across;
    sb_loss_model plain = {{NULL, 0, 1.0}, {NULL, 0, 0}, NULL, NULL, NULL, 0};
    if (!model)
        model = &plain;
    /* the quantizer's own error is D exactly when R = W, no first-order term and loss = quant */
    bool direct = !model->reference && !model->gradient && !model->loss.values && model->loss.scale == 0;
    int failed = 0;
#pragma omp parallel
    {
        tile_buffers buffers;
        int ok = alloc_buffers(&buffers, tiling);
        float *dequantized = ok && !direct ? malloc((size_t)tiling->tile_rows * (size_t)tiling->tile_cols * sizeof(float))
                                           : NULL;
        if (!ok || (!direct && !dequantized)) {
            ok = 0;
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < count; t++) {
            if (!ok)
                continue;
            sb_tile_rect rect = sb_tiling_rect(tiling, first + t);
            sb_tile_in in = tile_view(tiling, tile_row_begin, block, &model->quant, rect);
            sb_tile_out out = {buffers.codes, buffers.scales, buffers.zeros, 0, 0, SB_SCALES_F16, buffers.work};
            const sb_gptq_factor *factor = model->gptq ? &model->gptq[rect.col0 / tiling->tile_cols] : NULL;
            for (int k = 0; k < options->noptions; k++) {
                double output_error = 0;
                double error = factor ? sb_quantize_tile_gptq_factored(&in, factor, options->bits[k], &options->quant,
                                                                       &out, &output_error)
                                      : sb_quantize_tile(&in, options->bits[k], &options->quant, &out);
                if (isnan(error)) { /* a working buffer could not be allocated */
#pragma omp atomic write
                    failed = 1;
                    break;
                }
                if (direct && factor) {
                    loss[t * options->noptions + k] = model->gptq_scale * output_error;
                } else if (direct) {
                    loss[t * options->noptions + k] = (model->quant.scale != 0 ? model->quant.scale : 1.0) * error;
                } else {
                    sb_dequantize_tile(&out, rect.rows, rect.cols, tiling->group, dequantized, rect.cols);
                    loss[t * options->noptions + k] = tile_loss(tiling, tile_row_begin, block, model, rect, dequantized);
                }
                cost[t * options->noptions + k] = 8 * sb_tile_code_bytes(rect.rows, rect.cols, options->bits[k]);
                if (params && !factor)
                    keep_params(tiling, rect, &out, params + (t * options->noptions + k) * sb_curve_params_slot(tiling));
            }
        }
        free(dequantized);
        free_buffers(&buffers);
    }
    if (failed)
        return sb_error_set(err, SB_ERR_NOMEM, "cannot allocate tile buffers for the loss curves");
    return SB_OK;
}

int64_t sb_block_code_bytes(const sb_tiling *tiling, int64_t first_tile, int64_t count, const uint8_t *bits_per_tile)
{
    int64_t bytes = 0;
    for (int64_t t = 0; t < count; t++) {
        sb_tile_rect rect = sb_tiling_rect(tiling, first_tile + t);
        bytes += sb_tile_code_bytes(rect.rows, rect.cols, bits_per_tile[t]);
    }
    return bytes;
}

/* A tile coded at its stored parameters (a params slot): sb_quantize_tile's result without the
 * search. Returns E. */
static double code_tile(const sb_tiling *tiling, const sb_tile_in *in, int bits, sb_scale_format format,
                        const uint16_t *slot, sb_tile_out *out)
{
    int groups = sb_tile_groups(in->cols, in->group);
    int64_t half = (sb_curve_params_slot(tiling) - 1) / 2, nmeta = (int64_t)in->rows * groups;
    memcpy(out->scales, slot, (size_t)nmeta * sizeof *slot);
    memcpy(out->zeros, slot + half, (size_t)nmeta * sizeof *slot);
    out->tile_scale = slot[2 * half];
    out->bits = bits;
    out->format = format;
    double error = 0;
    for (int r = 0; r < in->rows; r++) {
        const float *row = in->x + (int64_t)r * in->x_ld;
        const float *row_w = in->w ? in->w + (int64_t)r * in->w_row_stride : NULL;
        for (int g = 0; g < groups; g++) {
            int c0 = g * in->group, n = in->cols - c0 < in->group ? in->cols - c0 : in->group;
            uint8_t *codes = out->codes + (int64_t)r * in->cols + c0;
            error += format == SB_SCALES_Q8
                         ? sb_code_group_q8(row + c0, row_w ? row_w + c0 : NULL, n, bits, out->tile_scale,
                                            out->scales[r * groups + g], out->zeros[r * groups + g], codes)
                         : sb_code_group(row + c0, row_w ? row_w + c0 : NULL, n, bits, out->scales[r * groups + g],
                                         out->zeros[r * groups + g], codes);
        }
    }
    return error;
}

sb_status sb_quantize_block(const sb_tiling *tiling, int64_t tile_row_begin, int64_t tile_row_end, const float *block,
                            const sb_importance *importance, const sb_gptq_factor *gptq,
                            const sb_quant_options *quant, const uint8_t *bits_per_tile, const uint16_t *params,
                            const sb_curve_options *options, uint8_t *packed_codes, uint16_t *scales, uint16_t *zeros,
                            uint16_t *tile_scales, double *error, sb_error *err)
{
    if (params && (gptq || !options))
        return sb_error_set(err, SB_ERR_INTERNAL, "quantize block: stored parameters %s",
                            gptq ? "with GPTQ" : "without their options");
    int64_t first = tile_row_begin * tiling->tiles_across;
    int64_t count = (tile_row_end - tile_row_begin) * tiling->tiles_across;
    /* where each tile's packed bytes start: a prefix sum, so threads can write in parallel */
    int64_t *offsets = sb_malloc((size_t)(count + 1) * sizeof *offsets, "tile offsets", err);
    if (!offsets)
        return SB_ERR_NOMEM;
    offsets[0] = 0;
    for (int64_t t = 0; t < count; t++) {
        sb_tile_rect rect = sb_tiling_rect(tiling, first + t);
        offsets[t + 1] = offsets[t] + sb_tile_code_bytes(rect.rows, rect.cols, bits_per_tile[t]);
    }
    double total_error = 0;
    int failed = 0;
    int64_t groups_per_row = tiling->groups_per_row;
#pragma omp parallel reduction(+ : total_error)
    {
        tile_buffers buffers;
        int ok = alloc_buffers(&buffers, tiling);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < count; t++) {
            if (!ok)
                continue;
            sb_tile_rect rect = sb_tiling_rect(tiling, first + t);
            sb_tile_in in = tile_view(tiling, tile_row_begin, block, importance, rect);
            sb_tile_out out = {buffers.codes, buffers.scales, buffers.zeros, 0, 0, SB_SCALES_F16, buffers.work};
            int option = -1;
            for (int k = 0; params && k < options->noptions; k++)
                option = options->bits[k] == bits_per_tile[t] ? k : option;
            double tile_error =
                gptq     ? sb_quantize_tile_gptq_factored(&in, &gptq[rect.col0 / tiling->tile_cols], bits_per_tile[t],
                                                          quant, &out, NULL)
                : params ? (option < 0 ? NAN
                                       : code_tile(tiling, &in, bits_per_tile[t], quant->format,
                                                   params + (t * options->noptions + option) * sb_curve_params_slot(tiling),
                                                   &out))
                         : sb_quantize_tile(&in, bits_per_tile[t], quant, &out);
            if (isnan(tile_error)) { /* a working buffer could not be allocated */
#pragma omp atomic write
                failed = 1;
                continue;
            }
            total_error += tile_error;
            if (tile_scales)
                tile_scales[t] = out.tile_scale;
            sb_pack_codes(buffers.codes, (int64_t)rect.rows * rect.cols, bits_per_tile[t], packed_codes + offsets[t]);
            int groups = sb_tile_groups(rect.cols, tiling->group);
            int64_t group0 = rect.col0 / tiling->group;
            int64_t block_row = rect.row0 - tile_row_begin * tiling->tile_rows;
            for (int r = 0; r < rect.rows; r++) {
                memcpy(&scales[(block_row + r) * groups_per_row + group0], &buffers.scales[r * groups],
                       (size_t)groups * sizeof(uint16_t));
                memcpy(&zeros[(block_row + r) * groups_per_row + group0], &buffers.zeros[r * groups],
                       (size_t)groups * sizeof(uint16_t));
            }
        }
        free_buffers(&buffers);
    }
    free(offsets);
    if (failed)
        return sb_error_set(err, SB_ERR_NOMEM, "cannot allocate tile buffers for quantization");
    if (error)
        *error = total_error;
    return SB_OK;
}
