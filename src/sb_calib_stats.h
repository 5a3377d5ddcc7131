/* sb_calib_stats: what calibration measures for the weight matrices of one decoder layer.
 *
 * One sb_weight_stats per matrix the layer multiplies by: the seven kinds of a dense layer; in a
 * Qwen3-MoE layer q, k, v, o, the router and every expert's gate, up and down
 * (sb_layer_stats_find). For each:
 *
 *   act     per input column j: act_sum[j] = sum over the rows the weight sees of w x_j^2, and
 *           act_weight = sum of w, so E[x_j^2] = act_sum / act_weight (llama.cpp's imatrix
 *           quantity). w = 1 for every row of a dense kind and of the router; for an expert the
 *           rows are the tokens routed to it and w their routing weight (the model multiplies
 *           the expert's output by w): the expert's inputs weighted as the model weights them.
 *   fisher  per weight: sum over calibration batches of g^2, g the gradient of the batch's
 *           summed NLL; F = fisher_sum / scored_tokens estimates the diagonal Fisher of the
 *           mean per-token NLL (batch gradients of independent tokens add, so E[g_b^2] grows
 *           with the batch's token count). An expert's gradient already carries its routing (it
 *           is zero where no token reached it).
 *   grad    per weight: sum of g over batches; grad_sum / scored_tokens is the gradient of the
 *           mean per-token NLL (the first-order term of the taylor estimator)
 *   hessian (GPTQ) block-diagonal sum of w x x^T over the same rows, one per distinct input:
 *           K and V share Q's, UP shares GATE's (dense, and each expert's), the router and each
 *           expert's DOWN have their own.
 *
 * How the sensitivities use them (sb_layer_stats_view), and what happens to experts calibration
 * rarely routes to: see sb_weight_view. Decisions are per layer and depend only on summed
 * counts, so they are the same on every rank count.
 *
 * The accumulators plug into the runtime's callbacks (sb_activation_fn, sb_gradient_fn), so
 * gradients are folded in as they are produced and never all kept at once. Memory: act is a
 * few vectors per weight; fisher and grad one float per weight each. Not thread-safe; one per
 * layer, owned by the rank running it.
 */
#ifndef SB_CALIB_STATS_H
#define SB_CALIB_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_model.h"

/* The statistics of one weight matrix. */
typedef struct sb_weight_stats {
    sb_tensor_id id;
    int64_t rows, cols;
    double *act_sum;       /* [cols] sum of w x_j^2; NULL unless collected */
    double act_weight;     /* sum of w over the rows summed */
    int64_t act_rows;      /* rows summed (tokens; token-slots for an expert) */
    float *fisher_sum;     /* [rows * cols]; NULL unless collected */
    float *grad_sum;       /* [rows * cols]; NULL unless collected */
    float *hessian;        /* block-diagonal sum w x x^T (sb_gptq.h), on the weight that owns its
                            * input (Q, O, GATE, DOWN, ROUTER); NULL otherwise or unless collected */
    double hessian_weight; /* sum of w behind `hessian` */
} sb_weight_stats;

typedef struct sb_layer_stats {
    int64_t layer;
    int64_t count;
    sb_weight_stats *weights; /* [count], in sb_layer_stats_index order */
    int64_t num_experts;      /* 0 for a dense layer */
    int hessian_block;        /* block width (the tile width) */
    bool collect_act;         /* false while only the Hessian is gathered (a second pass) */
    int64_t act_tokens;       /* batch rows the layer saw (act passes) */
    int64_t scored_tokens;    /* next-token predictions behind fisher_sum and grad_sum */
    int64_t hessian_tokens;   /* batch rows behind the Hessians */
    /* pooled over the layer's experts, per expert kind (gate, up, down), for the fallback of
     * sb_weight_view: filled by sb_layer_stats_pool */
    double *pooled_act[3];
    double pooled_act_weight[3];
    float *pooled_fisher[3];
    float *pooled_hessian[2]; /* gate/up's input, down's */
    double pooled_hessian_weight[2];
    int64_t min_expert_rows;  /* the fallback threshold in force (sb_layer_stats_pool) */
    float *scratch;           /* rows scaled by sqrt(w) for the weighted Hessian */
    int64_t scratch_floats;
} sb_layer_stats;

/* Index of weight `id` in stats->weights for `layer` of `shape`: a dense layer's kinds by
 * sb_linear_kind; an MoE layer's Q, K, V, O at 0..3, the router at 4, expert e's GATE, UP, DOWN
 * at 5 + 3e + 0..2. -1 for anything else. */
int64_t sb_layer_stats_index(const sb_model_shape *shape, int64_t layer, const sb_tensor_id *id);
/* The statistics of weight `id`, or NULL if the layer has no such weight. */
sb_weight_stats *sb_layer_stats_find(const sb_layer_stats *stats, const sb_tensor_id *id);

