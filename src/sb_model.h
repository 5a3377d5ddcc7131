/* sb_model: the Llama forward and backward pass in float32, for evaluation and calibration.
 *
 * Semantics are Hugging Face's LlamaForCausalLM: RMSNorm (x * rsqrt(mean(x^2) + eps) * w),
 * rotary embeddings in the rotate-half layout (pairs (i, i + head_dim/2)) with rope_theta and
 * the Llama-3 "llama3" rope_scaling, grouped-query causal attention scaled by 1/sqrt(head_dim),
 * SwiGLU MLP down(silu(gate(x)) * up(x)), a final RMSNorm and lm_head (the embedding matrix
 * itself when tie_word_embeddings). Weights are float32, row-major [out_features x in_features]
 * exactly as in the safetensors files. No file I/O here: io/sb_model_load.h fills the weights.
 *
 * Batches. A batch is `n_windows` independent windows of `ctx` tokens stacked as the rows of
 * one matrix (ntokens = n_windows * ctx rows): token t of window w is row w*ctx + t, and its
 * position (for the rotary embedding and the causal mask) is t. Every linear layer is one SGEMM
 * over all rows of the batch. The loss of a batch is the summed next-token negative
 * log-likelihood (natural log) over positions 0..ctx-2 of every window (the token at t+1
 * predicted from tokens <= t): n_windows * (ctx - 1) scored tokens.
 *
 * Gradients are of the SUMMED loss (not the mean): a caller that wants the mean divides by
 * sb_nll.count. Summing keeps the gradient of a batch independent of how windows are split over
 * batches or ranks: the gradients of two batches add up to the gradient of their union.
 *
 * Pipelining. The pass is exposed per stage (sb_embed_forward, sb_layer_forward,
 * sb_head_forward, sb_layer_backward) so that ranks owning consecutive layers can run it by
 * sending the residual stream x [ntokens x hidden] forward and dL/dx backward. Nothing in a
 * stage refers to other layers; the whole-model functions (sb_model_forward,
 * sb_model_backward) are these stages called in order in one process.
 *
 * Memory. A workspace (sb_model_workspace) holds every temporary of one stage for up to
 * max_windows windows of ctx tokens and is allocated once; no stage allocates. For backward,
 * each layer keeps its activations in an sb_layer_cache, per token (floats):
 *     2 * hidden + 2 * q_dim + 2 * kv_dim + 2 * intermediate + 2 + 2 * num_attention_heads
 * (q_dim = heads * head_dim, kv_dim = kv_heads * head_dim). Attention probabilities are not
 * stored: backward recomputes them from the cached rotated Q and K and each row's max and
 * 1/sum, so the cache grows linearly in ctx (stories260K: 2.7 KB per token per layer).
 * sb_layer_cache_bytes() gives the exact figure.
 *
 * Threads. The workspace's `threads` is the number of OpenMP threads of the whole pass: the
 * runtime's own loops (norms, rotary, softmax, SiLU, cross-entropy), the attention, which runs
 * (window, head) pairs in parallel, and every SGEMM, which it cuts into fixed blocks of rows,
 * one single-threaded OpenBLAS call each (measured on 2 cores: mixing OpenBLAS's thread pool
 * with an OpenMP team ran 2x slower than either alone). OpenBLAS is held at one thread during
 * a stage call and restored after, so do not call BLAS from another thread of this process
 * meanwhile. Every parallel loop writes disjoint outputs, every reduction runs in a fixed
 * order, and the GEMM blocks do not follow the thread count (OpenBLAS rounds an element
 * differently depending on the shape of the call it is computed in), so results are the same
 * bits for any `threads`: the calibration statistics, and the allocation built on them, do
 * not depend on how many cores a rank has. A workspace and a cache are used by one pass at a
 * time; weights are read-only and may be shared by concurrent passes with distinct workspaces.
 *
 * Errors: sizes that do not match the workspace or cache, token ids >= vocab_size, and errors
 * returned by callbacks (which stop the pass and are passed up unchanged).
 */
#ifndef SB_MODEL_H
#define SB_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_linear.h"
#include "sb_model_shape.h"
#include "sb_tensor_name.h"

/* ---- The seven linear weights of a layer ------------------------------------------------- */

/* The linear kinds are the first seven tensor roles (src/sb_tensor_name.h), same numbers. */
typedef enum sb_linear_kind {
    SB_LINEAR_Q = SB_ROLE_Q,
    SB_LINEAR_K = SB_ROLE_K,
    SB_LINEAR_V = SB_ROLE_V,
    SB_LINEAR_O = SB_ROLE_O,
    SB_LINEAR_GATE = SB_ROLE_GATE,
    SB_LINEAR_UP = SB_ROLE_UP,
    SB_LINEAR_DOWN = SB_ROLE_DOWN,
    SB_LINEAR_KIND_COUNT = SB_LINEAR_ROLES
} sb_linear_kind;

/* "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"; "?" otherwise. */
static inline const char *sb_linear_kind_name(sb_linear_kind kind)
{
    return sb_role_is_linear((sb_tensor_role)kind) ? sb_role_name((sb_tensor_role)kind) : "?";
}

