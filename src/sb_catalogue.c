#include "sb_catalogue.h"

#include "sb_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool sb_catalogue_expected_shape(const sb_model_shape *s, const sb_tensor_id *id, int64_t *rows, int64_t *cols,
                                 int *ndim)
{
    *rows = 1;
    *ndim = 1;
    switch (id->role) {
    case SB_ROLE_EMBED:
    case SB_ROLE_LM_HEAD: *rows = s->vocab_size; *cols = s->hidden_size; *ndim = 2; return true;
    case SB_ROLE_ATTN_NORM:
    case SB_ROLE_MLP_NORM:
    case SB_ROLE_FINAL_NORM: *cols = s->hidden_size; return true;
    case SB_ROLE_Q_NORM:
    case SB_ROLE_K_NORM: *cols = s->head_dim; return true;
    case SB_ROLE_Q_BIAS:
    case SB_ROLE_K_BIAS:
    case SB_ROLE_V_BIAS:
    case SB_ROLE_O_BIAS: {
        /* a projection's bias is as long as its output */
        int64_t unused;
        sb_tensor_id projection = {(sb_tensor_role)(SB_ROLE_Q + (id->role - SB_ROLE_Q_BIAS)), id->layer, -1};
        sb_weight_shape(s, &projection, cols, &unused);
        return true;
    }
    default:
        if (!sb_weight_is_matrix(id))
            return false;
        sb_weight_shape(s, id, rows, cols);
        *ndim = 2;
        return true;
    }
}

/* The attention tensors of a layer, in canonical order (src/sb_tensor_name.h), and whether the
 * shape has each. */
static const sb_tensor_role attention_roles[] = {
    SB_ROLE_ATTN_NORM, SB_ROLE_Q, SB_ROLE_Q_BIAS, SB_ROLE_Q_NORM, SB_ROLE_K, SB_ROLE_K_BIAS,
    SB_ROLE_K_NORM,    SB_ROLE_V, SB_ROLE_V_BIAS, SB_ROLE_O,      SB_ROLE_O_BIAS, SB_ROLE_MLP_NORM,
};
enum { ATTENTION_ROLES = sizeof attention_roles / sizeof attention_roles[0] };

static bool shape_has_role(const sb_model_shape *s, sb_tensor_role role)
{
    switch (role) {
    case SB_ROLE_Q_NORM:
    case SB_ROLE_K_NORM: return s->qk_norm;
    case SB_ROLE_Q_BIAS:
    case SB_ROLE_K_BIAS:
    case SB_ROLE_V_BIAS:
    case SB_ROLE_O_BIAS: return s->attention_bias;
    default: return true;
    }
}

static int attention_count(const sb_model_shape *s)
{
    int count = 0;
    for (int i = 0; i < ATTENTION_ROLES; i++)
        count += shape_has_role(s, attention_roles[i]);
    return count;
}

int64_t sb_layer_tensor_count(const sb_model_shape *shape, int64_t layer)
{
    return attention_count(shape) + (sb_layer_is_moe(shape, layer) ? 1 + 3 * shape->num_experts : 3);
}

sb_tensor_id sb_layer_tensor_id(const sb_model_shape *shape, int64_t layer, int64_t index)
{
    sb_tensor_id id = {SB_ROLE_OTHER, layer, -1};
    for (int i = 0; i < ATTENTION_ROLES; i++) {
        if (!shape_has_role(shape, attention_roles[i]))
            continue;
        if (index-- == 0) {
            id.role = attention_roles[i];
            return id;
        }
    }
    if (!sb_layer_is_moe(shape, layer)) {
        id.role = (sb_tensor_role)(SB_ROLE_GATE + index);
        return id;
    }
    if (index == 0) {
        id.role = SB_ROLE_ROUTER;
        return id;
    }
    id.expert = (index - 1) / 3;
    id.role = (sb_tensor_role)(SB_ROLE_GATE + (index - 1) % 3);
    return id;
}

