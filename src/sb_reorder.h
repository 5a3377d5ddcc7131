/* sb_reorder: bi-directional channel reordering of a Llama model, folded into the weights so
 * that it costs nothing at inference (ScaleBITS, arXiv 2602.17698, section 1.3).
 *
 * Rows (output channels) and columns (input channels) of the linear weights are permuted so
 * that the important weights gather into the first tiles of each matrix. A permutation is free
 * only if the model computes the same function afterwards with no gather at run time, so every
 * permutation here is shared by all tensors that read or write the dimension it permutes:
 *
 *   hidden        one permutation of the residual stream for the whole model: embedding columns,
 *                 every norm weight (input_layernorm, post_attention_layernorm, model.norm),
 *                 q/k/v/gate/up columns and o/down rows of every layer, lm_head columns (with
 *                 tied embeddings the one matrix, permuted once). RMSNorm's mean of squares does
 *                 not depend on the order of the channels, and every reader and writer of the
 *                 residual sees the same order, so the stream is simply stored permuted.
 *   mlp           per layer, one permutation of the intermediate dimension: gate and up rows and
 *                 down columns. SwiGLU is elementwise, so channel i of silu(gate)*up only meets
 *                 row i of gate, row i of up and column i of down.
 *   heads         per layer, a permutation of the attention heads that keeps grouped-query
 *                 attention valid: `kv_heads` moves key/value heads as wholes (k and v rows,
 *                 head_dim at a time), and each moves with the group of query heads that attend
 *                 with it; `q_heads` may also reorder the query heads inside their group. q rows
 *                 and o columns move by whole heads with the query heads.
 *   head_dims     per layer and key/value head, a permutation of the value channels inside the
 *                 head: v rows of that head and the o columns of every query head of its group.
 *                 The attention output of a query head is a weighted sum of its value rows, so
 *                 value channel d only meets o column d of the head.
 *   experts       (Qwen3-MoE layers) the hidden order permutes the router's columns and every
 *                 expert's gate/up columns and down rows; each expert has its own intermediate
 *                 order (its gate and up rows, its down columns: the same argument as mlp, inside
 *                 the expert). The router's rows (the experts) are not permuted: the experts
 *                 keep their indices, so routing is unchanged.
 *   q/k norms, biases (Qwen3) q_norm and k_norm act on head_dim within each head; heads move as
 *                 wholes and no row moves inside a q or k head, so they are unchanged. A bias
 *                 moves with its projection's rows: q/k/v biases by q_rows/k_rows/v_rows, the
 *                 o bias by the hidden order.
 *
 * What this gives up (the search is constrained to the orders above):
 *   - no row permutation inside a q or k head: the rotary embedding turns the pair
 *     (d, d + head_dim/2) by an angle of frequency d, and q.k pairs channel d of q with channel
 *     d of k; moving a pair to another position changes its frequency, swapping its two members
 *     reverses its rotation. q/k rows move only as whole heads of head_dim rows;
 *   - a query head never leaves its key/value head's group, and a key/value head moves with its
 *     whole group, so q row bands and k/v row bands are ordered together;
 *   - one hidden order for every layer: each tensor's columns (q/k/v/gate/up) or rows (o/down)
 *     get the order that is best summed over the model, not its own (a per-tensor input order
 *     would need a gather of the activations at run time);
 *   - gate and up share their row order, and down's column order is theirs;
 *   - the vocabulary (embedding and lm_head rows) is not permuted: that would relabel tokens;
 *   - orders come from marginal sums, not from a joint search of row and column orders.
 *
 * Convention: every permutation is a gather, `perm[new] = old`: position `new` of the reordered
 * model holds what was at `old` in the original. Indices are int32_t (sb_model_shape_check
 * bounds every dimension below 2^31).
 *
 * Pipelining: an sb_reorder holds the hidden order and the orders of a range of layers
 * [layer_begin, layer_end), so a rank keeps only its own layers' orders (for a 405B-class model
 * about 0.35 MB per layer). The hidden order needs every layer's importance: see
 * sb_reorder_hidden_from_contributions for the order of summation that makes it the same bits
 * on any number of ranks.
 *
 * Nothing here reads files or talks to other ranks; no function is collective. Functions on
 * distinct sb_reorder objects (or only reading one) are thread-safe.
 */
#ifndef SB_REORDER_H
#define SB_REORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_calib_stats.h"
#include "sb_catalogue.h"
#include "sb_error.h"
#include "sb_model.h"
#include "sb_model_shape.h"

/* ---- The permutation set -------------------------------------------------------------------- */

