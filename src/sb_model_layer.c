/* sb_model_layer: one decoder layer (Llama, Qwen3, Qwen3-MoE), forward and backward, over a
 * batch of windows.
 *
 *   x_mid = x_in  + o_proj(attention(rope(qn(q_proj(n1))), rope(kn(k_proj(n1))), v_proj(n1))),  n1 = norm(x_in)
 *   x_out = x_mid + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                               n2 = norm(x_mid)
 *
 * qn, kn: Qwen3's per-head RMSNorms (identity for Llama); projections carry biases when the
 * model has them. In an MoE layer the second line is the mixture of experts (sb_model_moe.c).
 * Linear layers are SGEMMs over all rows of the batch. Attention runs per (window, head) with
 * two SGEMMs per block of queries (QK^T, PV) and a scalar softmax between them. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "sb_model_internal.h"

/* ---- Weight gradients as SGEMMs (products with the weights go through src/sb_linear.h) ----------- */

/* dW [out x in] = dy^T [out x rows] x [rows x in]. */
static void linear_backward_weight(int threads, const float *dy, int64_t rows, int64_t out, const float *x,
                                   int64_t in, float *d_weight)
{
    sb_gemm(threads, true, false, out, in, rows, 1.0f, dy, out, x, in, 0.0f, d_weight, in);
}

sb_status sb_model_call_hook(sb_activation_fn hook, void *user, const sb_linear_input *input, sb_error *err)
{
    if (!hook)
        return SB_OK;
    sb_status status = hook(user, input, err);
    if (status != SB_OK) {
        if (input->id.expert >= 0)
            sb_error_prefix(err, "layer %lld expert %lld %s activations", (long long)input->id.layer,
                            (long long)input->id.expert, sb_role_name(input->id.role));
        else
            sb_error_prefix(err, "layer %lld %s activations", (long long)input->id.layer, sb_role_name(input->id.role));
    }
    return status;
}

/* The hook for a dense kind or the router: every row of the batch. */
static sb_status call_hook(sb_activation_fn hook, void *user, int64_t layer, sb_linear_kind kind, const float *x,
                           int64_t rows, int64_t cols, int64_t ctx, sb_error *err)
{
    sb_linear_input input = {{(sb_tensor_role)kind, layer, -1}, x, rows, cols, NULL, NULL, rows, ctx};
    return sb_model_call_hook(hook, user, &input, err);
}

sb_status sb_model_emit_gradient(const sb_gradient_sink *sink, const sb_tensor_id *id, const float *grad,
                                 int64_t rows, int64_t cols, sb_error *err)
{
    sb_status status = sink->linear(sink->user, id, grad, rows, cols, err);
    if (status != SB_OK) {
        if (id->expert >= 0)
            sb_error_prefix(err, "layer %lld expert %lld %s gradient", (long long)id->layer, (long long)id->expert,
                            sb_role_name(id->role));
        else
            sb_error_prefix(err, "layer %lld %s gradient", (long long)id->layer, sb_role_name(id->role));
    }
    return status;
}

static sb_status emit_gradient(const sb_gradient_sink *sink, int64_t layer, sb_linear_kind kind, const float *grad,
                               int64_t rows, int64_t cols, sb_error *err)
{
    sb_tensor_id id = {(sb_tensor_role)kind, layer, -1};
    return sb_model_emit_gradient(sink, &id, grad, rows, cols, err);
}

/* ---- Attention vectors (Qwen3): biases and per-head norms ---------------------------------- */

void sb_add_bias(float *y, int64_t rows, int64_t cols, const float *bias, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++)
#pragma omp simd
        for (int64_t c = 0; c < cols; c++)
            y[r * cols + c] += bias[c];
}

/* Delivers one vector's gradient, converted from the double sums. */
static sb_status emit_vector(const sb_gradient_sink *sink, int64_t layer, sb_vector_kind kind, const double *sums,
                             int64_t count, float *buffer, sb_error *err)
{
    for (int64_t i = 0; i < count; i++)
        buffer[i] = (float)sums[i];
    sb_tensor_id id = {sb_vector_role(kind), layer, -1};
    sb_status status = sink->vector(sink->user, &id, buffer, count, err);
    if (status != SB_OK)
        sb_error_prefix(err, "layer %lld %s gradient", (long long)layer, sb_role_name(id.role));
    return status;
}

/* A bias's gradient: the column sums of dY [rows x cols], each column summed in row order (in
 * double) so the result does not depend on the thread count. */
