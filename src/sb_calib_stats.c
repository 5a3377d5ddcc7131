#include "sb_calib_stats.h"

#include "sb_gptq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* An MoE layer's weights: q, k, v, o, the router, then three per expert. */
enum { MOE_ROUTER = 4, MOE_FIRST_EXPERT = 5 };

int64_t sb_layer_stats_index(const sb_model_shape *shape, int64_t layer, const sb_tensor_id *id)
{
    bool moe = sb_layer_is_moe(shape, layer);
    if (!moe)
        return id->expert < 0 && sb_role_is_linear(id->role) ? (int64_t)id->role : -1;
    if (id->expert >= 0)
        return id->expert < shape->num_experts && id->role >= SB_ROLE_GATE && id->role <= SB_ROLE_DOWN
                   ? MOE_FIRST_EXPERT + 3 * id->expert + (id->role - SB_ROLE_GATE)
                   : -1;
    if (id->role == SB_ROLE_ROUTER)
        return MOE_ROUTER;
    return id->role <= SB_ROLE_O ? (int64_t)id->role : -1;
}

/* The id of weight `index` (the inverse of sb_layer_stats_index). */
static sb_tensor_id weight_id(const sb_model_shape *shape, int64_t layer, int64_t index)
{
    sb_tensor_id id = {(sb_tensor_role)index, layer, -1};
    if (!sb_layer_is_moe(shape, layer) || index < MOE_ROUTER)
        return id;
    if (index == MOE_ROUTER) {
        id.role = SB_ROLE_ROUTER;
        return id;
    }
    id.expert = (index - MOE_FIRST_EXPERT) / 3;
    id.role = (sb_tensor_role)(SB_ROLE_GATE + (index - MOE_FIRST_EXPERT) % 3);
    return id;
}

sb_weight_stats *sb_layer_stats_find(const sb_layer_stats *stats, const sb_tensor_id *id)
{
    int64_t index = -1;
    if (stats->num_experts > 0) {
        if (id->expert >= 0)
            index = id->expert < stats->num_experts && id->role >= SB_ROLE_GATE && id->role <= SB_ROLE_DOWN
                        ? MOE_FIRST_EXPERT + 3 * id->expert + (id->role - SB_ROLE_GATE)
                        : -1;
        else
            index = id->role == SB_ROLE_ROUTER ? MOE_ROUTER : id->role <= SB_ROLE_O ? (int64_t)id->role : -1;
    } else if (id->expert < 0 && sb_role_is_linear(id->role)) {
        index = id->role;
    }
    return index >= 0 && index < stats->count ? &stats->weights[index] : NULL;
}

/* Does this weight own its input's Hessian (the others share it)? */
static bool owns_hessian(const sb_tensor_id *id)
{
    return id->role == SB_ROLE_Q || id->role == SB_ROLE_O || id->role == SB_ROLE_GATE || id->role == SB_ROLE_DOWN ||
           id->role == SB_ROLE_ROUTER;
}

sb_status sb_layer_stats_create(const sb_model_shape *shape, int64_t layer, bool act, bool fisher, bool grad,
                                sb_layer_stats *stats, sb_error *err)
{
    memset(stats, 0, sizeof *stats);
    stats->layer = layer;
    stats->collect_act = true;
    bool moe = sb_layer_is_moe(shape, layer);
    stats->num_experts = moe ? shape->num_experts : 0;
    stats->count = moe ? MOE_FIRST_EXPERT + 3 * shape->num_experts : SB_LINEAR_KIND_COUNT;
    stats->weights = sb_calloc((size_t)stats->count, sizeof *stats->weights, "statistics", err);
    if (!stats->weights)
        return SB_ERR_NOMEM;
    for (int64_t i = 0; i < stats->count; i++) {
        sb_weight_stats *w = &stats->weights[i];
        w->id = weight_id(shape, layer, i);
        sb_weight_shape(shape, &w->id, &w->rows, &w->cols);
        size_t weights = (size_t)(w->rows * w->cols);
        if (act && !(w->act_sum = sb_calloc((size_t)w->cols, sizeof(double), "activation sums", err)))
            goto fail;
        if (fisher && !(w->fisher_sum = sb_calloc(weights, sizeof(float), "Fisher sums", err)))
            goto fail;
        if (grad && !(w->grad_sum = sb_calloc(weights, sizeof(float), "gradient sums", err)))
            goto fail;
    }
    return SB_OK;
fail:
    sb_layer_stats_free(stats);
    return SB_ERR_NOMEM;
}

