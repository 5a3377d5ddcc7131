#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sb_agree.h"
#include "sb_assert.h"
#include "sb_atomic.h"
#include "sb_mpi.h"
#include "sb_path.h"
#include "sb_h5_writer.h"
#include "sb_model_load.h"
#include "sb_pack.h"
#include "sb_run_internal.h"
#include "sb_sha256.h"

/* ---- write ------------------------------------------------------------------------------ */

/* The description of quantized tensor i's group (an expert's stack is described from expert 0's). */
static sb_h5_quantized_desc quantized_desc(const sb_ctx *ctx, const sb_run_state *state, int i)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[i];
    sb_h5_quantized_desc desc = {
        .name = tensor->entry->name,
        .rows = tensor->tiling.rows,
        .cols = tensor->tiling.cols,
        .tile_rows = tensor->tiling.tile_rows,
        .tile_cols = tensor->tiling.tile_cols,
        .group = tensor->tiling.group,
        .tiles = sb_tiling_count(&tensor->tiling),
        .code_bytes = sb_block_code_bytes(&tensor->tiling, 0, sb_tiling_count(&tensor->tiling),
                                          state->all_bits + tensor->first_tile_id),
        .source_dtype = sb_dtype_name(tensor->info->dtype),
        .role = sb_role_name(tensor->entry->role),
        .layer = (int)tensor->entry->layer,
        .encoding = sb_scale_format_name(ctx->options.scales),
    };
    return desc;
}

/* The experts of one MoE layer and role are one group of the file (docs/FORMAT.md, "Experts"):
 * defined when expert 0 comes by, with every expert's code size; handles[i] of expert e is the
 * stack's handle + e. */
static sb_status define_expert_stack(const sb_ctx *ctx, const sb_run_state *state, sb_h5_writer *writer, int first,
                                     int *handles, sb_error *err)
{
    const sb_catalogue_entry *entry = state->plan.tensors[first].entry;
    int64_t experts = state->config.shape.num_experts;
    int64_t *code_bytes = sb_malloc((size_t)experts * sizeof *code_bytes, "expert sizes", err);
    int *index = sb_malloc((size_t)experts * sizeof *index, "expert list", err);
    sb_status status = code_bytes && index ? SB_OK : SB_ERR_NOMEM;
    for (int64_t e = 0; e < experts && status == SB_OK; e++) {
        sb_tensor_id id = {entry->role, entry->layer, e};
        const sb_catalogue_entry *expert = sb_catalogue_find(&state->catalogue, &id);
        index[e] = expert ? (int)(expert - state->catalogue.entries) : -1;
        if (index[e] < 0 || !state->plan.tensors[index[e]].quantize)
            status = sb_error_set(err, SB_ERR_INTERNAL, "layer %lld: expert %lld of %s is not a quantized tensor",
                                  (long long)entry->layer, (long long)e, sb_role_name(entry->role));
        else
            code_bytes[e] = quantized_desc(ctx, state, index[e]).code_bytes;
    }
    /* the definition below is collective: every rank enters it, or none */
    status = sb_agree(ctx->comm, status, err);
    if (status == SB_OK) {
        char name[256];
        sb_expert_stack_name(entry->layer, entry->role, name, sizeof name);
        sb_h5_quantized_desc desc = quantized_desc(ctx, state, first);
        desc.name = name;
        desc.experts = experts;
        desc.expert_code_bytes = code_bytes;
        desc.code_bytes = 0;
        for (int64_t e = 0; e < experts; e++)
            desc.code_bytes += code_bytes[e];
        int handle;
        status = sb_h5_define_quantized(writer, &desc, &handle, err);
        for (int64_t e = 0; e < experts && status == SB_OK; e++)
            handles[index[e]] = handle + (int)e;
    }
    free(code_bytes);
    free(index);
    return status;
}

