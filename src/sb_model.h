/* sb_model: the Llama / Qwen3 / Qwen3-MoE forward and backward pass in float32, for evaluation
 * and calibration.
 *
 * Semantics are Hugging Face's LlamaForCausalLM, Qwen3ForCausalLM and Qwen3MoeForCausalLM:
 * RMSNorm (x * rsqrt(mean(x^2) + eps) * w), rotary embeddings in the rotate-half layout (pairs
 * (i, i + head_dim/2)) with rope_theta and the Llama-3 "llama3" rope_scaling, grouped-query
 * causal attention scaled by 1/sqrt(head_dim), SwiGLU MLP down(silu(gate(x)) * up(x)), a final
 * RMSNorm and lm_head (the embedding matrix itself when tie_word_embeddings). Qwen3 adds, per
 * head, an RMSNorm over head_dim of q and of k (q_norm, k_norm: after the projection and its
 * bias, before the rotary embedding), and optional biases on q/k/v/o_proj (attention_bias).
 * Qwen3-MoE replaces the MLP of its sparse layers (sb_layer_is_moe) by a mixture of experts:
 * router logits z = W_router n (float32), p = softmax(z) over the experts, the top k of p
 * (ties to the lower expert index), renormalised to sum 1 when norm_topk_prob, and the output
 * sum over the selected experts e of w_e * down_e(silu(gate_e(n)) * up_e(n)), summed in
 * ascending expert order (as transformers' index_add_ loop) and then added to the residual.
 * Weights are float32, row-major [out_features x in_features] exactly as in the safetensors
 * files. No file I/O here: io/sb_model_load.h fills the weights.
 *
 * Batches. A batch is `n_windows` independent windows of `ctx` tokens stacked as the rows of
 * one matrix (ntokens = n_windows * ctx rows): token t of window w is row w*ctx + t, and its
 * position (for the rotary embedding and the causal mask) is t. Every linear layer is one SGEMM
 * over all rows of the batch; an expert's are SGEMMs over the rows routed to it, gathered in
 * ascending row order. The loss of a batch is the summed next-token negative log-likelihood
 * (natural log) over positions 0..ctx-2 of every window (the token at t+1 predicted from tokens
 * <= t): n_windows * (ctx - 1) scored tokens.
 *
 * Gradients are of the SUMMED loss (not the mean): a caller that wants the mean divides by
 * sb_nll.count. Summing keeps the gradient of a batch independent of how windows are split over
 * batches or ranks: the gradients of two batches add up to the gradient of their union. Through
 * the router, the gradient is that of the selected softmax probabilities (and of their
 * renormalisation): the top-k choice itself is piecewise constant. An expert no row was routed
 * to gets a zero gradient.
 *
 * Pipelining. The pass is exposed per stage (sb_embed_forward, sb_layer_forward,
 * sb_head_forward, sb_layer_backward) so that ranks owning consecutive layers can run it by
 * sending the residual stream x [ntokens x hidden] forward and dL/dx backward. Nothing in a
 * stage refers to other layers; the whole-model functions (sb_model_forward,
 * sb_model_backward) are these stages called in order in one process.
 *
 * Memory. A workspace (sb_model_workspace) holds every temporary of one stage for up to
 * max_windows windows of ctx tokens and is allocated once; no stage allocates. For backward,
 * each layer keeps its activations in an sb_layer_cache, per token (4-byte units):
 *     2 * hidden + 2 * q_dim + 2 * kv_dim + 2 + 2 * num_attention_heads       (every layer)
 *   + q_dim + kv_dim + num_attention_heads + num_key_value_heads             (qk_norm: q and k
 *                                                      before their norms, and the norms' 1/rms)
 *   + 2 * intermediate                                                       (a dense MLP layer)
 *   + num_experts + 2 * k + 2 * k * moe_intermediate                         (an MoE layer:
 *               probabilities, top-k experts and weights, each selected expert's gate and up)
 * (q_dim = heads * head_dim, kv_dim = kv_heads * head_dim, k = num_experts_per_tok), each array
 * rounded up to 64 bytes. Attention probabilities are not stored: backward recomputes them from
 * the cached rotated Q and K and each row's max and 1/sum, so the cache grows linearly in ctx
 * (stories260K: 2.7 KB per token per layer). sb_layer_cache_bytes() gives the exact figure.
 * The workspace (sb_model_workspace_bytes), for T = max_windows * ctx tokens, in the same units
 * and with the same rounding:
 *     ctx * head_dim + 2 T hidden + T + 2 T q_dim + 2 T kv_dim + 2 T heads + 3 T ffn
 *   + threads * 64 * ctx + rows * vocab + 2 T                 (rotary tables, residual and norm,
 *          q k v and attention, softmax statistics, MLP, score scratch, logits, row NLLs)
 *   + T (heads + kv_heads)                                     (qk_norm)
 *   + T E + 3 T k + 2 (E + 1) + 4 T k + 3 T hidden             (MoE: probabilities, top-k and
 *          gathered weights, routing offsets, gathered tokens and slots, expert rows and sums)
 *   with backward: + 2 T hidden + threads * 64 * ctx + the largest weight + 2 * the longest
 *   attention vector + T k (MoE)
 * where ffn is the widest MLP of a layer (intermediate for dense layers, moe_intermediate for
 * MoE layers), rows = min(T, max(1, 2^24 / vocab)) and E = num_experts. Per expert only the
 * rows routed to it are ever in the workspace (at most T), so neither grows with E beyond the
 * router's T E.
 *
 * Threads. The workspace's `threads` is the number of OpenMP threads of the whole pass: the
 * runtime's own loops (norms, rotary, softmax, SiLU, cross-entropy, routing), the attention,
 * which runs (window, head) pairs in parallel, and every SGEMM, which it cuts into fixed blocks
 * of rows, one single-threaded OpenBLAS call each (measured on 2 cores: mixing OpenBLAS's thread
 * pool with an OpenMP team ran 2x slower than either alone). OpenBLAS is held at one thread
 * during a stage call and restored after, so do not call BLAS from another thread of this
 * process meanwhile. Every parallel loop writes disjoint outputs, every reduction runs in a
 * fixed order (experts in ascending order, rows in ascending order), and the GEMM blocks do not
 * follow the thread count (OpenBLAS rounds an element differently depending on the shape of
 * the call it is computed in), so results are the same bits for any `threads`: the calibration
 * statistics, and the allocation built on them, do not depend on how many cores a rank has. A
 * workspace and a cache are used by one pass at a time; weights are read-only and may be shared
 * by concurrent passes with distinct workspaces.
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

/* ---- The linear weights of a layer ------------------------------------------------------ */