static sb_status bias_gradient(const sb_gradient_sink *sink, int64_t layer, sb_vector_kind kind, const float *dy,
                               int64_t rows, int64_t cols, sb_model_workspace *ws, sb_error *err)
{
    double *sums = ws->vector_grad;
#pragma omp parallel for num_threads(ws->threads) schedule(static)
    for (int64_t c = 0; c < cols; c++) {
        double sum = 0;
        for (int64_t r = 0; r < rows; r++)
            sum += dy[r * cols + c];
        sums[c] = sum;
    }
    return emit_vector(sink, layer, kind, sums, cols, ws->grad, err);
}

/* The weight gradient of a per-head RMSNorm: sum over (row, head) of dY * xhat, xhat = x * inv_rms
 * (x [rows x heads*head_dim] before the norm, inv_rms [rows x heads]). */
static sb_status head_norm_gradient(const sb_gradient_sink *sink, int64_t layer, sb_vector_kind kind, const float *x,
                                    const float *inv_rms, const float *dy, int64_t units, int64_t head_dim,
                                    sb_model_workspace *ws, sb_error *err)
{
    double *sums = ws->vector_grad;
#pragma omp parallel for num_threads(ws->threads) schedule(static)
    for (int64_t d = 0; d < head_dim; d++) {
        double sum = 0;
        for (int64_t u = 0; u < units; u++)
            sum += (double)dy[u * head_dim + d] * (double)(x[u * head_dim + d] * inv_rms[u]);
        sums[d] = sum;
    }
    return emit_vector(sink, layer, kind, sums, head_dim, ws->grad, err);
}

/* ---- Rotary embedding ----------------------------------------------------------------------- */

/* Rotates every head of every row in place, rotate-half layout: for i < half, the pair
 * (x_i, x_{i+half}) at position p (sb_rope_view) turns by angle p * inv_freq_i:
 *     x_i' = x_i cos - x_{i+half} sin,   x_{i+half}' = x_{i+half} cos + x_i sin
 * (HF: q * cos + rotate_half(q) * sin). `transpose` applies the inverse rotation, which is the
 * backward of the forward one (a rotation's transpose). */
static void rope_rows(float *matrix, int64_t rows, int64_t heads, int64_t head_dim, const sb_rope_view *rope,
                      bool transpose, int threads)
{
    int64_t half = head_dim / 2, ld = heads * head_dim;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; row++) {
        int64_t position = (rope->first + row) % rope->period;
        const float *c = rope->cos_table + position * half, *s = rope->sin_table + position * half;
        for (int64_t head = 0; head < heads; head++) {
            float *x = matrix + row * ld + head * head_dim;
            if (!transpose) {
#pragma omp simd
                for (int64_t i = 0; i < half; i++) {
                    float a = x[i], b = x[i + half];
                    x[i] = a * c[i] - b * s[i];
                    x[i + half] = b * c[i] + a * s[i];
                }
            } else {
#pragma omp simd
                for (int64_t i = 0; i < half; i++) {
                    float a = x[i], b = x[i + half];
                    x[i] = a * c[i] + b * s[i];
                    x[i + half] = b * c[i] - a * s[i];
                }
            }
        }
    }
}

/* ---- SwiGLU --------------------------------------------------------------------------------- */

static inline float sigmoid(float x) { return 1.0f / (1.0f + sb_expf(-x)); }

SB_SIMD_CLONES
static void swiglu_kernel(const float *gate, const float *up, int64_t count, float *act)
{
#pragma omp simd
    for (int64_t i = 0; i < count; i++)
        act[i] = (gate[i] * sigmoid(gate[i])) * up[i];
}

/* In: d_act_in_gate = dL/d act. Out: it holds dL/d gate, d_up holds dL/d up.
 * silu'(g) = s (1 + g (1 - s)), s = sigmoid(g). */
SB_SIMD_CLONES
static void swiglu_backward_kernel(const float *gate, const float *up, int64_t count, float *d_act_in_gate,
                                   float *d_up)
{
#pragma omp simd
    for (int64_t i = 0; i < count; i++) {
        float g = gate[i], s = sigmoid(g), d_act = d_act_in_gate[i];
        d_up[i] = d_act * (g * s);
        d_act_in_gate[i] = d_act * up[i] * (s * (1.0f + g * (1.0f - s)));
    }
}

