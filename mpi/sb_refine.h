/* sb_refine: the taylor allocation, ScaleBITS's scalable approximation of the greedy, with
 * every batch of moves checked against the real calibration loss.
 *
 * Start with every tile at its largest bitwidth (the model is close to full precision, where
 * estimates are good). Each round:
 *   1. set the stage weights to the current quantized model W^ (the reference point) and run
 *      a forward/backward pass over the calibration windows: loss L, gradient g and diagonal
 *      Fisher F of the mean NLL, taken at W^, not at the FP weights (g and F from every window,
 *      or, with gradient_windows, from a subset of the micro-batches, L always from all);
 *   2. estimate, for every tile and every smaller bitwidth j, the loss change of moving there:
 *      D(j) = g . (Q_j - W^) + 1/2 (Q_j - W^)' F (Q_j - W^)   (first- and second-order Taylor)
 *      and keep each tile's cheapest move in loss per freed bit;
 *   3. take moves in that order (ties by global tile id) until they free two thirds of the bits
 *      still over budget (all of them once the excess is at most a tenth of the budget, or at
 *      the last allowed round: the last small steps gain little and each costs a pass);
 *   4. apply them and measure the real loss with a forward pass. The two-thirds step is kept
 *      only if the estimates held for it: measured <= predicted + |predicted| / 2 + tolerance;
 *      else it is undone and a third is taken (fewer rounds where the estimates are good, the
 *      former pace where they are not). That and every later batch is kept if
 *          measured <= predicted + |predicted| + tolerance      (tolerance 0.1% of the loss),
 *      i.e. at most twice a predicted rise, and no rise at all for a predicted fall (a fall
 *      smaller than predicted is still a gain); otherwise undo and retry with half the batch,
 *      until the batch is small. On one pipeline stage the check also takes g and F there:
 *      a kept batch's check is the next round's pass.
 * It stops once the allocation fits the budget. Batches shrink as the model gets more
 * quantized and the estimates less reliable; every decision comes from integer sums (fixed
 * point for the predicted rise) and the pipeline's loss, which is the same bits for any rank
 * count, so the allocation is too. Collective over the pipeline's communicator.
 *
 * What it holds (sb_tile_store.h): a (tile, option)'s quantized values never change during the
 * search (FP weights, importance and GPTQ factors are fixed), so every tile is quantized once at
 * every option, packed, before the first round; the FP weights are then given back (the
 * layer's matrices are dropped) and the stage's weights become the store's tiles at the current
 * choice, decoded for each product (sb_linear PANELS), or, while problem->cache_limit allows, a
 * float32 copy of W^ plus every (tile, option) decoded (faster; the same bits). The gradient
 * pass does not keep per-weight sums: as each batch's weight gradient g_b arrives, every tile
 * adds sum g_b (Q_o - W^) and sum (g_b (Q_o - W^))^2 for each option o below its current one,
 * the only quantities the estimates use (2 doubles per tile and option instead of 8 bytes per
 * weight). A 405B stage of two layers then holds 2.25 bytes per weight (bits {2,3,4,8},
 * groups of 128) instead of 14.
 */
#ifndef SB_REFINE_H
#define SB_REFINE_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_curves.h"
#include "sb_log.h"
#include "sb_pipeline.h"
#include "sb_tile_store.h"
#include "sb_tiling.h"

/* One quantized tensor held by this rank (a linear weight of one of its pipeline layers). */
typedef struct sb_refine_tensor {
    const sb_tiling *tiling;
    int64_t first_local_tile;  /* index of its tile 0 among this rank's tiles */
    int64_t first_tile_id;     /* global id of its tile 0 */
    sb_linear *linear;         /* the pipeline's weight for it: the FP weights (F32 or BF16) when the
                                * search starts, W^ (views into the search's memory) while it runs,
                                * empty after (the pipeline's layers are not run again) */
    const float *quant_weights; /* per-column importance for the quantizer (E[x^2]), or NULL */
    sb_tensor_id id;           /* which weight of its layer (an expert's, the router, a dense kind):
                                * gradients are matched by it */
    const struct sb_gptq_factor *gptq; /* --gptq: one factor per tile column, or NULL */
    bool pooled;               /* an expert calibration rarely reaches (sb_calib_stats.h): its moves
                                * are estimated with its layer's average expert's Fisher (the mean
                                * over the layer's experts of each pass's squared gradients) and no
                                * first-order term, as sb_layer_stats_view does */
} sb_refine_tensor;

