#include "sb_calib_stats.h"

#include "sb_gptq.h"

#include <stdlib.h>
#include <string.h>

sb_status sb_layer_stats_create(const sb_model_shape *shape, int64_t layer, bool act, bool fisher, bool grad,
                                sb_layer_stats *stats, sb_error *err)
{
    memset(stats, 0, sizeof *stats);
    stats->layer = layer;
    stats->collect_act = true;
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        sb_linear_shape(shape, (sb_linear_kind)k, &stats->rows[k], &stats->cols[k]);
        size_t weights = (size_t)(stats->rows[k] * stats->cols[k]);
        if (act && !(stats->act_sum[k] = sb_calloc((size_t)stats->cols[k], sizeof(double), "activation sums", err)))
            goto fail;
        if (fisher && !(stats->fisher_sum[k] = sb_calloc(weights, sizeof(float), "Fisher sums", err)))
            goto fail;
        if (grad && !(stats->grad_sum[k] = sb_calloc(weights, sizeof(float), "gradient sums", err)))
            goto fail;
    }
    return SB_OK;
fail:
    sb_layer_stats_free(stats);
    return SB_ERR_NOMEM;
}

void sb_layer_stats_free(sb_layer_stats *stats)
{
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        free(stats->act_sum[k]);
        free(stats->fisher_sum[k]);
        free(stats->grad_sum[k]);
        free(stats->hessian[k]);
    }
    memset(stats, 0, sizeof *stats);
}

sb_status sb_layer_stats_add_hessian(sb_layer_stats *stats, int block, sb_error *err)
{
    static const sb_linear_kind inputs[4] = {SB_LINEAR_Q, SB_LINEAR_O, SB_LINEAR_GATE, SB_LINEAR_DOWN};
    stats->hessian_block = block;
    for (int i = 0; i < 4; i++) {
        sb_linear_kind k = inputs[i];
        if (!(stats->hessian[k] = sb_calloc((size_t)(stats->cols[k] * block), sizeof(float), "Hessian blocks", err)))
            return SB_ERR_NOMEM;
    }
    stats->collect_act = false;
    return SB_OK;
}

void sb_layer_stats_drop_hessian(sb_layer_stats *stats)
{
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        free(stats->hessian[k]);
        stats->hessian[k] = NULL;
    }
}

const float *sb_layer_stats_hessian(const sb_layer_stats *stats, sb_linear_kind kind)
{
    sb_linear_kind input = kind == SB_LINEAR_K || kind == SB_LINEAR_V ? SB_LINEAR_Q
                           : kind == SB_LINEAR_UP                      ? SB_LINEAR_GATE
                                                                       : kind;
    return stats->hessian[input];
}

void sb_layer_stats_reset_gradients(sb_layer_stats *stats)
{
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        size_t bytes = (size_t)(stats->rows[k] * stats->cols[k]) * sizeof(float);
        if (stats->fisher_sum[k])
            memset(stats->fisher_sum[k], 0, bytes);
        if (stats->grad_sum[k])
            memset(stats->grad_sum[k], 0, bytes);
    }
    stats->scored_tokens = 0;
}

static sb_layer_stats *find(void *user, int64_t layer, sb_error *err)
{
    sb_stats_sink *sink = user;
    if (layer < sink->first_layer || layer >= sink->first_layer + sink->count) {
        sb_error_set(err, SB_ERR_INTERNAL, "statistics for layer %lld, which this rank does not hold", (long long)layer);
        return NULL;
    }
    return &sink->layers[layer - sink->first_layer];
}

/* Per-expert statistics (tokens routed to each expert, weighted as the model weights them) are
 * the next step of Qwen3-MoE support; until then an MoE layer cannot be calibrated. */
static sb_status refuse_moe(int64_t layer, sb_tensor_role role, int64_t expert, sb_error *err)
{
    if (sb_role_is_linear(role) && expert < 0)
        return SB_OK;
    return sb_error_set(err, SB_ERR_INPUT,
                        "layer %lld: calibration statistics of the router and of the experts are not supported yet",
                        (long long)layer);
}

sb_status sb_stats_on_activation(void *user, const sb_linear_input *input, sb_error *err)
{
    int64_t layer = input->id.layer, ntokens = input->rows, in_features = input->in_features;
    SB_TRY(refuse_moe(layer, input->id.role, input->id.expert, err));
    sb_linear_kind kind = (sb_linear_kind)input->id.role;
    const float *x = input->x;
    sb_layer_stats *stats = find(user, layer, err);
    if (!stats)
        return SB_ERR_INTERNAL;
    if (stats->hessian[kind]) {
        sb_hessian_accumulate(x, ntokens, in_features, stats->hessian_block, stats->hessian[kind]);
        if (kind == SB_LINEAR_Q)
            stats->hessian_tokens += ntokens;
    }
    double *sum = stats->collect_act ? stats->act_sum[kind] : NULL;
    if (!sum)
        return SB_OK;
    /* Columns in parallel, tokens in order: the sums do not depend on the thread count. */
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < in_features; j++) {
        double column = 0;
        for (int64_t t = 0; t < ntokens; t++) {
            double v = x[t * in_features + j];
            column += v * v;
        }
        sum[j] += column;
    }
    if (kind == SB_LINEAR_Q)
        stats->act_tokens += ntokens;
    return SB_OK;
}

sb_status sb_stats_on_gradient(void *user, const sb_tensor_id *id, const float *grad, int64_t rows, int64_t cols,
                               sb_error *err)
{
    int64_t layer = id->layer;
    SB_TRY(refuse_moe(layer, id->role, id->expert, err));
    sb_linear_kind kind = (sb_linear_kind)id->role;
    sb_layer_stats *stats = find(user, layer, err);
    if (!stats)
        return SB_ERR_INTERNAL;
    int64_t count = rows * cols;
    float *fisher = stats->fisher_sum[kind], *sum = stats->grad_sum[kind];
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; i++) {
        if (fisher)
            fisher[i] += grad[i] * grad[i];
        if (sum)
            sum[i] += grad[i];
    }
    return SB_OK;
}