/* The elementwise passes run over rows (of `cols` elements) split among the threads. */
void sb_swiglu_forward(const float *gate, const float *up, int64_t rows, int64_t cols, float *act, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; row++)
        swiglu_kernel(gate + row * cols, up + row * cols, cols, act + row * cols);
}

void sb_swiglu_backward(const float *gate, const float *up, int64_t rows, int64_t cols, float *d_act_in_gate,
                        float *d_up, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; row++)
        swiglu_backward_kernel(gate + row * cols, up + row * cols, cols, d_act_in_gate + row * cols,
                               d_up + row * cols);
}

/* ---- Attention ------------------------------------------------------------------------------ */

typedef struct attention_view {
    int64_t ctx, head_dim, heads, kv_heads, q_dim, kv_dim;
    float scale;
    const float *q, *k, *v; /* [T x q_dim], [T x kv_dim], [T x kv_dim]; q and k rotated */
    float *row_max, *row_inv_sum;
    float *attn;           /* [T x q_dim] */
} attention_view;

/* Softmax over the first `valid` entries of a row of `count` (the keys a query sees), in
 * place; the rest become 0. Keeps the row's max and 1/sum so that backward recomputes exactly
 * these probabilities (softmax_backward_row does the same float operations). */
SB_SIMD_CLONES
static void softmax_row(float *row, int64_t valid, int64_t count, float *row_max, float *row_inv_sum)
{
    float max = row[0];
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j < valid; j++)
        max = row[j] > max ? row[j] : max;
    /* A float sum in the simd lanes (independent partial sums): a double accumulator made
     * this loop latency-bound, and the normaliser's relative error (about 1e-6 at ctx 4096)
     * scales the whole row uniformly. */
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < valid; j++) {
        row[j] = sb_expf(row[j] - max);
        sum += row[j];
    }
    float inv_sum = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < valid; j++)
        row[j] *= inv_sum;
    for (int64_t j = valid; j < count; j++)
        row[j] = 0.0f;
    *row_max = max;
    *row_inv_sum = inv_sum;
}

/* Backward of one softmax row: recomputes P in `p` (as softmax_row made it) and turns `dp`
 * (dL/dP) into dL/dS = P * (dP - row_dot), row_dot = sum_j P_j dP_j = dO . O. */
SB_SIMD_CLONES
static void softmax_backward_row(float *p, float *dp, int64_t valid, int64_t count, float max, float inv_sum,
                                 float row_dot)
{
#pragma omp simd
    for (int64_t j = 0; j < valid; j++) {
        p[j] = sb_expf(p[j] - max) * inv_sum;
        dp[j] = p[j] * (dp[j] - row_dot);
    }
    for (int64_t j = valid; j < count; j++) {
        p[j] = 0.0f;
        dp[j] = 0.0f;
    }
}

/* Causal attention of one head over one window. Query block [q0, q0 + nq) sees keys
 * [0, q0 + nq): S = scale Q K^T, P = softmax(S) row by row over keys <= the query, O = P V. */
static void attention_forward_head(const attention_view *view, int64_t window, int64_t head, float *scores)
{
    int64_t ctx = view->ctx, head_dim = view->head_dim, kv_head = head / (view->heads / view->kv_heads);
    const float *q = view->q + window * ctx * view->q_dim + head * head_dim;
    const float *k = view->k + window * ctx * view->kv_dim + kv_head * head_dim;
    const float *v = view->v + window * ctx * view->kv_dim + kv_head * head_dim;
    float *out = view->attn + window * ctx * view->q_dim + head * head_dim;
    float *row_max = view->row_max + (window * view->heads + head) * ctx;
    float *row_inv_sum = view->row_inv_sum + (window * view->heads + head) * ctx;
    for (int64_t q0 = 0; q0 < ctx; q0 += SB_ATTENTION_BLOCK) {
        int64_t nq = ctx - q0 < SB_ATTENTION_BLOCK ? ctx - q0 : SB_ATTENTION_BLOCK, nk = q0 + nq;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)head_dim, view->scale,
                    q + q0 * view->q_dim, (int)view->q_dim, k, (int)view->kv_dim, 0.0f, scores, (int)nk);
        for (int64_t i = 0; i < nq; i++)
            softmax_row(scores + i * nk, q0 + i + 1, nk, &row_max[q0 + i], &row_inv_sum[q0 + i]);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)head_dim, (int)nk, 1.0f, scores,
                    (int)nk, v, (int)view->kv_dim, 0.0f, out + q0 * view->q_dim, (int)view->q_dim);
    }
}