sb_status sb_run_define_output(const sb_ctx *ctx, const sb_run_state *state, sb_h5_writer *writer, bool stack_experts,
                               int *handles, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (tensor->quantize && tensor->entry->expert == 0 && stack_experts) {
            SB_TRY(define_expert_stack(ctx, state, writer, i, handles, err));
        } else if (tensor->quantize && tensor->entry->expert > 0 && stack_experts) {
            continue; /* defined with its stack */
        } else if (tensor->quantize) {
            sb_h5_quantized_desc desc = quantized_desc(ctx, state, i);
            SB_TRY(sb_h5_define_quantized(writer, &desc, &handles[i], err));
        } else {
            SB_TRY(sb_h5_define_passthrough(writer, tensor->entry->name, sb_dtype_name(tensor->info->dtype),
                                            tensor->info->ndim, tensor->info->shape, &handles[i], err));
        }
    }
    return SB_OK;
}

/* A quantized unit's output as saved in the state directory: its packed codes, then its scales,
 * zeros (uint16 per (row, group)) and tile scale bounds (uint16 per tile). */
typedef struct unit_output {
    int64_t code_offset, code_bytes, scale_count;
    size_t bytes;
} unit_output;

static unit_output unit_output_layout(const sb_run_state *state, const sb_unit *unit)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    const sb_tiling *tiling = &tensor->tiling;
    int64_t first_local_tile = unit->first_tile_id - tensor->first_tile_id;
    unit_output layout;
    layout.code_offset = sb_block_code_bytes(tiling, 0, first_local_tile, state->all_bits + tensor->first_tile_id);
    layout.code_bytes = sb_block_code_bytes(tiling, first_local_tile, unit->tiles, state->all_bits + unit->first_tile_id);
    layout.scale_count = (unit->row_end - unit->row_begin) * tiling->groups_per_row;
    layout.bytes = (size_t)layout.code_bytes + (size_t)(2 * layout.scale_count + unit->tiles) * sizeof(uint16_t);
    /* a unit's codes lie inside its tensor's codes dataset */
    SB_ASSERT(layout.code_offset >= 0 && layout.code_offset + layout.code_bytes <=
                                             sb_block_code_bytes(tiling, 0, sb_tiling_count(tiling),
                                                                 state->all_bits + tensor->first_tile_id));
    return layout;
}

static sb_status unit_path(const sb_run_state *state, const sb_unit *unit, char *path, size_t size, sb_error *err)
{
    char name[64];
    SB_TRY(sb_path_format(name, sizeof name, err, "%lld-%lld", (long long)unit->first_tile_id, (long long)unit->tiles));
    return sb_state_path(&state->disk, "units", name, path, size, err);
}

/* The taylor search's tiles at their chosen bitwidths, packed as sb_quantize_block packs them
 * (they are what it would compute: the same weights, importance and GPTQ factors). */
static sb_status pack_stored_unit(sb_run_state *state, const sb_unit *unit, const sb_tile_store *store, uint8_t *blob,
                                  uint16_t *scales, uint16_t *zeros, uint16_t *tile_scales, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    const sb_tiling *tiling = &tensor->tiling;
    const sb_curve_options *curve = &state->curve_options;
    int64_t first = unit->first_tile_id - tensor->first_tile_id, code_offset = 0;
    double error = 0;
    for (int64_t u = 0; u < unit->tiles; u++) {
        int bits = state->all_bits[unit->first_tile_id + u], option = -1;
        for (int o = 0; o < curve->noptions; o++)
            option = curve->bits[o] == bits ? o : option;
        if (option < 0)
            return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': tile at %d bits, not an allowed bitwidth",
                                tensor->entry->name, bits);
        sb_stored_tile tile = sb_tile_store_output(store, first + u, option);
        sb_tile_rect rect = sb_tiling_rect(tiling, first + u);
        memcpy(blob + code_offset, tile.codes, (size_t)tile.code_bytes);
        code_offset += tile.code_bytes;
        tile_scales[u] = tile.tile_scale;
        error += tile.error;
        int groups = sb_tile_groups(rect.cols, tiling->group);
        int64_t group0 = rect.col0 / tiling->group, block_row = rect.row0 - unit->row_begin;
        for (int r = 0; r < rect.rows; r++) {
            memcpy(&scales[(block_row + r) * tiling->groups_per_row + group0], &tile.scales[r * groups],
                   (size_t)groups * sizeof(uint16_t));
            memcpy(&zeros[(block_row + r) * tiling->groups_per_row + group0], &tile.zeros[r * groups],
                   (size_t)groups * sizeof(uint16_t));
        }
    }
    state->quantization_error += error;
    return SB_OK;
}

