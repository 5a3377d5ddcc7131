/* sb_pipeline: the model run as a pipeline over the ranks that own consecutive layers.
 *
 * Layers are split into contiguous stages, one per rank (ranks beyond the layer count hold no
 * stage and only join the collectives). Stage 0 also holds the embedding, the last stage the
 * final norm and lm_head. A forward pass sends the residual stream of each micro-batch from
 * stage to stage (MPI point-to-point, tag = micro-batch); a backward pass sends dL/dx back.
 * Every message is preceded by a status word, so a stage that failed keeps the protocol going
 * (downstream stages skip their work) and no rank waits forever; the pass then ends with an
 * agreement on the status (mpi/comm/sb_agree.h). The loss is the last stage's and is broadcast.
 * Results equal the single-process runtime's up to the float32 rounding of each layer, which
 * does not depend on the partition (each layer computes the same GEMMs on the same rows).
 * All functions are collective over `comm`.
 */
#ifndef SB_PIPELINE_H
#define SB_PIPELINE_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "sb_calib_stats.h"
#include "sb_error.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_routing_stats.h"

typedef struct sb_pipeline {
    MPI_Comm comm;
    int rank, size;
    int nstages;
    int stage;                 /* this rank's stage, -1 if none */
    int64_t layer_begin, layer_end; /* this rank's layers */
    int64_t *stage_layer_begin;     /* [nstages + 1] */
    sb_model_shape shape;
    /* this stage's weights */
    sb_layer_weights *layers;  /* [layer_end - layer_begin] */
    float *embed;              /* stage 0 */
    float *final_norm;         /* last stage */
    float *lm_head;            /* last stage (its own copy even when tied, if stage 0 differs) */
    int threads;
} sb_pipeline;

/* The stage of the rank owning `layer`. */
int sb_pipeline_owner(const sb_pipeline *pipeline, int64_t layer);

/* Partitions the layers over the ranks of `comm` and loads this rank's weights from `fetch`.
 * `threads` sizes the runtime's own loops. */
sb_status sb_pipeline_create(MPI_Comm comm, const sb_model_shape *shape, sb_weight_fetch fetch, void *source,
                             int threads, sb_pipeline *pipeline, sb_error *err);
/* The same with every matrix of the stage's layers (linear weights, routers, experts) held as
 * `storage` (sb_layer_weights_alloc_as): SB_LINEAR_STORAGE_BF16 halves a BF16 checkpoint's
 * stage, with the same products (src/sb_linear.h). Embedding and lm_head stay float32. */
sb_status sb_pipeline_create_with(MPI_Comm comm, const sb_model_shape *shape, sb_weight_fetch fetch, void *source,
                                  int threads, sb_linear_storage storage, sb_pipeline *pipeline, sb_error *err);
/* The same with the layers' linear weights from `fetch_linear` (in the source's own storage,
 * e.g. packed tiles: each rank then holds only its layers, packed). */
sb_status sb_pipeline_create_linears(MPI_Comm comm, const sb_model_shape *shape, sb_weight_fetch fetch,
                                     sb_linear_fetch fetch_linear, void *source, int threads, sb_pipeline *pipeline,
                                     sb_error *err);
void sb_pipeline_free(sb_pipeline *pipeline);

/* Which statistics a pass collects into `stats` (this rank's layers, layer_begin first). */
typedef struct sb_pass_request {
    bool backward;             /* gradients: fisher and/or grad sums, per the stats' buffers */
    sb_layer_stats *stats;     /* may be NULL for a loss-only pass */
    sb_routing_stats *routing; /* may be NULL; counts this rank's MoE layers only (add them up
                                * over the ranks, e.g. with MPI_Reduce, for the model's figure) */
    const sb_gradient_sink *gradients; /* backward: where the linear weights' gradients go instead
                                * of `stats` (the taylor search's per-tile sums); NULL: stats */
    /* backward on some micro-batches only (the taylor search's estimates from a subset of the
     * windows while its loss checks see them all): micro-batch m runs backward iff
     * m % backward_every == backward_first; backward_every <= 1: every micro-batch. The other
     * micro-batches run forward only (no caches kept) and count in the pass's NLL. */
    int64_t backward_every, backward_first;
    sb_nll *backward_nll;      /* may be NULL: the NLL of the micro-batches that ran backward (the
                                * tokens behind the gradients), on every rank */
} sb_pass_request;

/* Runs `n_windows` windows of `ctx` tokens (every rank passes the same tokens) in micro-batches
 * of `batch_windows`; returns the summed NLL and its token count on every rank. */
sb_status sb_pipeline_pass(sb_pipeline *pipeline, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                           int64_t batch_windows, const sb_pass_request *request, sb_nll *nll, sb_error *err);

#endif
