#include "sb_sample.h"

#include <math.h>
#include <stdlib.h>

sb_status sb_sampler_create(int64_t vocab, double temperature, double top_p, uint64_t seed, sb_sampler *s,
                            sb_error *err)
{
    s->probs = NULL;
    s->order = NULL;
    if (!(temperature >= 0.0) || !isfinite(temperature))
        return sb_error_set(err, SB_ERR_USAGE, "--temperature must be a finite number >= 0 (got %g)", temperature);
    if (!(top_p > 0.0 && top_p <= 1.0))
        return sb_error_set(err, SB_ERR_USAGE, "--top-p must be in (0, 1] (got %g)", top_p);
    if (vocab < 1 || vocab > INT32_MAX)
        return sb_error_set(err, SB_ERR_INPUT, "sampler: vocabulary of %lld tokens", (long long)vocab);
    s->vocab = vocab;
    s->temperature = temperature;
    s->top_p = top_p;
    s->state = seed;
    s->probs = sb_malloc((size_t)vocab * sizeof *s->probs, "sampler", err);
    s->order = sb_malloc((size_t)vocab * sizeof *s->order, "sampler", err);
    if (!s->probs || !s->order) {
        sb_sampler_free(s);
        return SB_ERR_NOMEM;
    }
    return SB_OK;
}

void sb_sampler_free(sb_sampler *s)
{
    free(s->probs);
    free(s->order);
    s->probs = NULL;
    s->order = NULL;
}

double sb_sampler_uniform(sb_sampler *s)
{
    uint64_t z = (s->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1p-53;
}

/* Descending probability, then ascending id: a total order, so the nucleus is well defined. */
static int by_probability(const void *a, const void *b, void *probs_pointer)
{
    const double *probs = probs_pointer;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (probs[i] != probs[j])
        return probs[i] > probs[j] ? -1 : 1;
    return (i > j) - (i < j);
}

uint32_t sb_sample(sb_sampler *s, const float *logits)
{
    int64_t vocab = s->vocab, best = 0;
    for (int64_t j = 1; j < vocab; j++)
        if (logits[j] > logits[best])
            best = j;
    if (s->temperature == 0.0)
        return (uint32_t)best;
    double max = (double)logits[best] / s->temperature, sum = 0.0;
    for (int64_t j = 0; j < vocab; j++) {
        s->probs[j] = exp((double)logits[j] / s->temperature - max);
        sum += s->probs[j];
    }
    for (int64_t j = 0; j < vocab; j++)
        s->probs[j] /= sum;
    int64_t count = vocab;
    for (int64_t j = 0; j < vocab; j++)
        s->order[j] = (int32_t)j;
    if (s->top_p < 1.0) {
        qsort_r(s->order, (size_t)vocab, sizeof *s->order, by_probability, s->probs);
        double cumulative = 0.0;
        for (count = 0; count < vocab;) {
            cumulative += s->probs[s->order[count++]];
            if (cumulative >= s->top_p)
                break;
        }
        sum = cumulative;
    } else {
        sum = 1.0;
    }
    double r = sb_sampler_uniform(s) * sum, cumulative = 0.0;
    for (int64_t i = 0; i < count; i++) {
        cumulative += s->probs[s->order[i]];
        if (r < cumulative)
            return (uint32_t)s->order[i];
    }
    return (uint32_t)s->order[count - 1]; /* r within rounding of the total */
}