/* The linear kinds are the first seven tensor roles (src/sb_tensor_name.h), same numbers: the
 * seven weights of a dense layer (loops over a dense layer's weights run over these). */
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

/* Every weight is named by an sb_tensor_id (src/sb_tensor_name.h; sb_tensor_name_format gives
 * its Hugging Face name): a dense layer's seven kinds (roles Q..DOWN, expert -1); an MoE
 * layer's Q, K, V, O, its router (SB_ROLE_ROUTER, [num_experts x hidden]) and each expert's
 * GATE, UP and DOWN (expert >= 0); the Qwen3 attention vectors (roles Q_NORM, K_NORM, Q_BIAS,
 * K_BIAS, V_BIAS, O_BIAS). */

/* Is `id` a matrix the runtime multiplies by: a linear role or the router. */
static inline bool sb_weight_is_matrix(const sb_tensor_id *id)
{
    return sb_role_is_linear(id->role) || id->role == SB_ROLE_ROUTER;
}

/* Rows (out_features) and columns (in_features) of a dense linear kind under `shape`. */
void sb_linear_shape(const sb_model_shape *shape, sb_linear_kind kind, int64_t *rows, int64_t *cols);
/* The same for any matrix id: an expert's GATE/UP are [moe_intermediate x hidden], its DOWN
 * [hidden x moe_intermediate], the router [num_experts x hidden]; 0 x 0 for other roles. */
