/* The sampler (src/sb_sample.h): temperature 0 is the argmax (lowest id among ties); the same
 * seed gives the same tokens and another seed other ones; top-p draws only from the nucleus
 * (computed here by brute force) and, over many draws, at frequencies within a few standard
 * errors of the renormalised probabilities; a high temperature flattens the distribution;
 * bad options are refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_sample.h"
#include "sb_test.h"

enum { VOCAB = 12, DRAWS = 40000 };

int main(void)
{
    sb_error err;
    sb_sampler sampler;
    const float logits[VOCAB] = {1.0f, 3.0f, 2.5f, 3.0f, -1.0f, 0.5f, 2.9f, -4.0f, 0.0f, 1.5f, 2.0f, -2.0f};

    /* greedy: the first of the two largest (ids 1 and 3 tie) */
    SB_CHECK(sb_sampler_create(VOCAB, 0.0, 0.9, 7, &sampler, &err) == SB_OK);
    for (int i = 0; i < 5; i++)
        SB_CHECK(sb_sample(&sampler, logits) == 1);
    sb_sampler_free(&sampler);

    /* the probabilities at T = 0.7, and the nucleus of top_p = 0.8 by brute force */
    double temperature = 0.7, top_p = 0.8, p[VOCAB], sum = 0.0;
    for (int j = 0; j < VOCAB; j++)
        sum += p[j] = exp(logits[j] / temperature);
    for (int j = 0; j < VOCAB; j++)
        p[j] /= sum;
    bool in_nucleus[VOCAB] = {false};
    double covered = 0.0;
    while (covered < top_p) { /* add the most likely token not yet in (lowest id on ties) */
        int best = -1;
        for (int j = 0; j < VOCAB; j++)
            if (!in_nucleus[j] && (best < 0 || p[j] > p[best]))
                best = j;
        in_nucleus[best] = true;
        covered += p[best];
    }
    int counts[VOCAB] = {0};
    uint32_t first[32], again[32], other[32];
    SB_CHECK(sb_sampler_create(VOCAB, temperature, top_p, 1234, &sampler, &err) == SB_OK);
    for (int i = 0; i < DRAWS; i++) {
        uint32_t token = sb_sample(&sampler, logits);
        SB_CHECK_MSG(token < VOCAB && in_nucleus[token], "token %u outside the nucleus", token);
        if (token < VOCAB)
            counts[token]++;
        if (i < 32)
            first[i] = token;
    }
    sb_sampler_free(&sampler);
    for (int j = 0; j < VOCAB; j++) {
        double expected = in_nucleus[j] ? p[j] / covered : 0.0;
        double standard_error = sqrt(expected * (1.0 - expected) / DRAWS) + 1e-12;
        double observed = (double)counts[j] / DRAWS;
        SB_CHECK_MSG(fabs(observed - expected) <= 5.0 * standard_error, "token %d: frequency %.4f, expected %.4f", j,
                     observed, expected);
    }
    /* the same seed, the same tokens; another seed, others */
    SB_CHECK(sb_sampler_create(VOCAB, temperature, top_p, 1234, &sampler, &err) == SB_OK);
    for (int i = 0; i < 32; i++)
        again[i] = sb_sample(&sampler, logits);
    sb_sampler_free(&sampler);
    SB_CHECK(memcmp(first, again, sizeof first) == 0);
    SB_CHECK(sb_sampler_create(VOCAB, temperature, top_p, 1235, &sampler, &err) == SB_OK);
    for (int i = 0; i < 32; i++)
        other[i] = sb_sample(&sampler, logits);
    sb_sampler_free(&sampler);
    SB_CHECK(memcmp(first, other, sizeof first) != 0);

    /* top_p 1 and a high temperature: every token appears, the least likely too */
    SB_CHECK(sb_sampler_create(VOCAB, 50.0, 1.0, 99, &sampler, &err) == SB_OK);
    memset(counts, 0, sizeof counts);
    for (int i = 0; i < DRAWS; i++)
        counts[sb_sample(&sampler, logits)]++;
    for (int j = 0; j < VOCAB; j++)
        SB_CHECK_MSG(counts[j] > DRAWS / VOCAB / 2, "token %d drawn %d times at T = 50", j, counts[j]);
    sb_sampler_free(&sampler);

    /* uniform draws in [0, 1) */
    SB_CHECK(sb_sampler_create(VOCAB, 1.0, 1.0, 5, &sampler, &err) == SB_OK);
    double mean = 0.0;
    for (int i = 0; i < DRAWS; i++) {
        double u = sb_sampler_uniform(&sampler);
        SB_CHECK(u >= 0.0 && u < 1.0);
        mean += u / DRAWS;
    }
    SB_CHECK_NEAR(mean, 0.5, 0.01);
    sb_sampler_free(&sampler);

    /* bad options */
    SB_CHECK(sb_sampler_create(VOCAB, -0.1, 0.9, 1, &sampler, &err) == SB_ERR_USAGE && strstr(err.message, "temperature"));
    SB_CHECK(sb_sampler_create(VOCAB, NAN, 0.9, 1, &sampler, &err) == SB_ERR_USAGE);
    SB_CHECK(sb_sampler_create(VOCAB, 1.0, 0.0, 1, &sampler, &err) == SB_ERR_USAGE && strstr(err.message, "top-p"));
    SB_CHECK(sb_sampler_create(VOCAB, 1.0, 1.5, 1, &sampler, &err) == SB_ERR_USAGE);
    return sb_test_finish("test_sample");
}
