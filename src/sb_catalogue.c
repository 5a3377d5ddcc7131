#include "sb_catalogue.h"

#include "sb_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *sb_role_name(sb_tensor_role role)
{
    static const char *names[SB_ROLE_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj", "embed_tokens", "lm_head", "input_layernorm",
                                               "post_attention_layernorm", "norm", "other"};
    return role < SB_ROLE_COUNT ? names[role] : "?";
}

/* Role and layer of a tensor from its Hugging Face name. */
static sb_tensor_role classify(const char *name, int *layer)
{
    *layer = -1;
    if (strcmp(name, "model.embed_tokens.weight") == 0)
        return SB_ROLE_EMBED;
    if (strcmp(name, "lm_head.weight") == 0)
        return SB_ROLE_LM_HEAD;
    if (strcmp(name, "model.norm.weight") == 0)
        return SB_ROLE_FINAL_NORM;
    int index = -1, consumed = 0;
    if (sscanf(name, "model.layers.%d.%n", &index, &consumed) != 1 || consumed == 0 || index < 0)
        return SB_ROLE_OTHER;
    const char *rest = name + consumed;
    static const struct {
        const char *suffix;
        sb_tensor_role role;
    } known[] = {
        {"self_attn.q_proj.weight", SB_ROLE_Q},      {"self_attn.k_proj.weight", SB_ROLE_K},
        {"self_attn.v_proj.weight", SB_ROLE_V},      {"self_attn.o_proj.weight", SB_ROLE_O},
        {"mlp.gate_proj.weight", SB_ROLE_GATE},      {"mlp.up_proj.weight", SB_ROLE_UP},
        {"mlp.down_proj.weight", SB_ROLE_DOWN},      {"input_layernorm.weight", SB_ROLE_ATTN_NORM},
        {"post_attention_layernorm.weight", SB_ROLE_MLP_NORM},
    };
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        if (strcmp(rest, known[i].suffix) == 0) {
            *layer = index;
            return known[i].role;
        }
    }
    *layer = index;
    return SB_ROLE_OTHER;
}

static void expected_shape(const sb_model_shape *s, sb_tensor_role role, int64_t *rows, int64_t *cols, int *ndim)
{
    int64_t q_width = s->num_attention_heads * s->head_dim, kv_width = s->num_key_value_heads * s->head_dim;
    *ndim = 2;
    switch (role) {
    case SB_ROLE_Q: *rows = q_width; *cols = s->hidden_size; break;
    case SB_ROLE_K:
    case SB_ROLE_V: *rows = kv_width; *cols = s->hidden_size; break;
    case SB_ROLE_O: *rows = s->hidden_size; *cols = q_width; break;
    case SB_ROLE_GATE:
    case SB_ROLE_UP: *rows = s->intermediate_size; *cols = s->hidden_size; break;
    case SB_ROLE_DOWN: *rows = s->hidden_size; *cols = s->intermediate_size; break;
    case SB_ROLE_EMBED:
    case SB_ROLE_LM_HEAD: *rows = s->vocab_size; *cols = s->hidden_size; break;
    default: *rows = 1; *cols = s->hidden_size; *ndim = 1; break;
    }
}

static int canonical_rank(sb_tensor_role role, int layer)
{
    /* position inside a layer: norms before the linears they feed */
    static const int within_layer[SB_ROLE_COUNT] = {
        [SB_ROLE_ATTN_NORM] = 0, [SB_ROLE_Q] = 1, [SB_ROLE_K] = 2, [SB_ROLE_V] = 3, [SB_ROLE_O] = 4,
        [SB_ROLE_MLP_NORM] = 5, [SB_ROLE_GATE] = 6, [SB_ROLE_UP] = 7, [SB_ROLE_DOWN] = 8, [SB_ROLE_OTHER] = 9};
    if (role == SB_ROLE_EMBED)
        return 0;
    if (layer >= 0)
        return 1 + layer * 10 + within_layer[role];
    if (role == SB_ROLE_FINAL_NORM)
        return 1 << 29;
    if (role == SB_ROLE_LM_HEAD)
        return (1 << 29) + 1;
    return (1 << 29) + 2;
}

static int compare_entries(const void *a, const void *b)
{
    const sb_catalogue_entry *x = a, *y = b;
    int rx = canonical_rank(x->role, x->layer), ry = canonical_rank(y->role, y->layer);
    if (rx != ry)
        return rx < ry ? -1 : 1;
    return strcmp(x->name, y->name);
}

sb_status sb_catalogue_build(const sb_tensor_desc *tensors, int ntensors, const sb_model_shape *shape,
                             const sb_catalogue_options *options, sb_catalogue *catalogue, sb_error *err)
{
    memset(catalogue, 0, sizeof *catalogue);
    int64_t layers = shape->num_hidden_layers;
    /* seen[layer * 9 + role] for the 9 per-layer roles; plus embed / norm / head */
    uint8_t *seen = sb_calloc((size_t)(layers * 9 + 1), 1, "catalogue flags", err);
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
        entry->role = classify(tensors[i].name, &entry->layer);
        int ndim = tensors[i].ndim;
        entry->rows = 1;
        for (int d = 0; d + 1 < ndim; d++)
            entry->rows *= tensors[i].shape[d];
        entry->cols = ndim > 0 ? tensors[i].shape[ndim - 1] : 1;
        if (entry->layer >= layers) {
            status = sb_error_set(err, SB_ERR_INPUT,
                                  "tensor '%s' belongs to layer %d but config.json has num_hidden_layers = %lld",
                                  entry->name, entry->layer, (long long)layers);
            goto done;
        }
        if (entry->role == SB_ROLE_OTHER)
            continue;
        int64_t rows, cols;
        int expected_ndim;
        expected_shape(shape, entry->role, &rows, &cols, &expected_ndim);
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
        if (entry->layer >= 0)
            seen[entry->layer * 9 + (entry->role <= SB_ROLE_DOWN ? entry->role : entry->role - SB_ROLE_ATTN_NORM + 7)] = 1;
        have_embed |= entry->role == SB_ROLE_EMBED;
        have_final_norm |= entry->role == SB_ROLE_FINAL_NORM;
        have_head |= entry->role == SB_ROLE_LM_HEAD;
        if (entry->role <= SB_ROLE_DOWN)
            entry->quantize = true;
        else if (entry->role == SB_ROLE_EMBED)
            entry->quantize = options->quantize_embeddings ||
                              (shape->tie_word_embeddings && options->quantize_lm_head);
        else if (entry->role == SB_ROLE_LM_HEAD)
            entry->quantize = options->quantize_lm_head;
    }
    for (int64_t layer = 0; layer < layers; layer++) {
        for (int r = 0; r < 9; r++) {
            if (seen[layer * 9 + r])
                continue;
            char name[256];
            sb_tensor_role role = r < 7 ? (sb_tensor_role)r : (sb_tensor_role)(SB_ROLE_ATTN_NORM + r - 7);
            if (r < 7)
                sb_linear_weight_name(layer, (sb_linear_kind)role, name, sizeof name);
            else
                snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)layer, sb_role_name(role));
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
