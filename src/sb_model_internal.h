/* sb_model_internal: the workspace and cache layouts shared by sb_model.c (weights, embedding,
 * head, whole model) and sb_model_layer.c (decoder layer forward/backward). Not a public API:
 * callers see only the opaque types of sb_model.h.
 */
#ifndef SB_MODEL_INTERNAL_H
#define SB_MODEL_INTERNAL_H

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
    int64_t n_windows, ctx;     /* of the forward that filled it (0 before) */
    float *x_in;                /* [T x hidden] the layer's input */
    float *inv_rms_attn;        /* [T] 1/rms of x_in rows (input_layernorm) */
    float *q;                   /* [T x q_dim] after the rotary embedding */
    float *k;                   /* [T x kv_dim] after the rotary embedding */
    float *v;                   /* [T x kv_dim] */
    float *row_max;             /* [n_windows x heads x ctx] softmax row maximum */
    float *row_inv_sum;         /* [n_windows x heads x ctx] softmax 1 / sum(exp(s - max)) */
    float *attn;                /* [T x q_dim] attention output (o_proj input) */
    float *x_mid;               /* [T x hidden] after the attention residual */
    float *inv_rms_mlp;         /* [T] 1/rms of x_mid rows (post_attention_layernorm) */
    float *gate;                /* [T x intermediate] gate_proj output, before SiLU */
    float *up;                  /* [T x intermediate] up_proj output */
    void *storage;
};

struct sb_model_workspace {
    sb_model_shape shape;
    int64_t ctx, max_windows, max_tokens;
    int threads;
    bool with_backward;
    int64_t q_dim, kv_dim;
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
    float *row_max, *row_inv_sum;
    float *gate, *up;
    float *act;                 /* [T x intermediate] silu(gate) * up */
    float *scores;              /* [threads x SB_ATTENTION_BLOCK x ctx] attention scratch */
    float *d_scores;            /* [threads x SB_ATTENTION_BLOCK x ctx] (with_backward) */
    float *logits;              /* [head_rows x vocab] */
    double *row_nll;            /* [T] per-row NLL, summed in row order for determinism */
    float *d_normed;            /* [T x hidden] (with_backward) */
    float *grad;                /* largest linear weight (with_backward) */
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

#endif