/* One layer's orders. The first four arrays are the free choices; the last four are derived
 * from them by sb_reorder_commit (the row or column order of each attention tensor). */
typedef struct sb_layer_reorder {
    int32_t *mlp;       /* [intermediate]: gate/up row and down column at new position i is old mlp[i]
                         * (dense MLP layers; the identity in an MoE layer) */
    int32_t *kv_heads;  /* [kv_heads]: key/value head at new position g is old kv_heads[g] */
    int32_t *q_heads;   /* [heads]: query head at new position h is old q_heads[h]; must lie in
                         * the group of kv_heads[h / group] (group = heads / kv_heads) */
    int32_t *head_dims; /* [kv_heads * head_dim]: value channel d of the key/value head at new
                         * position g is old channel head_dims[g * head_dim + d] of that head */
    int32_t *experts_mlp; /* MoE layers: [num_experts * moe_intermediate]: expert e's own
                           * intermediate order, experts_mlp[e * moe_intermediate + i]; NULL in a
                           * dense layer */
    int64_t num_experts;  /* 0 in a dense layer */
    /* derived: source row or column for every destination row or column */
    int32_t *q_rows;    /* [q_dim]  q_heads[h] * head_dim + d */
    int32_t *k_rows;    /* [kv_dim] kv_heads[g] * head_dim + d */
    int32_t *v_rows;    /* [kv_dim] kv_heads[g] * head_dim + head_dims[g * head_dim + d] */
    int32_t *o_cols;    /* [q_dim]  q_heads[h] * head_dim + head_dims[(h / group) * head_dim + d] */
    /* derived: which of mlp, q_rows, k_rows, v_rows, o_cols, each expert's order are the identity */
    bool mlp_identity, q_identity, k_identity, v_identity, o_identity;
    int32_t *expert_identity; /* [num_experts]: 1 if expert e's order is the identity */
    void *storage; /* owns every array above */
} sb_layer_reorder;

typedef struct sb_reorder {
    sb_model_shape shape;
    int32_t *hidden;                /* [hidden_size]: residual channel at new position j is old hidden[j] */
    bool hidden_identity;           /* derived */
    int64_t layer_begin, layer_end; /* the layers held */
    sb_layer_reorder *layers;       /* [layer_end - layer_begin] */
    bool committed;                 /* true after sb_reorder_commit succeeded */
} sb_reorder;

/* Creates the identity reordering (committed) holding layers [layer_begin, layer_end) of
 * `shape` (0 <= layer_begin <= layer_end <= num_hidden_layers). Errors: a shape the runtime
 * refuses (sb_model_shape_check), a bad layer range (SB_ERR_INPUT), no memory. On failure
 * nothing needs freeing. */
sb_status sb_reorder_create(const sb_model_shape *shape, int64_t layer_begin, int64_t layer_end, sb_reorder *reorder,
                            sb_error *err);
void sb_reorder_free(sb_reorder *reorder);

/* The orders of `layer`, or NULL if this reordering does not hold it. */
sb_layer_reorder *sb_reorder_layer(const sb_reorder *reorder, int64_t layer);

/* Checks that every free array is a permutation and that q_heads keeps every query head with its
 * key/value head (GQA), then derives the row/column orders and identity flags. Call it after
 * writing any of the free arrays directly (e.g. orders read back from a file); the functions
 * below that set orders call it themselves. Errors (SB_ERR_INPUT) name the layer, the array and
 * the offending index; on error `committed` is false and every lookup or apply refuses. */
sb_status sb_reorder_commit(sb_reorder *reorder, sb_error *err);

/* True if every order held is the identity (a committed reordering). */
bool sb_reorder_is_identity(const sb_reorder *reorder);

