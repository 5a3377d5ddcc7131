/* sb_model_internal: the workspace and cache layouts shared by sb_model.c (weights, embedding,
 * head, whole model) and sb_model_layer.c (decoder layer forward/backward), and the layer's
 * pieces the KV-cache decoder (sb_decoder.c) reuses. Not a public API: callers see only the
 * opaque types of sb_model.h.
 */
#ifndef SB_MODEL_INTERNAL_H
#define SB_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "sb_gemm.h"
#include "sb_model.h"

/* Query rows per attention block. Causal attention over a window only needs, for queries
 * [q0, q0 + B), the keys [0, q0 + B): blocking skips most of the masked upper triangle (at
 * ctx 256 the GEMMs do 62% of the full square) and bounds the per-thread score buffer at
 * B x ctx floats whatever ctx is. 64 keeps the GEMMs' M large enough to run at speed. */
enum { SB_ATTENTION_BLOCK = 64 };

/* Logits are made this many floats at a time (64 MiB): a 128k vocabulary gets 128-row chunks,
 * large enough for an efficient SGEMM, small enough not to matter next to the weights. */
enum { SB_HEAD_CHUNK_FLOATS = 1 << 24 };

struct sb_layer_cache {
    int64_t max_tokens;
    int64_t layer;              /* the layer it was made for */
    bool moe;                   /* an MoE layer's cache */
    int64_t n_windows, ctx;     /* of the forward that filled it (0 before) */
    float *x_in;                /* [T x hidden] the layer's input */
    float *inv_rms_attn;        /* [T] 1/rms of x_in rows (input_layernorm) */
    float *q;                   /* [T x q_dim] after the rotary embedding */
    float *k;                   /* [T x kv_dim] after the rotary embedding */
    float *v;                   /* [T x kv_dim] */
    float *q_raw, *k_raw;       /* qk_norm: [T x q_dim], [T x kv_dim] before q_norm / k_norm */
    float *q_inv_rms, *k_inv_rms; /* qk_norm: [T x heads], [T x kv_heads] 1/rms of each head */
    float *row_max;             /* [n_windows x heads x ctx] softmax row maximum */
    float *row_inv_sum;         /* [n_windows x heads x ctx] softmax 1 / sum(exp(s - max)) */
    float *attn;                /* [T x q_dim] attention output (o_proj input) */
    float *x_mid;               /* [T x hidden] after the attention residual */
    float *inv_rms_mlp;         /* [T] 1/rms of x_mid rows (post_attention_layernorm) */
    float *gate;                /* dense: [T x intermediate] gate_proj output, before SiLU;
                                 * MoE: [T*k x moe_intermediate] per selected (token, expert), in
                                 * expert-gathered order (sb_routing) */
    float *up;                  /* the same for up_proj */
    float *probs;               /* MoE: [T x num_experts] router softmax */
    int32_t *top_expert;        /* MoE: [T x k] selected experts, by decreasing probability */
    float *top_weight;          /* MoE: [T x k] their routing weights (renormalised if asked) */
    void *storage;
};

/* Which rows go to which expert in one batch: a counting sort of the (token, slot) pairs by
 * expert, rows in ascending order within an expert. Expert e's rows are gathered rows
 * offset[e] .. offset[e + 1] - 1; gathered row r is slot `slot[r]` (= token * k + j) of token
 * `token[r]`. Deterministic: a function of the top-k choice only. */
typedef struct sb_routing {
    int64_t *offset; /* [num_experts + 1] */
    int64_t *token;  /* [T*k] */
    int64_t *slot;   /* [T*k] */
    float *weight;   /* [T*k] routing weight of each gathered row */
} sb_routing;

