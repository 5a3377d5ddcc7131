#include "sb_reorder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Sizes -------------------------------------------------------------------------------------- */

typedef struct dims {
    int64_t hidden, intermediate, heads, kv_heads, head_dim, group, q_dim, kv_dim;
} dims;

static dims dims_of(const sb_model_shape *shape)
{
    dims d;
    d.hidden = shape->hidden_size;
    d.intermediate = shape->intermediate_size;
    d.heads = shape->num_attention_heads;
    d.kv_heads = shape->num_key_value_heads;
    d.head_dim = shape->head_dim;
    d.group = d.heads / d.kv_heads;
    d.q_dim = d.heads * d.head_dim;
    d.kv_dim = d.kv_heads * d.head_dim;
    return d;
}

static void set_identity(int32_t *order, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        order[i] = (int32_t)i;
}

static bool is_identity(const int32_t *order, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (order[i] != i)
            return false;
    return true;
}

/* ---- The permutation set ------------------------------------------------------------------------ */

sb_status sb_reorder_create(const sb_model_shape *shape, int64_t layer_begin, int64_t layer_end, sb_reorder *reorder,
                            sb_error *err)
{
    memset(reorder, 0, sizeof *reorder);
    SB_TRY(sb_model_shape_check(shape, err));
    if (layer_begin < 0 || layer_end < layer_begin || layer_end > shape->num_hidden_layers)
        return sb_error_set(err, SB_ERR_INPUT, "reordering: layers [%lld, %lld) are not within the model's %lld",
                            (long long)layer_begin, (long long)layer_end, (long long)shape->num_hidden_layers);
    dims d = dims_of(shape);
    reorder->shape = *shape;
    reorder->layer_begin = layer_begin;
    reorder->layer_end = layer_end;
    int64_t nlayers = layer_end - layer_begin;
    reorder->hidden = sb_malloc((size_t)d.hidden * sizeof(int32_t), "hidden order", err);
    reorder->layers = sb_calloc((size_t)(nlayers > 0 ? nlayers : 1), sizeof *reorder->layers, "layer orders", err);
    if (!reorder->hidden || !reorder->layers) {
        sb_reorder_free(reorder);
        return SB_ERR_NOMEM;
    }
    set_identity(reorder->hidden, d.hidden);
    /* per layer: mlp, kv_heads, q_heads, head_dims, then the derived q_rows, k_rows, v_rows, o_cols */
    size_t per_layer = (size_t)(d.intermediate + d.kv_heads + d.heads + d.kv_dim + d.q_dim + 2 * d.kv_dim + d.q_dim);
    for (int64_t i = 0; i < nlayers; i++) {
        sb_layer_reorder *l = &reorder->layers[i];
        int32_t *p = l->storage = sb_malloc(per_layer * sizeof(int32_t), "layer orders", err);
        if (!p) {
            sb_reorder_free(reorder);
            return SB_ERR_NOMEM;
        }
        l->mlp = p, p += d.intermediate;
        l->kv_heads = p, p += d.kv_heads;
        l->q_heads = p, p += d.heads;
        l->head_dims = p, p += d.kv_dim;
        l->q_rows = p, p += d.q_dim;
        l->k_rows = p, p += d.kv_dim;
        l->v_rows = p, p += d.kv_dim;
        l->o_cols = p;
        set_identity(l->mlp, d.intermediate);
        set_identity(l->kv_heads, d.kv_heads);
        set_identity(l->q_heads, d.heads);
        for (int64_t g = 0; g < d.kv_heads; g++)
            set_identity(l->head_dims + g * d.head_dim, d.head_dim);
    }
    return sb_reorder_commit(reorder, err);
}

void sb_reorder_free(sb_reorder *reorder)
{
    if (reorder->layers)
        for (int64_t i = 0; i < reorder->layer_end - reorder->layer_begin; i++)
            free(reorder->layers[i].storage);
    free(reorder->layers);
    free(reorder->hidden);
    memset(reorder, 0, sizeof *reorder);
}

sb_layer_reorder *sb_reorder_layer(const sb_reorder *reorder, int64_t layer)
{
    if (layer < reorder->layer_begin || layer >= reorder->layer_end)
        return NULL;
    return &reorder->layers[layer - reorder->layer_begin];
}