static sb_status quantize_unit(sb_run_state *state, const sb_unit *unit, uint8_t *blob, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    unit_output layout = unit_output_layout(state, unit);
    uint16_t *scales = (uint16_t *)(blob + layout.code_bytes);
    uint16_t *zeros = scales + layout.scale_count, *tile_scales = zeros + layout.scale_count;
    if (state->stores && state->stores[unit->tensor])
        return pack_stored_unit(state, unit, state->stores[unit->tensor], blob, scales, zeros, tile_scales, err);
    const sb_gptq_factor *gptq = state->gptq ? state->gptq[unit->tensor] : NULL;
    /* the curves' scales of every bitwidth, when they were kept: coding the chosen one is all
     * that is left to do (a resumed run whose curves came from elsewhere searches again) */
    uint16_t *params = NULL;
    if (!gptq) {
        size_t params_bytes = sb_run_unit_params_bytes(state, unit);
        char path[SB_PATH_MAX];
        SB_TRY(sb_run_unit_params_path(state, unit, path, sizeof path, err));
        if (!(params = sb_malloc(params_bytes, "curve parameters", err)))
            return SB_ERR_NOMEM;
        if (!sb_blob_load(path, params, params_bytes)) {
            free(params);
            params = NULL;
        }
    }
    float *block = NULL;
    sb_status status = sb_run_read_unit_rows(state, unit, &block, err);
    double error = 0;
    if (status == SB_OK)
        status = sb_quantize_block(&tensor->tiling, unit->tile_row_begin, unit->tile_row_end, block,
                                   &(sb_importance){state->act ? state->act[unit->tensor] : NULL, 0, 1.0}, gptq,
                                   &state->curve_options.quant, state->all_bits + unit->first_tile_id, params,
                                   &state->curve_options, blob, scales, zeros, tile_scales, &error, err);
    free(params);
    state->quantization_error += error;
    return status;
}

/* A unit quantized at its allocation and packed, as one state file. */
static sb_status quantized_unit(sb_ctx *ctx, sb_run_state *state, const sb_unit *unit, bool *reused, sb_error *err)
{
    unit_output layout = unit_output_layout(state, unit);
    char path[SB_PATH_MAX];
    SB_TRY(unit_path(state, unit, path, sizeof path, err));
    uint8_t *blob = sb_malloc(layout.bytes, "packed unit", err);
    if (!blob)
        return SB_ERR_NOMEM;
    sb_status status = SB_OK;
    if (state->disk.resuming && sb_blob_load(path, blob, layout.bytes))
        *reused = true;
    else if ((status = quantize_unit(state, unit, blob, err)) == SB_OK)
        status = sb_blob_save(path, blob, layout.bytes, err);
    free(blob);
    (void)ctx;
    return status;
}

/* Quantizes and packs this rank's units into the state directory (skipping those a resumed
 * run already has); stops at a unit boundary on request. */
sb_status sb_run_stage_quantize(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    return sb_run_units(ctx, state, "quantize", quantized_unit, err);
}