/* The Hugging Face name of (layer, kind) of a dense layer, e.g.
 * "model.layers.3.self_attn.q_proj.weight" (sb_tensor_name_format's contract). */
static inline int sb_linear_weight_name(int64_t layer, sb_linear_kind kind, char *name, size_t name_size)
{
    sb_tensor_id id = {(sb_tensor_role)kind, layer, -1};
    return sb_tensor_name_format(id, name, name_size);
}

/* Rows (out_features) and columns (in_features) of a linear kind under `shape`. */
void sb_linear_shape(const sb_model_shape *shape, sb_linear_kind kind, int64_t *rows, int64_t *cols);

/* Checks what the runtime relies on: positive sizes, heads a multiple of kv heads, even
 * head_dim, llama3 rope factors sane, every matrix dimension below 2^31 (BLAS ints). */
sb_status sb_model_shape_check(const sb_model_shape *shape, sb_error *err);

/* ---- Weights ------------------------------------------------------------------------------ */

/* One decoder layer's weights. Norms are float32; each linear weight is an sb_linear (float32
 * as allocated here; a runtime may put another storage in its place, src/sb_linear.h), indexed
 * by sb_linear_kind: q [q_dim x hidden], k and v [kv_dim x hidden], o [hidden x q_dim],
 * gate and up [intermediate x hidden], down [hidden x intermediate]. One allocation (`storage`)
 * owns the float32 arrays sb_layer_weights_alloc made. */
typedef struct sb_layer_weights {
    float *attn_norm;                      /* [hidden]  input_layernorm */
    float *mlp_norm;                       /* [hidden]  post_attention_layernorm */
    sb_linear linear[SB_LINEAR_KIND_COUNT];
    void *storage;
} sb_layer_weights;

/* Allocates (uninitialised) one layer's weights; on failure nothing needs freeing. */
sb_status sb_layer_weights_alloc(const sb_model_shape *shape, sb_layer_weights *weights, sb_error *err);
/* The same with the norms only: the linear weights are left empty (shapes set, no storage) for
 * a loader that puts them in another storage (packed tiles: io/sb_model_load.h). */
sb_status sb_layer_weights_alloc_norms(const sb_model_shape *shape, sb_layer_weights *weights, sb_error *err);
/* Frees the layer's arrays and releases its linear weights (sb_linear_release). */
void sb_layer_weights_free(sb_layer_weights *weights);
/* The float32 matrix of a linear kind inside `weights` (NULL if it is stored otherwise). */
float *sb_layer_linear(const sb_layer_weights *weights, sb_linear_kind kind);

/* A whole model in one process. A pipeline rank may instead hold only some sb_layer_weights
 * (and the embedding or head if it runs them): the stage functions take the pieces. */
typedef struct sb_model {
    sb_model_shape shape;
    float *embed;             /* [vocab x hidden]  model.embed_tokens */
    sb_layer_weights *layers; /* num_hidden_layers of them */
    float *final_norm;        /* [hidden]          model.norm */
    float *lm_head;           /* [vocab x hidden]  lm_head; the same pointer as `embed` when tied */
} sb_model;

/* Allocates (uninitialised) every weight of `shape`; on failure nothing needs freeing. */
sb_status sb_model_alloc(const sb_model_shape *shape, sb_model *model, sb_error *err);
/* The same with every layer as sb_layer_weights_alloc_norms makes it. */
sb_status sb_model_alloc_norms(const sb_model_shape *shape, sb_model *model, sb_error *err);
void sb_model_free(sb_model *model);

/* ---- Workspace and per-layer activation cache -------------------------------------------- */

typedef struct sb_model_workspace sb_model_workspace;
typedef struct sb_layer_cache sb_layer_cache;

/* A workspace for batches of at most `max_windows` windows of at most `ctx` tokens (any batch
 * with n_windows * its ctx <= max_windows * ctx and its ctx <= ctx fits). `threads` >= 1: who
 * runs in parallel (see Threads above). `with_backward` adds the gradient buffers sb_layer_backward and
 * sb_head_forward(dx != NULL) need. On failure *workspace is NULL. */
sb_status sb_model_workspace_create(const sb_model_shape *shape, int64_t ctx, int64_t max_windows, int threads,
                                    bool with_backward, sb_model_workspace **workspace, sb_error *err);
void sb_model_workspace_free(sb_model_workspace *workspace);
/* Bytes the workspace holds (for logs and memory planning). */
size_t sb_model_workspace_bytes(const sb_model_workspace *workspace);

/* A cache for one layer's activations, for batches of at most `max_tokens` tokens. */
sb_status sb_layer_cache_create(const sb_model_shape *shape, int64_t max_tokens, sb_layer_cache **cache,
                                sb_error *err);
void sb_layer_cache_free(sb_layer_cache *cache);
/* Bytes of a layer cache for `ntokens` tokens (the formula in the Memory paragraph above). */
size_t sb_layer_cache_bytes(const sb_model_shape *shape, int64_t ntokens);

/* ---- Callbacks ---------------------------------------------------------------------------- */

