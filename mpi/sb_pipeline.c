#include "sb_pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "sb_agree.h"
#include "sb_mpi.h"
#include "sb_plan.h"

int sb_pipeline_owner(const sb_pipeline *pipeline, int64_t layer)
{
    for (int s = 0; s < pipeline->nstages; s++)
        if (layer < pipeline->stage_layer_begin[s + 1])
            return s;
    return pipeline->nstages - 1;
}

static sb_status load_stage(sb_pipeline *p, sb_weight_fetch fetch, sb_linear_fetch fetch_linear, void *source,
                            sb_linear_storage storage,
                            sb_error *err)
{
    const sb_model_shape *shape = &p->shape;
    int64_t count = p->layer_end - p->layer_begin;
    if (count > 0) {
        p->layers = sb_calloc((size_t)count, sizeof *p->layers, "stage layers", err);
        if (!p->layers)
            return SB_ERR_NOMEM;
    }
    for (int64_t i = 0; i < count; i++) {
        int64_t layer = p->layer_begin + i;
        if (fetch_linear) {
            SB_TRY(sb_layer_weights_alloc_norms(shape, layer, &p->layers[i], err));
            SB_TRY(sb_model_load_layer_linears(shape, layer, fetch, fetch_linear, source, &p->layers[i], err));
        } else {
            SB_TRY(sb_layer_weights_alloc_as(shape, layer, storage, storage, &p->layers[i], err));
            SB_TRY(sb_model_load_layer(shape, layer, fetch, source, &p->layers[i], err));
        }
    }
    size_t matrix = (size_t)(shape->vocab_size * shape->hidden_size) * sizeof(float);
    if (p->stage == 0) {
        if (!(p->embed = sb_malloc(matrix, "embedding", err)))
            return SB_ERR_NOMEM;
        SB_TRY(sb_model_load_embed(shape, fetch, source, p->embed, err));
    }
    if (p->stage == p->nstages - 1) {
        if (!(p->final_norm = sb_malloc((size_t)shape->hidden_size * sizeof(float), "final norm", err)))
            return SB_ERR_NOMEM;
        if (shape->tie_word_embeddings && p->embed) {
            p->lm_head = p->embed;
            SB_TRY(sb_model_load_head(shape, fetch, source, p->final_norm, NULL, err));
        } else {
            if (!(p->lm_head = sb_malloc(matrix, "lm_head", err)))
                return SB_ERR_NOMEM;
            SB_TRY(sb_model_load_head(shape, fetch, source, p->final_norm,
                                      shape->tie_word_embeddings ? NULL : p->lm_head, err));
            if (shape->tie_word_embeddings)
                SB_TRY(sb_model_load_embed(shape, fetch, source, p->lm_head, err));
        }
    }
    return SB_OK;
}

/* fetch_linear: the layers' linear weights in the source's own storage (packed); otherwise
 * every matrix held as `storage` (float32 or BF16). */
static sb_status pipeline_create(MPI_Comm comm, const sb_model_shape *shape, sb_weight_fetch fetch,
                                 sb_linear_fetch fetch_linear, void *source, int threads,
                                 sb_linear_storage storage, sb_pipeline *p, sb_error *err)
{
    memset(p, 0, sizeof *p);
    p->comm = comm;
    p->shape = *shape;
    p->threads = threads > 0 ? threads : 1;
    SB_TRY(sb_mpi_rank_size(comm, &p->rank, &p->size, err));
    int64_t layers = shape->num_hidden_layers;
    p->nstages = sb_stage_count(p->size, layers);
    p->stage = p->rank < p->nstages ? p->rank : -1;
    p->stage_layer_begin = sb_calloc((size_t)p->nstages + 1, sizeof *p->stage_layer_begin, "pipeline", err);
    sb_status status = p->stage_layer_begin ? SB_OK : SB_ERR_NOMEM;
    if (status == SB_OK) {
        /* Llama layers are all alike: an even split balances compute and memory */
        for (int s = 0; s <= p->nstages; s++)
            p->stage_layer_begin[s] = sb_stage_first_layer(layers, p->nstages, s);
        if (p->stage >= 0) {
            p->layer_begin = p->stage_layer_begin[p->stage];
            p->layer_end = p->stage_layer_begin[p->stage + 1];
            /* the source holds this stage's tensors with their shapes before anything is
             * allocated from the shape (which may come from a hostile config.json) */
            bool last = p->stage == p->nstages - 1;
            status = sb_model_check_source(shape, fetch, source, p->layer_begin, p->layer_end,
                                           p->stage == 0 || (last && shape->tie_word_embeddings), last, err);
            if (status == SB_OK)
                status = load_stage(p, fetch, fetch_linear, source, storage, err);
        }
    }
    status = sb_agree(comm, status, err);
    if (status != SB_OK)
        sb_pipeline_free(p);
    return status;
}