/* Writes a quantized unit, saved by sb_run_stage_quantize, into the output file. */
static sb_status write_quantized_unit(const sb_ctx *ctx, sb_run_state *state, const sb_unit *unit, sb_h5_writer *writer,
                                      int handle, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    const sb_tiling *tiling = &tensor->tiling;
    unit_output layout = unit_output_layout(state, unit);
    int64_t rows = unit->row_end - unit->row_begin;
    char path[SB_PATH_MAX];
    SB_TRY(unit_path(state, unit, path, sizeof path, err));
    uint8_t *blob = sb_run_unit_buffer(state, layout.bytes, err);
    if (!blob)
        return SB_ERR_NOMEM;
    sb_status status = sb_blob_load(path, blob, layout.bytes)
                           ? SB_OK
                           : sb_error_set(err, SB_ERR_IO, "%s: the packed unit of tensor '%s' is missing or corrupt",
                                          path, tensor->entry->name);
    uint16_t *scales = (uint16_t *)(blob + layout.code_bytes);
    uint16_t *zeros = scales + layout.scale_count, *tile_scales = zeros + layout.scale_count;
    if (status == SB_OK)
        status = sb_h5_write_codes(writer, handle, layout.code_offset, layout.code_bytes, blob, err);
    if (status == SB_OK)
        status = sb_h5_write_scale_rows(writer, handle, unit->row_begin, rows, scales, zeros, err);
    if (status == SB_OK)
        status = sb_h5_write_tile_scales(writer, handle, unit->first_tile_id - tensor->first_tile_id, unit->tiles,
                                         tile_scales, err);
    if (status == SB_OK && unit->tile_row_begin == 0) {
        int64_t tiles = sb_tiling_count(tiling);
        uint8_t *bitmap = sb_malloc((size_t)sb_bitmap_bytes(tiles), "bit map", err);
        if (!bitmap) {
            status = SB_ERR_NOMEM;
        } else {
            sb_pack_bitmap(state->all_bits + tensor->first_tile_id, tiles, bitmap);
            status = sb_h5_write_bitmap(writer, handle, bitmap, err);
            free(bitmap);
        }
    }
    (void)ctx;
    return status;
}

static sb_status write_passthrough_unit(sb_run_state *state, const sb_unit *unit, sb_h5_writer *writer, int handle,
                                        sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    int64_t rows = unit->row_end - unit->row_begin;
    size_t bytes = (size_t)(rows * tensor->entry->cols) * sb_dtype_size(tensor->info->dtype);
    void *raw = sb_run_unit_buffer(state, bytes, err);
    if (!raw)
        return SB_ERR_NOMEM;
    sb_status status = sb_run_read_tensor_rows(state, tensor, unit->row_begin, rows, true, raw, err);
    /* copied bit for bit, but never a NaN or Inf: the file's weights must all be finite */
    int64_t bad = status == SB_OK ? sb_first_nonfinite(tensor->info->dtype, raw, rows * tensor->entry->cols) : -1;
    if (bad >= 0)
        status = sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s': value %lld (row %lld) is not finite",
                              state->checkpoint.files[tensor->info->file_index].path, tensor->entry->name,
                              (long long)bad, (long long)(unit->row_begin + bad / (tensor->entry->cols ? tensor->entry->cols : 1)));
    if (status == SB_OK)
        status = sb_h5_write_passthrough_rows(writer, handle, unit->row_begin, rows, raw, err);
    return status;
}