/* Checks that order[0..n) is a permutation of 0..n-1, using `seen` (n bytes) as scratch. */
static sb_status check_permutation(const int32_t *order, int64_t n, uint8_t *seen, const char *what, int64_t layer,
                                   sb_error *err)
{
    char where[48] = "";
    if (layer >= 0)
        snprintf(where, sizeof where, "layer %lld: ", (long long)layer);
    memset(seen, 0, (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        if (order[i] < 0 || order[i] >= n)
            return sb_error_set(err, SB_ERR_INPUT, "reordering: %s%s order: entry %lld is %lld, outside [0, %lld)",
                                where, what, (long long)i, (long long)order[i], (long long)n);
        if (seen[order[i]]++)
            return sb_error_set(err, SB_ERR_INPUT,
                                "reordering: %s%s order is not a permutation: %lld appears twice (again at %lld)",
                                where, what, (long long)order[i], (long long)i);
    }
    return SB_OK;
}

static sb_status commit_layer(const dims *d, int64_t layer, sb_layer_reorder *l, uint8_t *seen, sb_error *err)
{
    SB_TRY(check_permutation(l->mlp, d->intermediate, seen, "mlp (intermediate)", layer, err));
    SB_TRY(check_permutation(l->kv_heads, d->kv_heads, seen, "key/value head", layer, err));
    SB_TRY(check_permutation(l->q_heads, d->heads, seen, "query head", layer, err));
    for (int64_t h = 0; h < d->heads; h++) {
        int64_t kv_new = h / d->group, kv_old = l->kv_heads[kv_new];
        if (l->q_heads[h] / d->group != kv_old)
            return sb_error_set(err, SB_ERR_INPUT,
                                "reordering: layer %lld: query head %d moves to position %lld, in the group of "
                                "key/value head %lld, but it attends with key/value head %lld (grouped-query "
                                "attention: query heads stay with their key/value head)",
                                (long long)layer, l->q_heads[h], (long long)h, (long long)kv_old,
                                (long long)(l->q_heads[h] / d->group));
    }
    for (int64_t g = 0; g < d->kv_heads; g++) {
        char what[64];
        snprintf(what, sizeof what, "value channel (key/value head position %lld)", (long long)g);
        SB_TRY(check_permutation(l->head_dims + g * d->head_dim, d->head_dim, seen, what, layer, err));
    }
    for (int64_t h = 0; h < d->heads; h++) {
        const int32_t *dims_of_group = l->head_dims + (h / d->group) * d->head_dim;
        for (int64_t c = 0; c < d->head_dim; c++) {
            l->q_rows[h * d->head_dim + c] = (int32_t)(l->q_heads[h] * d->head_dim + c);
            l->o_cols[h * d->head_dim + c] = (int32_t)(l->q_heads[h] * d->head_dim + dims_of_group[c]);
        }
    }
    for (int64_t g = 0; g < d->kv_heads; g++)
        for (int64_t c = 0; c < d->head_dim; c++) {
            l->k_rows[g * d->head_dim + c] = (int32_t)(l->kv_heads[g] * d->head_dim + c);
            l->v_rows[g * d->head_dim + c] = (int32_t)(l->kv_heads[g] * d->head_dim + l->head_dims[g * d->head_dim + c]);
        }
    l->mlp_identity = is_identity(l->mlp, d->intermediate);
    l->q_identity = is_identity(l->q_rows, d->q_dim);
    l->k_identity = is_identity(l->k_rows, d->kv_dim);
    l->v_identity = is_identity(l->v_rows, d->kv_dim);
    l->o_identity = is_identity(l->o_cols, d->q_dim);
    return SB_OK;
}

sb_status sb_reorder_commit(sb_reorder *reorder, sb_error *err)
{
    reorder->committed = false;
    dims d = dims_of(&reorder->shape);
    int64_t largest = d.hidden > d.intermediate ? d.hidden : d.intermediate;
    largest = largest > d.heads ? largest : d.heads;
    uint8_t *seen = sb_malloc((size_t)largest, "reordering check", err);
    if (!seen)
        return SB_ERR_NOMEM;
    sb_status status = check_permutation(reorder->hidden, d.hidden, seen, "hidden", -1, err);
    for (int64_t layer = reorder->layer_begin; status == SB_OK && layer < reorder->layer_end; layer++)
        status = commit_layer(&d, layer, sb_reorder_layer(reorder, layer), seen, err);
    free(seen);
    if (status != SB_OK)
        return status;
    reorder->hidden_identity = is_identity(reorder->hidden, d.hidden);
    reorder->committed = true;
    return SB_OK;
}

bool sb_reorder_is_identity(const sb_reorder *reorder)
{
    if (!reorder->hidden_identity)
        return false;
    for (int64_t i = 0; i < reorder->layer_end - reorder->layer_begin; i++) {
        const sb_layer_reorder *l = &reorder->layers[i];
        if (!(l->mlp_identity && l->q_identity && l->k_identity && l->v_identity && l->o_identity))
            return false;
    }
    return true;
}

/* ---- Orders from importance ---------------------------------------------------------------------- */

void sb_reorder_marginals(const float *w, const double *col_scale, const float *element, int64_t rows, int64_t cols,
                          double *row_sum, double *col_sum)
{
    for (int64_t i = 0; i < rows; i++) {
        double row = 0;
        for (int64_t j = 0; j < cols; j++) {
            double s = 1.0;
            if (w)
                s = (double)w[i * cols + j] * (double)w[i * cols + j];
            if (col_scale)
                s *= col_scale[j];
            if (element)
                s *= (double)element[i * cols + j];
            row += s;
            if (col_sum)
                col_sum[j] += s;
        }
        if (row_sum)
            row_sum[i] += row;
    }
}

typedef struct scored {
    double score;
    int32_t index;
} scored;

/* Descending score, then ascending index: a total order, so qsort's instability cannot show. */
static int compare_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

sb_status sb_reorder_sort_descending(const double *score, int64_t n, int32_t *order, const char *what, sb_error *err)
{
    for (int64_t i = 0; i < n; i++)
        if (isnan(score[i]))
            return sb_error_set(err, SB_ERR_INPUT, "reordering: the importance of %s channel %lld is NaN", what,
                                (long long)i);
    scored *items = sb_malloc((size_t)(n > 0 ? n : 1) * sizeof *items, "reordering sort", err);
    if (!items)
        return SB_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++)
        items[i] = (scored){score[i], (int32_t)i};
    qsort(items, (size_t)n, sizeof *items, compare_scored);
    for (int64_t i = 0; i < n; i++)
        order[i] = items[i].index;
    free(items);
    return SB_OK;
}

