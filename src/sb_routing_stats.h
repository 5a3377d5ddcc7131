/* sb_routing_stats: how many tokens reached each expert of each MoE layer, for reports.
 *
 * Fed by the runtime's activation hook (src/sb_model.h): an expert's GATE input carries the
 * batch rows routed to it and their routing weights; the router's input carries the batch.
 * Counts are token-slots (a token routed to k experts counts once for each), over every row of
 * every batch, and separately over the rows whose next-token prediction is scored (positions
 * 0 .. ctx-2 of a window: the rows whose loss calibration and evaluation measure). Dense layers
 * and dense kinds are ignored. Sums are exact (integers) or in row order (weights), so they do
 * not depend on the thread count; counts of several processes (pipeline stages owning other
 * layers) add up.
 */
#ifndef SB_ROUTING_STATS_H
#define SB_ROUTING_STATS_H

#include <stdint.h>

#include "sb_error.h"
#include "sb_model.h"

typedef struct sb_routing_stats {
    int64_t layers, experts;
    int64_t *slots;        /* [layers x experts] token-slots routed to each expert */
    int64_t *scored_slots; /* [layers x experts] the same over scored rows only */
    double *weight;        /* [layers x experts] summed routing weights */
    int64_t *tokens;       /* [layers] rows seen by each MoE layer's router (0 for dense layers) */
} sb_routing_stats;

/* Zeroed counters for every layer of `shape` (all zero for a model without MoE layers). */
sb_status sb_routing_stats_create(const sb_model_shape *shape, sb_routing_stats *stats, sb_error *err);
void sb_routing_stats_free(sb_routing_stats *stats);

/* Counts one hook call (an expert's GATE input, a router's input); ignores every other call. */
void sb_routing_stats_add(sb_routing_stats *stats, const sb_linear_input *input);

/* An sb_activation_fn over an sb_routing_stats (`user`); never fails. */
sb_status sb_routing_stats_hook(void *user, const sb_linear_input *input, sb_error *err);

#endif
