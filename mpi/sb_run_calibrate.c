#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sb_agree.h"
#include "sb_mpi.h"
#include "sb_atomic.h"
#include "sb_h5_writer.h"
#include "sb_half.h"
#include "sb_model_load.h"
#include "sb_pack.h"
#include "sb_run_internal.h"
#include "sb_sha256.h"

/* ---- calibrate -------------------------------------------------------------------------- */

sb_linear_storage sb_run_matrix_storage(const sb_run_state *state)
{
    /* BF16 values held as BF16: the products are the F32 ones (src/sb_linear.h), at half the
     * memory. Every linear weight must be BF16 in the checkpoint (FP8 and F16 values are not). */
    return sb_plan_bf16_matrices(&state->plan) ? SB_LINEAR_STORAGE_BF16 : SB_LINEAR_STORAGE_F32;
}

/* The statistics of this rank's layer `layer`, or NULL. */
static const sb_layer_stats *layer_stats(const sb_run_state *state, int64_t layer)
{
    if (!state->calibrated || layer < state->pipeline.layer_begin || layer >= state->pipeline.layer_end)
        return NULL;
    return &state->stats[layer - state->pipeline.layer_begin];
}

static sb_tensor_id entry_id(const sb_catalogue_entry *entry)
{
    sb_tensor_id id = {entry->role, entry->layer, entry->expert};
    return id;
}

/* E[x^2] per input column of quantized tensor i, from the pipeline's statistics (an expert's
 * weighted by routing, or its layer's average expert when rarely routed: sb_calib_stats.h) or
 * the imatrix. */
static sb_status fill_act(sb_ctx *ctx, sb_run_state *state, int i, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[i];
    int64_t cols = tensor->entry->cols;
    sb_tensor_id id = entry_id(tensor->entry);
    const float *source = NULL;
    const double *sums = NULL;
    double weight = 0;
    const sb_layer_stats *stats = layer_stats(state, tensor->entry->layer);
    if (stats && sb_weight_is_matrix(&id)) {
        sb_weight_view view = sb_layer_stats_view(stats, &id);
        sums = view.act_sum;
        weight = view.act_weight;
        if (!sums)
            return SB_OK;
    } else if (state->have_imatrix) {
        const sb_imatrix_entry *entry = sb_imatrix_find(&state->imatrix, tensor->entry->name);
        if (!entry)
            return sb_error_set(err, SB_ERR_INPUT, "%s: no entry for tensor '%s'", ctx->options.imatrix_path,
                                tensor->entry->name);
        if (entry->ncols != cols)
            return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' has %lld columns but the imatrix entry %lld",
                                ctx->options.imatrix_path, tensor->entry->name, (long long)cols,
                                (long long)entry->ncols);
        source = entry->mean_sq;
    } else {
        return SB_OK; /* no statistics for it (e.g. a quantized embedding): plain squared error */
    }
    float *act = sb_malloc((size_t)cols * sizeof *act, "activation importance", err);
    if (!act)
        return SB_ERR_NOMEM;
    /* an imatrix is in the checkpoint's column order; statistics were permuted with the model */
    const int32_t *col_src = NULL;
    sb_tensor_perm perm;
    if (source && state->reordered && tensor->entry->role != SB_ROLE_OTHER &&
        sb_reorder_tensor_perm(&state->reorder, &id, &perm, err) == SB_OK)
        col_src = perm.col_src;
    for (int64_t j = 0; j < cols; j++)
        act[j] = source ? source[col_src ? col_src[j] : j] : (float)(sums[j] / (weight > 0 ? weight : 1.0));
    state->act[i] = act;
    return SB_OK;
}

/* Pools every local MoE layer's expert statistics for the rarely-routed fallback. */
static sb_status pool_experts(const sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    for (int64_t i = 0; i < state->stats_count; i++)
        SB_TRY(sb_layer_stats_pool(&state->stats[i], ctx->options.expert_min_tokens, err));
    return SB_OK;
}

/* Every rank gets the token-slots calibration routed to each expert of every MoE layer (each
 * layer's counts come from the rank that runs it), for the log, the report and the file. */