void sb_weight_shape(const sb_model_shape *shape, const sb_tensor_id *id, int64_t *rows, int64_t *cols);

/* The vectors of a Qwen3 attention: the per-head norms (head_dim long) and the biases of the
 * four projections (their out_features long), in this order in sb_layer_weights.vector. */
typedef enum sb_vector_kind {
    SB_VECTOR_Q_NORM = 0, /* self_attn.q_norm.weight */
    SB_VECTOR_K_NORM,     /* self_attn.k_norm.weight */
    SB_VECTOR_Q_BIAS,     /* self_attn.q_proj.bias */
    SB_VECTOR_K_BIAS,
    SB_VECTOR_V_BIAS,
    SB_VECTOR_O_BIAS,
    SB_VECTOR_KIND_COUNT
} sb_vector_kind;

/* The tensor role of a vector kind (SB_ROLE_Q_NORM, ..., SB_ROLE_O_BIAS). */
sb_tensor_role sb_vector_role(sb_vector_kind kind);
/* Its length under `shape`, 0 when the model has no such vector (Llama; biases off). */
int64_t sb_vector_length(const sb_model_shape *shape, sb_vector_kind kind);

/* Checks what the runtime relies on: positive sizes, heads a multiple of kv heads, even
 * head_dim, llama3 rope factors sane, every matrix dimension below 2^31 (BLAS ints), for MoE
 * 1 <= num_experts_per_tok <= num_experts and decoder_sparse_step >= 1, and the products of the
 * sizes (weights per layer, embedding, the whole model) without overflow. io/sb_config.h runs
 * it on every config.json it reads, before anyone allocates. */
sb_status sb_model_shape_check(const sb_model_shape *shape, sb_error *err);

/* ---- Weights ------------------------------------------------------------------------------ */

/* One expert's SwiGLU weights, indexed by kind - SB_LINEAR_GATE: gate and up
 * [moe_intermediate x hidden], down [hidden x moe_intermediate]. */
typedef struct sb_expert_weights {
    sb_linear linear[3];
} sb_expert_weights;

/* One decoder layer's weights. Norms and vectors are float32; each linear weight is an
 * sb_linear (float32 as allocated here; a runtime may put another storage in its place,
 * src/sb_linear.h): `linear` indexed by sb_linear_kind, q [q_dim x hidden], k and v [kv_dim x
 * hidden], o [hidden x q_dim], gate and up [intermediate x hidden], down [hidden x
 * intermediate]. What a layer has depends on the shape and on the layer (sb_layer_is_moe): an
 * MoE layer's linear[GATE..DOWN] are empty (rows 0, no data) and it has a router and experts;
 * absent vectors are NULL. One allocation (`storage`) owns the float32 arrays
 * sb_layer_weights_alloc made. */
typedef struct sb_layer_weights {
    float *attn_norm;                      /* [hidden]  input_layernorm */
    float *mlp_norm;                       /* [hidden]  post_attention_layernorm */
    sb_linear linear[SB_LINEAR_KIND_COUNT];
    float *vector[SB_VECTOR_KIND_COUNT];   /* q_norm, k_norm [head_dim] (qk_norm); biases (attention_bias) */
    sb_linear router;                      /* [num_experts x hidden] mlp.gate (MoE layers) */
    sb_expert_weights *experts;            /* [num_experts] (MoE layers) */
    int64_t num_experts;                   /* 0 in a dense layer */
    void *storage;
} sb_layer_weights;

/* Allocates (uninitialised) the weights of layer `layer`; on failure nothing needs freeing. */
sb_status sb_layer_weights_alloc(const sb_model_shape *shape, int64_t layer, sb_layer_weights *weights,
                                 sb_error *err);
/* The same with the dense layers' linear weights held as `dense_storage` and the experts as
 * `expert_storage`: SB_LINEAR_STORAGE_F32 or SB_LINEAR_STORAGE_BF16 each (half the memory, for a
 * BF16 checkpoint's weights in runs that never edit them as float32: the products are the F32
 * ones, src/sb_linear.h). */