static sb_status write_root_attributes(sb_ctx *ctx, sb_run_state *state, sb_h5_writer *writer, sb_error *err)
{
    const sb_options *o = &ctx->options;
    const sb_plan *plan = &state->plan;
    int64_t tile[2] = {o->tile_rows, o->tile_cols}, group = o->group, bits[8];
    for (int k = 0; k < o->nbits; k++)
        bits[k] = o->bits[k];
    int64_t counts[3] = {plan->quantized_weights, state->stored_bits, plan->total_tiles};
    SB_TRY(sb_h5_root_string(writer, "format", "scalebits", err));
    SB_TRY(sb_h5_root_int64s(writer, "format_version", (int64_t[]){1}, 1, err));
    SB_TRY(sb_h5_root_double(writer, "budget_bpw", o->budget, err));
    SB_TRY(sb_h5_root_double(writer, "achieved_bpw", (double)state->stored_bits / (double)plan->quantized_weights, err));
    SB_TRY(sb_h5_root_int64s(writer, "quantized_weights", &counts[0], 1, err));
    SB_TRY(sb_h5_root_int64s(writer, "stored_bits", &counts[1], 1, err));
    SB_TRY(sb_h5_root_int64s(writer, "tiles", &counts[2], 1, err));
    SB_TRY(sb_h5_root_int64s(writer, "tile", tile, 2, err));
    SB_TRY(sb_h5_root_int64s(writer, "group", &group, 1, err));
    SB_TRY(sb_h5_root_int64s(writer, "bits", bits, o->nbits, err));
    SB_TRY(sb_h5_root_string(writer, "sensitivity", sb_sensitivity_name(o->sensitivity), err));
    SB_TRY(sb_h5_root_string(writer, "scale_search", o->search == SB_SEARCH_MINMAX ? "minmax" : "weighted", err));
    SB_TRY(sb_h5_root_string(writer, "encoding", sb_scale_format_name(o->scales), err));
    SB_TRY(sb_h5_root_string(writer, "gptq", o->gptq ? "error feedback across the columns of each tile" : "no", err));
    SB_TRY(sb_h5_root_string(writer, "reordered",
                             o->reorder ? "hidden, mlp, heads, head_dims (folded: the file holds an equivalent model)"
                                        : "no",
                             err));
    SB_TRY(sb_h5_root_string(writer, "config_json", state->config.json_text, err));
    SB_TRY(sb_h5_root_string(writer, "allocation_sha256", state->allocation_hash, err));
    SB_TRY(sb_h5_root_string(writer, "tool_version", "scalebits " SB_VERSION, err));
    SB_TRY(sb_h5_root_string(writer, "command_line", o->command_line, err));
    SB_TRY(sb_h5_root_string(writer, "source_model", o->model_dir, err));
    int nfiles = state->checkpoint.nfiles;
    char **headers = sb_calloc((size_t)nfiles, sizeof *headers, "header hashes", err);
    SB_TRY(sb_agree(ctx->comm, headers ? SB_OK : SB_ERR_NOMEM, err));
    for (int i = 0; i < nfiles; i++) {
        const sb_checkpoint_file *file = &state->checkpoint.files[i];
        const char *base = strrchr(file->path, '/');
        char hex[65];
        sb_sha256_hex(file->header_sha256, hex);
        size_t length = strlen(base ? base + 1 : file->path) + 80;
        headers[i] = malloc(length);
        if (headers[i])
            snprintf(headers[i], length, "%s sha256:%s", base ? base + 1 : file->path, hex); /* sized to fit */
    }
    bool complete = true;
    for (int i = 0; i < nfiles; i++)
        complete = complete && headers[i];
    /* every rank has its strings before the collective attribute write */
    sb_status status = sb_agree(ctx->comm, complete ? SB_OK : sb_error_set(err, SB_ERR_NOMEM, "out of memory for the "
                                                                           "header hashes"), err);
    if (status == SB_OK)
        status = sb_h5_root_strings(writer, "source_header_sha256", (const char *const *)headers, nfiles, err);
    for (int i = 0; i < nfiles; i++)
        free(headers[i]);
    free(headers);
    if (status == SB_OK && state->expert_tokens) {
        /* what calibration saw of each expert (docs/FORMAT.md, "Calibration"): not under /tensors,
         * so not charged to the budget */
        const sb_model_shape *shape = &state->config.shape;
        int64_t threshold = ctx->options.expert_min_tokens;
        status = sb_h5_write_small_i64(writer, "/calibration/tokens_per_expert", state->expert_tokens,
                                       shape->num_hidden_layers, shape->num_experts, err);
        if (status == SB_OK)
            status = sb_h5_root_int64s(writer, "expert_min_tokens", &threshold, 1, err);
    }
    return status;
}