static sb_status gather_expert_tokens(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    const sb_model_shape *shape = &state->config.shape;
    int64_t layers = shape->num_hidden_layers, experts = shape->num_experts;
    if (experts == 0 || sb_shape_moe_layers(shape) == 0)
        return SB_OK;
    int64_t cells = layers * experts;
    int64_t *local = sb_calloc((size_t)cells, sizeof *local, "expert counts", err);
    state->expert_tokens = sb_calloc((size_t)cells, sizeof *state->expert_tokens, "expert counts", err);
    /* the all-reduce below is collective: every rank enters it, or none */
    sb_status status = sb_agree(ctx->comm, local && state->expert_tokens ? SB_OK : SB_ERR_NOMEM, err);
    if (status != SB_OK) {
        free(local);
        return status;
    }
    for (int64_t i = 0; i < state->stats_count; i++) {
        const sb_layer_stats *stats = &state->stats[i];
        for (int64_t e = 0; e < stats->num_experts; e++) {
            sb_tensor_id id = {SB_ROLE_GATE, stats->layer, e};
            local[stats->layer * experts + e] = sb_layer_stats_find(stats, &id)->act_rows;
        }
    }
    int count = 0;
    status = sb_mpi_count(cells, "expert token counts", &count, err);
    if (status == SB_OK)
        status = SB_MPI_CALL(err, MPI_Allreduce(local, state->expert_tokens, count, MPI_INT64_T, MPI_SUM, ctx->comm));
    free(local);
    int64_t pooled = 0, total = 0;
    for (int64_t layer = 0; status == SB_OK && layer < layers; layer++)
        for (int64_t e = 0; e < experts; e++) {
            int64_t *count = &state->expert_tokens[layer * experts + e];
            if (!sb_layer_is_moe(shape, layer)) {
                *count = -1;
                continue;
            }
            total++;
            pooled += *count < ctx->options.expert_min_tokens;
        }
    if (status == SB_OK)
        sb_log_info(&ctx->log, "experts: %lld of %lld got fewer than %lld calibration token-slots and are estimated as "
                    "their layer's average expert",
                    (long long)pooled, (long long)total, (long long)ctx->options.expert_min_tokens);
    return status;
}

/* --save-imatrix: every stage's E[x^2] gathered on rank 0 and written as a llama.cpp .dat. */
static sb_status save_imatrix(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    const sb_model_shape *shape = &state->config.shape;
    int64_t layers = shape->num_hidden_layers, entries = layers * SB_LINEAR_KIND_COUNT;
    int64_t *ncols = sb_calloc((size_t)entries, sizeof *ncols, "imatrix", err), total = 0;
    if (!ncols)
        return SB_ERR_NOMEM;
    for (int64_t e = 0; e < entries; e++) {
        int64_t rows;
        sb_linear_shape(shape, (sb_linear_kind)(e % SB_LINEAR_KIND_COUNT), &rows, &ncols[e]);
        total += ncols[e];
    }
    float *local = sb_calloc((size_t)total, sizeof *local, "imatrix", err);
    float *all = ctx->rank == 0 ? sb_calloc((size_t)total, sizeof *all, "imatrix", err) : NULL;
    sb_status status = local && (ctx->rank != 0 || all) ? SB_OK : SB_ERR_NOMEM;
    int64_t offset = 0;
    for (int64_t e = 0; status == SB_OK && e < entries; offset += ncols[e], e++) {
        int64_t layer = e / SB_LINEAR_KIND_COUNT;
        if (layer < state->pipeline.layer_begin || layer >= state->pipeline.layer_end)
            continue;
        const sb_layer_stats *stats = &state->stats[layer - state->pipeline.layer_begin];
        for (int64_t j = 0; j < ncols[e]; j++)
            local[offset + j] = (float)(stats->weights[e % SB_LINEAR_KIND_COUNT].act_sum[j] /
                                        (double)(stats->act_tokens ? stats->act_tokens : 1));
    }
    status = sb_agree(ctx->comm, status, err);
    /* each value comes from one rank, zeros elsewhere: the float sum is exact; in pieces of
     * 2^30 values, as MPI counts are int */
    for (int64_t done = 0; status == SB_OK && done < total; done += 1 << 30) {
        int piece = (int)(total - done < (1 << 30) ? total - done : 1 << 30);
        status = SB_MPI_CALL(err, MPI_Reduce(local + done, all ? all + done : NULL, piece, MPI_FLOAT, MPI_SUM, 0,
                                             ctx->comm));
    }
    if (status == SB_OK && ctx->rank == 0) {
        char (*names)[96] = sb_calloc((size_t)entries, sizeof *names, "imatrix names", err);
        const char **name_list = sb_calloc((size_t)entries, sizeof *name_list, "imatrix names", err);
        const float **means = sb_calloc((size_t)entries, sizeof *means, "imatrix", err);
        if (!names || !name_list || !means) {
            status = SB_ERR_NOMEM;
        } else {
            offset = 0;
            for (int64_t e = 0; e < entries; offset += ncols[e], e++) {
                sb_imatrix_llama_linear_name(e / SB_LINEAR_KIND_COUNT, (int)(e % SB_LINEAR_KIND_COUNT), names[e],
                                             sizeof names[e]);
                name_list[e] = names[e];
                means[e] = all + offset;
            }
            const sb_options *o = &ctx->options;
            status = sb_imatrix_write_dat(o->save_imatrix, (int)entries, name_list, ncols, means,
                                          (int)state->calib_range.n_windows, o->calib_tokens ? o->calib_tokens : o->calib_text,
                                          err);
            if (status == SB_OK)
                sb_log_info(&ctx->log, "wrote the importance matrix %s (%lld entries)", o->save_imatrix, (long long)entries);
        }
        free(names);
        free(name_list);
        free(means);
    }
    free(local);
    free(all);
    free(ncols);
    return sb_agree(ctx->comm, status, err);
}