struct sb_model_workspace {
    sb_model_shape shape;
    int64_t ctx, max_windows, max_tokens;
    int threads;
    bool with_backward;
    int64_t q_dim, kv_dim;
    int64_t ffn_width;          /* widest MLP of a layer: intermediate and/or moe_intermediate */
    int64_t head_rows;          /* rows of logits per head chunk */
    float *rope_cos, *rope_sin; /* [ctx x head_dim/2]: angle of position p, frequency i */
    float *x;                   /* [T x hidden] residual stream of the whole-model functions */
    float *dx;                  /* [T x hidden] its gradient (with_backward) */
    float *normed;              /* [T x hidden] RMSNorm output */
    float *inv_rms;             /* [T] */
    /* Forward without a cache keeps its activations here; backward reuses the same buffers
     * for the matching gradients (q -> dQ, k -> dK, v -> dV, attn -> d attn, gate -> d act,
     * up -> d up), which is why they exist even when every forward has a cache. */
    float *q, *k, *v, *attn;
    float *q_inv_rms, *k_inv_rms; /* qk_norm: [T x heads], [T x kv_heads] (forward without a cache) */
    float *row_max, *row_inv_sum;
    float *gate, *up;           /* [T x ffn_width] */
    float *act;                 /* [T x ffn_width] silu(gate) * up */
    float *scores;              /* [threads x SB_ATTENTION_BLOCK x ctx] attention scratch */
    float *d_scores;            /* [threads x SB_ATTENTION_BLOCK x ctx] (with_backward) */
    float *logits;              /* [head_rows x vocab] */
    double *row_nll;            /* [T] per-row NLL, summed in row order for determinism */
    float *d_normed;            /* [T x hidden] (with_backward) */
    float *grad;                /* largest linear weight (with_backward) */
    double *vector_grad;        /* largest attention vector (with_backward, qk_norm or biases) */
    /* MoE layers (num_experts > 0) */
    float *probs;               /* [T x num_experts] router logits, then probabilities */
    int32_t *top_expert;        /* [T x k] */
    float *top_weight;          /* [T x k] */
    sb_routing routing;
    float *gathered;            /* [T x hidden] one expert's input rows (then its input gradient) */
    float *expert_out;          /* [T x hidden] one expert's output rows (then their gradient) */
    float *moe_out;             /* [T x hidden] the experts' weighted sum */
    float *d_weight;            /* [T x k] dL/d routing weight (with_backward) */
    void *storage;
    size_t bytes;
};

/* The hot elementwise kernels (softmax, its backward, SwiGLU, cross-entropy) also get an AVX2
 * clone, chosen when the program loads (GCC target_clones / ifunc): the build targets baseline
 * x86-64 (SSE2, 4 lanes), and 8 lanes cut a stories260K forward by a quarter. Both clones do
 * the same float operations per element (no FMA: -ffp-contract=off); only the lane count of
 * their simd sums differs, so one machine always computes the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SB_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SB_SIMD_CLONES
#endif

/* exp(x) in float32 to within 1.4 ulp (measured over [-87, 88]), written so that
 * `#pragma omp simd` loops vectorize it at -O2: glibc's expf is a scalar call, and in the
 * softmaxes it took two thirds of a forward pass. Cody-Waite reduction x = k ln2 + r with
 * |r| <= ln2/2, Cephes' degree-6 polynomial for e^r, 2^k built in the exponent bits.
 * x is first clamped to [-87, 88] so that 2^k stays a normal float (below -87 the result is
 * exp(-87) = 1.6e-38, which no softmax or sigmoid here can tell from 0; NaN and +-Inf come out
 * as the clamp bounds, never as garbage). The clamp works on the bits mapped to an integer of
 * the same order as the float, because integer min/max vectorize where a float ternary does
 * not under -ftrapping-math. Deterministic: the same operations on every call. */