static double at(const double *vector, int64_t i) { return vector ? vector[i] : 0.0; }

void sb_reorder_layer_hidden_score(const sb_model_shape *shape, const sb_layer_importance *importance,
                                   double *contribution)
{
    const double *const *row = importance->row, *const *col = importance->col;
    for (int64_t j = 0; j < shape->hidden_size; j++)
        contribution[j] = at(col[SB_LINEAR_Q], j) + at(col[SB_LINEAR_K], j) + at(col[SB_LINEAR_V], j) +
                          at(row[SB_LINEAR_O], j) + at(col[SB_LINEAR_GATE], j) + at(col[SB_LINEAR_UP], j) +
                          at(row[SB_LINEAR_DOWN], j);
}

sb_status sb_reorder_hidden_from_contributions(sb_reorder *reorder, const double *contributions,
                                               const double *extra, sb_error *err)
{
    int64_t hidden = reorder->shape.hidden_size, layers = reorder->shape.num_hidden_layers;
    double *score = sb_calloc((size_t)hidden, sizeof *score, "hidden importance", err);
    if (!score)
        return SB_ERR_NOMEM;
    for (int64_t l = 0; l < layers; l++)
        for (int64_t j = 0; j < hidden; j++)
            score[j] += contributions[l * hidden + j];
    if (extra)
        for (int64_t j = 0; j < hidden; j++)
            score[j] += extra[j];
    sb_status status = sb_reorder_sort_descending(score, hidden, reorder->hidden, "hidden", err);
    free(score);
    if (status != SB_OK) {
        reorder->committed = false;
        return status;
    }
    return sb_reorder_commit(reorder, err);
}

/* Per-query-head score (q rows + o columns of the head), kv-head score (its group's query heads
 * + its k and v rows) and per-value-channel score, as the header's criterion says. */