void sb_layer_stats_free(sb_layer_stats *stats)
{
    for (int64_t i = 0; stats->weights && i < stats->count; i++) {
        free(stats->weights[i].act_sum);
        free(stats->weights[i].fisher_sum);
        free(stats->weights[i].grad_sum);
        free(stats->weights[i].hessian);
    }
    free(stats->weights);
    for (int k = 0; k < 3; k++) {
        free(stats->pooled_act[k]);
        free(stats->pooled_fisher[k]);
    }
    free(stats->pooled_hessian[0]);
    free(stats->pooled_hessian[1]);
    free(stats->scratch);
    memset(stats, 0, sizeof *stats);
}

sb_status sb_layer_stats_add_hessian(sb_layer_stats *stats, int block, sb_error *err)
{
    stats->hessian_block = block;
    for (int64_t i = 0; i < stats->count; i++) {
        sb_weight_stats *w = &stats->weights[i];
        if (owns_hessian(&w->id) &&
            !(w->hessian = sb_calloc((size_t)(w->cols * block), sizeof(float), "Hessian blocks", err)))
            return SB_ERR_NOMEM;
    }
    stats->collect_act = false;
    return SB_OK;
}

void sb_layer_stats_drop_hessian(sb_layer_stats *stats)
{
    for (int64_t i = 0; i < stats->count; i++) {
        free(stats->weights[i].hessian);
        stats->weights[i].hessian = NULL;
    }
    free(stats->pooled_hessian[0]);
    free(stats->pooled_hessian[1]);
    stats->pooled_hessian[0] = stats->pooled_hessian[1] = NULL;
}

/* The weight that owns `id`'s input. */
static sb_weight_stats *hessian_owner(const sb_layer_stats *stats, const sb_tensor_id *id)
{
    sb_tensor_id owner = *id;
    if (id->role == SB_ROLE_K || id->role == SB_ROLE_V)
        owner.role = SB_ROLE_Q;
    else if (id->role == SB_ROLE_UP)
        owner.role = SB_ROLE_GATE;
    return sb_layer_stats_find(stats, &owner);
}

const float *sb_layer_stats_hessian(const sb_layer_stats *stats, const sb_tensor_id *id, double *weight)
{
    sb_weight_stats *owner = hessian_owner(stats, id);
    if (weight)
        *weight = owner ? owner->hessian_weight : 0;
    return owner ? owner->hessian : NULL;
}

void sb_layer_stats_reset_gradients(sb_layer_stats *stats)
{
    for (int64_t i = 0; i < stats->count; i++) {
        sb_weight_stats *w = &stats->weights[i];
        size_t bytes = (size_t)(w->rows * w->cols) * sizeof(float);
        if (w->fisher_sum)
            memset(w->fisher_sum, 0, bytes);
        if (w->grad_sum)
            memset(w->grad_sum, 0, bytes);
    }
    stats->scored_tokens = 0;
}

/* ---- Pooling over a layer's experts ------------------------------------------------------- */

static sb_status pool_doubles(double **pooled, int64_t n, sb_error *err)
{
    if (!*pooled && !(*pooled = sb_malloc((size_t)n * sizeof **pooled, "pooled statistics", err)))
        return SB_ERR_NOMEM;
    memset(*pooled, 0, (size_t)n * sizeof **pooled);
    return SB_OK;
}

static sb_status pool_floats(float **pooled, int64_t n, sb_error *err)
{
    if (!*pooled && !(*pooled = sb_malloc((size_t)n * sizeof **pooled, "pooled statistics", err)))
        return SB_ERR_NOMEM;
    memset(*pooled, 0, (size_t)n * sizeof **pooled);
    return SB_OK;
}