static void attention_forward(const attention_view *view, int64_t n_windows, const sb_model_workspace *ws)
{
    /* (window, head) pairs in parallel; each GEMM here is small and runs on one core. */
    int64_t units = n_windows * view->heads;
#pragma omp parallel for num_threads(ws->threads) schedule(static)
    for (int64_t unit = 0; unit < units; unit++) {
        float *scores = ws->scores + (size_t)omp_get_thread_num() * SB_ATTENTION_BLOCK * (size_t)ws->ctx;
        attention_forward_head(view, unit / view->heads, unit % view->heads, scores);
    }
}

/* Backward of the heads that share one KV head, over one window, given dO (d_attn):
 *     dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = scale dS K,
 *     dK += scale dS^T Q,  dV += P^T dO
 * (rowsum(P * dP) = rowsum(dO * O) since O = P V). The group's dK and dV are written by this
 * call only, its heads in order, so the sums do not depend on the thread count. */
static void attention_backward_group(const attention_view *view, const float *d_attn, float *dq, float *dk,
                                     float *dv, int64_t window, int64_t kv_head, float *scores, float *d_scores)
{
    int64_t ctx = view->ctx, head_dim = view->head_dim, group = view->heads / view->kv_heads;
    int64_t q_dim = view->q_dim, kv_dim = view->kv_dim;
    const float *k = view->k + window * ctx * kv_dim + kv_head * head_dim;
    const float *v = view->v + window * ctx * kv_dim + kv_head * head_dim;
    float *dk_group = dk + window * ctx * kv_dim + kv_head * head_dim;
    float *dv_group = dv + window * ctx * kv_dim + kv_head * head_dim;
    for (int64_t t = 0; t < ctx; t++) {
        memset(dk_group + t * kv_dim, 0, (size_t)head_dim * sizeof(float));
        memset(dv_group + t * kv_dim, 0, (size_t)head_dim * sizeof(float));
    }
    for (int64_t head = kv_head * group; head < (kv_head + 1) * group; head++) {
        size_t offset = (size_t)(window * ctx * q_dim + head * head_dim);
        const float *q = view->q + offset, *out = view->attn + offset, *d_out = d_attn + offset;
        float *d_q = dq + offset;
        const float *row_max = view->row_max + (window * view->heads + head) * ctx;
        const float *row_inv_sum = view->row_inv_sum + (window * view->heads + head) * ctx;
        for (int64_t q0 = 0; q0 < ctx; q0 += SB_ATTENTION_BLOCK) {
            int64_t nq = ctx - q0 < SB_ATTENTION_BLOCK ? ctx - q0 : SB_ATTENTION_BLOCK, nk = q0 + nq;
            const float *q_block = q + q0 * q_dim, *d_out_block = d_out + q0 * q_dim;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)head_dim, view->scale,
                        q_block, (int)q_dim, k, (int)kv_dim, 0.0f, scores, (int)nk);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)head_dim, 1.0f, d_out_block,
                        (int)q_dim, v, (int)kv_dim, 0.0f, d_scores, (int)nk);
            for (int64_t i = 0; i < nq; i++) {
                const float *d_out_row = d_out_block + i * q_dim, *out_row = out + (q0 + i) * q_dim;
                double dot = 0.0;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < head_dim; d++)
                    dot += (double)d_out_row[d] * (double)out_row[d];
                softmax_backward_row(scores + i * nk, d_scores + i * nk, q0 + i + 1, nk, row_max[q0 + i],
                                     row_inv_sum[q0 + i], (float)dot);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)head_dim, (int)nk, view->scale,
                        d_scores, (int)nk, k, (int)kv_dim, 0.0f, d_q + q0 * q_dim, (int)q_dim);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)head_dim, (int)nq, view->scale,
                        d_scores, (int)nk, q_block, (int)q_dim, 1.0f, dk_group, (int)kv_dim);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)head_dim, (int)nq, 1.0f, scores,
                        (int)nk, d_out_block, (int)q_dim, 1.0f, dv_group, (int)kv_dim);
        }
    }
}

static void attention_backward(const attention_view *view, int64_t n_windows, const float *d_attn, float *dq,
                               float *dk, float *dv, const sb_model_workspace *ws)
{
    int64_t units = n_windows * view->kv_heads;
#pragma omp parallel for num_threads(ws->threads) schedule(static)
    for (int64_t unit = 0; unit < units; unit++) {
        size_t scratch = (size_t)omp_get_thread_num() * SB_ATTENTION_BLOCK * (size_t)ws->ctx;
        attention_backward_group(view, d_attn, dq, dk, dv, unit / view->kv_heads, unit % view->kv_heads,
                                 ws->scores + scratch, ws->d_scores + scratch);
    }
}

