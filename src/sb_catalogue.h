/* sb_catalogue: which tensor of a Llama checkpoint is what, and which are quantized.
 *
 * From the tensor names and shapes and the model's shape (config.json), builds the list of
 * tensors in a canonical order (embedding; per layer: attention norm, q, k, v, o, MLP norm,
 * gate, up, down; final norm; lm_head; anything else by name) and checks every expected tensor
 * is present with the shape the config implies. The seven linear kinds of every decoder layer
 * are quantized by default; the embedding and lm_head only on request; everything else (norms)
 * passes through unchanged. The canonical order defines global tile ids, so it must not depend
 * on the checkpoint's file layout or on the number of ranks.
 */
#ifndef SB_CATALOGUE_H
#define SB_CATALOGUE_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_model_shape.h"

typedef enum sb_tensor_role {
    /* the seven linear kinds, numbered as sb_linear_kind (src/sb_model.h) */
    SB_ROLE_Q = 0, SB_ROLE_K, SB_ROLE_V, SB_ROLE_O, SB_ROLE_GATE, SB_ROLE_UP, SB_ROLE_DOWN,
    SB_ROLE_EMBED, SB_ROLE_LM_HEAD, SB_ROLE_ATTN_NORM, SB_ROLE_MLP_NORM, SB_ROLE_FINAL_NORM, SB_ROLE_OTHER,
    SB_ROLE_COUNT
} sb_tensor_role;

enum { SB_LINEAR_KINDS = 7 };

const char *sb_role_name(sb_tensor_role role); /* "q_proj", ..., "embed_tokens", "lm_head", "norm" */

/* What the catalogue needs to know of a tensor (from any source). */
typedef struct sb_tensor_desc {
    const char *name;
    int ndim;
    const int64_t *shape;
} sb_tensor_desc;

typedef struct sb_catalogue_options {
    bool quantize_embeddings;
    bool quantize_lm_head;
} sb_catalogue_options;

typedef struct sb_catalogue_entry {
    int source_index;   /* index in the caller's tensor list */
    const char *name;   /* points into the caller's list */
    sb_tensor_role role;
    int layer;          /* decoder layer, -1 for tensors outside the layers */
    int64_t rows, cols; /* the tensor seen as a matrix (a 1-D tensor is one row) */
    bool quantize;
} sb_catalogue_entry;

typedef struct sb_catalogue {
    int count;
    sb_catalogue_entry *entries; /* canonical order */
    int quantized_count;
    int64_t quantized_weights;   /* the budget's denominator */
} sb_catalogue;

/* Builds and validates the catalogue. Errors name the tensor and what config.json implies. */
sb_status sb_catalogue_build(const sb_tensor_desc *tensors, int ntensors, const sb_model_shape *shape,
                             const sb_catalogue_options *options, sb_catalogue *catalogue, sb_error *err);
void sb_catalogue_free(sb_catalogue *catalogue);

#endif
