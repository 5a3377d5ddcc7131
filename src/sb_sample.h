/* sb_sample: choosing the next token from a model's logits.
 *
 *   temperature 0       the most likely token (the lowest id among equal logits)
 *   temperature T > 0   p = softmax(logits / T); with top_p < 1 only the smallest set of the
 *                       most likely tokens whose probabilities sum to at least top_p (nucleus
 *                       sampling; ties in probability ordered by id), renormalised; then one
 *                       draw from the sampler's own random stream
 *
 * The stream is splitmix64 from `seed`, so the same seed, logits and options give the same
 * tokens on every machine and run (the draws use double arithmetic in a fixed order). A sampler
 * owns a work buffer of the vocabulary's size; one thread at a time.
 */
#ifndef SB_SAMPLE_H
#define SB_SAMPLE_H

#include <stdint.h>

#include "sb_error.h"

typedef struct sb_sampler {
    int64_t vocab;
    double temperature, top_p;
    uint64_t state;
    double *probs;     /* [vocab] */
    int32_t *order;    /* [vocab] */
} sb_sampler;

/* SB_ERR_USAGE for a temperature < 0 or not finite, or top_p outside (0, 1]. */
sb_status sb_sampler_create(int64_t vocab, double temperature, double top_p, uint64_t seed, sb_sampler *sampler,
                            sb_error *err);
void sb_sampler_free(sb_sampler *sampler);

/* The next token for logits[vocab]. */
uint32_t sb_sample(sb_sampler *sampler, const float *logits);

/* A uniform double in [0, 1) from the stream (53 random bits). */
double sb_sampler_uniform(sb_sampler *sampler);

#endif
