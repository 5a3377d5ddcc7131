/* sb_catalogue: which tensor of a Llama checkpoint is what, and which are quantized.
 *
 * From the tensor names and shapes and the model's shape (config.json), builds the list of
 * tensors in the canonical order of src/sb_tensor_name.h (which also classifies the names) and
 * checks every expected tensor is present with the shape the config implies. The seven linear
 * kinds of every decoder layer are quantized by default; the embedding and lm_head only on
 * request; everything else (norms) passes through unchanged. The canonical order defines global tile ids, so it must not depend
 * on the checkpoint's file layout or on the number of ranks.
 */
#ifndef SB_CATALOGUE_H
#define SB_CATALOGUE_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_model_shape.h"
#include "sb_tensor_name.h"

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
    int64_t layer;      /* decoder layer, -1 for tensors outside the layers */
    int64_t expert;     /* MoE expert, -1 otherwise */
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
