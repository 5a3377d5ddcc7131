#include "sb_catalogue.h"

#include "sb_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The shape config.json implies for a tensor of `role`; false when the shape does not say
 * (SB_ROLE_OTHER, and roles of architectures whose numbers sb_model_shape does not hold yet). */
static bool expected_shape(const sb_model_shape *s, sb_tensor_role role, int64_t *rows, int64_t *cols, int *ndim)
{
    int64_t q_width = s->num_attention_heads * s->head_dim, kv_width = s->num_key_value_heads * s->head_dim;
    *ndim = 2;
    *rows = 1;
    switch (role) {
    case SB_ROLE_Q: *rows = q_width; *cols = s->hidden_size; return true;
    case SB_ROLE_K:
    case SB_ROLE_V: *rows = kv_width; *cols = s->hidden_size; return true;
    case SB_ROLE_O: *rows = s->hidden_size; *cols = q_width; return true;
    case SB_ROLE_GATE:
    case SB_ROLE_UP: *rows = s->intermediate_size; *cols = s->hidden_size; return true;
    case SB_ROLE_DOWN: *rows = s->hidden_size; *cols = s->intermediate_size; return true;
    case SB_ROLE_EMBED:
    case SB_ROLE_LM_HEAD: *rows = s->vocab_size; *cols = s->hidden_size; return true;
    case SB_ROLE_ATTN_NORM:
    case SB_ROLE_MLP_NORM:
    case SB_ROLE_FINAL_NORM:
    case SB_ROLE_O_BIAS: *cols = s->hidden_size; *ndim = 1; return true;
    case SB_ROLE_Q_NORM:
    case SB_ROLE_K_NORM: *cols = s->head_dim; *ndim = 1; return true;
    case SB_ROLE_Q_BIAS: *cols = q_width; *ndim = 1; return true;
    case SB_ROLE_K_BIAS:
    case SB_ROLE_V_BIAS: *cols = kv_width; *ndim = 1; return true;
    default: return false;
    }
}

static int compare_entries(const void *a, const void *b)
{
    const sb_catalogue_entry *x = a, *y = b;
    sb_tensor_id id_x = {x->role, x->layer, x->expert}, id_y = {y->role, y->layer, y->expert};
    return sb_tensor_id_compare(id_x, x->name, id_y, y->name);
}

/* The tensors every decoder layer must have (Llama). */
static const sb_tensor_role required_layer_roles[] = {
    SB_ROLE_ATTN_NORM, SB_ROLE_Q, SB_ROLE_K, SB_ROLE_V, SB_ROLE_O,
    SB_ROLE_MLP_NORM,  SB_ROLE_GATE, SB_ROLE_UP, SB_ROLE_DOWN,
};
enum { REQUIRED_PER_LAYER = sizeof required_layer_roles / sizeof required_layer_roles[0] };

static int required_slot(sb_tensor_role role)
{
    for (int i = 0; i < REQUIRED_PER_LAYER; i++)
        if (required_layer_roles[i] == role)
            return i;
    return -1;
}