sb_status sb_run_stage_write(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    sb_h5_writer *writer = NULL;
    /* the file grows inside the state directory: a crash leaves nothing beside the output, and
     * a resumed run removes it with the rest */
    char temp_path[SB_PATH_MAX];
    sb_status status = sb_agree(ctx->comm,
                                sb_state_path(&state->disk, NULL, "output.h5.tmp", temp_path, sizeof temp_path, err), err);
    if (status == SB_OK)
        status = sb_h5_writer_create(ctx->options.out_path, temp_path, ctx->comm, &writer, err);
    if (status != SB_OK)
        return status; /* creation failed everywhere */
    int *handles = sb_calloc((size_t)plan->ntensors, sizeof *handles, "dataset handles", err);
    /* the definitions are collective and agree one by one (io/sb_h5_writer.h) */
    status = sb_agree(ctx->comm, handles ? SB_OK : SB_ERR_NOMEM, err);
    if (status == SB_OK)
        status = sb_run_define_output(ctx, state, writer, true, handles, err);
    if (status == SB_OK) {
        int owned = 0;
        for (int u = 0; u < plan->nunits; u++)
            owned += plan->units[u].owner == ctx->rank;
        sb_progress progress;
        sb_progress_begin(&progress, "write", "units", owned, sb_run_owned_bytes(ctx, state, false));
        int64_t written = 0;
        for (int u = 0; u < plan->nunits && status == SB_OK; u++) {
            const sb_unit *unit = &plan->units[u];
            if (unit->owner != ctx->rank)
                continue;
            const sb_tensor_plan *tensor = &plan->tensors[unit->tensor];
            status = tensor->quantize ? write_quantized_unit(ctx, state, unit, writer, handles[unit->tensor], err)
                                      : write_passthrough_unit(state, unit, writer, handles[unit->tensor], err);
            sb_state_debug_point(ctx, "write", ++written);
            sb_progress_advance(&ctx->log, &progress, 1,
                                (unit->row_end - unit->row_begin) * tensor->entry->cols *
                                    (int64_t)sb_dtype_size(tensor->info->dtype),
                                tensor->entry->name);
        }
        sb_run_unit_buffer_release(state);
        sb_ctx_stage(ctx, "write", sb_progress_end(&ctx->log, &progress));
        status = sb_agree(ctx->comm, status, err);
    }
    if (status == SB_OK)
        status = write_root_attributes(ctx, state, writer, err); /* each attribute agrees */
    free(handles);
    if (status != SB_OK) {
        sb_h5_writer_abort(writer);
        return status;
    }
    double start = sb_now();
    status = sb_h5_writer_commit(writer, err);
    sb_ctx_stage(ctx, "commit", sb_now() - start);
    return status;
}

/* ---- report ----------------------------------------------------------------------------- */

/* Mean code bits per weight of every expert (its gate, up and down together), [layers x experts];
 * NaN where a layer has no experts. */
static double *expert_mean_bits(const sb_run_state *state)
{
    const sb_model_shape *shape = &state->config.shape;
    int64_t experts = shape->num_experts, cells = shape->num_hidden_layers * experts;
    double *bits = calloc((size_t)(cells > 0 ? cells : 1), sizeof *bits);
    double *weights = calloc((size_t)(cells > 0 ? cells : 1), sizeof *weights);
    if (!bits || !weights) {
        free(bits);
        free(weights);
        return NULL;
    }
    for (int i = 0; i < state->plan.ntensors; i++) {
        const sb_tensor_plan *tensor = &state->plan.tensors[i];
        if (!tensor->quantize || tensor->entry->expert < 0)
            continue;
        int64_t cell = tensor->entry->layer * experts + tensor->entry->expert;
        for (int64_t t = 0; t < sb_tiling_count(&tensor->tiling); t++) {
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            double n = (double)rect.rows * rect.cols;
            bits[cell] += n * state->all_bits[tensor->first_tile_id + t];
            weights[cell] += n;
        }
    }
    for (int64_t c = 0; c < cells; c++)
        bits[c] = weights[c] > 0 ? bits[c] / weights[c] : NAN;
    free(weights);
    return bits;
}

/* The report's "experts" member: per MoE layer, the calibration token-slots of each expert, whether
 * it was estimated as its layer's average expert, and its mean code bits. */