/* ---- Orders from importance ------------------------------------------------------------------
 *
 * Criterion. The caller measures, for each linear weight of a layer, the importance of every
 * element s_ij (any estimator: F*W^2, E[x_j^2]*W^2, W^2, |g * dW|) and gives its marginal sums:
 * row_i = sum_j s_ij, col_j = sum_i s_ij. Each shared order sorts its channels by the sum of
 * the marginals of every tensor it permutes, descending, ties by index (a total order, so the
 * result does not depend on the sort algorithm):
 *   hidden     channel j:  col_j of q, k, v, gate, up + row_j of o, down, over every layer
 *              (plus an optional extra vector, e.g. embedding or lm_head columns when those
 *              are quantized);
 *              (an MoE layer: col_j of q, k, v, row_j of o, col_j of the router, then per
 *              expert in ascending order col_j of gate, up and row_j of down);
 *   mlp        channel i:  row_i of gate + row_i of up + col_i of down (each expert alike, over
 *              its own weights);
 *   kv_heads   head g:     q rows and o columns of every query head of g's group + k rows and
 *                          v rows of g;
 *   q_heads    head h:     its q rows + its o columns, sorted inside the group;
 *   head_dims  channel d of kv head g: v row d of g + o column d of every query head of g's group.
 *
 * Why marginal sums. Sorting by a score descending puts the k channels of largest total score
 * first for every k at once, so the importance in the first band of k rows (or columns) of
 * all the tensors sharing the order, summed over them, is the largest any order can give,
 * whatever the tile size. For one tensor the importance of its top-left tile is
 * the sum of s_ij over its first rows and first columns; sorting rows and columns each by their
 * marginals maximises it exactly when s is separable (s_ij = r_i c_j: E[x_j^2] W_ij^2 is
 * close to it when W_ij^2 is) and is the standard heuristic otherwise (SFMP's
 * bitallocation.py sorts columns then rows by the same sums). Sums, not maxima, because a tile's
 * loss is a sum over its weights. Estimators on one loss scale (Fisher, Taylor) make the sums
 * of different tensors comparable; with W^2 alone the larger tensors dominate the shared orders.
 */

/* Marginal importance vectors of one layer, indexed by sb_linear_kind. row[k] has the rows of
 * kind k, col[k] its columns (sb_linear_shape). A NULL vector counts as zeros. */
typedef struct sb_layer_importance {
    const double *row[SB_LINEAR_KIND_COUNT];
    const double *col[SB_LINEAR_KIND_COUNT];
    /* MoE layers (the dense MLP kinds are then absent): the router's column marginals, and each
     * expert's, indexed by kind - SB_LINEAR_GATE: expert_row[k][e * rows + i] and
     * expert_col[k][e * cols + j] with the kind's expert shape. NULL counts as zeros. */
    const double *router_col;
    const double *expert_row[3];
    const double *expert_col[3];
} sb_layer_importance;

/* Which orders to compute; the others stay the identity. NULL options mean all of them. */
typedef struct sb_reorder_options {
    bool hidden, mlp, heads, head_dims;
} sb_reorder_options;

/* Adds the marginal sums of the element importance
 *     s_ij = w_ij^2 * col_scale[j] * element[i * cols + j]
 * of a rows x cols block to row_sum[rows] and col_sum[cols] (a NULL factor counts as 1; a NULL
 * output is not computed). Summation is in row-major order, so processing a tensor in row blocks
 * in increasing order gives the same bits as one call. E.g. W^2: (w, NULL, NULL); E[x^2] W^2:
 * (w, act_sum, NULL) (the 1/tokens factor does not change an order); F W^2: (w, NULL, fisher);
 * a precomputed score: (NULL, NULL, score). */
void sb_reorder_marginals(const float *w, const double *col_scale, const float *element, int64_t rows, int64_t cols,
                          double *row_sum, double *col_sum);

/* The order that sorts `score[n]` descending, ties by index: order[0] is the index of the
 * largest score. SB_ERR_INPUT if a score is NaN (naming `what` and the index). */
sb_status sb_reorder_sort_descending(const double *score, int64_t n, int32_t *order, const char *what,
                                     sb_error *err);

/* This layer's contribution to the hidden score (overwrites contribution[hidden]): for every
 * channel j, in this order, col_j of q, k, v, row_j of o, col_j of gate, up, row_j of down (an
 * MoE layer: the router's and the experts' instead of gate, up, down, as the criterion says). */
void sb_reorder_layer_hidden_score(const sb_model_shape *shape, const sb_layer_importance *importance,
                                   double *contribution);

/* Sets the hidden order from every layer's contribution ([num_hidden_layers x hidden_size],
 * layer-major, from sb_reorder_layer_hidden_score) and an optional `extra[hidden_size]`:
 * score = ((c_0 + c_1) + ...) + c_{L-1} + extra, in that order, then sorted. A distributed
 * caller gathers the per-layer rows (MPI_Allgatherv) and calls this on every rank: the same
 * bits as one process, for any number of ranks (a reduction of partial sums would round
 * differently with the rank count, and a near-tie could flip). Commits. */
sb_status sb_reorder_hidden_from_contributions(sb_reorder *reorder, const double *contributions,
                                               const double *extra, sb_error *err);

/* Sets the mlp, heads and head_dims orders of `layer` (which the reordering must hold) from its
 * importance, as enabled by `options` (the others become the identity). Commits. */
sb_status sb_reorder_layer_from_importance(sb_reorder *reorder, int64_t layer, const sb_layer_importance *importance,
                                           const sb_reorder_options *options, sb_error *err);