sb_status sb_run_stage_calibrate(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    const sb_options *o = &ctx->options;
    const sb_model_shape *shape = &state->config.shape;
    state->act = sb_calloc((size_t)state->plan.ntensors, sizeof *state->act, "importance", err);
    if (!state->act)
        return SB_ERR_NOMEM;
    if (o->imatrix_path && !sb_run_needs_pipeline(o)) {
        SB_TRY(sb_imatrix_load(o->imatrix_path, &state->imatrix, err));
        state->have_imatrix = true;
    }
    if (sb_run_needs_pipeline(o)) {
        double start = sb_now();
        if (o->calib_tokens)
            SB_TRY(sb_tokens_read_u32(o->calib_tokens, shape->vocab_size, &state->calib_tokens, err));
        else
            SB_TRY(sb_tokens_read_bytes(o->calib_text, shape->vocab_size, &state->calib_tokens, err));
        SB_TRY(sb_tokens_windows(&state->calib_tokens, o->calib_ctx, o->calib_windows, false, &state->calib_range, err));
        sb_safetensors_source source = {&state->checkpoint, true};
        SB_TRY(sb_pipeline_create_with(ctx->comm, shape, sb_safetensors_fetch, &source, ctx->threads,
                                       sb_run_matrix_storage(state), &state->pipeline, err));
        state->calibrated = true;
        int64_t nlocal = state->pipeline.layer_end - state->pipeline.layer_begin;
        /* taylor keeps its gradient statistics per tile and bitwidth, in the search (sb_refine.h) */
        bool fisher = o->sensitivity == SB_SENSITIVITY_FISHER, grad = false;
        state->stats = sb_calloc((size_t)(nlocal > 0 ? nlocal : 1), sizeof *state->stats, "statistics", err);
        if (!state->stats)
            return SB_ERR_NOMEM;
        for (int64_t i = 0; i < nlocal; i++, state->stats_count++)
            SB_TRY(sb_layer_stats_create(shape, state->pipeline.layer_begin + i, true, fisher, grad, &state->stats[i],
                                         err));
        /* one pass at full precision: E[x^2] always; gradients too for fisher (taylor takes its
         * gradients at quantized points, in the search) */
        sb_pass_request request = {.backward = o->sensitivity == SB_SENSITIVITY_FISHER, .stats = state->stats};
        SB_TRY(sb_pipeline_pass(&state->pipeline, state->calib_range.tokens, state->calib_range.n_windows, o->calib_ctx,
                                o->calib_batch, &request, &state->calib_fp, err));
        double seconds = sb_now() - start;
        sb_log_info(&ctx->log, "calibrated on %lld windows of %lld tokens (%s) over %d pipeline stage(s): FP loss %.5f "
                    "(perplexity %.4f), %.1f s",
                    (long long)state->calib_range.n_windows, (long long)o->calib_ctx,
                    o->calib_tokens ? o->calib_tokens : o->calib_text, state->pipeline.nstages,
                    state->calib_fp.sum / (double)state->calib_fp.count,
                    exp(state->calib_fp.sum / (double)state->calib_fp.count), seconds);
        sb_ctx_stage(ctx, "calibrate", seconds);
        /* agreed before the collectives that follow: a rank that failed must not leave the
         * others waiting in them */
        SB_TRY(sb_agree(ctx->comm, pool_experts(ctx, state, err), err));
        SB_TRY(gather_expert_tokens(ctx, state, err));
        if (o->save_imatrix)
            SB_TRY(save_imatrix(ctx, state, err));
    }
    return SB_OK;
}