sb_status sb_pipeline_create(MPI_Comm comm, const sb_model_shape *shape, sb_weight_fetch fetch, void *source,
                             int threads, sb_pipeline *p, sb_error *err)
{
    return pipeline_create(comm, shape, fetch, NULL, source, threads, SB_LINEAR_STORAGE_F32, p, err);
}

sb_status sb_pipeline_create_with(MPI_Comm comm, const sb_model_shape *shape, sb_weight_fetch fetch, void *source,
                                  int threads, sb_linear_storage storage, sb_pipeline *p, sb_error *err)
{
    return pipeline_create(comm, shape, fetch, NULL, source, threads, storage, p, err);
}

sb_status sb_pipeline_create_linears(MPI_Comm comm, const sb_model_shape *shape, sb_weight_fetch fetch,
                                     sb_linear_fetch fetch_linear, void *source, int threads, sb_pipeline *p,
                                     sb_error *err)
{
    return pipeline_create(comm, shape, fetch, fetch_linear, source, threads, SB_LINEAR_STORAGE_F32, p, err);
}

void sb_pipeline_free(sb_pipeline *p)
{
    for (int64_t i = 0; p->layers && i < p->layer_end - p->layer_begin; i++)
        sb_layer_weights_free(&p->layers[i]);
    free(p->layers);
    if (p->lm_head != p->embed)
        free(p->lm_head);
    free(p->embed);
    free(p->final_norm);
    free(p->stage_layer_begin);
    memset(p, 0, sizeof *p);
}

/* A status word, then (if it is OK) the payload: batch x ctx x hidden floats, which accepted
 * options can make larger than an MPI count (int), so it travels in pieces (mpi/comm/sb_mpi.h). */
static sb_status send_block(const sb_pipeline *p, int to_stage, int tag, sb_status status, const float *data,
                            int64_t count, sb_error *err)
{
    int word = (int)status;
    if (SB_MPI_CALL(err, MPI_Send(&word, 1, MPI_INT, to_stage, 2 * tag, p->comm)) != SB_OK ||
        (status == SB_OK && sb_mpi_send_floats(data, count, to_stage, 2 * tag + 1, p->comm, err) != SB_OK))
        return sb_error_prefix(err, "pipeline: send to stage %d", to_stage);
    return SB_OK;
}

static sb_status recv_block(const sb_pipeline *p, int from_stage, int tag, float *data, int64_t count,
                            sb_status *upstream, sb_error *err)
{
    int word;
    if (SB_MPI_CALL(err, MPI_Recv(&word, 1, MPI_INT, from_stage, 2 * tag, p->comm, MPI_STATUS_IGNORE)) != SB_OK)
        return sb_error_prefix(err, "pipeline: receive from stage %d", from_stage);
    *upstream = (sb_status)word;
    if (word == SB_OK && sb_mpi_recv_floats(data, count, from_stage, 2 * tag + 1, p->comm, err) != SB_OK)
        return sb_error_prefix(err, "pipeline: receive from stage %d", from_stage);
    return SB_OK;
}

/* The pass's activation hook: calibration statistics and routing counts, whichever were asked. */
typedef struct pass_hooks {
    sb_stats_sink *sink; /* NULL: no statistics */
    sb_routing_stats *routing;
} pass_hooks;

static sb_status pass_hook(void *user, const sb_linear_input *input, sb_error *err)
{
    pass_hooks *hooks = user;
    if (hooks->routing)
        sb_routing_stats_add(hooks->routing, input);
    return hooks->sink ? sb_stats_on_activation(hooks->sink, input, err) : SB_OK;
}