sb_status sb_layer_weights_alloc_as(const sb_model_shape *shape, int64_t layer, sb_linear_storage dense_storage,
                                    sb_linear_storage expert_storage, sb_layer_weights *weights, sb_error *err);
/* The same with the norms and vectors only: the linear weights (dense, router, experts) are left
 * empty (shapes set, no storage) for a loader that puts them in another storage (packed tiles:
 * io/sb_model_load.h). */
sb_status sb_layer_weights_alloc_norms(const sb_model_shape *shape, int64_t layer, sb_layer_weights *weights,
                                       sb_error *err);
/* Frees the layer's matrices (its linear weights, router and experts) and keeps its vectors
 * (norms; Qwen3 norms and biases) in an allocation of their own. The matrices are left empty
 * (F32 with no values; rows and cols kept) for the caller to point at weights it holds (views,
 * e.g. sb_linear_panels_of) before the layer runs again. */
sb_status sb_layer_weights_drop_matrices(const sb_model_shape *shape, sb_layer_weights *weights, sb_error *err);
/* Frees the layer's arrays and releases its linear weights (sb_linear_release). */
void sb_layer_weights_free(sb_layer_weights *weights);
/* The float32 matrix of a dense linear kind inside `weights` (NULL if it is stored otherwise,
 * or absent: the MLP kinds of an MoE layer). */
float *sb_layer_linear(const sb_layer_weights *weights, sb_linear_kind kind);
/* The sb_linear of any matrix id of this layer (id->layer is not checked); NULL if absent. */
sb_linear *sb_layer_matrix(const sb_layer_weights *weights, const sb_tensor_id *id);
/* Its float32 data; NULL if absent or stored otherwise. */
float *sb_layer_weight(const sb_layer_weights *weights, const sb_tensor_id *id);

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
/* Bytes sb_model_workspace_create would allocate, without allocating (memory planning). */
size_t sb_model_workspace_bytes_for(const sb_model_shape *shape, int64_t ctx, int64_t max_windows, int threads,
                                    bool with_backward);

/* A cache for layer `layer`'s activations, for batches of at most `max_tokens` tokens. */
sb_status sb_layer_cache_create(const sb_model_shape *shape, int64_t layer, int64_t max_tokens,
                                sb_layer_cache **cache, sb_error *err);
void sb_layer_cache_free(sb_layer_cache *cache);
/* Bytes of layer `layer`'s cache for `ntokens` tokens (the formula in the Memory paragraph). */
size_t sb_layer_cache_bytes(const sb_model_shape *shape, int64_t layer, int64_t ntokens);

/* ---- Callbacks ---------------------------------------------------------------------------- */

/* The input of one linear weight on the forward pass. `x` is [rows x in_features] row-major,
 * valid only during the call. For dense kinds and the router, row i is batch row i (rows = the
 * batch's n_windows * ctx). For an expert, the rows are those routed to it, gathered in
 * ascending batch order: row i is batch row token_rows[i], and the model multiplies this
 * expert's output for it by route_weights[i] (its renormalised top-k probability), so E[x^2]
 * over the tokens an expert sees, weighted as the model weights them, is
 * sum_i route_weights[i] x_i^2 / sum_i route_weights[i]. An expert no row reached is still
 * reported, with rows 0. */
typedef struct sb_linear_input {
    sb_tensor_id id;            /* role Q..DOWN or ROUTER; expert >= 0 for an expert's GATE/UP/DOWN */
    const float *x;
    int64_t rows, in_features;
    const int64_t *token_rows;  /* experts: [rows] batch rows, ascending; NULL otherwise */
    const float *route_weights; /* experts: [rows] routing weights; NULL otherwise */
    int64_t batch_rows;         /* n_windows * ctx of the batch */
    int64_t ctx;                /* window length: batch row r is position r % ctx of window r / ctx */
} sb_linear_input;