/* ---- reorder ---------------------------------------------------------------------------- */

/* The float32 weights of matrix `id` on this rank: the pipeline's copy, or read whole. */
static sb_status layer_weights(const sb_run_state *state, const sb_tensor_id *id, float **weights, bool *owned,
                               sb_error *err)
{
    int64_t layer = id->layer;
    if (state->calibrated && layer >= state->pipeline.layer_begin && layer < state->pipeline.layer_end) {
        const sb_linear *linear = sb_layer_matrix(&state->pipeline.layers[layer - state->pipeline.layer_begin], id);
        *owned = false;
        if (linear && linear->storage == SB_LINEAR_STORAGE_F32) {
            *weights = linear->f32;
            return SB_OK;
        }
        if (!linear || linear->storage != SB_LINEAR_STORAGE_BF16)
            return sb_error_set(err, SB_ERR_INTERNAL, "layer %lld %s: no weights to read", (long long)layer,
                                sb_role_name(id->role));
        /* held as BF16: widened for the marginals, one at a time */
        int64_t count = linear->rows * linear->cols;
        if (!(*weights = sb_malloc((size_t)count * sizeof **weights, "weights for reordering", err)))
            return SB_ERR_NOMEM;
        for (int64_t i = 0; i < count; i++)
            (*weights)[i] = sb_bf16_to_f32(linear->bf16[i]);
        *owned = true;
        return SB_OK;
    }
    char name[256];
    sb_tensor_name_format(*id, name, sizeof name);
    const sb_tensor_info *info = sb_checkpoint_find(&state->checkpoint, name);
    if (!info)
        return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s' vanished", name);
    int64_t rows = sb_tensor_rows(info), cols = sb_tensor_cols(info);
    float *w = sb_malloc((size_t)(rows * cols) * sizeof *w, "weights for reordering", err);
    if (!w)
        return SB_ERR_NOMEM;
    sb_status status = sb_checkpoint_read_rows(&state->checkpoint, info, 0, rows, true, w, err);
    if (status != SB_OK) {
        free(w);
        return status;
    }
    *weights = w;
    *owned = true;
    return SB_OK;
}

/* Adds the marginal importance of matrix `id` to row_sum / col_sum (docs/REORDER.md): F W^2 where
 * the Fisher was measured, E[x^2] W^2 with statistics, W^2 otherwise. */
static sb_status add_marginals(const sb_run_state *state, const sb_layer_stats *stats, const sb_tensor_id *id,
                               double *row_sum, double *col_sum, sb_error *err)
{
    int64_t rows, cols;
    sb_weight_shape(&state->config.shape, id, &rows, &cols);
    float *w = NULL;
    bool owned = false;
    SB_TRY(layer_weights(state, id, &w, &owned, err));
    const sb_weight_stats *ws = stats ? sb_layer_stats_find(stats, id) : NULL;
    const double *act = ws ? ws->act_sum : NULL;
    /* Fisher only where it was measured (taylor takes its gradients later, in the search) */
    const float *fisher = ws && stats->scored_tokens > 0 ? ws->fisher_sum : NULL;
    sb_reorder_marginals(w, fisher ? NULL : act, fisher, rows, cols, row_sum, col_sum);
    if (owned)
        free(w);
    return SB_OK;
}