/* Receives the input matrix of a linear layer on the forward pass: `x` is [ntokens x
 * in_features] row-major, valid only during the call. Called once per (layer, kind) in the
 * order Q, K, V, O, GATE, UP, DOWN; Q, K and V get the same pointer (one normed input), as do
 * GATE and UP, so a caller accumulating E[x_j^2] may compute it once per pointer. Called from
 * the calling thread, never concurrently. A non-OK return stops the pass. */
typedef sb_status (*sb_activation_fn)(void *user, int64_t layer, sb_linear_kind kind, const float *x,
                                      int64_t ntokens, int64_t in_features, sb_error *err);

/* Receives d(summed NLL)/dW of one linear weight, [rows x cols] row-major like the weight,
 * valid only during the call (the buffer is reused for the next weight). Called once per
 * (layer, kind) per backward, as soon as it is computed: per layer in the order DOWN, GATE, UP,
 * O, Q, K, V, layers from last to first. A non-OK return stops the pass. */
typedef sb_status (*sb_gradient_fn)(void *user, int64_t layer, sb_linear_kind kind, const float *grad,
                                    int64_t rows, int64_t cols, sb_error *err);

/* The summed next-token NLL (natural log) and the number of scored tokens it sums. */
typedef struct sb_nll {
    double sum;
    int64_t count;
} sb_nll;

/* ---- Stages (per rank in a pipeline) ------------------------------------------------------ */

/* x[i] = embed[tokens[i]] for i < ntokens; x is [ntokens x hidden]. SB_ERR_INPUT if a token
 * id is >= vocab_size (naming its position). */
sb_status sb_embed_forward(const sb_model_shape *shape, const float *embed, const uint32_t *tokens,
                           int64_t ntokens, float *x, sb_error *err);

/* One decoder layer, in place: x [n_windows*ctx x hidden] goes in as the layer's input and
 * comes out as its output. `layer` only labels callbacks. With `cache` (for backward), the
 * activations backward needs are kept there; NULL for evaluation. `hook` may be NULL. */
sb_status sb_layer_forward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights, float *x,
                           int64_t n_windows, int64_t ctx, sb_layer_cache *cache, sb_activation_fn hook,
                           void *hook_user, sb_model_workspace *workspace, sb_error *err);

/* Backward through one layer, in place: dx [n_windows*ctx x hidden] goes in as dL/d(output)
 * and comes out as dL/d(input). Batch sizes are those of the sb_layer_forward that filled
 * `cache` (with the same weights). Each linear weight's gradient goes to `grad_fn` (required). */
sb_status sb_layer_backward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                            const sb_layer_cache *cache, float *dx, sb_gradient_fn grad_fn, void *grad_user,
                            sb_model_workspace *workspace, sb_error *err);

/* The head: final RMSNorm, lm_head, cross-entropy against the next token of each window.
 * Adds the summed NLL and the scored count to *nll (so batches accumulate: zero it first).
 * With `dx` != NULL, writes d(summed NLL)/dx [n_windows*ctx x hidden] there (needs a workspace
 * made with_backward). Logits are made a chunk of rows at a time, so a large vocabulary costs
 * a bounded buffer. `tokens` are the batch's tokens (the targets). */
sb_status sb_head_forward(const sb_model_shape *shape, const float *final_norm, const float *lm_head,
                          const float *x, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                          sb_model_workspace *workspace, sb_nll *nll, float *dx, sb_error *err);

/* ---- Whole model in one process ----------------------------------------------------------- */

/* Evaluates `n_windows` windows of `ctx` tokens (tokens: n_windows*ctx ids, window after
 * window), in batches of as many windows as the workspace holds. Adds to *nll (zero it first).
 * `hook` (may be NULL) sees every layer's linear inputs for every batch. */
sb_status sb_model_forward(const sb_model *model, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                           sb_model_workspace *workspace, sb_activation_fn hook, void *hook_user, sb_nll *nll,
                           sb_error *err);

/* Forward and backward over one batch (n_windows must fit the workspace and the caches):
 * `caches` holds num_hidden_layers caches. Adds the batch's loss to *nll and delivers every
 * linear weight's gradient of the summed NLL to `grad_fn`. `hook` may be NULL. */
sb_status sb_model_backward(const sb_model *model, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                            sb_model_workspace *workspace, sb_layer_cache *const *caches, sb_activation_fn hook,
                            void *hook_user, sb_gradient_fn grad_fn, void *grad_user, sb_nll *nll, sb_error *err);

/* Matmul FLOPs (2 per multiply-add) of one forward over n_windows windows of ctx tokens:
 * linear layers, lm_head, and the causal part of attention (QK^T and PV over the keys each
 * query sees). For throughput reports. */
double sb_model_forward_flops(const sb_model_shape *shape, int64_t n_windows, int64_t ctx);
/* The same for what sb_model_backward adds after its forward: dX and dW of every linear layer,
 * dX of lm_head, and five attention products (S recomputed, dP, dQ, dK, dV). */
double sb_model_backward_flops(const sb_model_shape *shape, int64_t n_windows, int64_t ctx);

#endif