/* Receives the input of each linear weight on the forward pass. Called once per weight of each
 * layer, in the order Q, K, V, O, then GATE, UP, DOWN (dense MLP) or ROUTER and, per expert in
 * ascending order, GATE, UP, DOWN. Q, K and V get the same pointer (one normed input), as do
 * GATE and UP (of the dense MLP or of one expert), so a caller accumulating E[x_j^2] may compute
 * it once per pointer. Called from the calling thread, never concurrently. A non-OK return stops
 * the pass. */
typedef sb_status (*sb_activation_fn)(void *user, const sb_linear_input *input, sb_error *err);

/* Receives d(summed NLL)/dW of one linear weight, [rows x cols] row-major like the weight,
 * valid only during the call (the buffer is reused for the next weight). Called once per weight
 * per backward, as soon as it is computed: per layer DOWN, GATE, UP (dense), or, per expert in
 * ascending order, DOWN, GATE, UP and then ROUTER (MoE); then O, Q, K, V; layers from last to
 * first. A non-OK return stops the pass. */
typedef sb_status (*sb_gradient_fn)(void *user, const sb_tensor_id *id, const float *grad, int64_t rows,
                                    int64_t cols, sb_error *err);

/* Receives d(summed NLL)/dv of a vector of the attention (id->role Q_NORM, K_NORM or a bias),
 * `count` floats valid only during the call, for the vectors the model has; per layer between
 * O's and Q's linear gradients, in the order O_BIAS, Q_NORM, K_NORM, Q_BIAS, K_BIAS, V_BIAS. */
typedef sb_status (*sb_vector_gradient_fn)(void *user, const sb_tensor_id *id, const float *grad, int64_t count,
                                           sb_error *err);

/* Where backward delivers gradients: `linear` (required) for every linear weight, `vector`
 * (NULL: not computed) for the attention's vectors; both get `user`. */
typedef struct sb_gradient_sink {
    sb_gradient_fn linear;
    sb_vector_gradient_fn vector;
    void *user;
} sb_gradient_sink;

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
 * comes out as its output. `layer` labels callbacks and says whether the layer is sparse
 * (sb_layer_is_moe); `weights` and `cache` must be made for that layer (SB_ERR_INTERNAL
 * otherwise). With `cache` (for backward), the activations backward needs are kept there; NULL
 * for evaluation. `hook` may be NULL. */
sb_status sb_layer_forward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights, float *x,
                           int64_t n_windows, int64_t ctx, sb_layer_cache *cache, sb_activation_fn hook,
                           void *hook_user, sb_model_workspace *workspace, sb_error *err);

/* Backward through one layer, in place: dx [n_windows*ctx x hidden] goes in as dL/d(output)
 * and comes out as dL/d(input). Batch sizes are those of the sb_layer_forward that filled
 * `cache` (with the same weights). Gradients go to `sink` (see sb_gradient_sink). */
sb_status sb_layer_backward(const sb_model_shape *shape, int64_t layer, const sb_layer_weights *weights,
                            const sb_layer_cache *cache, float *dx, const sb_gradient_sink *sink,
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
 * `caches` holds num_hidden_layers caches (caches[l] made for layer l). Adds the batch's loss to
 * *nll and delivers the gradients of the summed NLL to `sink`. `hook` may be NULL. */
sb_status sb_model_backward(const sb_model *model, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                            sb_model_workspace *workspace, sb_layer_cache *const *caches, sb_activation_fn hook,
                            void *hook_user, const sb_gradient_sink *sink, sb_nll *nll, sb_error *err);

/* Matmul FLOPs (2 per multiply-add) of one forward over n_windows windows of ctx tokens:
 * linear layers (in an MoE layer: the router and the k experts each token uses), lm_head, and
 * the causal part of attention (QK^T and PV over the keys each query sees). For throughput
 * reports. */
double sb_model_forward_flops(const sb_model_shape *shape, int64_t n_windows, int64_t ctx);
/* The same for what sb_model_backward adds after its forward: dX and dW of every linear layer,
 * dX of lm_head, and five attention products (S recomputed, dP, dQ, dK, dV). */
double sb_model_backward_flops(const sb_model_shape *shape, int64_t n_windows, int64_t ctx);

#endif