static void write_expert_report(FILE *out, const sb_run_state *state, int64_t min_tokens)
{
    const sb_model_shape *shape = &state->config.shape;
    if (sb_shape_moe_layers(shape) == 0)
        return;
    double *bits = expert_mean_bits(state);
    if (!bits)
        return;
    int64_t experts = shape->num_experts;
    fprintf(out, "  \"experts\": {\"min_tokens\": %lld, \"calibrated\": %s, \"layers\": [", (long long)min_tokens,
            state->expert_tokens ? "true" : "false");
    bool first_layer = true;
    for (int64_t layer = 0; layer < shape->num_hidden_layers; layer++) {
        if (!sb_layer_is_moe(shape, layer))
            continue;
        fprintf(out, "%s\n    {\"layer\": %lld, \"tokens\": [", first_layer ? "" : ",", (long long)layer);
        first_layer = false;
        for (int64_t e = 0; e < experts; e++) {
            if (state->expert_tokens)
                fprintf(out, "%s%lld", e ? ", " : "", (long long)state->expert_tokens[layer * experts + e]);
            else
                fprintf(out, "%snull", e ? ", " : "");
        }
        fprintf(out, "], \"pooled\": [");
        for (int64_t e = 0; e < experts; e++)
            fprintf(out, "%s%s", e ? ", " : "",
                    state->expert_tokens && state->expert_tokens[layer * experts + e] < min_tokens ? "true"
                                                                                                          : "false");
        fprintf(out, "], \"mean_bits\": [");
        for (int64_t e = 0; e < experts; e++)
            fprintf(out, "%s%.4f", e ? ", " : "", bits[layer * experts + e]);
        fprintf(out, "]}");
    }
    fprintf(out, "\n  ]},\n");
    free(bits);
}

