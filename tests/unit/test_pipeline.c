/* The model run as a pipeline over the ranks of MPI_COMM_WORLD gives the loss and the
 * calibration statistics (E[x^2], Fisher, gradient sums) of the single-process runtime, for
 * any rank count. As a unit test it runs as one process; tests/cli/test_pipeline_ranks.sh
 * runs it under mpirun -n 2, 3, 4 (stories260K has 5 layers: stages of 1-3 layers). */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sb_config.h"
#include "sb_model_load.h"
#include "sb_pipeline.h"
#include "sb_test.h"
#include "sb_tokens.h"

/* Single-process reference statistics for layer `layer`. */
typedef struct reference {
    sb_layer_stats *layers;
    int64_t count;
} reference;

static double max_relative(const float *a, const float *b, int64_t n)
{
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(b[i]));
    for (int64_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)a[i] - b[i]) / (scale > 0 ? scale : 1));
    return worst;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char model_dir[4200];
    const char *shared = getenv("SB_SHARED_DIR");
    sb_test_format(model_dir, sizeof model_dir, "%s/models/stories260K-hf", shared ? shared : "../shared");
    char probe[4400];
    sb_test_format(probe, sizeof probe, "%s/model.safetensors", model_dir);
    if (access(probe, R_OK) != 0)
        sb_test_format(model_dir, sizeof model_dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    sb_error err = {0};
    sb_model_config config;
    sb_checkpoint checkpoint;
    if (sb_config_load(model_dir, &config, &err) != SB_OK || sb_checkpoint_open(model_dir, &checkpoint, &err) != SB_OK) {
        fprintf(stderr, "%s\n", err.message);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const sb_model_shape *shape = &config.shape;
    /* 6 windows of 32 tokens from a deterministic stream, in micro-batches of 2 */
    enum { WINDOWS = 6, CTX = 32, BATCH = 2 };
    uint32_t tokens[WINDOWS * CTX];
    sb_test_rng rng = {5};
    for (int i = 0; i < WINDOWS * CTX; i++)
        tokens[i] = (uint32_t)(sb_test_next(&rng) % (uint64_t)shape->vocab_size);

    sb_safetensors_source source = {&checkpoint, true};
    sb_pipeline pipeline;
    SB_CHECK(sb_pipeline_create(MPI_COMM_WORLD, shape, sb_safetensors_fetch, &source, 1, &pipeline, &err) == SB_OK);
    int64_t nlocal = pipeline.layer_end - pipeline.layer_begin;
    sb_layer_stats *stats = calloc((size_t)(nlocal > 0 ? nlocal : 1), sizeof *stats);
    for (int64_t i = 0; i < nlocal; i++)
        SB_CHECK(sb_layer_stats_create(shape, pipeline.layer_begin + i, true, true, true, &stats[i], &err) == SB_OK);
    sb_pass_request request = {.backward = true, .stats = stats};
    sb_nll nll = {0, 0};
    SB_CHECK(sb_pipeline_pass(&pipeline, tokens, WINDOWS, CTX, BATCH, &request, &nll, &err) == SB_OK);
    sb_nll forward_only = {0, 0};
    SB_CHECK(sb_pipeline_pass(&pipeline, tokens, WINDOWS, CTX, 3, NULL, &forward_only, &err) == SB_OK);
    /* the same pass on 2 threads per rank: the same bits (fixed GEMM blocks, ordered reductions) */
    pipeline.threads = 2;
    sb_nll two_threads = {0, 0};
    SB_CHECK(sb_pipeline_pass(&pipeline, tokens, WINDOWS, CTX, 3, NULL, &two_threads, &err) == SB_OK);
    SB_CHECK_MSG(two_threads.sum == forward_only.sum, "2 threads %.17g vs 1 thread %.17g", two_threads.sum,
                 forward_only.sum);
    pipeline.threads = 1;

    /* the reference: the whole model in this process, the same micro-batches */
    sb_model model;
    SB_CHECK(sb_model_load_checkpoint(shape, &checkpoint, &model, &err) == SB_OK);
    sb_model_workspace *workspace;
    SB_CHECK(sb_model_workspace_create(shape, CTX, BATCH, 1, true, &workspace, &err) == SB_OK);
    int64_t layers = shape->num_hidden_layers;
    sb_layer_cache **caches = calloc((size_t)layers, sizeof *caches);
    for (int64_t l = 0; l < layers; l++)
        SB_CHECK(sb_layer_cache_create(shape, l, BATCH * CTX, &caches[l], &err) == SB_OK);
    sb_layer_stats *expected = calloc((size_t)layers, sizeof *expected);
    for (int64_t l = 0; l < layers; l++)
        SB_CHECK(sb_layer_stats_create(shape, l, true, true, true, &expected[l], &err) == SB_OK);
    sb_stats_sink sink = {expected, 0, layers};
    sb_gradient_sink gradients = {sb_stats_on_gradient, NULL, &sink};
    sb_nll reference_nll = {0, 0};
    for (int w = 0; w < WINDOWS; w += BATCH)
        SB_CHECK(sb_model_backward(&model, tokens + w * CTX, BATCH, CTX, workspace, caches, sb_stats_on_activation, &sink,
                                   &gradients, &reference_nll, &err) == SB_OK);
    SB_CHECK(nll.count == reference_nll.count && nll.count == WINDOWS * (CTX - 1));
    SB_CHECK_NEAR(nll.sum, reference_nll.sum, 1e-9 * fabs(reference_nll.sum));
    SB_CHECK_NEAR(forward_only.sum, reference_nll.sum, 1e-6 * fabs(reference_nll.sum));
    double worst_act = 0, worst_fisher = 0, worst_grad = 0;
    for (int64_t i = 0; i < nlocal; i++) {
        const sb_layer_stats *got = &stats[i], *want = &expected[pipeline.layer_begin + i];
        SB_CHECK(got->count == want->count);
        for (int64_t k = 0; k < got->count; k++) {
            const sb_weight_stats *g = &got->weights[k], *x = &want->weights[k];
            int64_t n = g->rows * g->cols;
            for (int64_t j = 0; j < g->cols; j++)
                worst_act = fmax(worst_act, fabs(g->act_sum[j] - x->act_sum[j]) / (x->act_sum[j] + 1e-30));
            worst_fisher = fmax(worst_fisher, max_relative(g->fisher_sum, x->fisher_sum, n));
            worst_grad = fmax(worst_grad, max_relative(g->grad_sum, x->grad_sum, n));
        }
        SB_CHECK(got->act_tokens == WINDOWS * CTX && got->scored_tokens == WINDOWS * (CTX - 1));
    }
    double local_worst[3] = {worst_act, worst_fisher, worst_grad}, worst[3];
    MPI_Allreduce(local_worst, worst, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%d rank(s), %d stages: nll %.9f vs %.9f; max relative differences: act %.2e, fisher %.2e, grad %.2e\n",
               size, pipeline.nstages, nll.sum, reference_nll.sum, worst[0], worst[1], worst[2]);
    /* identical GEMMs on identical rows: equal up to float rounding, which is the same */
    SB_CHECK(worst[0] < 1e-9 && worst[1] < 1e-5 && worst[2] < 1e-5);

    /* backward on one micro-batch in three (the taylor search's subset of windows): the pass's
     * NLL is still over every window, the gradient statistics and backward_nll those of the
     * selected micro-batch alone (windows 2-3), as the single-process runtime gives them */
    for (int64_t i = 0; i < nlocal; i++) {
        sb_layer_stats_free(&stats[i]);
        SB_CHECK(sb_layer_stats_create(shape, pipeline.layer_begin + i, true, true, true, &stats[i], &err) == SB_OK);
    }
    sb_nll subset_nll = {0, 0}, backward_nll = {0, 0};
    sb_pass_request subset = {.backward = true, .stats = stats, .backward_every = 3, .backward_first = 1,
                              .backward_nll = &backward_nll};
    SB_CHECK(sb_pipeline_pass(&pipeline, tokens, WINDOWS, CTX, BATCH, &subset, &subset_nll, &err) == SB_OK);
    SB_CHECK(subset_nll.count == nll.count);
    SB_CHECK_NEAR(subset_nll.sum, nll.sum, 1e-9 * fabs(nll.sum));
    for (int64_t l = 0; l < layers; l++) {
        sb_layer_stats_free(&expected[l]);
        SB_CHECK(sb_layer_stats_create(shape, l, true, true, true, &expected[l], &err) == SB_OK);
    }
    sb_nll one_batch = {0, 0};
    SB_CHECK(sb_model_backward(&model, tokens + BATCH * CTX, BATCH, CTX, workspace, caches, NULL, NULL, &gradients,
                               &one_batch, &err) == SB_OK);
    SB_CHECK(backward_nll.count == BATCH * (CTX - 1) && backward_nll.count == one_batch.count);
    SB_CHECK_NEAR(backward_nll.sum, one_batch.sum, 1e-9 * fabs(one_batch.sum));
    double subset_worst = 0;
    for (int64_t i = 0; i < nlocal; i++) {
        const sb_layer_stats *got = &stats[i], *want = &expected[pipeline.layer_begin + i];
        SB_CHECK(got->scored_tokens == BATCH * (CTX - 1));
        for (int64_t k = 0; k < got->count; k++) {
            const sb_weight_stats *g = &got->weights[k], *x = &want->weights[k];
            int64_t n = g->rows * g->cols;
            subset_worst = fmax(subset_worst, max_relative(g->fisher_sum, x->fisher_sum, n));
            subset_worst = fmax(subset_worst, max_relative(g->grad_sum, x->grad_sum, n));
        }
    }
    double all_subset_worst;
    MPI_Allreduce(&subset_worst, &all_subset_worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    SB_CHECK_MSG(all_subset_worst < 1e-5, "subset gradients differ by %.2e", all_subset_worst);
    for (int64_t l = 0; l < layers; l++) {
        sb_layer_stats_free(&expected[l]);
        sb_layer_cache_free(caches[l]);
    }
    for (int64_t i = 0; i < nlocal; i++)
        sb_layer_stats_free(&stats[i]);
    free(expected);
    free(caches);
    free(stats);
    sb_model_workspace_free(workspace);
    sb_model_free(&model);
    sb_pipeline_free(&pipeline);
    sb_checkpoint_close(&checkpoint);
    sb_config_free(&config);
    int failures = sb_test_failures, total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank == 0)
        return total ? (printf("test_pipeline: %d check(s) failed\n", total), 1) : sb_test_finish("test_pipeline");
    return total ? 1 : 0;
}