static sb_status layer_orders(const dims *d, const sb_layer_importance *imp, const sb_reorder_options *options,
                              sb_layer_reorder *l, sb_error *err)
{
    const double *const *row = imp->row, *const *col = imp->col;
    set_identity(l->mlp, d->intermediate);
    set_identity(l->kv_heads, d->kv_heads);
    set_identity(l->q_heads, d->heads);
    for (int64_t g = 0; g < d->kv_heads; g++)
        set_identity(l->head_dims + g * d->head_dim, d->head_dim);
    int64_t scratch = d->intermediate > d->heads ? d->intermediate : d->heads;
    scratch = scratch > d->head_dim ? scratch : d->head_dim;
    double *score = sb_malloc((size_t)(scratch + d->heads) * sizeof *score, "layer importance", err);
    int32_t *order = sb_malloc((size_t)scratch * sizeof *order, "layer order", err);
    sb_status status = (score && order) ? SB_OK : SB_ERR_NOMEM;
    double *head_score = score ? score + scratch : NULL;

    if (status == SB_OK && options->mlp) {
        for (int64_t i = 0; i < d->intermediate; i++)
            score[i] = at(row[SB_LINEAR_GATE], i) + at(row[SB_LINEAR_UP], i) + at(col[SB_LINEAR_DOWN], i);
        status = sb_reorder_sort_descending(score, d->intermediate, l->mlp, "intermediate", err);
    }
    if (status == SB_OK && options->heads) {
        for (int64_t h = 0; h < d->heads; h++) {
            double s = 0;
            for (int64_t c = 0; c < d->head_dim; c++)
                s += at(row[SB_LINEAR_Q], h * d->head_dim + c) + at(col[SB_LINEAR_O], h * d->head_dim + c);
            head_score[h] = s;
        }
        for (int64_t g = 0; g < d->kv_heads; g++) {
            double s = 0;
            for (int64_t i = 0; i < d->group; i++)
                s += head_score[g * d->group + i];
            for (int64_t c = 0; c < d->head_dim; c++)
                s += at(row[SB_LINEAR_K], g * d->head_dim + c) + at(row[SB_LINEAR_V], g * d->head_dim + c);
            score[g] = s;
        }
        status = sb_reorder_sort_descending(score, d->kv_heads, l->kv_heads, "key/value head", err);
        for (int64_t g = 0; status == SB_OK && g < d->kv_heads; g++) {
            int64_t first = l->kv_heads[g] * d->group; /* the old group's first query head */
            status = sb_reorder_sort_descending(head_score + first, d->group, order, "query head", err);
            for (int64_t i = 0; status == SB_OK && i < d->group; i++)
                l->q_heads[g * d->group + i] = (int32_t)(first + order[i]);
        }
    }
    for (int64_t g = 0; status == SB_OK && options->head_dims && g < d->kv_heads; g++) {
        int64_t old = l->kv_heads[g];
        for (int64_t c = 0; c < d->head_dim; c++) {
            double s = at(row[SB_LINEAR_V], old * d->head_dim + c);
            for (int64_t i = 0; i < d->group; i++)
                s += at(col[SB_LINEAR_O], (old * d->group + i) * d->head_dim + c);
            score[c] = s;
        }
        status = sb_reorder_sort_descending(score, d->head_dim, l->head_dims + g * d->head_dim, "value", err);
    }
    free(score);
    free(order);
    return status;
}

static const sb_reorder_options all_orders = {true, true, true, true};

sb_status sb_reorder_layer_from_importance(sb_reorder *reorder, int64_t layer, const sb_layer_importance *importance,
                                           const sb_reorder_options *options, sb_error *err)
{
    sb_layer_reorder *l = sb_reorder_layer(reorder, layer);
    if (!l)
        return sb_error_set(err, SB_ERR_INTERNAL, "reordering: layer %lld is not among the layers held [%lld, %lld)",
                            (long long)layer, (long long)reorder->layer_begin, (long long)reorder->layer_end);
    dims d = dims_of(&reorder->shape);
    sb_status status = layer_orders(&d, importance, options ? options : &all_orders, l, err);
    if (status != SB_OK) {
        reorder->committed = false;
        return sb_error_prefix(err, "layer %lld", (long long)layer);
    }
    return sb_reorder_commit(reorder, err);
}

