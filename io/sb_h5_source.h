/* sb_h5_source: a scalebits file (io/sb_h5_reader.h) as a weight source for the model runtime.
 *
 * sb_h5_fetch is an sb_weight_fetch (io/sb_model_load.h): a tensor under /tensors is
 * dequantized tile by tile with the rule of docs/FORMAT.md; a tensor under /passthrough (norms,
 * the embedding and lm_head unless they were quantized) is read and widened to float32 exactly.
 * The file alone is enough: nothing is read from the source checkpoint, and a tensor the runtime
 * asks for that is in neither group is an error naming the file and the tensor. With this,
 * `scalebits-eval --quantized FILE.h5` runs the quantized model.
 *
 * Shapes: a 2-D request needs exactly [rows, cols]; a 1-row request also takes a 1-D [cols]
 * pass-through tensor (the norms). Dequantized weights are checked finite: a NaN or Inf (from a
 * corrupt scale) is an SB_ERR_FORMAT naming the element.
 *
 * Not thread-safe (the reader is not); one fetch at a time per reader.
 */
#ifndef SB_H5_SOURCE_H
#define SB_H5_SOURCE_H

#include "sb_config.h"
#include "sb_h5_reader.h"
#include "sb_kernel.h"
#include "sb_model_load.h"

typedef struct sb_h5_source {
    const sb_h5_reader *reader;
    const sb_kernel *kernel; /* sb_h5_fetch_linear: the packed path's kernels; NULL: dequantize */
} sb_h5_source;

/* An sb_weight_fetch; `source` is an sb_h5_source. */
sb_status sb_h5_fetch(void *source, const char *tensor_name, int64_t rows, int64_t cols, float *dst, sb_error *err);

/* An sb_linear_fetch: a quantized tensor stays packed (io/sb_h5_qmatrix.h, run on
 * source->kernel), read tile row by tile row, never as floats; with kernel NULL, or for a
 * linear weight stored under /passthrough, it becomes a float32 array the linear owns. */
sb_status sb_h5_fetch_linear(void *source, const char *tensor_name, int64_t rows, int64_t cols, sb_linear *linear,
                             sb_error *err);

/* Allocates `model` for `shape` and fills it from the file. On failure nothing needs freeing. */
sb_status sb_model_load_h5(const sb_model_shape *shape, const sb_h5_reader *reader, sb_model *model, sb_error *err);

/* The same with the linear weights of the layers kept packed (sb_h5_fetch_linear on `kernel`):
 * memory about the file's size plus the float32 norms, embedding and lm_head. */
sb_status sb_model_load_h5_packed(const sb_model_shape *shape, const sb_h5_reader *reader, const sb_kernel *kernel,
                                  sb_model *model, sb_error *err);

/* Parses the file's `config_json` root attribute (the source config.json, verbatim) into
 * `config`, so that a quantized file can be run without its source directory. SB_ERR_FORMAT if
 * the attribute is absent. On failure nothing needs freeing. */
sb_status sb_h5_reader_config(const sb_h5_reader *reader, sb_model_config *config, sb_error *err);

#endif