/* One layer's orders and hidden contribution, from the importance of its quantized matrices. */
static sb_status reorder_layer(sb_ctx *ctx, sb_run_state *state, int64_t layer, double *contribution, sb_error *err)
{
    const sb_model_shape *shape = &state->config.shape;
    const sb_layer_stats *stats = layer_stats(state, layer);
    bool moe = sb_layer_is_moe(shape, layer);
    int64_t experts = moe ? shape->num_experts : 0;
    double *marginals[2 * SB_LINEAR_KIND_COUNT + 7] = {NULL};
    sb_layer_importance importance;
    memset(&importance, 0, sizeof importance);
    sb_status status = SB_OK;
    for (int k = 0; k < SB_LINEAR_KIND_COUNT && status == SB_OK; k++) {
        if (moe && k >= SB_LINEAR_GATE)
            break;
        int64_t rows, cols;
        sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
        marginals[2 * k] = sb_calloc((size_t)rows, sizeof(double), "marginals", err);
        marginals[2 * k + 1] = sb_calloc((size_t)cols, sizeof(double), "marginals", err);
        sb_tensor_id id = {(sb_tensor_role)k, layer, -1};
        status = marginals[2 * k] && marginals[2 * k + 1]
                     ? add_marginals(state, stats, &id, marginals[2 * k], marginals[2 * k + 1], err)
                     : SB_ERR_NOMEM;
        importance.row[k] = marginals[2 * k];
        importance.col[k] = marginals[2 * k + 1];
    }
    if (moe && status == SB_OK) {
        int64_t hidden = shape->hidden_size, ffn = shape->moe_intermediate_size;
        double **router = &marginals[2 * SB_LINEAR_KIND_COUNT];
        if (ctx->options.quantize_router) {
            sb_tensor_id id = {SB_ROLE_ROUTER, layer, -1};
            *router = sb_calloc((size_t)hidden, sizeof(double), "marginals", err);
            status = *router ? add_marginals(state, stats, &id, NULL, *router, err) : SB_ERR_NOMEM;
            importance.router_col = *router;
        }
        for (int k = 0; k < 3 && status == SB_OK; k++) {
            int64_t rows = k == 2 ? hidden : ffn, cols = k == 2 ? ffn : hidden;
            double **row = &marginals[2 * SB_LINEAR_KIND_COUNT + 1 + 2 * k], **col = row + 1;
            *row = sb_calloc((size_t)(experts * rows), sizeof(double), "marginals", err);
            *col = sb_calloc((size_t)(experts * cols), sizeof(double), "marginals", err);
            status = *row && *col ? SB_OK : SB_ERR_NOMEM;
            for (int64_t e = 0; e < experts && status == SB_OK; e++) {
                sb_tensor_id id = {(sb_tensor_role)(SB_ROLE_GATE + k), layer, e};
                status = add_marginals(state, stats, &id, *row + e * rows, *col + e * cols, err);
            }
            importance.expert_row[k] = *row;
            importance.expert_col[k] = *col;
        }
    }
    if (status == SB_OK)
        status = sb_reorder_layer_from_importance(&state->reorder, layer, &importance, NULL, err);
    if (status == SB_OK)
        sb_reorder_layer_hidden_score(shape, &importance, contribution);
    for (size_t i = 0; i < sizeof marginals / sizeof *marginals; i++)
        free(marginals[i]);
    return status;
}

/* Orders for every layer (docs/REORDER.md): each layer's owner computes its orders and its
 * share of the hidden order from importance marginals (F W^2 with fisher, E[x^2] W^2 with
 * statistics or an imatrix, W^2 otherwise), every rank receives all of them, and the
 * statistics and the pipeline's weights are folded; units are then read permuted. */
