/* sb_calib_stats: what calibration measures for the linear weights of one decoder layer.
 *
 *   act     per input column j of each linear layer: sum over tokens of x_j^2 (the quantity
 *           llama.cpp's imatrix stores); E[x_j^2] = act_sum / act_tokens
 *   fisher  per weight: sum over calibration batches of g^2, g the gradient of the batch's
 *           summed NLL; F = fisher_sum / scored_tokens estimates the diagonal Fisher of the
 *           mean per-token NLL (batch gradients of independent tokens add, so E[g_b^2] grows
 *           with the batch's token count)
 *   grad    per weight: sum of g over batches; grad_sum / scored_tokens is the gradient of the
 *           mean per-token NLL (the first-order term of the taylor estimator)
 *
 * The accumulators plug into the runtime's callbacks (sb_activation_fn, sb_gradient_fn), so
 * gradients are folded in as they are produced and never all kept at once. Memory: act is a
 * few vectors per layer; fisher and grad are one float per weight each (documented in the
 * README's memory figures). Not thread-safe; one per layer, owned by the rank running it.
 */
#ifndef SB_CALIB_STATS_H
#define SB_CALIB_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_model.h"

typedef struct sb_layer_stats {
    int64_t layer;
    int64_t rows[SB_LINEAR_KIND_COUNT], cols[SB_LINEAR_KIND_COUNT];
    double *act_sum[SB_LINEAR_KIND_COUNT];   /* [cols]; NULL unless collected */
    float *fisher_sum[SB_LINEAR_KIND_COUNT]; /* [rows * cols]; NULL unless collected */
    float *grad_sum[SB_LINEAR_KIND_COUNT];   /* [rows * cols]; NULL unless collected */
    float *hessian[SB_LINEAR_KIND_COUNT];    /* block-diagonal X^T X (sb_gptq.h) of each distinct input:
                                              * kinds Q, O, GATE, DOWN; NULL unless collected */
    int hessian_block;     /* block width (the tile width) */
    int64_t hessian_tokens;
    bool collect_act;      /* false while only the Hessian is gathered (a second pass) */
    int64_t act_tokens;    /* tokens whose inputs were summed */
    int64_t scored_tokens; /* next-token predictions behind fisher_sum and grad_sum */
} sb_layer_stats;

/* Allocates zeroed accumulators for `layer`. */
sb_status sb_layer_stats_create(const sb_model_shape *shape, int64_t layer, bool act, bool fisher, bool grad,
                                sb_layer_stats *stats, sb_error *err);
void sb_layer_stats_free(sb_layer_stats *stats);
/* Adds zeroed block-diagonal Hessian accumulators (width `block`) and, from now on, collects
 * only them from activations (act stays as it is). */
sb_status sb_layer_stats_add_hessian(sb_layer_stats *stats, int block, sb_error *err);
/* Frees the Hessian blocks once the GPTQ factors (which copy them) are made: later passes (the
 * taylor search's) then no longer accumulate them. hessian_tokens stays. */
void sb_layer_stats_drop_hessian(sb_layer_stats *stats);
/* The Hessian blocks of a kind's input (K and V share Q's, UP shares GATE's), or NULL. */
const float *sb_layer_stats_hessian(const sb_layer_stats *stats, sb_linear_kind kind);

/* Zeroes fisher and grad (a new reference point) but keeps act. */
void sb_layer_stats_reset_gradients(sb_layer_stats *stats);

/* Callbacks for the runtime: `user` is an sb_layer_stats array indexed by layer - first_layer
 * (see sb_stats_sink). */
typedef struct sb_stats_sink {
    sb_layer_stats *layers;
    int64_t first_layer, count;
} sb_stats_sink;

/* The statistics are per dense linear kind: the router's and the experts' inputs and gradients
 * (Qwen3-MoE layers) are refused with SB_ERR_INPUT until per-expert statistics exist. */
sb_status sb_stats_on_activation(void *user, const sb_linear_input *input, sb_error *err);
sb_status sb_stats_on_gradient(void *user, const sb_tensor_id *id, const float *grad, int64_t rows, int64_t cols,
                               sb_error *err);

#endif