static attention_view make_view(const sb_model_shape *shape, int64_t ctx)
{
    attention_view view;
    memset(&view, 0, sizeof view);
    view.ctx = ctx;
    view.head_dim = shape->head_dim;
    view.heads = shape->num_attention_heads;
    view.kv_heads = shape->num_key_value_heads;
    view.q_dim = view.heads * view.head_dim;
    view.kv_dim = view.kv_heads * view.head_dim;
    /* HF: scaling = head_dim ** -0.5, applied to the float32 product. */
    view.scale = (float)(1.0 / sqrt((double)shape->head_dim));
    return view;
}

/* ---- The layer ------------------------------------------------------------------------------ */

sb_status sb_layer_check(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                         const sb_layer_cache *cache, sb_error *err)
{
    bool moe = sb_layer_is_moe(shape, layer);
    bool weights_ok = moe ? weights->num_experts == shape->num_experts && weights->router.rows > 0 && weights->experts
                          : weights->linear[SB_LINEAR_DOWN].rows > 0;
    weights_ok = weights_ok && (!shape->qk_norm || (weights->vector[SB_VECTOR_Q_NORM] && weights->vector[SB_VECTOR_K_NORM]));
    weights_ok = weights_ok && (!shape->attention_bias || weights->vector[SB_VECTOR_O_BIAS]);
    if (!weights_ok)
        return sb_error_set(err, SB_ERR_INTERNAL, "layer %lld: weights allocated for another layer kind",
                            (long long)layer);
    if (cache && cache->moe != moe)
        return sb_error_set(err, SB_ERR_INTERNAL, "layer %lld: activation cache made for a %s layer", (long long)layer,
                            cache->moe ? "MoE" : "dense");
    return SB_OK;
}

/* The projection is kept in `raw` for backward (the window runtime with a cache). */
sb_status sb_project_heads(const sb_model_shape *shape, const float *normed, int64_t rows, const sb_linear *weight,
                           const float *bias, const float *norm, int64_t heads, float *raw, float *out, float *inv_rms,
                           const sb_rope_view *rope, int threads, sb_error *err)
{
    int64_t head_dim = shape->head_dim, width = heads * head_dim;
    SB_TRY(sb_linear_forward(weight, normed, rows, 0.0f, raw, threads, err));
    if (bias)
        sb_add_bias(raw, rows, width, bias, threads);
    if (norm) /* [T x heads*head_dim] is [T*heads x head_dim]: one RMSNorm per (token, head) */
        sb_rms_norm_rows(raw, norm, rows * heads, head_dim, shape->rms_norm_eps, out, inv_rms, threads);
    else if (raw != out)
        memcpy(out, raw, (size_t)(rows * width) * sizeof(float));
    rope_rows(out, rows, heads, head_dim, rope, false, threads);
    return SB_OK;
}