sb_status sb_catalogue_build(const sb_tensor_desc *tensors, int ntensors, const sb_model_shape *shape,
                             const sb_catalogue_options *options, sb_catalogue *catalogue, sb_error *err)
{
    memset(catalogue, 0, sizeof *catalogue);
    int64_t layers = shape->num_hidden_layers;
    if (layers < 0 || layers > SB_TENSOR_INDEX_MAX)
        return sb_error_set(err, SB_ERR_INPUT, "config.json: num_hidden_layers = %lld is out of range",
                            (long long)layers);
    /* Allocate for what the checkpoint holds, never for what config.json declares. */
    if (layers > ntensors)
        return sb_error_set(err, SB_ERR_INPUT,
                            "config.json has num_hidden_layers = %lld but the checkpoint holds only %d tensors",
                            (long long)layers, ntensors);
    /* seen[layer * REQUIRED_PER_LAYER + slot]: which required tensors each layer has */
    uint8_t *seen = sb_calloc((size_t)layers * REQUIRED_PER_LAYER + 1, 1, "catalogue flags", err);
    catalogue->entries = sb_calloc((size_t)(ntensors > 0 ? ntensors : 1), sizeof *catalogue->entries, "catalogue", err);
    if (!seen || !catalogue->entries) {
        free(seen);
        sb_catalogue_free(catalogue);
        return SB_ERR_NOMEM;
    }
    sb_status status = SB_OK;
    bool have_embed = false, have_final_norm = false, have_head = false;
    for (int i = 0; i < ntensors; i++) {
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
        if (entry->layer >= layers) {
            status = sb_error_set(err, SB_ERR_INPUT,
                                  "tensor '%s' belongs to layer %lld but config.json has num_hidden_layers = %lld",
                                  entry->name, (long long)entry->layer, (long long)layers);
            goto done;
        }
        int64_t rows, cols;
        int expected_ndim;
        if (!expected_shape(shape, entry->role, &rows, &cols, &expected_ndim))
            continue;
        if (ndim != expected_ndim || entry->rows != rows || entry->cols != cols) {
            if (expected_ndim == 2)
                status = sb_error_set(err, SB_ERR_INPUT,
                                      "tensor '%s' has shape %s[%lld, %lld] but config.json implies [%lld, %lld]",
                                      entry->name, ndim == 2 ? "" : "(not 2-D) ", (long long)entry->rows,
                                      (long long)entry->cols, (long long)rows, (long long)cols);
            else
                status = sb_error_set(err, SB_ERR_INPUT,
                                      "tensor '%s' has %d dimension(s) and %lld elements but config.json implies [%lld]",
                                      entry->name, ndim, (long long)(entry->rows * entry->cols), (long long)cols);
            goto done;
        }
        int slot = required_slot(entry->role);
        if (entry->layer >= 0 && slot >= 0)
            seen[entry->layer * REQUIRED_PER_LAYER + slot] = 1;
        have_embed |= entry->role == SB_ROLE_EMBED;
        have_final_norm |= entry->role == SB_ROLE_FINAL_NORM;
        have_head |= entry->role == SB_ROLE_LM_HEAD;
        if (sb_role_is_linear(entry->role))
            entry->quantize = true;
        else if (entry->role == SB_ROLE_EMBED)
            entry->quantize = options->quantize_embeddings ||
                              (shape->tie_word_embeddings && options->quantize_lm_head);
        else if (entry->role == SB_ROLE_LM_HEAD)
            entry->quantize = options->quantize_lm_head;
    }
    for (int64_t layer = 0; layer < layers; layer++) {
        for (int slot = 0; slot < REQUIRED_PER_LAYER; slot++) {
            if (seen[layer * REQUIRED_PER_LAYER + slot])
                continue;
            char name[256];
            sb_tensor_id missing = {required_layer_roles[slot], layer, -1};
            sb_tensor_name_format(missing, name, sizeof name);
            status = sb_error_set(err, SB_ERR_INPUT,
                                  "tensor '%s' is missing (config.json has num_hidden_layers = %lld; a shard missing?)",
                                  name, (long long)layers);
            goto done;
        }
    }
    if (!have_embed || !have_final_norm || (!shape->tie_word_embeddings && !have_head)) {
        status = sb_error_set(err, SB_ERR_INPUT, "tensor '%s' is missing",
                              !have_embed ? "model.embed_tokens.weight"
                              : !have_final_norm ? "model.norm.weight"
                                                 : "lm_head.weight (config.json: tie_word_embeddings = false)");
        goto done;
    }
    qsort(catalogue->entries, (size_t)catalogue->count, sizeof *catalogue->entries, compare_entries);
    for (int i = 0; i < catalogue->count; i++) {
        if (catalogue->entries[i].quantize) {
            catalogue->quantized_count++;
            catalogue->quantized_weights += catalogue->entries[i].rows * catalogue->entries[i].cols;
        }
    }
done:
    free(seen);
    if (status != SB_OK)
        sb_catalogue_free(catalogue);
    return status;
}

void sb_catalogue_free(sb_catalogue *catalogue)
{
    free(catalogue->entries);
    memset(catalogue, 0, sizeof *catalogue);
}