/* Is a tensor with this (parsed) id one the config implies? Writes the reason when not. */
static bool expected_in_model(const sb_model_shape *s, const sb_tensor_id *id, char *why, size_t size)
{
    if (id->role == SB_ROLE_OTHER || id->layer < 0)
        return true; /* global tensors are checked by shape; unknown ones pass through */
    bool moe = sb_layer_is_moe(s, id->layer);
    if (id->expert >= 0) {
        if (!moe) {
            snprintf(why, size, "layer %lld is a dense layer in config.json (%s), so it has no experts",
                     (long long)id->layer,
                     s->architecture != SB_ARCH_QWEN3_MOE ? "not a qwen3_moe model"
                     : sb_shape_mlp_only(s, id->layer)    ? "in mlp_only_layers"
                                                          : "decoder_sparse_step");
            return false;
        }
        if (id->expert >= s->num_experts) {
            snprintf(why, size, "expert %lld is beyond config.json's num_experts = %lld", (long long)id->expert,
                     (long long)s->num_experts);
            return false;
        }
        return true;
    }
    if (id->role == SB_ROLE_ROUTER && !moe) {
        snprintf(why, size, "layer %lld is a dense layer in config.json, so it has no router", (long long)id->layer);
        return false;
    }
    if ((id->role == SB_ROLE_GATE || id->role == SB_ROLE_UP || id->role == SB_ROLE_DOWN) && moe) {
        snprintf(why, size, "layer %lld is a mixture-of-experts layer in config.json (its MLP is mlp.gate and "
                 "mlp.experts.*)", (long long)id->layer);
        return false;
    }
    if (!shape_has_role(s, id->role)) {
        snprintf(why, size, "config.json has %s", id->role == SB_ROLE_Q_NORM || id->role == SB_ROLE_K_NORM
                                                      ? "no per-head q/k norms (model_type without qk_norm)"
                                                      : "no attention biases (attention_bias = false)");
        return false;
    }
    return true;
}

static int compare_entries(const void *a, const void *b)
{
    const sb_catalogue_entry *x = a, *y = b;
    sb_tensor_id id_x = {x->role, x->layer, x->expert}, id_y = {y->role, y->layer, y->expert};
    return sb_tensor_id_compare(id_x, x->name, id_y, y->name);
}

const sb_catalogue_entry *sb_catalogue_find(const sb_catalogue *catalogue, const sb_tensor_id *id)
{
    /* known roles have one name per id: compare ids only (the name breaks ties of OTHER alone) */
    int low = 0, high = catalogue->count;
    while (low < high) {
        int middle = low + (high - low) / 2;
        const sb_catalogue_entry *entry = &catalogue->entries[middle];
        sb_tensor_id here = {entry->role, entry->layer, entry->expert};
        int c = sb_tensor_id_compare(here, "", *id, "");
        if (c == 0 && entry->role != SB_ROLE_OTHER)
            return entry;
        if (c < 0)
            low = middle + 1;
        else
            high = middle;
    }
    return NULL;
}

static sb_status shape_error(const sb_catalogue_entry *entry, int ndim, int expected_ndim, int64_t rows, int64_t cols,
                             sb_error *err)
{
    if (expected_ndim == 2)
        return sb_error_set(err, SB_ERR_INPUT, "tensor '%s' has shape %s[%lld, %lld] but config.json implies [%lld, %lld]",
                            entry->name, ndim == 2 ? "" : "(not 2-D) ", (long long)entry->rows, (long long)entry->cols,
                            (long long)rows, (long long)cols);
    return sb_error_set(err, SB_ERR_INPUT, "tensor '%s' has %d dimension(s) and %lld elements but config.json implies [%lld]",
                        entry->name, ndim, (long long)(entry->rows * entry->cols), (long long)cols);
}

static bool quantized_role(const sb_model_shape *shape, const sb_catalogue_entry *entry,
                           const sb_catalogue_options *options)
{
    if (sb_role_is_linear(entry->role))
        return true;
    switch (entry->role) {
    case SB_ROLE_ROUTER: return options->quantize_router;
    case SB_ROLE_EMBED: return options->quantize_embeddings || (shape->tie_word_embeddings && options->quantize_lm_head);
    case SB_ROLE_LM_HEAD: return options->quantize_lm_head;
    default: return false;
    }
}

/* The first tensor the config implies that the (sorted) catalogue lacks, if any. Walks the
 * layers' tensors in order; a model with more required tensors than the checkpoint holds has a
 * gap within the first ntensors + 1 of them, so the walk is O(n log n) whatever config.json
 * declares. */
