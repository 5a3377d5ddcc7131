#include "sb_routing_stats.h"

#include <stdlib.h>
#include <string.h>

sb_status sb_routing_stats_create(const sb_model_shape *shape, sb_routing_stats *stats, sb_error *err)
{
    memset(stats, 0, sizeof *stats);
    stats->layers = shape->num_hidden_layers;
    stats->experts = sb_shape_moe_layers(shape) > 0 ? shape->num_experts : 0;
    size_t cells = (size_t)(stats->layers * stats->experts);
    stats->slots = sb_calloc(cells ? cells : 1, sizeof *stats->slots, "routing counts", err);
    stats->scored_slots = sb_calloc(cells ? cells : 1, sizeof *stats->scored_slots, "routing counts", err);
    stats->weight = sb_calloc(cells ? cells : 1, sizeof *stats->weight, "routing weights", err);
    stats->tokens = sb_calloc((size_t)stats->layers, sizeof *stats->tokens, "routing counts", err);
    if (!stats->slots || !stats->scored_slots || !stats->weight || !stats->tokens) {
        sb_routing_stats_free(stats);
        return SB_ERR_NOMEM;
    }
    return SB_OK;
}

void sb_routing_stats_free(sb_routing_stats *stats)
{
    free(stats->slots);
    free(stats->scored_slots);
    free(stats->weight);
    free(stats->tokens);
    memset(stats, 0, sizeof *stats);
}

void sb_routing_stats_add(sb_routing_stats *stats, const sb_linear_input *input)
{
    int64_t layer = input->id.layer, expert = input->id.expert;
    if (layer < 0 || layer >= stats->layers)
        return;
    if (input->id.role == SB_ROLE_ROUTER && input->id.expert < 0) {
        stats->tokens[layer] += input->rows;
        return;
    }
    if (input->id.role != SB_ROLE_GATE || expert < 0 || expert >= stats->experts)
        return;
    int64_t cell = layer * stats->experts + expert, scored = 0;
    double weight = 0;
    for (int64_t i = 0; i < input->rows; i++) {
        scored += input->ctx > 0 && input->token_rows[i] % input->ctx != input->ctx - 1;
        weight += input->route_weights[i];
    }
    stats->slots[cell] += input->rows;
    stats->scored_slots[cell] += scored;
    stats->weight[cell] += weight;
}

sb_status sb_routing_stats_hook(void *user, const sb_linear_input *input, sb_error *err)
{
    (void)err;
    sb_routing_stats_add(user, input);
    return SB_OK;
}