/* Whole model in one process: `importance[num_hidden_layers]`, `extra` as above (may be NULL).
 * The reordering must hold every layer. Commits. */
sb_status sb_reorder_from_importance(sb_reorder *reorder, const sb_layer_importance *importance,
                                     const double *extra, const sb_reorder_options *options, sb_error *err);

/* ---- Per-tensor orders ------------------------------------------------------------------------ */

/* The order of one tensor: destination row r of the reordered tensor is source row row_src[r]
 * of the original, and likewise for columns. NULL means the identity. A 1-D tensor (a norm) is
 * one row. The arrays belong to the sb_reorder. */
typedef struct sb_tensor_perm {
    int64_t rows, cols;
    const int32_t *row_src;
    const int32_t *col_src;
} sb_tensor_perm;

/* The order of tensor `id` (layer -1 for tensors outside the layers: embedding, final norm,
 * lm_head): every role the catalogue knows, experts and the router included; q_norm / k_norm
 * are the identity, biases follow their projection's rows. Errors: a layer this reordering
 * does not hold, an expert it does not have, a reordering that is not committed, and
 * SB_ROLE_OTHER (SB_ERR_INPUT: how an unknown tensor depends on the permuted dimensions is not
 * known; one that does not depend on them, such as rotary_emb.inv_freq, passes through
 * unchanged, and that decision is the caller's). */
sb_status sb_reorder_tensor_perm(const sb_reorder *reorder, const sb_tensor_id *id, sb_tensor_perm *perm,
                                 sb_error *err);

/* Gathers destination rows [row_begin, row_begin + row_count) of the reordered tensor from the
 * whole original tensor `src` (perm->rows x perm->cols elements of `element_size` bytes,
 * row-major) into `dst` (row_count x perm->cols). Any element type: float weights, raw BF16
 * bytes for pass-through, double statistics. No allocation. */
void sb_reorder_gather(const sb_tensor_perm *perm, const void *src, size_t element_size, int64_t row_begin,
                       int64_t row_count, void *dst);

/* Reads a run of `row_count` consecutive source rows starting at `row_begin` into `dst`
 * (row_count x cols elements), e.g. a wrapper around sb_checkpoint_read_rows. */
typedef sb_status (*sb_row_reader)(void *user, int64_t row_begin, int64_t row_count, void *dst, sb_error *err);

/* Like sb_reorder_gather, but reads the source rows it needs through `read`, one call per run
 * of consecutive source rows (an identity row order is one call), straight into `dst`, then
 * permutes the columns of each row in place. Allocates one row of scratch. Errors: the
 * reader's (passed up unchanged; the reader names the file and tensor), no memory. */
sb_status sb_reorder_read_rows(const sb_tensor_perm *perm, size_t element_size, sb_row_reader read, void *user,
                               int64_t row_begin, int64_t row_count, void *dst, sb_error *err);

/* Permutes a whole tensor in place (rows by cycles, so the scratch is one row plus one byte per
 * row, not a copy of the tensor). Errors: no memory. */
sb_status sb_reorder_permute(const sb_tensor_perm *perm, void *data, size_t element_size, sb_error *err);

/* ---- Folding into the model ------------------------------------------------------------------- */

/* The whole model in place (needs every layer): embedding, every layer, final norm and lm_head
 * (tied: the one matrix, once). The result computes the same logits as the original. */
sb_status sb_reorder_apply_model(const sb_reorder *reorder, sb_model *model, sb_error *err);
/* One layer's weights in place: norms, linear weights (the router and every expert of an MoE
 * layer), q/k norms and biases. */
sb_status sb_reorder_apply_layer(const sb_reorder *reorder, int64_t layer, sb_layer_weights *weights, sb_error *err);
/* The embedding [vocab x hidden] in place (columns). With tied embeddings this is lm_head too. */
sb_status sb_reorder_apply_embed(const sb_reorder *reorder, float *embed, sb_error *err);
/* model.norm and, unless NULL (tied embeddings), lm_head's columns, in place. */
sb_status sb_reorder_apply_head(const sb_reorder *reorder, float *final_norm, float *lm_head, sb_error *err);

/* One layer's calibration statistics, in place, into the reordered model's order: act_sum of
 * each weight (experts and router included) by its columns; fisher_sum and grad_sum by its rows
 * and columns. The result is what calibrating the reordered model would measure (up to float
 * rounding). Hessians are not permuted: gather them after reordering. */
sb_status sb_reorder_apply_stats(const sb_reorder *reorder, sb_layer_stats *stats, sb_error *err);

#endif