sb_status sb_reorder_from_importance(sb_reorder *reorder, const sb_layer_importance *importance,
                                     const double *extra, const sb_reorder_options *options, sb_error *err)
{
    const sb_model_shape *shape = &reorder->shape;
    if (reorder->layer_begin != 0 || reorder->layer_end != shape->num_hidden_layers)
        return sb_error_set(err, SB_ERR_INTERNAL,
                            "reordering: the whole-model orders need every layer; this one holds [%lld, %lld)",
                            (long long)reorder->layer_begin, (long long)reorder->layer_end);
    options = options ? options : &all_orders;
    dims d = dims_of(shape);
    sb_status status = SB_OK;
    for (int64_t layer = 0; status == SB_OK && layer < shape->num_hidden_layers; layer++) {
        status = layer_orders(&d, &importance[layer], options, sb_reorder_layer(reorder, layer), err);
        if (status != SB_OK)
            sb_error_prefix(err, "layer %lld", (long long)layer);
    }
    if (status == SB_OK && options->hidden) {
        double *contributions =
            sb_malloc((size_t)(shape->num_hidden_layers * d.hidden) * sizeof *contributions, "hidden importance", err);
        if (!contributions)
            status = SB_ERR_NOMEM;
        for (int64_t layer = 0; status == SB_OK && layer < shape->num_hidden_layers; layer++)
            sb_reorder_layer_hidden_score(shape, &importance[layer], contributions + layer * d.hidden);
        if (status == SB_OK)
            status = sb_reorder_hidden_from_contributions(reorder, contributions, extra, err);
        free(contributions);
        return status;
    }
    if (status == SB_OK) {
        set_identity(reorder->hidden, d.hidden);
        return sb_reorder_commit(reorder, err);
    }
    reorder->committed = false;
    return status;
}

/* ---- Per-tensor orders ------------------------------------------------------------------------------ */

sb_status sb_reorder_tensor_perm(const sb_reorder *reorder, sb_tensor_role role, int64_t layer,
                                 sb_tensor_perm *perm, sb_error *err)
{
    memset(perm, 0, sizeof *perm);
    if (!reorder->committed)
        return sb_error_set(err, SB_ERR_INTERNAL, "reordering: used before sb_reorder_commit succeeded");
    const sb_model_shape *shape = &reorder->shape;
    const int32_t *hidden = reorder->hidden_identity ? NULL : reorder->hidden;
    switch (role) {
    case SB_ROLE_EMBED:
    case SB_ROLE_LM_HEAD:
        perm->rows = shape->vocab_size, perm->cols = shape->hidden_size, perm->col_src = hidden;
        return SB_OK;
    case SB_ROLE_FINAL_NORM:
    case SB_ROLE_ATTN_NORM:
    case SB_ROLE_MLP_NORM:
        perm->rows = 1, perm->cols = shape->hidden_size, perm->col_src = hidden;
        if (role == SB_ROLE_FINAL_NORM)
            return SB_OK;
        break;
    case SB_ROLE_OTHER:
        return sb_error_set(err, SB_ERR_INPUT,
                            "reordering: layer %lld: a tensor of role 'other' cannot be reordered (how it depends "
                            "on the hidden, intermediate and head orders is not known)",
                            (long long)layer);
    default:
        if (!sb_role_is_linear(role))
            return sb_error_set(err, SB_ERR_INPUT, "reordering: layer %lld: tensors of role '%s' cannot be reordered yet",
                                (long long)layer, sb_role_name(role));
        sb_linear_shape(shape, (sb_linear_kind)role, &perm->rows, &perm->cols);
        break;
    }
    const sb_layer_reorder *l = sb_reorder_layer(reorder, layer);
    if (!l)
        return sb_error_set(err, SB_ERR_INTERNAL,
                            "reordering: %s of layer %lld: the layer is not among the layers held [%lld, %lld)",
                            sb_role_name(role), (long long)layer, (long long)reorder->layer_begin,
                            (long long)reorder->layer_end);
    const int32_t *mlp = l->mlp_identity ? NULL : l->mlp;
    switch (role) {
    case SB_ROLE_Q: perm->row_src = l->q_identity ? NULL : l->q_rows, perm->col_src = hidden; break;
    case SB_ROLE_K: perm->row_src = l->k_identity ? NULL : l->k_rows, perm->col_src = hidden; break;
    case SB_ROLE_V: perm->row_src = l->v_identity ? NULL : l->v_rows, perm->col_src = hidden; break;
    case SB_ROLE_O: perm->row_src = hidden, perm->col_src = l->o_identity ? NULL : l->o_cols; break;
    case SB_ROLE_GATE:
    case SB_ROLE_UP: perm->row_src = mlp, perm->col_src = hidden; break;
    case SB_ROLE_DOWN: perm->row_src = hidden, perm->col_src = mlp; break;
    default: break; /* the layer norms: set above */
    }
    return SB_OK;
}