static inline float sb_expf(float x)
{
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    int32_t key = bits ^ ((bits >> 31) & 0x7fffffff); /* negative floats: flip magnitude order */
    const int32_t key_min = (int32_t)0xc2ae0000u ^ 0x7fffffff; /* -87.0f */
    const int32_t key_max = 0x42b00000;                        /* 88.0f */
    key = key < key_min ? key_min : key;
    key = key > key_max ? key_max : key;
    bits = key ^ ((key >> 31) & 0x7fffffff);
    memcpy(&x, &bits, sizeof x);
    /* k = round(x / ln2) by the 1.5 * 2^23 trick (exact for |x / ln2| < 2^22) */
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - k * 0.693359375f; /* ln2 in a short high part (the product is exact) */
    r = r - k * -2.12194440e-4f;    /* and the rest */
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    int32_t scale_bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

/* The rotary tables of positions 0..ctx-1: cos_table[p * head_dim/2 + i] = cos(p x inv_freq_i)
 * (the angle rounded to float32 as the reference does), sin_table likewise. */
void sb_rope_tables(const sb_model_shape *shape, int64_t ctx, float *cos_table, float *sin_table);

/* RMSNorm of `rows` rows: out = (x * inv_rms) * weight, inv_rms = 1/sqrt(mean(x^2) + eps)
 * (the mean in double). inv_rms (one per row) is kept for backward. */
void sb_rms_norm_rows(const float *x, const float *weight, int64_t rows, int64_t cols, double eps, float *out,
                      float *inv_rms, int threads);
/* Recomputes the RMSNorm output from a saved inv_rms: bit-identical to sb_rms_norm_rows. */
void sb_rms_norm_apply(const float *x, const float *inv_rms, const float *weight, int64_t rows, int64_t cols,
                       float *out, int threads);
/* dx (+)= d RMSNorm / dx applied to d_out, per row: with g = d_out * weight and
 * xhat = x * inv_rms, dx = inv_rms * (g - xhat * mean(g * xhat)). `accumulate` adds to dx. */
void sb_rms_norm_backward(const float *x, const float *inv_rms, const float *weight, const float *d_out,
                          int64_t rows, int64_t cols, bool accumulate, float *dx, int threads);

/* Checks a batch against a workspace's capacity (and names what does not fit). */
sb_status sb_workspace_check_batch(const sb_model_workspace *workspace, int64_t n_windows, int64_t ctx,
                                   sb_error *err);

/* ---- Shared by the layer (sb_model_layer.c), the experts (sb_model_moe.c) and the KV-cache
 * decoder (sb_decoder.c), so that the decoder computes what the window runtime does ---------- */

/* The rotary angles a batch of rows sees: row r is at position (first + r) % period of the
 * tables (sb_rope_tables). The window runtime: first 0, period ctx (every window restarts at
 * position 0); the decoder: first = the cache's length, period = its capacity (no wrap). */
typedef struct sb_rope_view {
    const float *cos_table, *sin_table;
    int64_t first, period;
} sb_rope_view;

/* Checks that `weights` (and `cache`, if not NULL) were made for this layer's kind (dense or
 * MoE) and hold the Qwen3 vectors the shape has (SB_ERR_INTERNAL otherwise). */
sb_status sb_layer_check(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                         const sb_layer_cache *cache, sb_error *err);

/* y[r][c] += bias[c] for every row. */
void sb_add_bias(float *y, int64_t rows, int64_t cols, const float *bias, int threads);

/* q or k of every row: the projection (+ bias), then the per-head RMSNorm `norm` over head_dim
 * (Qwen3; NULL: none) and the rotary embedding. `raw` receives the projection (it may be `out`,
 * then the norm works in place), `out` the rotated result, `inv_rms` the norm's [rows x heads]. */
sb_status sb_project_heads(const sb_model_shape *shape, const float *normed, int64_t rows, const sb_linear *weight,
                           const float *bias, const float *norm, int64_t heads, float *raw, float *out, float *inv_rms,
                           const sb_rope_view *rope, int threads, sb_error *err);

/* The hook for a dense kind's input (rows are the batch's), or NULL-safe no-op. */
sb_status sb_model_call_hook(sb_activation_fn hook, void *user, const sb_linear_input *input, sb_error *err);
/* Delivers one linear weight's gradient, adding the weight to a failure's message. */
sb_status sb_model_emit_gradient(const sb_gradient_sink *sink, const sb_tensor_id *id, const float *grad,
                                 int64_t rows, int64_t cols, sb_error *err);

/* act = silu(gate) * up over rows of `cols`; and its backward (d_act_in_gate holds dL/d act on
 * entry and dL/d gate on exit; d_up gets dL/d up). */
void sb_swiglu_forward(const float *gate, const float *up, int64_t rows, int64_t cols, float *act, int threads);
void sb_swiglu_backward(const float *gate, const float *up, int64_t rows, int64_t cols, float *d_act_in_gate,
                        float *d_up, int threads);

/* The scratch of an MoE forward over up to T tokens (k = num_experts_per_tok, F = the widest
 * MLP): a window workspace's (sb_moe_buffers_of) or the decoder's own. */
typedef struct sb_moe_buffers {
    int threads;
    float *probs;                     /* [T x num_experts] */
    int32_t *top_expert;              /* [T x k] */
    float *top_weight;                /* [T x k] */
    sb_routing routing;               /* [num_experts + 1], [T*k] x 3 */
    float *gathered, *expert_out, *moe_out; /* [T x hidden] */
    float *gate, *up, *act;           /* [T x F] (gate, up unused with a cache) */
} sb_moe_buffers;

sb_moe_buffers sb_moe_buffers_of(sb_model_workspace *ws);

/* The MoE MLP of an MoE layer: `normed` [T x hidden] is post_attention_layernorm(x); adds the
 * experts' weighted sum to x. With `cache`, keeps the router probabilities, the top-k choice and
 * the experts' gate/up outputs there. `ctx` is only told to the hook. */
sb_status sb_moe_forward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                         const float *normed, int64_t tokens, int64_t ctx, float *x, sb_layer_cache *cache,
                         sb_activation_fn hook, void *hook_user, const sb_moe_buffers *buffers, sb_error *err);
/* Its backward: `d_out` [T x hidden] is dL/d(MoE output) (the residual's gradient), `normed`
 * the recomputed MoE input; writes dL/d normed into `d_normed` (overwritten) and delivers the
 * experts' and the router's gradients. */
sb_status sb_moe_backward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                          const sb_layer_cache *cache, const float *normed, const float *d_out, int64_t tokens,
                          float *d_normed, const sb_gradient_sink *sink, sb_model_workspace *ws, sb_error *err);

#endif
