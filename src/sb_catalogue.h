/* sb_catalogue: which tensor of a checkpoint is what, and which are quantized.
 *
 * From the tensor names and shapes and the model's shape (config.json), builds the list of
 * tensors in the canonical order of src/sb_tensor_name.h (which also classifies the names) and
 * checks that every tensor the config implies is present with the shape it implies, and that no
 * tensor contradicts the config. What a decoder layer must hold (sb_layer_tensor_count /
 * sb_layer_tensor_id, in canonical order):
 *
 *   input_layernorm, q_proj (+ bias), q_norm, k_proj (+ bias), k_norm, v_proj (+ bias),
 *   o_proj (+ bias), post_attention_layernorm, then
 *     a dense layer:  gate_proj, up_proj, down_proj        [intermediate x hidden], [hidden x intermediate]
 *     an MoE layer (sb_layer_is_moe): mlp.gate (the router, [num_experts x hidden]) and, for
 *                     every expert e < num_experts, its gate_proj, up_proj [moe_intermediate x hidden]
 *                     and down_proj [hidden x moe_intermediate]
 *   (q_norm / k_norm when the config has qk_norm (Qwen3), the four biases when attention_bias).
 *
 * Refused with the tensor named: a missing tensor, a wrong shape, a layer index beyond
 * num_hidden_layers, an expert index beyond num_experts, expert tensors or a router in a dense
 * layer, a dense MLP weight in an MoE layer, q/k norms or biases the config does not have (the
 * runtime would ignore them: silently another model).
 *
 * Quantized by default: the linear weights of every layer (the seven dense kinds; in an MoE layer
 * q, k, v, o and every expert's gate, up and down). On request: the embedding, lm_head, and the
 * router (tiny and decisive: a routing flip changes which expert a token sees, so it passes
 * through by default). Everything else (norms, biases) passes through unchanged. The canonical
 * order defines global tile ids, so it must not depend on the checkpoint's file layout or on
 * the number of ranks.
 *
 * Cost: O(n log n) in the tensor count, no allocation proportional to what config.json merely
 * declares (a 480B MoE checkpoint has 30,000 tensors).
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
    const char *file; /* where it is stored, for messages (may be NULL) */
} sb_tensor_desc;

typedef struct sb_catalogue_options {
    bool quantize_embeddings;
    bool quantize_lm_head;
    bool quantize_router; /* the MoE router mlp.gate (off by default) */
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

/* Builds and validates the catalogue. Errors name the tensor, its file (sb_tensor_desc.file) or,
 * for a missing tensor, `source` (the checkpoint's directory; may be NULL), and what config.json
 * implies. */
sb_status sb_catalogue_build(const sb_tensor_desc *tensors, int ntensors, const sb_model_shape *shape,
                             const sb_catalogue_options *options, const char *source, sb_catalogue *catalogue,
                             sb_error *err);
void sb_catalogue_free(sb_catalogue *catalogue);

/* The entry of tensor `id` (binary search in canonical order), or NULL. */
const sb_catalogue_entry *sb_catalogue_find(const sb_catalogue *catalogue, const sb_tensor_id *id);

/* How many tensors layer `layer` must hold under `shape` (see above), and the `index`-th of them
 * in canonical order (0 <= index < count). */
int64_t sb_layer_tensor_count(const sb_model_shape *shape, int64_t layer);
sb_tensor_id sb_layer_tensor_id(const sb_model_shape *shape, int64_t layer, int64_t index);

/* The shape config.json implies for tensor `id`: a matrix [rows x cols] (ndim 2) or a vector of
 * `cols` (ndim 1, rows 1). False for a role the shape says nothing about (SB_ROLE_OTHER). */
bool sb_catalogue_expected_shape(const sb_model_shape *shape, const sb_tensor_id *id, int64_t *rows, int64_t *cols,
                                 int *ndim);

#endif
