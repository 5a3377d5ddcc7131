/* sb_model_load: filling the runtime's float32 weights (src/sb_model.h) from a weight source.
 *
 * A weight source is anything that can produce a named tensor as float32 rows: the
 * safetensors checkpoint (below), or the dequantized tiles of a scalebits HDF5 file (written
 * against the same typedef elsewhere). The loader asks for each tensor by its Hugging Face
 * name with the shape the config implies, so a source checks existence and shape and says
 * which tensor is wrong. Norm vectors are asked for as 1 row of `hidden` columns.
 *
 * Pipelining: sb_model_load_layer / _embed / _head load one piece, so a rank fetches only the
 * layers it owns; sb_model_load fills a whole sb_model.
 *
 * Thread-safety: the loader itself keeps no state; the safetensors source may be read from
 * several threads at once (pread), other sources say so themselves.
 */
#ifndef SB_MODEL_LOAD_H
#define SB_MODEL_LOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_model.h"
#include "sb_safetensors.h"

/* Writes tensor `tensor_name` as `rows` x `cols` float32 (row-major) into `dst`. Fails with
 * the source's file and the tensor named if it is missing or has another shape. With `dst`
 * NULL it only checks presence and shape (sb_model_check_source). */
typedef sb_status (*sb_weight_fetch)(void *source, const char *tensor_name, int64_t rows, int64_t cols, float *dst,
                                     sb_error *err);

/* model.embed_tokens.weight [vocab x hidden] into `embed`. */
sb_status sb_model_load_embed(const sb_model_shape *shape, sb_weight_fetch fetch, void *source, float *embed,
                              sb_error *err);
/* Layer `layer`'s weights into `weights` (allocated for that layer): its two norms, its linear
 * weights (the seven of a dense layer; Q, K, V, O, the router mlp.gate and every expert's
 * gate/up/down of an MoE layer), and the Qwen3 vectors (q_norm, k_norm, biases) the model has.
 * With `weights` NULL (and NULL pointers to the other loaders) every tensor is only checked for
 * presence and shape, from the shape alone: sb_model_check_source. */
sb_status sb_model_load_layer(const sb_model_shape *shape, int64_t layer, sb_weight_fetch fetch, void *source,
                              sb_layer_weights *weights, sb_error *err);
/* model.norm.weight into `final_norm`; lm_head.weight into `lm_head` unless the shape ties it
 * to the embedding (then `lm_head` is not touched and may be NULL). */
sb_status sb_model_load_head(const sb_model_shape *shape, sb_weight_fetch fetch, void *source, float *final_norm,
                             float *lm_head, sb_error *err);
/* Checks, before anything is allocated from `shape` (a config.json, possibly hostile), that the
 * source holds every tensor of layers [layer_begin, layer_end) (and the embedding, the final
 * norm and lm_head when asked) with the shape `shape` implies, and that the shape's own numbers
 * are sane (sb_model_shape_check): memory then follows what the source really holds, not what
 * the config declares. */
sb_status sb_model_check_source(const sb_model_shape *shape, sb_weight_fetch fetch, void *source, int64_t layer_begin,
                                int64_t layer_end, bool embed, bool head, sb_error *err);

/* Every weight of an allocated `model` (sb_model_alloc with its shape). */
sb_status sb_model_load(sb_weight_fetch fetch, void *source, sb_model *model, sb_error *err);

/* ---- Linear weights in a source's own storage ------------------------------------------------ */

/* Sets *linear to tensor `tensor_name` (`rows` x `cols`) in a storage of the source's choosing
 * (src/sb_linear.h; e.g. packed tiles, owned by *linear), with the same shape checks and
 * messages as an sb_weight_fetch. */
typedef sb_status (*sb_linear_fetch)(void *source, const char *tensor_name, int64_t rows, int64_t cols,
                                     sb_linear *linear, sb_error *err);

/* Layer `layer`'s norms and vectors from `fetch` and its linear weights (dense, router,
 * experts) from `fetch_linear`, into `weights` made by sb_layer_weights_alloc_norms. */
sb_status sb_model_load_layer_linears(const sb_model_shape *shape, int64_t layer, sb_weight_fetch fetch,
                                      sb_linear_fetch fetch_linear, void *source, sb_layer_weights *weights,
                                      sb_error *err);
/* Every weight of `model` made by sb_model_alloc_norms: linear weights from `fetch_linear`, the
 * rest from `fetch`. */
sb_status sb_model_load_linears(sb_weight_fetch fetch, sb_linear_fetch fetch_linear, void *source, sb_model *model,
                                sb_error *err);

/* ---- The safetensors source ----------------------------------------------------------------- */

typedef struct sb_safetensors_source {
    const sb_checkpoint *checkpoint;
    bool check_finite; /* refuse NaN/Inf weights, naming the element */
} sb_safetensors_source;

/* An sb_weight_fetch over an open checkpoint; `source` is an sb_safetensors_source. A 2-D
 * request needs a tensor of exactly [rows, cols]; a 1-row request also takes a 1-D [cols]. */
sb_status sb_safetensors_fetch(void *source, const char *tensor_name, int64_t rows, int64_t cols, float *dst,
                               sb_error *err);

/* Allocates `model` for `shape` and fills it from `checkpoint` (finite weights checked). On
 * failure nothing needs freeing. */
sb_status sb_model_load_checkpoint(const sb_model_shape *shape, const sb_checkpoint *checkpoint, sb_model *model,
                                   sb_error *err);

#endif