typedef struct sb_refine_problem {
    int ntensors;
    sb_refine_tensor *tensors;
    int64_t local_tiles;
    const sb_curve_options *curve;
    int64_t code_budget;       /* bits for all ranks' codes */
    int max_rounds;
    const uint32_t *tokens;    /* calibration windows */
    int64_t n_windows, ctx, batch_windows;
    int64_t gradient_windows;  /* windows whose gradients the estimates use (0 or >= n_windows: all):
                                * every k-th micro-batch, k = micro-batches / ceil(gradient_windows /
                                * batch_windows), starting at micro-batch round % k; loss checks and
                                * the reference loss always run over all windows */
    const sb_log *log;
    int64_t quantized_weights, fixed_bits; /* for bits-per-weight in the log */
    /* Resume: start from these options per local tile after `first_round` finished rounds
     * (NULL: from the top). After every finished round `checkpoint` (if set) is called on all
     * ranks with the round count and the local choices; it may save them and ask for a stop
     * (return SB_ERR_STOPPED on every rank): the search then ends with that status. The state
     * at a round boundary is all there is, so a resumed search ends where an unbroken one does. */
    const uint8_t *initial_choice;
    int first_round;
    sb_status (*checkpoint)(void *user, int rounds_done, const uint8_t *choice, sb_error *err);
    void *checkpoint_user;
    int64_t cache_limit;       /* bytes of float32 reference weights and decoded tiles this rank may
                                * keep for speed (tensors in order while they fit; the rest are
                                * decoded for every product: the same bits) */
} sb_refine_problem;

enum { SB_REFINE_MAX_LOGGED_ROUNDS = 64 };

typedef struct sb_refine_round {
    int checks;                 /* loss checks (1 + retries) */
    double predicted, measured; /* of the batch kept */
    double seconds;
} sb_refine_round;

typedef struct sb_refine_result {
    int rounds, retries;
    int passes;                     /* calibration passes, each forward and backward */
    double fp_loss, final_loss;     /* mean NLL per token on the calibration windows */
    int64_t cost;                   /* code bits of the result */
    int64_t store_bytes;            /* every tile quantized at every option, packed, on this rank */
    int64_t cache_bytes;            /* float32 reference weights and decoded tiles on this rank */
    int nstores;                    /* this rank's tensors, in problem order: each tile's chosen */
    struct sb_tile_store *stores;   /* option as the write stores it (sb_refine_result_free) */
    struct {                        /* where this rank's time went */
        double gradient;            /* reference passes not fused with a check (the first) */
        double estimate;            /* the moves' estimates from the taylor sums */
        double quantize;            /* quantizing every tile at every option, and writing chosen
                                     * tiles into the float32 reference weights */
        double check;               /* loss checks (each also the next round's gradient pass) */
    } seconds;
    int nrounds;                    /* rounds logged below (the first SB_REFINE_MAX_LOGGED_ROUNDS) */
    sb_refine_round round[SB_REFINE_MAX_LOGGED_ROUNDS];
} sb_refine_result;

/* Chooses an option per local tile (`choice`, index into curve->bits). Collective. The
 * tensors' pipeline weights are consumed (see sb_refine_tensor.linear). */
sb_status sb_refine_allocate(sb_pipeline *pipeline, const sb_refine_problem *problem, uint8_t *choice,
                             sb_refine_result *result, sb_error *err);
/* Frees result->stores. */
void sb_refine_result_free(sb_refine_result *result);

#endif