sb_status sb_layer_stats_pool(sb_layer_stats *stats, int64_t min_rows, sb_error *err)
{
    stats->min_expert_rows = min_rows;
    int64_t experts = stats->num_experts;
    if (experts == 0)
        return SB_OK;
    for (int k = 0; k < 3; k++) {
        /* sums in ascending expert order: the same bits on every rank count */
        const sb_weight_stats *first = &stats->weights[MOE_FIRST_EXPERT + k];
        int64_t weights = first->rows * first->cols;
        if (first->act_sum) {
            SB_TRY(pool_doubles(&stats->pooled_act[k], first->cols, err));
            stats->pooled_act_weight[k] = 0;
            for (int64_t e = 0; e < experts; e++) {
                const sb_weight_stats *w = &stats->weights[MOE_FIRST_EXPERT + 3 * e + k];
                for (int64_t j = 0; j < w->cols; j++)
                    stats->pooled_act[k][j] += w->act_sum[j];
                stats->pooled_act_weight[k] += w->act_weight;
            }
        }
        if (first->fisher_sum) {
            SB_TRY(pool_floats(&stats->pooled_fisher[k], weights, err));
            float *mean = stats->pooled_fisher[k];
            for (int64_t e = 0; e < experts; e++) {
                const float *f = stats->weights[MOE_FIRST_EXPERT + 3 * e + k].fisher_sum;
#pragma omp parallel for schedule(static)
                for (int64_t i = 0; i < weights; i++)
                    mean[i] += f[i];
            }
            float inverse = (float)(1.0 / (double)experts);
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < weights; i++)
                mean[i] *= inverse;
        }
        if (k != 1 && first->hessian) { /* gate's (shared by up) and down's */
            int h = k == 0 ? 0 : 1;
            int64_t floats = first->cols * stats->hessian_block;
            SB_TRY(pool_floats(&stats->pooled_hessian[h], floats, err));
            stats->pooled_hessian_weight[h] = 0;
            for (int64_t e = 0; e < experts; e++) {
                const sb_weight_stats *w = &stats->weights[MOE_FIRST_EXPERT + 3 * e + k];
                for (int64_t i = 0; i < floats; i++)
                    stats->pooled_hessian[h][i] += w->hessian[i];
                stats->pooled_hessian_weight[h] += w->hessian_weight;
            }
        }
    }
    return SB_OK;
}

sb_weight_view sb_layer_stats_view(const sb_layer_stats *stats, const sb_tensor_id *id)
{
    sb_weight_view view;
    memset(&view, 0, sizeof view);
    view.share = 1.0;
    const sb_weight_stats *w = sb_layer_stats_find(stats, id);
    if (!w)
        return view;
    view.act_sum = w->act_sum;
    view.act_weight = w->act_weight;
    view.fisher_sum = w->fisher_sum;
    view.grad_sum = w->grad_sum;
    view.hessian = sb_layer_stats_hessian(stats, id, &view.hessian_weight);
    view.routed_rows = w->act_rows;
    if (id->expert < 0)
        return view;
    /* an expert: its share of the layer, or the layer's average expert below the threshold */
    int k = id->role - SB_ROLE_GATE, h = id->role == SB_ROLE_DOWN ? 1 : 0;
    if (w->act_rows < stats->min_expert_rows) {
        view.pooled = true;
        view.share = 1.0 / (double)stats->num_experts;
        if (stats->pooled_act[k]) {
            view.act_sum = stats->pooled_act[k];
            view.act_weight = stats->pooled_act_weight[k];
        }
        if (stats->pooled_fisher[k])
            view.fisher_sum = stats->pooled_fisher[k];
        view.grad_sum = NULL;
        if (stats->pooled_hessian[h]) {
            view.hessian = stats->pooled_hessian[h];
            view.hessian_weight = stats->pooled_hessian_weight[h];
        }
        return view;
    }
    if (stats->act_tokens > 0)
        view.share = w->act_weight / (double)stats->act_tokens;
    else if (stats->hessian_tokens > 0)
        view.share = view.hessian_weight / (double)stats->hessian_tokens;
    return view;
}

/* ---- Callbacks ---------------------------------------------------------------------------- */

static sb_layer_stats *find_layer(void *user, int64_t layer, sb_error *err)
{
    sb_stats_sink *sink = user;
    if (layer < sink->first_layer || layer >= sink->first_layer + sink->count) {
        sb_error_set(err, SB_ERR_INTERNAL, "statistics for layer %lld, which this rank does not hold", (long long)layer);
        return NULL;
    }
    return &sink->layers[layer - sink->first_layer];
}