/* One row: dst[j] = src[col_src[j]] (or a copy). */
static void gather_row(const void *src, size_t size, const int32_t *col_src, int64_t cols, void *dst)
{
    if (!col_src) {
        memcpy(dst, src, (size_t)cols * size);
        return;
    }
    /* the common element sizes as typed loads, so the compiler does not call memcpy per element */
    switch (size) {
    case 2: {
        const uint16_t *s = src;
        uint16_t *t = dst;
        for (int64_t j = 0; j < cols; j++)
            t[j] = s[col_src[j]];
        return;
    }
    case 4: {
        const uint32_t *s = src;
        uint32_t *t = dst;
        for (int64_t j = 0; j < cols; j++)
            t[j] = s[col_src[j]];
        return;
    }
    case 8: {
        const uint64_t *s = src;
        uint64_t *t = dst;
        for (int64_t j = 0; j < cols; j++)
            t[j] = s[col_src[j]];
        return;
    }
    default: {
        const char *s = src;
        char *t = dst;
        for (int64_t j = 0; j < cols; j++)
            memcpy(t + (size_t)j * size, s + (size_t)col_src[j] * size, size);
        return;
    }
    }
}

void sb_reorder_gather(const sb_tensor_perm *perm, const void *src, size_t element_size, int64_t row_begin,
                       int64_t row_count, void *dst)
{
    size_t row_bytes = (size_t)perm->cols * element_size;
    for (int64_t i = 0; i < row_count; i++) {
        int64_t source = perm->row_src ? perm->row_src[row_begin + i] : row_begin + i;
        gather_row((const char *)src + (size_t)source * row_bytes, element_size, perm->col_src, perm->cols,
                   (char *)dst + (size_t)i * row_bytes);
    }
}

sb_status sb_reorder_read_rows(const sb_tensor_perm *perm, size_t element_size, sb_row_reader read, void *user,
                               int64_t row_begin, int64_t row_count, void *dst, sb_error *err)
{
    size_t row_bytes = (size_t)perm->cols * element_size;
    for (int64_t i = 0; i < row_count;) {
        int64_t first = perm->row_src ? perm->row_src[row_begin + i] : row_begin + i, run = 1;
        while (i + run < row_count &&
               (perm->row_src ? perm->row_src[row_begin + i + run] : row_begin + i + run) == first + run)
            run++;
        SB_TRY(read(user, first, run, (char *)dst + (size_t)i * row_bytes, err));
        i += run;
    }
    if (!perm->col_src)
        return SB_OK;
    char *scratch = sb_malloc(row_bytes > 0 ? row_bytes : 1, "reordering row", err);
    if (!scratch)
        return SB_ERR_NOMEM;
    for (int64_t i = 0; i < row_count; i++) {
        char *row = (char *)dst + (size_t)i * row_bytes;
        gather_row(row, element_size, perm->col_src, perm->cols, scratch);
        memcpy(row, scratch, row_bytes);
    }
    free(scratch);
    return SB_OK;
}

sb_status sb_reorder_permute(const sb_tensor_perm *perm, void *data, size_t element_size, sb_error *err)
{
    if (!perm->row_src && !perm->col_src)
        return SB_OK;
    size_t row_bytes = (size_t)perm->cols * element_size;
    char *scratch = sb_malloc((row_bytes > 0 ? row_bytes : 1) + (size_t)perm->rows, "reordering scratch", err);
    if (!scratch)
        return SB_ERR_NOMEM;
    char *rows = data;
    if (perm->col_src)
        for (int64_t i = 0; i < perm->rows; i++) {
            gather_row(rows + (size_t)i * row_bytes, element_size, perm->col_src, perm->cols, scratch);
            memcpy(rows + (size_t)i * row_bytes, scratch, row_bytes);
        }
    if (perm->row_src) {
        /* Follow each cycle of the gather: row j takes row row_src[j], until the cycle returns to
         * its start, whose original row waits in the scratch. */
        uint8_t *done = (uint8_t *)scratch + row_bytes;
        memset(done, 0, (size_t)perm->rows);
        for (int64_t start = 0; start < perm->rows; start++) {
            if (done[start])
                continue;
            done[start] = 1;
            if (perm->row_src[start] == start)
                continue;
            memcpy(scratch, rows + (size_t)start * row_bytes, row_bytes);
            int64_t j = start;
            while (perm->row_src[j] != start) {
                int64_t from = perm->row_src[j];
                memcpy(rows + (size_t)j * row_bytes, rows + (size_t)from * row_bytes, row_bytes);
                done[from] = 1;
                j = from;
            }
            memcpy(rows + (size_t)j * row_bytes, scratch, row_bytes);
        }
    }
    free(scratch);
    return SB_OK;
}