sb_status sb_run_stage_reorder(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    if (!ctx->options.reorder)
        return SB_OK;
    double start = sb_now();
    const sb_model_shape *shape = &state->config.shape;
    int64_t layers = shape->num_hidden_layers, hidden = shape->hidden_size;
    SB_TRY(sb_reorder_create(shape, 0, layers, &state->reorder, err));
    state->reordered = true;
    double *contributions = sb_calloc((size_t)(layers * hidden), sizeof *contributions, "hidden scores", err);
    if (!contributions)
        return SB_ERR_NOMEM;
    int nstages = sb_stage_count(ctx->size, layers);
    sb_status status = SB_OK;
    for (int64_t layer = 0; layer < layers && status == SB_OK; layer++) {
        int owner = 0;
        for (int st = 0; st < nstages; st++)
            if (layer >= sb_stage_first_layer(layers, nstages, st))
                owner = st;
        if (owner != ctx->rank)
            continue;
        status = reorder_layer(ctx, state, layer, contributions + layer * hidden, err);
    }
    status = sb_agree(ctx->comm, status, err);
    /* every rank gets every layer's orders and hidden contribution, from the layer's owner */
    for (int64_t layer = 0; layer < layers && status == SB_OK; layer++) {
        int owner = 0;
        for (int st = 0; st < nstages; st++)
            if (layer >= sb_stage_first_layer(layers, nstages, st))
                owner = st;
        sb_layer_reorder *orders = sb_reorder_layer(&state->reorder, layer);
        int64_t head_dim = shape->head_dim, kv = shape->num_key_value_heads;
        /* every count is a model dimension, below 2^31 (sb_model_shape_check) */
        status = SB_MPI_CALL(err, MPI_Bcast(orders->mlp, (int)shape->intermediate_size, MPI_INT32_T, owner, ctx->comm));
        if (status == SB_OK)
            status = SB_MPI_CALL(err, MPI_Bcast(orders->kv_heads, (int)kv, MPI_INT32_T, owner, ctx->comm));
        if (status == SB_OK)
            status = SB_MPI_CALL(err, MPI_Bcast(orders->q_heads, (int)shape->num_attention_heads, MPI_INT32_T, owner,
                                                ctx->comm));
        if (status == SB_OK)
            status = SB_MPI_CALL(err, MPI_Bcast(orders->head_dims, (int)(kv * head_dim), MPI_INT32_T, owner, ctx->comm));
        if (status == SB_OK)
            status = SB_MPI_CALL(err, MPI_Bcast(contributions + layer * hidden, (int)hidden, MPI_DOUBLE, owner, ctx->comm));
        if (status == SB_OK && orders->num_experts > 0)
            status = SB_MPI_CALL(err, MPI_Bcast(orders->experts_mlp,
                                                (int)(orders->num_experts * shape->moe_intermediate_size),
                                                MPI_INT32_T, owner, ctx->comm));
    }
    if (status == SB_OK)
        status = sb_reorder_hidden_from_contributions(&state->reorder, contributions, NULL, err);
    free(contributions);
    /* fold: this rank's statistics and pipeline weights now describe the reordered model */
    for (int64_t i = 0; status == SB_OK && state->calibrated && i < state->stats_count; i++)
        status = sb_reorder_apply_stats(&state->reorder, &state->stats[i], err);
    if (status == SB_OK && state->calibrated)
        status = pool_experts(ctx, state, err); /* the pooled sums, in the new order */
    if (status == SB_OK && state->calibrated) {
        sb_pipeline *p = &state->pipeline;
        for (int64_t layer = p->layer_begin; layer < p->layer_end && status == SB_OK; layer++)
            status = sb_reorder_apply_layer(&state->reorder, layer, &p->layers[layer - p->layer_begin], err);
        if (status == SB_OK && p->embed)
            status = sb_reorder_apply_embed(&state->reorder, p->embed, err);
        if (status == SB_OK && p->final_norm)
            status = sb_reorder_apply_head(&state->reorder, p->final_norm, p->lm_head == p->embed ? NULL : p->lm_head,
                                           err);
    }
    status = sb_agree(ctx->comm, status, err);
    if (status == SB_OK) {
        sb_log_info(&ctx->log, "reordered channels (hidden, MLP%s, heads, value channels), folded into the model, %.1f s",
                    shape->num_experts > 0 ? ", every expert's" : "",
                    sb_now() - start);
        sb_ctx_stage(ctx, "reorder", sb_now() - start);
    }
    return status;
}

/* --gptq: a forward pass over the calibration data on the (reordered) model gathering the
 * block-diagonal second moments of every layer input, then one factor per tile column of each
 * owned tensor (shared by its tiles and bitwidths, in the curves, the search and the write). */
