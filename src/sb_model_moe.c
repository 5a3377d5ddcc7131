/* sb_model_moe: the mixture-of-experts MLP of a Qwen3-MoE layer, forward and backward.
 *
 *   z = W_router n                      router logits, float32 [T x E]
 *   p = softmax(z)                      over the E experts (exp and sum in double)
 *   S = top-k of p                      ties to the lower expert index; slots by decreasing p
 *   w_j = p_j (/ sum_S p when norm_topk_prob)
 *   y = sum_{j in S, ascending expert} w_j * down_j(silu(gate_j(n)) * up_j(n))
 *   x += y
 *
 * Each expert runs as products (src/sb_linear.h, whatever the weights' storage) over the rows
 * routed to it, gathered in ascending row order (sb_routing); weight gradients are SGEMMs. Experts are visited in ascending order and every row of an expert is a distinct
 * token, so the weighted sum is accumulated per token in ascending expert order, as
 * transformers' index_add_ loop does, and no two threads ever write the same row: results do
 * not depend on the thread count.
 *
 * Backward, with g = dL/dy (the residual's gradient), for a token's slot j:
 *   dL/dw_j = g . f_j(n)  = (g W_down_j) . act_j     (no extra product: the same g W_down_j
 *                                                      gives dL/d act_j = w_j (g W_down_j))
 *   dL/dp_i (i in S) = g_i, or (g_i - sum_j g_j w_j) / sum_S p with norm_topk_prob
 *   dL/dz = p * (dL/dp - sum_i p_i dL/dp_i)         (softmax backward; 0 outside S in dL/dp)
 * and the experts' own gradients over their gathered rows.
 */
#include <math.h>
#include <string.h>

#include "sb_model_internal.h"

/* ---- Routing -------------------------------------------------------------------------------- */

/* Turns each row of logits into probabilities (in place) and picks its top k. */
static void route_tokens(float *probs, int64_t tokens, int64_t experts, int64_t top_k, bool renormalise,
                         int32_t *top_expert, float *top_weight, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        float *p = probs + t * experts;
        float max = p[0];
        for (int64_t e = 1; e < experts; e++)
            max = p[e] > max ? p[e] : max;
        double sum = 0;
        for (int64_t e = 0; e < experts; e++)
            sum += exp((double)p[e] - (double)max);
        for (int64_t e = 0; e < experts; e++)
            p[e] = (float)(exp((double)p[e] - (double)max) / sum);
        /* k passes of a strict > scan in ascending order: ties go to the lower index */
        int32_t *chosen = top_expert + t * top_k;
        float *weight = top_weight + t * top_k;
        float total = 0.0f;
        for (int64_t j = 0; j < top_k; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < experts; e++) {
                bool taken = false;
                for (int64_t i = 0; i < j && !taken; i++)
                    taken = chosen[i] == e;
                if (!taken && (best < 0 || p[e] > p[best]))
                    best = e;
            }
            chosen[j] = (int32_t)best;
            weight[j] = p[best];
            total += p[best];
        }
        if (renormalise)
            for (int64_t j = 0; j < top_k; j++)
                weight[j] /= total;
    }
}

/* The counting sort of the (token, slot) pairs by expert (see sb_routing). */
static void build_routing(const int32_t *top_expert, const float *top_weight, int64_t tokens, int64_t experts,
                          int64_t top_k, const sb_routing *routing)
{
    int64_t *offset = routing->offset;
    memset(offset, 0, (size_t)(experts + 1) * sizeof *offset);
    for (int64_t s = 0; s < tokens * top_k; s++)
        offset[top_expert[s] + 1]++;
    for (int64_t e = 0; e < experts; e++)
        offset[e + 1] += offset[e];
    /* offset[e] serves as expert e's cursor, ending at the next expert's start */
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t j = 0; j < top_k; j++) {
            int64_t s = t * top_k + j, row = offset[top_expert[s]]++;
            routing->token[row] = t;
            routing->slot[row] = s;
            routing->weight[row] = top_weight[s];
        }
    for (int64_t e = experts; e > 0; e--)
        offset[e] = offset[e - 1];
    offset[0] = 0;
}