static sb_status layer_forward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights, float *x,
                               int64_t n_windows, int64_t ctx, sb_layer_cache *cache, sb_activation_fn hook,
                               void *hook_user, sb_model_workspace *ws, sb_error *err)
{
    SB_TRY(sb_workspace_check_batch(ws, n_windows, ctx, err));
    SB_TRY(sb_layer_check(shape, layer, weights, cache, err));
    int64_t tokens = n_windows * ctx, hidden = shape->hidden_size, ffn = shape->intermediate_size;
    if (cache && tokens > cache->max_tokens)
        return sb_error_set(err, SB_ERR_INTERNAL, "layer %lld: batch of %lld tokens exceeds its cache (%lld)",
                            (long long)layer, (long long)tokens, (long long)cache->max_tokens);
    int threads = ws->threads;
    double eps = shape->rms_norm_eps;
    attention_view view = make_view(shape, ctx);
    float *q = cache ? cache->q : ws->q, *k = cache ? cache->k : ws->k, *v = cache ? cache->v : ws->v;
    view.q = q;
    view.k = k;
    view.v = v;
    view.attn = cache ? cache->attn : ws->attn;
    view.row_max = cache ? cache->row_max : ws->row_max;
    view.row_inv_sum = cache ? cache->row_inv_sum : ws->row_inv_sum;
    float *gate = cache ? cache->gate : ws->gate, *up = cache ? cache->up : ws->up;
    float *inv_rms_attn = cache ? cache->inv_rms_attn : ws->inv_rms;
    float *inv_rms_mlp = cache ? cache->inv_rms_mlp : ws->inv_rms;
    float *normed = ws->normed;
    float *const *vector = weights->vector;
    if (cache) {
        cache->n_windows = 0; /* invalid until this forward completes */
        memcpy(cache->x_in, x, (size_t)(tokens * hidden) * sizeof(float));
    }

    /* Attention block. */
    sb_rms_norm_rows(x, weights->attn_norm, tokens, hidden, eps, normed, inv_rms_attn, threads);
    SB_TRY(call_hook(hook, hook_user, layer, SB_LINEAR_Q, normed, tokens, hidden, ctx, err));
    SB_TRY(call_hook(hook, hook_user, layer, SB_LINEAR_K, normed, tokens, hidden, ctx, err));
    SB_TRY(call_hook(hook, hook_user, layer, SB_LINEAR_V, normed, tokens, hidden, ctx, err));
    bool keep_raw = cache && shape->qk_norm;
    sb_rope_view rope = {ws->rope_cos, ws->rope_sin, 0, ctx};
    SB_TRY(sb_project_heads(shape, normed, tokens, &weights->linear[SB_LINEAR_Q], vector[SB_VECTOR_Q_BIAS],
                            vector[SB_VECTOR_Q_NORM], view.heads, keep_raw ? cache->q_raw : q, q,
                            cache ? cache->q_inv_rms : ws->q_inv_rms, &rope, threads, err));
    SB_TRY(sb_project_heads(shape, normed, tokens, &weights->linear[SB_LINEAR_K], vector[SB_VECTOR_K_BIAS],
                            vector[SB_VECTOR_K_NORM], view.kv_heads, keep_raw ? cache->k_raw : k, k,
                            cache ? cache->k_inv_rms : ws->k_inv_rms, &rope, threads, err));
    SB_TRY(sb_linear_forward(&weights->linear[SB_LINEAR_V], normed, tokens, 0.0f, v, threads, err));
    if (vector[SB_VECTOR_V_BIAS])
        sb_add_bias(v, tokens, view.kv_dim, vector[SB_VECTOR_V_BIAS], threads);
    attention_forward(&view, n_windows, ws);
    SB_TRY(call_hook(hook, hook_user, layer, SB_LINEAR_O, view.attn, tokens, view.q_dim, ctx, err));
    /* residual: x += o(attn) */
    SB_TRY(sb_linear_forward(&weights->linear[SB_LINEAR_O], view.attn, tokens, 1.0f, x, threads, err));
    if (vector[SB_VECTOR_O_BIAS])
        sb_add_bias(x, tokens, hidden, vector[SB_VECTOR_O_BIAS], threads);
    if (cache)
        memcpy(cache->x_mid, x, (size_t)(tokens * hidden) * sizeof(float));

    /* MLP block. */
    sb_rms_norm_rows(x, weights->mlp_norm, tokens, hidden, eps, normed, inv_rms_mlp, threads);
    if (sb_layer_is_moe(shape, layer)) {
        sb_moe_buffers buffers = sb_moe_buffers_of(ws);
        SB_TRY(sb_moe_forward(shape, layer, weights, normed, tokens, ctx, x, cache, hook, hook_user, &buffers, err));
    } else {
        SB_TRY(call_hook(hook, hook_user, layer, SB_LINEAR_GATE, normed, tokens, hidden, ctx, err));
        SB_TRY(call_hook(hook, hook_user, layer, SB_LINEAR_UP, normed, tokens, hidden, ctx, err));
        SB_TRY(sb_linear_forward(&weights->linear[SB_LINEAR_GATE], normed, tokens, 0.0f, gate, threads, err));
        SB_TRY(sb_linear_forward(&weights->linear[SB_LINEAR_UP], normed, tokens, 0.0f, up, threads, err));
        sb_swiglu_forward(gate, up, tokens, ffn, ws->act, threads);
        SB_TRY(call_hook(hook, hook_user, layer, SB_LINEAR_DOWN, ws->act, tokens, ffn, ctx, err));
        /* residual: x += down(act) */
        SB_TRY(sb_linear_forward(&weights->linear[SB_LINEAR_DOWN], ws->act, tokens, 1.0f, x, threads, err));
    }

    if (cache) {
        cache->n_windows = n_windows;
        cache->ctx = ctx;
    }
    return SB_OK;
}