static sb_weight_stats *find_weight(sb_layer_stats *stats, const sb_tensor_id *id, sb_error *err)
{
    sb_weight_stats *w = sb_layer_stats_find(stats, id);
    if (!w)
        sb_error_set(err, SB_ERR_INTERNAL, "layer %lld: statistics for a %s weight (expert %lld) it does not have",
                     (long long)id->layer, sb_role_name(id->role), (long long)id->expert);
    return w;
}

/* Adds sum w x x^T of the rows to the Hessian blocks; rows scaled by sqrt(w) first when weighted. */
static sb_status accumulate_hessian(sb_layer_stats *stats, sb_weight_stats *w, const sb_linear_input *input,
                                    sb_error *err)
{
    int64_t rows = input->rows, cols = input->in_features;
    const float *x = input->x;
    if (input->route_weights && rows > 0) {
        if (stats->scratch_floats < rows * cols) {
            free(stats->scratch);
            stats->scratch_floats = 0;
            if (!(stats->scratch = sb_malloc((size_t)(rows * cols) * sizeof(float), "weighted rows", err)))
                return SB_ERR_NOMEM;
            stats->scratch_floats = rows * cols;
        }
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            float scale = sqrtf(input->route_weights[r]);
            for (int64_t c = 0; c < cols; c++)
                stats->scratch[r * cols + c] = scale * x[r * cols + c];
        }
        x = stats->scratch;
    }
    if (rows > 0)
        sb_hessian_accumulate(x, rows, cols, stats->hessian_block, w->hessian);
    w->hessian_weight += input->route_weights ? 0 : (double)rows;
    for (int64_t r = 0; input->route_weights && r < rows; r++)
        w->hessian_weight += input->route_weights[r];
    return SB_OK;
}

sb_status sb_stats_on_activation(void *user, const sb_linear_input *input, sb_error *err)
{
    int64_t ntokens = input->rows, in_features = input->in_features;
    sb_layer_stats *stats = find_layer(user, input->id.layer, err);
    if (!stats)
        return SB_ERR_INTERNAL;
    sb_weight_stats *w = find_weight(stats, &input->id, err);
    if (!w)
        return SB_ERR_INTERNAL;
    const float *x = input->x;
    const float *route = input->route_weights;
    if (w->hessian) {
        SB_TRY(accumulate_hessian(stats, w, input, err));
        if (input->id.role == SB_ROLE_Q)
            stats->hessian_tokens += ntokens;
    }
    double *sum = stats->collect_act ? w->act_sum : NULL;
    if (!sum)
        return SB_OK;
    /* Columns in parallel, tokens in order: the sums do not depend on the thread count. */
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < in_features; j++) {
        double column = 0;
        if (route) {
            for (int64_t t = 0; t < ntokens; t++) {
                double v = x[t * in_features + j];
                column += (double)route[t] * v * v;
            }
        } else {
            for (int64_t t = 0; t < ntokens; t++) {
                double v = x[t * in_features + j];
                column += v * v;
            }
        }
        sum[j] += column;
    }
    w->act_rows += ntokens;
    if (route)
        for (int64_t t = 0; t < ntokens; t++)
            w->act_weight += route[t];
    else
        w->act_weight += (double)ntokens;
    if (input->id.role == SB_ROLE_Q)
        stats->act_tokens += ntokens;
    return SB_OK;
}

sb_status sb_stats_on_gradient(void *user, const sb_tensor_id *id, const float *grad, int64_t rows, int64_t cols,
                               sb_error *err)
{
    sb_layer_stats *stats = find_layer(user, id->layer, err);
    if (!stats)
        return SB_ERR_INTERNAL;
    sb_weight_stats *w = find_weight(stats, id, err);
    if (!w)
        return SB_ERR_INTERNAL;
    int64_t count = rows * cols;
    float *fisher = w->fisher_sum, *sum = w->grad_sum;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; i++) {
        if (fisher)
            fisher[i] += grad[i] * grad[i];
        if (sum)
            sum[i] += grad[i];
    }
    return SB_OK;
}