/* ---- Folding into the model ------------------------------------------------------------------------ */

static sb_status permute_tensor(const sb_reorder *reorder, sb_tensor_role role, int64_t layer, void *data,
                                size_t element_size, sb_error *err)
{
    sb_tensor_perm perm;
    SB_TRY(sb_reorder_tensor_perm(reorder, role, layer, &perm, err));
    sb_status status = sb_reorder_permute(&perm, data, element_size, err);
    if (status != SB_OK && layer >= 0)
        return sb_error_prefix(err, "reordering layer %lld %s", (long long)layer, sb_role_name(role));
    if (status != SB_OK)
        return sb_error_prefix(err, "reordering %s", sb_role_name(role));
    return SB_OK;
}

sb_status sb_reorder_apply_layer(const sb_reorder *reorder, int64_t layer, sb_layer_weights *weights, sb_error *err)
{
    SB_TRY(permute_tensor(reorder, SB_ROLE_ATTN_NORM, layer, weights->attn_norm, sizeof(float), err));
    SB_TRY(permute_tensor(reorder, SB_ROLE_MLP_NORM, layer, weights->mlp_norm, sizeof(float), err));
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++)
        SB_TRY(permute_tensor(reorder, (sb_tensor_role)k, layer, sb_layer_linear(weights, (sb_linear_kind)k),
                              sizeof(float), err));
    return SB_OK;
}

sb_status sb_reorder_apply_embed(const sb_reorder *reorder, float *embed, sb_error *err)
{
    return permute_tensor(reorder, SB_ROLE_EMBED, -1, embed, sizeof(float), err);
}

sb_status sb_reorder_apply_head(const sb_reorder *reorder, float *final_norm, float *lm_head, sb_error *err)
{
    SB_TRY(permute_tensor(reorder, SB_ROLE_FINAL_NORM, -1, final_norm, sizeof(float), err));
    if (lm_head)
        SB_TRY(permute_tensor(reorder, SB_ROLE_LM_HEAD, -1, lm_head, sizeof(float), err));
    return SB_OK;
}

sb_status sb_reorder_apply_model(const sb_reorder *reorder, sb_model *model, sb_error *err)
{
    const sb_model_shape *shape = &model->shape;
    if (reorder->layer_begin != 0 || reorder->layer_end != shape->num_hidden_layers ||
        reorder->shape.hidden_size != shape->hidden_size || reorder->shape.vocab_size != shape->vocab_size)
        return sb_error_set(err, SB_ERR_INTERNAL,
                            "reordering: a whole model needs orders for all its %lld layers and its shape; this "
                            "reordering holds layers [%lld, %lld)",
                            (long long)shape->num_hidden_layers, (long long)reorder->layer_begin,
                            (long long)reorder->layer_end);
    bool tied = shape->tie_word_embeddings || model->lm_head == model->embed;
    SB_TRY(sb_reorder_apply_embed(reorder, model->embed, err));
    for (int64_t layer = 0; layer < shape->num_hidden_layers; layer++)
        SB_TRY(sb_reorder_apply_layer(reorder, layer, &model->layers[layer], err));
    return sb_reorder_apply_head(reorder, model->final_norm, tied ? NULL : model->lm_head, err);
}

sb_status sb_reorder_apply_stats(const sb_reorder *reorder, sb_layer_stats *stats, sb_error *err)
{
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        sb_tensor_perm perm;
        SB_TRY(sb_reorder_tensor_perm(reorder, (sb_tensor_role)k, stats->layer, &perm, err));
        if (stats->act_sum[k]) {
            sb_tensor_perm columns = {1, perm.cols, NULL, perm.col_src};
            SB_TRY(sb_reorder_permute(&columns, stats->act_sum[k], sizeof(double), err));
        }
        if (stats->fisher_sum[k])
            SB_TRY(sb_reorder_permute(&perm, stats->fisher_sum[k], sizeof(float), err));
        if (stats->grad_sum[k])
            SB_TRY(sb_reorder_permute(&perm, stats->grad_sum[k], sizeof(float), err));
    }
    return SB_OK;
}