sb_status sb_run_stage_hessian(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    const sb_options *o = &ctx->options;
    if (!o->gptq)
        return SB_OK;
    double start = sb_now();
    sb_status status = SB_OK;
    for (int64_t i = 0; i < state->stats_count && status == SB_OK; i++)
        status = sb_layer_stats_add_hessian(&state->stats[i], o->tile_cols, err);
    status = sb_agree(ctx->comm, status, err);
    sb_nll nll = {0, 0};
    sb_pass_request request = {.stats = state->stats};
    SB_TRY(sb_pipeline_pass(&state->pipeline, state->calib_range.tokens, state->calib_range.n_windows, o->calib_ctx,
                            o->calib_batch, &request, &nll, err));
    status = sb_agree(ctx->comm, pool_experts(ctx, state, err), err);
    if (status != SB_OK)
        return status;
    state->gptq = sb_calloc((size_t)state->plan.ntensors, sizeof *state->gptq, "GPTQ factors", err);
    status = state->gptq ? SB_OK : SB_ERR_NOMEM;
    for (int u = 0; u < state->plan.nunits && status == SB_OK; u++) {
        const sb_unit *unit = &state->plan.units[u];
        const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
        if (unit->owner != ctx->rank || !tensor->quantize || state->gptq[unit->tensor] || tensor->entry->layer < 0)
            continue;
        const sb_layer_stats *stats = &state->stats[tensor->entry->layer - state->pipeline.layer_begin];
        sb_tensor_id id = entry_id(tensor->entry);
        const float *blocks = sb_layer_stats_view(stats, &id).hessian;
        if (!blocks) {
            status = sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': no input second moments", tensor->entry->name);
            break;
        }
        int64_t across = tensor->tiling.tiles_across;
        sb_gptq_factor *factors = sb_calloc((size_t)across, sizeof *factors, "GPTQ factors", err);
        if (!factors) {
            status = SB_ERR_NOMEM;
            break;
        }
        state->gptq[unit->tensor] = factors;
        for (int64_t t = 0; t < across && status == SB_OK; t++) {
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            status = sb_gptq_factor_init(&factors[t], sb_hessian_block(blocks, o->tile_cols, t), rect.cols, err);
            if (status != SB_OK)
                sb_error_prefix(err, "tensor '%s', tile column %lld", tensor->entry->name, (long long)t);
        }
    }
    status = sb_agree(ctx->comm, status, err);
    /* the factors hold their own copies: later passes need not gather H again */
    for (int64_t i = 0; i < state->stats_count && status == SB_OK; i++)
        sb_layer_stats_drop_hessian(&state->stats[i]);
    if (status == SB_OK) {
        sb_log_info(&ctx->log, "GPTQ: input second moments of every layer gathered and factored, %.1f s",
                    sb_now() - start);
        sb_ctx_stage(ctx, "hessian", sb_now() - start);
    }
    return status;
}

/* E[x^2] vectors of the tensors this rank owns (after reordering: in the folded model's order). */
sb_status sb_run_stage_importance(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    for (int u = 0; u < state->plan.nunits; u++) {
        const sb_unit *unit = &state->plan.units[u];
        if (unit->owner != ctx->rank || !state->plan.tensors[unit->tensor].quantize || state->act[unit->tensor])
            continue;
        SB_TRY(fill_act(ctx, state, unit->tensor, err));
    }
    return SB_OK;
}

/* How the tiles of a unit are scored: see sb_loss_model. An expert's losses are scaled by its
 * share of the layer (sb_weight_view); with fisher its Fisher carries its routing already. */
sb_loss_model sb_run_unit_loss_model(const sb_ctx *ctx, const sb_run_state *state, const sb_unit *unit)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    sb_loss_model model = {{NULL, 0, 1.0}, {NULL, 0, 0}, NULL, NULL, NULL, 0};
    model.quant.values = state->act ? state->act[unit->tensor] : NULL;
    sb_tensor_id id = entry_id(tensor->entry);
    const sb_layer_stats *stats = layer_stats(state, tensor->entry->layer);
    if (!stats || !sb_weight_is_matrix(&id))
        return model;
    sb_weight_view view = sb_layer_stats_view(stats, &id);
    model.quant.scale = view.share;
    if (state->gptq && state->gptq[unit->tensor]) {
        model.gptq = state->gptq[unit->tensor];
        model.gptq_scale = view.share / (view.hessian_weight > 0 ? view.hessian_weight : 1.0);
    }
    if (ctx->options.sensitivity == SB_SENSITIVITY_FISHER && view.fisher_sum) {
        /* D = 1/2 sum F (Q - W)^2 with F = fisher_sum / tokens, from the unit's first row */
        model.loss.values = view.fisher_sum + unit->row_begin * tensor->entry->cols;
        model.loss.row_stride = tensor->entry->cols;
        model.loss.scale = 0.5 / (double)(stats->scored_tokens > 0 ? stats->scored_tokens : 1);
    }
    return model;
}