/* Allocates zeroed accumulators for `layer` (act: per-column sums; fisher, grad: per weight). */
sb_status sb_layer_stats_create(const sb_model_shape *shape, int64_t layer, bool act, bool fisher, bool grad,
                                sb_layer_stats *stats, sb_error *err);
void sb_layer_stats_free(sb_layer_stats *stats);
/* Adds zeroed block-diagonal Hessian accumulators (width `block`) and, from now on, collects
 * only them from activations (act stays as it is). */
sb_status sb_layer_stats_add_hessian(sb_layer_stats *stats, int block, sb_error *err);
/* Frees the Hessian blocks once the GPTQ factors (which copy them) are made; later passes then
 * no longer accumulate them. hessian_weight and hessian_tokens stay. */
void sb_layer_stats_drop_hessian(sb_layer_stats *stats);
/* The Hessian blocks of weight `id`'s input and the weight summed into them (K and V share Q's,
 * UP shares GATE's), or NULL. */
const float *sb_layer_stats_hessian(const sb_layer_stats *stats, const sb_tensor_id *id, double *weight);

/* Zeroes fisher and grad (a new reference point) but keeps act. */
void sb_layer_stats_reset_gradients(sb_layer_stats *stats);

/* ---- Experts calibration rarely reaches ----------------------------------------------------
 *
 * An expert sees only the tokens routed to it. With few of them its statistics are noise, and
 * with none they are zero: taken as they are, the allocation would give such an expert the
 * fewest bits only because calibration did not reach it, although the router may send it the
 * next user's tokens. The rule: an expert of which fewer than `min_rows` token-slots were
 * routed over the calibration windows (SB_EXPERT_MIN_ROWS) is estimated as the layer's average
 * expert: its E[x^2] and its
 * Hessian are those pooled over all the layer's experts of its kind (every routed row of the
 * layer, weighted as above), its Fisher is the mean of the layer's experts' Fisher (element by
 * element), its gradient is taken as zero (its first-order term has no data), and its share of
 * the layer (below) is 1 / num_experts. A well-sampled expert keeps its own statistics.
 */
/* Measured (bench/expert_threshold.sh on qwen3-moe-tiny): the act loss of an expert's own first n
 * token-slots errs less than the layer's pooled estimate, at the median and the 90th percentile
 * over experts with >= 2048 slots, from n = 16 on (8..16 at 2, 3 and 4 bits; 90th percentile
 * 21% against the pool's 48% at n = 16, 45% at n = 8). */
enum { SB_EXPERT_MIN_ROWS = 16 };

/* Fills the pooled arrays of an MoE layer from its experts' statistics and sets the threshold
 * (a dense layer: nothing to do). Call after the passes whose statistics are used (act and
 * Hessian after calibration, fisher after each gradient pass). */
sb_status sb_layer_stats_pool(sb_layer_stats *stats, int64_t min_rows, sb_error *err);

/* What the sensitivities use for one weight, after the rule above. The loss of quantizing the
 * weight is estimated as share x (the weight's E[x^2]- or H-weighted output error per token it
 * sees): dense kinds and the router have share 1; an expert has share = act_weight / tokens, the
 * mean routing weight it gets per token of the layer (with norm_topk_prob the experts' shares
 * sum to 1, so a layer's experts together weigh as one dense MLP). This w-weighted sum bounds
 * the squared error of the layer's output: with weights summing to one, |sum_e w_e err_e|^2 <=
 * sum_e w_e |err_e|^2 (convexity), and it is additive over experts, as the allocation needs. */
typedef struct sb_weight_view {
    const double *act_sum;   /* [cols]; E[x_j^2] = act_sum[j] / act_weight; NULL if not collected */
    double act_weight;
    const float *fisher_sum; /* per weight, / scored_tokens; NULL if not collected */
    const float *grad_sum;   /* per weight, / scored_tokens; NULL if not collected or pooled */
    const float *hessian;    /* block-diagonal; H / hessian_weight is E[x x^T]; NULL if absent */
    double hessian_weight;
    double share;            /* loss scale, above */
    int64_t routed_rows;     /* token-slots the weight saw (experts), or tokens */
    bool pooled;             /* estimated as the layer's average expert */
} sb_weight_view;

sb_weight_view sb_layer_stats_view(const sb_layer_stats *stats, const sb_tensor_id *id);

/* Callbacks for the runtime: `user` is an sb_layer_stats array indexed by layer - first_layer
 * (see sb_stats_sink). */
typedef struct sb_stats_sink {
    sb_layer_stats *layers;
    int64_t first_layer, count;
} sb_stats_sink;

sb_status sb_stats_on_activation(void *user, const sb_linear_input *input, sb_error *err);
sb_status sb_stats_on_gradient(void *user, const sb_tensor_id *id, const float *grad, int64_t rows, int64_t cols,
                               sb_error *err);

#endif