sb_status sb_run_stage_report(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    const sb_options *o = &ctx->options;
    int64_t histogram[9] = {0};
    int64_t weights_at[9] = {0};
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (!tensor->quantize)
            continue;
        for (int64_t t = 0; t < sb_tiling_count(&tensor->tiling); t++) {
            uint8_t b = state->all_bits[tensor->first_tile_id + t];
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            histogram[b]++;
            weights_at[b] += (int64_t)rect.rows * rect.cols;
        }
    }
    /* stage times and memory: the slowest / largest rank */
    double stage_max[SB_MAX_STAGES];
    double local_times[SB_MAX_STAGES];
    int64_t stage_rss[SB_MAX_STAGES], local_rss[SB_MAX_STAGES];
    for (int i = 0; i < ctx->nstages; i++) {
        local_times[i] = ctx->stages[i].seconds;
        local_rss[i] = ctx->stages[i].peak_rss;
    }
    SB_MPI_TRY(err, MPI_Allreduce(local_times, stage_max, ctx->nstages, MPI_DOUBLE, MPI_MAX, ctx->comm));
    SB_MPI_TRY(err, MPI_Allreduce(local_rss, stage_rss, ctx->nstages, MPI_INT64_T, MPI_MAX, ctx->comm));
    int64_t peak = sb_peak_rss_bytes(), peak_max = 0;
    SB_MPI_TRY(err, MPI_Allreduce(&peak, &peak_max, 1, MPI_INT64_T, MPI_MAX, ctx->comm));
    double achieved = (double)state->stored_bits / (double)plan->quantized_weights;
    if (ctx->rank == 0) {
        sb_log_info(&ctx->log, "wrote %s: %.4f bits per weight (budget %g), %lld tiles, allocation sha256 %.16s",
                    o->out_path, achieved, o->budget, (long long)plan->total_tiles, state->allocation_hash);
        char line[512];
        size_t used = 0;
        for (int b = 1; b <= 8; b++)
            if (histogram[b])
                used += (size_t)snprintf(line + used, sizeof line - used, "%s%d-bit: %lld (%.1f%%)", used ? ", " : "",
                                         b, (long long)histogram[b],
                                         100.0 * (double)weights_at[b] / (double)plan->quantized_weights);
        sb_log_info(&ctx->log, "tiles per bitwidth (share of weights): %s", line);
        if (state->alloc_stats.all_max)
            sb_log_info(&ctx->log, "the budget covers every tile at %d bits: all tiles get the largest bitwidth",
                        o->bits[o->nbits - 1]);
    }
    sb_status status = SB_OK;
    if (ctx->rank == 0 && o->report_path) {
        char *text = NULL;
        size_t size = 0;
        FILE *out = open_memstream(&text, &size);
        if (!out)
            return sb_error_set(err, SB_ERR_NOMEM, "cannot build the report");
        fprintf(out, "{\n  \"tool\": \"scalebits %s\",\n  \"model\": ", SB_VERSION);
        sb_json_write_string(out, o->model_dir);
        fprintf(out, ",\n  \"output\": ");
        sb_json_write_string(out, o->out_path);
        fprintf(out, ",\n  \"ranks\": %d,\n  \"threads_per_rank\": %d,\n", ctx->size, ctx->threads);
        fprintf(out, "  \"budget_bpw\": %.10g,\n  \"achieved_bpw\": %.10g,\n", o->budget, achieved);
        fprintf(out, "  \"quantized_weights\": %lld,\n  \"stored_bits\": %lld,\n  \"fixed_bits\": %lld,\n",
                (long long)plan->quantized_weights, (long long)state->stored_bits, (long long)plan->fixed_bits);
        fprintf(out, "  \"tile\": [%d, %d],\n  \"group\": %d,\n  \"sensitivity\": \"%s\",\n", o->tile_rows,
                o->tile_cols, o->group, sb_sensitivity_name(o->sensitivity));
        fprintf(out, "  \"allocation_sha256\": \"%s\",\n  \"all_max\": %s,\n", state->allocation_hash,
                state->alloc_stats.all_max ? "true" : "false");
        fprintf(out, "  \"tiles\": %lld,\n  \"tiles_per_bitwidth\": {", (long long)plan->total_tiles);
        int first = 1;
        for (int b = 1; b <= 8; b++)
            if (histogram[b]) {
                fprintf(out, "%s\"%d\": %lld", first ? "" : ", ", b, (long long)histogram[b]);
                first = 0;
            }
        fprintf(out, "},\n  \"weights_per_bitwidth\": {");
        first = 1;
        for (int b = 1; b <= 8; b++)
            if (weights_at[b]) {
                fprintf(out, "%s\"%d\": %lld", first ? "" : ", ", b, (long long)weights_at[b]);
                first = 0;
            }
        fprintf(out, "},\n");
        write_expert_report(out, state, o->expert_min_tokens);
        fprintf(out, "  \"seconds\": {");
        for (int i = 0; i < ctx->nstages; i++)
            fprintf(out, "%s\"%s\": %.3f", i ? ", " : "", ctx->stages[i].name, stage_max[i]);
        /* where the memory peak was reached: the peak RSS when each stage ended */
        fprintf(out, "},\n  \"peak_rss_bytes_after\": {");
        for (int i = 0; i < ctx->nstages; i++)
            fprintf(out, "%s\"%s\": %lld", i ? ", " : "", ctx->stages[i].name, (long long)stage_rss[i]);
        fprintf(out, "},\n");
        if (o->sensitivity == SB_SENSITIVITY_TAYLOR) {
            const sb_refine_result *r = &state->refine;
            fprintf(out, "  \"refine\": {\"rounds\": %d, \"retries\": %d, \"passes\": %d, \"cache_bytes_rank0\": %lld, "
                         "\"per_round\": [",
                    r->rounds, r->retries, r->passes, (long long)r->cache_bytes);
            for (int i = 0; i < r->nrounds; i++)
                fprintf(out, "%s{\"checks\": %d, \"predicted\": %.6g, \"measured\": %.6g, \"seconds\": %.3f}",
                        i ? ", " : "", r->round[i].checks, r->round[i].predicted, r->round[i].measured,
                        r->round[i].seconds);
            fprintf(out, "]},\n");
        }
        fprintf(out, "  \"peak_rss_bytes\": %lld,\n  \"peak_rss_bytes_rank0\": %lld\n}\n", (long long)peak_max,
                (long long)peak);
        fclose(out);
        status = sb_atomic_write_file(o->report_path, text, size, err);
        free(text);
    }
    return status;
}