/* dst[i] = src[rows[i]] for `count` rows of `cols` floats. */
static void gather_rows(const float *src, const int64_t *rows, int64_t count, int64_t cols, float *dst, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < count; i++)
        memcpy(dst + i * cols, src + rows[i] * cols, (size_t)cols * sizeof(float));
}

/* dst[rows[i]] += scale[i] * src[i] (scale NULL: 1); the rows are distinct. */
static void scatter_add_rows(const float *src, const float *scale, const int64_t *rows, int64_t count, int64_t cols,
                             float *dst, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        float *out = dst + rows[i] * cols, factor = scale ? scale[i] : 1.0f;
        const float *in = src + i * cols;
        if (scale) {
#pragma omp simd
            for (int64_t c = 0; c < cols; c++)
                out[c] += factor * in[c];
        } else {
#pragma omp simd
            for (int64_t c = 0; c < cols; c++)
                out[c] += in[c];
        }
    }
}

static void scale_rows(float *matrix, const float *scale, int64_t count, int64_t cols, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < count; i++)
#pragma omp simd
        for (int64_t c = 0; c < cols; c++)
            matrix[i * cols + c] *= scale[i];
}

/* ---- Forward -------------------------------------------------------------------------------- */

sb_moe_buffers sb_moe_buffers_of(sb_model_workspace *ws)
{
    return (sb_moe_buffers){ws->threads,     ws->probs,  ws->top_expert, ws->top_weight, ws->routing, ws->gathered,
                            ws->expert_out,  ws->moe_out, ws->gate,     ws->up,         ws->act};
}

sb_status sb_moe_forward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                         const float *normed, int64_t tokens, int64_t ctx, float *x, sb_layer_cache *cache,
                         sb_activation_fn hook, void *hook_user, const sb_moe_buffers *buffers, sb_error *err)
{
    int64_t hidden = shape->hidden_size, experts = shape->num_experts, top_k = shape->num_experts_per_tok;
    int64_t ffn = shape->moe_intermediate_size;
    int threads = buffers->threads;
    float *probs = cache ? cache->probs : buffers->probs;
    int32_t *top_expert = cache ? cache->top_expert : buffers->top_expert;
    float *top_weight = cache ? cache->top_weight : buffers->top_weight;
    const sb_routing *routing = &buffers->routing;

    sb_linear_input input = {{SB_ROLE_ROUTER, layer, -1}, normed, tokens, hidden, NULL, NULL, tokens, ctx};
    SB_TRY(sb_model_call_hook(hook, hook_user, &input, err));
    /* logits in float32 (the router is a plain float32 Linear in the reference) */
    SB_TRY(sb_linear_forward(&weights->router, normed, tokens, 0.0f, probs, threads, err));
    route_tokens(probs, tokens, experts, top_k, shape->norm_topk_prob, top_expert, top_weight, threads);
    build_routing(top_expert, top_weight, tokens, experts, top_k, &buffers->routing);

    memset(buffers->moe_out, 0, (size_t)(tokens * hidden) * sizeof(float));
    for (int64_t e = 0; e < experts; e++) {
        const sb_expert_weights *expert = &weights->experts[e];
        int64_t first = routing->offset[e], rows = routing->offset[e + 1] - first;
        const int64_t *token_rows = routing->token + first;
        float *gate = cache ? cache->gate + first * ffn : buffers->gate;
        float *up = cache ? cache->up + first * ffn : buffers->up;
        gather_rows(normed, token_rows, rows, hidden, buffers->gathered, threads);
        input = (sb_linear_input){{SB_ROLE_GATE, layer, e}, buffers->gathered, rows, hidden, token_rows,
                                  routing->weight + first, tokens, ctx};
        SB_TRY(sb_model_call_hook(hook, hook_user, &input, err));
        input.id.role = SB_ROLE_UP;
        SB_TRY(sb_model_call_hook(hook, hook_user, &input, err));
        if (rows > 0) {
            SB_TRY(sb_linear_forward(&expert->linear[0], buffers->gathered, rows, 0.0f, gate, threads, err));
            SB_TRY(sb_linear_forward(&expert->linear[1], buffers->gathered, rows, 0.0f, up, threads, err));
            sb_swiglu_forward(gate, up, rows, ffn, buffers->act, threads);
        }
        input.id.role = SB_ROLE_DOWN;
        input.x = buffers->act;
        input.in_features = ffn;
        SB_TRY(sb_model_call_hook(hook, hook_user, &input, err));
        if (rows == 0)
            continue;
        SB_TRY(sb_linear_forward(&expert->linear[2], buffers->act, rows, 0.0f, buffers->expert_out, threads, err));
        scatter_add_rows(buffers->expert_out, routing->weight + first, token_rows, rows, hidden, buffers->moe_out,
                         threads);
    }
    /* the experts' sum, then the residual (as the reference adds the block's output) */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < tokens * hidden; i++)
        x[i] += buffers->moe_out[i];
    return SB_OK;
}