static sb_status check_complete(const sb_catalogue *catalogue, const sb_model_shape *shape, const char *source,
                                sb_error *err)
{
    const char *where = source ? source : "", *separator = source ? ": " : "";
    int64_t layers = shape->num_hidden_layers;
    for (int64_t layer = 0; layer < layers; layer++) {
        int64_t count = sb_layer_tensor_count(shape, layer);
        for (int64_t index = 0; index < count; index++) {
            sb_tensor_id id = sb_layer_tensor_id(shape, layer, index);
            if (sb_catalogue_find(catalogue, &id))
                continue;
            char name[256];
            sb_tensor_name_format(id, name, sizeof name);
            if (id.expert >= 0)
                return sb_error_set(err, SB_ERR_INPUT,
                                    "%s%stensor '%s' is missing (config.json: layer %lld is a mixture-of-experts layer "
                                    "of num_experts = %lld; a shard missing?)",
                                    where, separator, name, (long long)layer, (long long)shape->num_experts);
            return sb_error_set(err, SB_ERR_INPUT,
                                "%s%stensor '%s' is missing (config.json has num_hidden_layers = %lld; a shard missing?)",
                                where, separator, name, (long long)layers);
        }
    }
    static const sb_tensor_role globals[] = {SB_ROLE_EMBED, SB_ROLE_FINAL_NORM, SB_ROLE_LM_HEAD};
    for (int i = 0; i < 3; i++) {
        sb_tensor_id id = {globals[i], -1, -1};
        if (globals[i] == SB_ROLE_LM_HEAD && shape->tie_word_embeddings)
            continue;
        if (!sb_catalogue_find(catalogue, &id))
            return sb_error_set(err, SB_ERR_INPUT, "%s%stensor '%s' is missing", where, separator,
                                globals[i] == SB_ROLE_EMBED        ? "model.embed_tokens.weight"
                                : globals[i] == SB_ROLE_FINAL_NORM ? "model.norm.weight"
                                                                   : "lm_head.weight (config.json: tie_word_embeddings = false)");
    }
    return SB_OK;
}

sb_status sb_catalogue_build(const sb_tensor_desc *tensors, int ntensors, const sb_model_shape *shape,
                             const sb_catalogue_options *options, const char *source, sb_catalogue *catalogue,
                             sb_error *err)
{
    memset(catalogue, 0, sizeof *catalogue);
    int64_t layers = shape->num_hidden_layers;
    if (layers < 0 || layers > SB_TENSOR_INDEX_MAX)
        return sb_error_set(err, SB_ERR_INPUT, "config.json: num_hidden_layers = %lld is out of range",
                            (long long)layers);
    catalogue->entries = sb_calloc((size_t)(ntensors > 0 ? ntensors : 1), sizeof *catalogue->entries, "catalogue", err);
    if (!catalogue->entries)
        return SB_ERR_NOMEM;
    sb_status status = SB_OK;
    for (int i = 0; i < ntensors && status == SB_OK; i++) {
        sb_catalogue_entry *entry = &catalogue->entries[catalogue->count++];
        entry->source_index = i;
        entry->name = tensors[i].name;
        sb_tensor_id id = sb_tensor_name_parse(tensors[i].name);
        entry->role = id.role;
        entry->layer = id.layer;
        entry->expert = id.expert;
        int ndim = tensors[i].ndim;
        entry->rows = 1;
        for (int d = 0; d + 1 < ndim; d++)
            entry->rows *= tensors[i].shape[d];
        entry->cols = ndim > 0 ? tensors[i].shape[ndim - 1] : 1;
        const char *file = tensors[i].file ? tensors[i].file : source;
        if (entry->layer >= layers) {
            status = sb_error_set(err, SB_ERR_INPUT,
                                  "tensor '%s' belongs to layer %lld but config.json has num_hidden_layers = %lld",
                                  entry->name, (long long)entry->layer, (long long)layers);
            if (file)
                sb_error_prefix(err, "%s", file);
            break;
        }
        char why[256];
        if (!expected_in_model(shape, &id, why, sizeof why)) {
            status = sb_error_set(err, SB_ERR_INPUT, "tensor '%s' is not part of the model: %s", entry->name, why);
            if (file)
                sb_error_prefix(err, "%s", file);
            break;
        }
        int64_t rows, cols;
        int expected_ndim;
        if (!sb_catalogue_expected_shape(shape, &id, &rows, &cols, &expected_ndim))
            continue;
        if (ndim != expected_ndim || entry->rows != rows || entry->cols != cols) {
            status = shape_error(entry, ndim, expected_ndim, rows, cols, err);
            if (file)
                sb_error_prefix(err, "%s", file);
            break;
        }
        entry->quantize = quantized_role(shape, entry, options);
    }
    if (status == SB_OK) {
        qsort(catalogue->entries, (size_t)catalogue->count, sizeof *catalogue->entries, compare_entries);
        status = check_complete(catalogue, shape, source, err);
    }
    for (int i = 0; status == SB_OK && i < catalogue->count; i++) {
        if (catalogue->entries[i].quantize) {
            catalogue->quantized_count++;
            catalogue->quantized_weights += catalogue->entries[i].rows * catalogue->entries[i].cols;
        }
    }
    if (status != SB_OK)
        sb_catalogue_free(catalogue);
    return status;
}

void sb_catalogue_free(sb_catalogue *catalogue)
{
    free(catalogue->entries);
    memset(catalogue, 0, sizeof *catalogue);
}