/* Backward of project_heads' norm (the rotary embedding already undone): `d` holds dL/d(normed
 * q or k) on entry and dL/d(projection) on exit. The norm's weight gradient goes to the sink. */
static sb_status head_norm_backward(const sb_gradient_sink *sink, int64_t layer, sb_vector_kind kind,
                                    const float *raw, const float *inv_rms, const float *norm, float *d, int64_t units,
                                    int64_t head_dim, sb_model_workspace *ws, sb_error *err)
{
    if (sink->vector)
        SB_TRY(head_norm_gradient(sink, layer, kind, raw, inv_rms, d, units, head_dim, ws, err));
    /* in place: each row's dot product is taken before the row is written */
    sb_rms_norm_backward(raw, inv_rms, norm, d, units, head_dim, false, d, ws->threads);
    return SB_OK;
}

static sb_status layer_backward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                                const sb_layer_cache *cache, float *dx, const sb_gradient_sink *sink,
                                sb_model_workspace *ws, sb_error *err)
{
    if (!ws->with_backward)
        return sb_error_set(err, SB_ERR_INTERNAL, "layer backward needs a workspace made with_backward");
    if (cache->n_windows == 0)
        return sb_error_set(err, SB_ERR_INTERNAL, "layer %lld backward: its cache holds no completed forward",
                            (long long)layer);
    SB_TRY(sb_layer_check(shape, layer, weights, cache, err));
    int64_t n_windows = cache->n_windows, ctx = cache->ctx;
    SB_TRY(sb_workspace_check_batch(ws, n_windows, ctx, err));
    int64_t tokens = n_windows * ctx, hidden = shape->hidden_size, ffn = shape->intermediate_size;
    int threads = ws->threads;
    attention_view view = make_view(shape, ctx);
    view.q = cache->q;
    view.k = cache->k;
    view.v = cache->v;
    view.attn = cache->attn;
    view.row_max = cache->row_max;
    view.row_inv_sum = cache->row_inv_sum;
    float *const *vector = weights->vector;
    bool vectors = sink->vector != NULL;
    /* Workspace buffers reused for gradients (see sb_model_internal.h). */
    float *normed = ws->normed, *d_normed = ws->d_normed, *grad = ws->grad;
    float *d_gate = ws->gate, *d_up = ws->up;
    float *d_attn = ws->attn, *dq = ws->q, *dk = ws->k, *dv = ws->v;

    /* MLP block: dx is dL/d x_out here. */
    sb_rms_norm_apply(cache->x_mid, cache->inv_rms_mlp, weights->mlp_norm, tokens, hidden, normed, threads);
    if (sb_layer_is_moe(shape, layer)) {
        SB_TRY(sb_moe_backward(shape, layer, weights, cache, normed, dx, tokens, d_normed, sink, ws, err));
    } else {
        sb_swiglu_forward(cache->gate, cache->up, tokens, ffn, ws->act, threads);
        linear_backward_weight(threads, dx, tokens, hidden, ws->act, ffn, grad);
        SB_TRY(emit_gradient(sink, layer, SB_LINEAR_DOWN, grad, hidden, ffn, err));
        SB_TRY(sb_linear_backward_input(&weights->linear[SB_LINEAR_DOWN], dx, tokens, 0.0f, d_gate, threads, err));
        sb_swiglu_backward(cache->gate, cache->up, tokens, ffn, d_gate, d_up, threads);
        linear_backward_weight(threads, d_gate, tokens, ffn, normed, hidden, grad);
        SB_TRY(emit_gradient(sink, layer, SB_LINEAR_GATE, grad, ffn, hidden, err));
        linear_backward_weight(threads, d_up, tokens, ffn, normed, hidden, grad);
        SB_TRY(emit_gradient(sink, layer, SB_LINEAR_UP, grad, ffn, hidden, err));
        SB_TRY(sb_linear_backward_input(&weights->linear[SB_LINEAR_GATE], d_gate, tokens, 0.0f, d_normed, threads,
                                        err));
        SB_TRY(sb_linear_backward_input(&weights->linear[SB_LINEAR_UP], d_up, tokens, 1.0f, d_normed, threads, err));
    }
    sb_rms_norm_backward(cache->x_mid, cache->inv_rms_mlp, weights->mlp_norm, d_normed, tokens, hidden, true, dx,
                         threads);

    /* Attention block: dx is dL/d x_mid here. */
    linear_backward_weight(threads, dx, tokens, hidden, cache->attn, view.q_dim, grad);
    SB_TRY(emit_gradient(sink, layer, SB_LINEAR_O, grad, hidden, view.q_dim, err));
    if (vectors && vector[SB_VECTOR_O_BIAS])
        SB_TRY(bias_gradient(sink, layer, SB_VECTOR_O_BIAS, dx, tokens, hidden, ws, err));
    SB_TRY(sb_linear_backward_input(&weights->linear[SB_LINEAR_O], dx, tokens, 0.0f, d_attn, threads, err));
    attention_backward(&view, n_windows, d_attn, dq, dk, dv, ws);
    sb_rope_view rope = {ws->rope_cos, ws->rope_sin, 0, ctx};
    rope_rows(dq, tokens, view.heads, view.head_dim, &rope, true, threads);
    rope_rows(dk, tokens, view.kv_heads, view.head_dim, &rope, true, threads);
    if (shape->qk_norm) {
        SB_TRY(head_norm_backward(sink, layer, SB_VECTOR_Q_NORM, cache->q_raw, cache->q_inv_rms,
                                  vector[SB_VECTOR_Q_NORM], dq, tokens * view.heads, view.head_dim, ws, err));
        SB_TRY(head_norm_backward(sink, layer, SB_VECTOR_K_NORM, cache->k_raw, cache->k_inv_rms,
                                  vector[SB_VECTOR_K_NORM], dk, tokens * view.kv_heads, view.head_dim, ws, err));
    }
    if (vectors && shape->attention_bias) {
        SB_TRY(bias_gradient(sink, layer, SB_VECTOR_Q_BIAS, dq, tokens, view.q_dim, ws, err));
        SB_TRY(bias_gradient(sink, layer, SB_VECTOR_K_BIAS, dk, tokens, view.kv_dim, ws, err));
        SB_TRY(bias_gradient(sink, layer, SB_VECTOR_V_BIAS, dv, tokens, view.kv_dim, ws, err));
    }
    sb_rms_norm_apply(cache->x_in, cache->inv_rms_attn, weights->attn_norm, tokens, hidden, normed, threads);
    linear_backward_weight(threads, dq, tokens, view.q_dim, normed, hidden, grad);
    SB_TRY(emit_gradient(sink, layer, SB_LINEAR_Q, grad, view.q_dim, hidden, err));
    linear_backward_weight(threads, dk, tokens, view.kv_dim, normed, hidden, grad);
    SB_TRY(emit_gradient(sink, layer, SB_LINEAR_K, grad, view.kv_dim, hidden, err));
    linear_backward_weight(threads, dv, tokens, view.kv_dim, normed, hidden, grad);
    SB_TRY(emit_gradient(sink, layer, SB_LINEAR_V, grad, view.kv_dim, hidden, err));
    SB_TRY(sb_linear_backward_input(&weights->linear[SB_LINEAR_Q], dq, tokens, 0.0f, d_normed, threads, err));
    SB_TRY(sb_linear_backward_input(&weights->linear[SB_LINEAR_K], dk, tokens, 1.0f, d_normed, threads, err));
    SB_TRY(sb_linear_backward_input(&weights->linear[SB_LINEAR_V], dv, tokens, 1.0f, d_normed, threads, err));
    sb_rms_norm_backward(cache->x_in, cache->inv_rms_attn, weights->attn_norm, d_normed, tokens, hidden, true, dx,
                         threads);
    return SB_OK;
}

/* The stages hold OpenBLAS at one thread while the runtime's own team runs (sb_blas_hold). */
sb_status sb_layer_forward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights, float *x,
                           int64_t n_windows, int64_t ctx, sb_layer_cache *cache, sb_activation_fn hook,
                           void *hook_user, sb_model_workspace *ws, sb_error *err)
{
    int previous = sb_blas_hold(ws->threads);
    sb_status status = layer_forward(shape, layer, weights, x, n_windows, ctx, cache, hook, hook_user, ws, err);
    sb_blas_release(previous);
    return status;
}

sb_status sb_layer_backward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                            const sb_layer_cache *cache, float *dx, const sb_gradient_sink *sink,
                            sb_model_workspace *ws, sb_error *err)
{
    int previous = sb_blas_hold(ws->threads);
    sb_status status = layer_backward(shape, layer, weights, cache, dx, sink, ws, err);
    sb_blas_release(previous);
    return status;
}