/* ---- Backward ------------------------------------------------------------------------------- */

/* One expert's backward over its `rows` gathered rows (see the file comment); its input
 * gradient is added to d_normed, and dL/dw of each of its rows goes to ws->d_weight. */
static sb_status expert_backward(const sb_model_shape *shape, int64_t layer, int64_t e,
                                 const sb_expert_weights *expert, const sb_layer_cache *cache, const float *normed,
                                 const float *d_out, float *d_normed, const sb_gradient_sink *sink,
                                 sb_model_workspace *ws, sb_error *err)
{
    int64_t hidden = shape->hidden_size, ffn = shape->moe_intermediate_size;
    const sb_routing *routing = &ws->routing;
    int64_t first = routing->offset[e], rows = routing->offset[e + 1] - first;
    const int64_t *token_rows = routing->token + first;
    const float *route_weight = routing->weight + first;
    int threads = ws->threads;
    float *grad = ws->grad, *d_rows = ws->expert_out, *d_act = ws->gate, *d_up = ws->up;
    const float *gate = cache->gate + first * ffn, *up = cache->up + first * ffn;
    sb_tensor_id id = {SB_ROLE_DOWN, layer, e};
    if (rows == 0) { /* no token reached it: its gradient is zero */
        memset(grad, 0, (size_t)(hidden * ffn) * sizeof(float));
        for (int k = 0; k < 3; k++) {
            id.role = k == 0 ? SB_ROLE_DOWN : k == 1 ? SB_ROLE_GATE : SB_ROLE_UP;
            int64_t out = id.role == SB_ROLE_DOWN ? hidden : ffn, in = id.role == SB_ROLE_DOWN ? ffn : hidden;
            SB_TRY(sb_model_emit_gradient(sink, &id, grad, out, in, err));
        }
        return SB_OK;
    }
    /* G = dL/dy of the routed tokens, unweighted; act recomputed from the cached gate and up */
    gather_rows(d_out, token_rows, rows, hidden, d_rows, threads);
    sb_swiglu_forward(gate, up, rows, ffn, ws->act, threads);
    /* G W_down: dL/dw of each row is its dot with act; times w it is dL/d act */
    SB_TRY(sb_linear_backward_input(&expert->linear[2], d_rows, rows, 0.0f, d_act, threads, err));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        double dot = 0;
        for (int64_t c = 0; c < ffn; c++)
            dot += (double)d_act[r * ffn + c] * (double)ws->act[r * ffn + c];
        ws->d_weight[routing->slot[first + r]] = (float)dot;
    }
    scale_rows(d_rows, route_weight, rows, hidden, threads); /* dL/d(expert output) = w G */
    sb_gemm(threads, true, false, hidden, ffn, rows, 1.0f, d_rows, hidden, ws->act, ffn, 0.0f, grad, ffn);
    SB_TRY(sb_model_emit_gradient(sink, &id, grad, hidden, ffn, err));
    scale_rows(d_act, route_weight, rows, ffn, threads);
    sb_swiglu_backward(gate, up, rows, ffn, d_act, d_up, threads); /* d_act now holds dL/d gate */
    gather_rows(normed, token_rows, rows, hidden, ws->gathered, threads);
    sb_gemm(threads, true, false, ffn, hidden, rows, 1.0f, d_act, ffn, ws->gathered, hidden, 0.0f, grad, hidden);
    id.role = SB_ROLE_GATE;
    SB_TRY(sb_model_emit_gradient(sink, &id, grad, ffn, hidden, err));
    sb_gemm(threads, true, false, ffn, hidden, rows, 1.0f, d_up, ffn, ws->gathered, hidden, 0.0f, grad, hidden);
    id.role = SB_ROLE_UP;
    SB_TRY(sb_model_emit_gradient(sink, &id, grad, ffn, hidden, err));
    /* the input gradient of the gathered rows, back to their tokens */
    SB_TRY(sb_linear_backward_input(&expert->linear[0], d_act, rows, 0.0f, d_rows, threads, err));
    SB_TRY(sb_linear_backward_input(&expert->linear[1], d_up, rows, 1.0f, d_rows, threads, err));
    scatter_add_rows(d_rows, NULL, token_rows, rows, hidden, d_normed, threads);
    return SB_OK;
}