sb_status sb_pipeline_pass(sb_pipeline *p, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                           int64_t batch_windows, const sb_pass_request *request, sb_nll *nll, sb_error *err)
{
    const sb_model_shape *shape = &p->shape;
    bool backward = request && request->backward;
    sb_layer_stats *stats = request ? request->stats : NULL;
    sb_nll local = {0, 0}, local_backward = {0, 0};
    int64_t backward_every = request && request->backward_every > 1 ? request->backward_every : 1;
    int64_t backward_first = request ? request->backward_first : 0;
    sb_status status = SB_OK;
    sb_model_workspace *workspace = NULL;
    sb_layer_cache **caches = NULL;
    float *x = NULL, *dx = NULL;
    int64_t nlocal = p->layer_end - p->layer_begin;
    if (batch_windows < 1)
        batch_windows = 1;
    if (batch_windows > n_windows)
        batch_windows = n_windows;
    int64_t max_tokens = batch_windows * ctx;
    if (p->stage >= 0) {
        status = sb_model_workspace_create(shape, ctx, batch_windows, p->threads, backward, &workspace, err);
        size_t bytes = (size_t)(max_tokens * shape->hidden_size) * sizeof(float);
        if (status == SB_OK && !(x = sb_malloc(bytes, "residual stream", err)))
            status = SB_ERR_NOMEM;
        if (status == SB_OK && backward && !(dx = sb_malloc(bytes, "residual gradient", err)))
            status = SB_ERR_NOMEM;
        if (status == SB_OK && backward && nlocal > 0) {
            caches = sb_calloc((size_t)nlocal, sizeof *caches, "layer caches", err);
            status = caches ? SB_OK : SB_ERR_NOMEM;
            for (int64_t i = 0; i < nlocal && status == SB_OK; i++)
                status = sb_layer_cache_create(shape, p->layer_begin + i, max_tokens, &caches[i], err);
        }
    }
    /* allocation failures are agreed on before any message flows */
    status = sb_agree(p->comm, status, err);
    sb_stats_sink sink = {stats, p->layer_begin, nlocal};
    sb_gradient_sink gradients = {sb_stats_on_gradient, NULL, &sink};
    if (request && request->gradients)
        gradients = *request->gradients;
    pass_hooks hooks = {stats ? &sink : NULL, request ? request->routing : NULL};
    sb_activation_fn hook = hooks.sink || hooks.routing ? pass_hook : NULL;
    int first = 0, last = p->nstages - 1;
    /* `failed` is this stage's own first failure; `skip` says one arrived from elsewhere (its
     * message travels through the agreement at the end, from the rank that had it). A stage that
     * failed or skips still
     * runs the message protocol for every remaining micro-batch, doing no work: every message
     * any stage sends is received, so nobody blocks, and the failure reaches every stage. */
    sb_status failed = status;
    bool skip = false; /* a failure elsewhere reached this stage: do no more work */
    int64_t micro_batches = (n_windows + batch_windows - 1) / batch_windows;
    for (int64_t m = 0; status == SB_OK && p->stage >= 0 && m < micro_batches; m++) {
        int64_t w0 = m * batch_windows;
        int64_t nw = n_windows - w0 < batch_windows ? n_windows - w0 : batch_windows;
        int64_t ntok = nw * ctx, floats = ntok * shape->hidden_size;
        const uint32_t *batch = tokens + w0 * ctx;
        int tag = (int)(m % 16384);
        sb_status upstream = SB_OK;
        /* backward for this micro-batch? (the same answer on every stage) */
        bool back = backward && m % backward_every == backward_first;
        sb_nll before = local;
        /* forward */
        if (p->stage == first) {
            if (failed == SB_OK && !skip)
                failed = sb_embed_forward(shape, p->embed, batch, ntok, x, err);
        } else {
            if ((status = recv_block(p, p->stage - 1, tag, x, floats, &upstream, err)) != SB_OK)
                break;
            skip |= upstream != SB_OK;
        }
        for (int64_t i = 0; i < nlocal && failed == SB_OK && !skip; i++)
            failed = sb_layer_forward(shape, p->layer_begin + i, &p->layers[i], x, nw, ctx,
                                      back ? caches[i] : NULL, hook, &hooks, workspace, err);
        if (p->stage != last) {
            if ((status = send_block(p, p->stage + 1, tag, skip ? SB_ERR_MPI : failed, x, floats, err)) != SB_OK)
                break;
        } else if (failed == SB_OK && !skip) {
            failed = sb_head_forward(shape, p->final_norm, p->lm_head, x, batch, nw, ctx, workspace, &local,
                                     back ? dx : NULL, err);
        }
        if (!back)
            continue;
        local_backward.sum += local.sum - before.sum;
        local_backward.count += local.count - before.count;
        /* backward, from the last stage to the first */
        if (p->stage != last) {
            if ((status = recv_block(p, p->stage + 1, tag, dx, floats, &upstream, err)) != SB_OK)
                break;
            skip |= upstream != SB_OK;
        }
        for (int64_t i = nlocal - 1; i >= 0 && failed == SB_OK && !skip; i--)
            failed = sb_layer_backward(shape, p->layer_begin + i, &p->layers[i], caches[i], dx, &gradients, workspace,
                                       err);
        if (failed == SB_OK && !skip && stats)
            for (int64_t i = 0; i < nlocal; i++)
                stats[i].scored_tokens += nw * (ctx - 1);
        if (p->stage != first &&
            (status = send_block(p, p->stage - 1, tag, skip ? SB_ERR_MPI : failed, dx, floats, err)) != SB_OK)
            break;
    }
    if (status == SB_OK)
        status = failed;
    status = sb_agree(p->comm, status, err);
    if (status == SB_OK) {
        double values[4] = {local.sum, (double)local.count, local_backward.sum, (double)local_backward.count};
        status = SB_MPI_CALL(err, MPI_Bcast(values, 4, MPI_DOUBLE, last, p->comm));
        nll->sum = values[0];
        nll->count = (int64_t)values[1];
        if (request && request->backward_nll) {
            request->backward_nll->sum = values[2];
            request->backward_nll->count = (int64_t)values[3];
        }
    }
    for (int64_t i = 0; caches && i < nlocal; i++)
        sb_layer_cache_free(caches[i]);
    free(caches);
    free(x);
    free(dx);
    sb_model_workspace_free(workspace);
    return status;
}