/* dL/dz of every token from dL/dw of its slots (softmax, top-k and renormalisation backward). */
static void router_logit_gradient(const sb_model_shape *shape, const sb_layer_cache *cache, int64_t tokens,
                                  const float *d_weight, float *d_logits, int threads)
{
    int64_t experts = shape->num_experts, top_k = shape->num_experts_per_tok;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const float *p = cache->probs + t * experts, *w = cache->top_weight + t * top_k, *g = d_weight + t * top_k;
        const int32_t *chosen = cache->top_expert + t * top_k;
        float *dz = d_logits + t * experts;
        double selected = 0, weighted = 0; /* sum_S p, sum_j g_j w_j */
        for (int64_t j = 0; j < top_k; j++) {
            selected += p[chosen[j]];
            weighted += (double)g[j] * (double)w[j];
        }
        memset(dz, 0, (size_t)experts * sizeof *dz); /* dL/dp first, 0 outside the top k */
        for (int64_t j = 0; j < top_k; j++)
            dz[chosen[j]] = shape->norm_topk_prob ? (float)(((double)g[j] - weighted) / selected) : g[j];
        double dot = 0; /* sum_i p_i dL/dp_i */
        for (int64_t j = 0; j < top_k; j++)
            dot += (double)p[chosen[j]] * (double)dz[chosen[j]];
        for (int64_t e = 0; e < experts; e++)
            dz[e] = (float)((double)p[e] * ((double)dz[e] - dot));
    }
}

sb_status sb_moe_backward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                          const sb_layer_cache *cache, const float *normed, const float *d_out, int64_t tokens,
                          float *d_normed, const sb_gradient_sink *sink, sb_model_workspace *ws, sb_error *err)
{
    int64_t hidden = shape->hidden_size, experts = shape->num_experts, top_k = shape->num_experts_per_tok;
    build_routing(cache->top_expert, cache->top_weight, tokens, experts, top_k, &ws->routing);
    memset(d_normed, 0, (size_t)(tokens * hidden) * sizeof(float));
    for (int64_t e = 0; e < experts; e++)
        SB_TRY(expert_backward(shape, layer, e, &weights->experts[e], cache, normed, d_out, d_normed, sink, ws, err));
    float *d_logits = ws->probs; /* free in backward: the probabilities come from the cache */
    router_logit_gradient(shape, cache, tokens, ws->d_weight, d_logits, ws->threads);
    sb_gemm(ws->threads, true, false, experts, hidden, tokens, 1.0f, d_logits, experts, normed, hidden, 0.0f, ws->grad,
            hidden);
    sb_tensor_id id = {SB_ROLE_ROUTER, layer, -1};
    SB_TRY(sb_model_emit_gradient(sink, &id, ws->grad, experts, hidden, err));
    return sb_linear_backward_input(&weights->router, d_logits, tokens, 1.0f, d_normed, ws->threads, err);
}
