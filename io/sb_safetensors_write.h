/* sb_safetensors_write: writing safetensors files, streaming, one tensor at a time.
 *
 * The safetensors header names every tensor with its byte range, so it must be known before
 * the first data byte: a writer therefore takes all declarations first, then writes the header
 * (8-byte little-endian length, compact JSON with an optional "__metadata__" string map first,
 * then the tensors in declaration order, padded with spaces to a multiple of 8 bytes as the
 * reference implementation does, so that the data area starts 8-byte aligned), then takes the
 * tensors' data in declaration order, in as many pieces as the caller likes. Only the current
 * piece is ever in memory, whatever the file size.
 *
 * Everything goes to a temporary file beside the final path ("<dir>/.<name>.tmp-<pid>");
 * sb_safetensors_writer_commit() checks that every declared byte was written, then flushes,
 * fsyncs and renames it into place (io/sb_atomic.h). sb_safetensors_writer_abort() removes the
 * temporary file. A reader therefore never sees a partial file under the final name.
 *
 * Lifecycle: create -> (add_metadata | declare)* -> begin_data -> (write | write_f32)* ->
 * commit, or abort at any point. Every function but abort may fail; after a failure the writer
 * is still valid and must be aborted (commit refuses a writer that failed). Calls out of order
 * are SB_ERR_INTERNAL (a programming error, named in the message). A writer is not
 * thread-safe.
 */
#ifndef SB_SAFETENSORS_WRITE_H
#define SB_SAFETENSORS_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_safetensors.h"

typedef struct sb_safetensors_writer sb_safetensors_writer;

/* Starts a writer for `final_path` and creates its temporary file (SB_ERR_IO if the directory
 * is not writable). On success `*writer` owns the temporary file until commit or abort. */
sb_status sb_safetensors_writer_create(const char *final_path, sb_safetensors_writer **writer, sb_error *err);

/* Adds one "__metadata__" entry (both strings copied). Keys must be unique. Before begin_data. */
sb_status sb_safetensors_writer_add_metadata(sb_safetensors_writer *writer, const char *key, const char *value,
                                             sb_error *err);

/* Declares the next tensor: a unique, non-empty name (not "__metadata__"), a dtype and
 * `ndim` (0..SB_MAX_DIMS) non-negative extents (copied). Before begin_data. */
sb_status sb_safetensors_writer_declare(sb_safetensors_writer *writer, const char *name, sb_dtype dtype, int ndim,
                                        const int64_t *shape, sb_error *err);

/* Writes the header. After it, no more declarations; data follow in declaration order. */
sb_status sb_safetensors_writer_begin_data(sb_safetensors_writer *writer, sb_error *err);

/* Appends `bytes` bytes, already in the current tensor's dtype (little-endian), to the current
 * tensor. A piece may not run past the end of the current tensor (SB_ERR_INTERNAL naming it);
 * when a tensor is complete, the next write goes to the next declared tensor. */
sb_status sb_safetensors_writer_write(sb_safetensors_writer *writer, const void *data, size_t bytes, sb_error *err);

/* Appends `count` float32 values to the current tensor, converting to its dtype (F16 and BF16
 * round to nearest, ties to even, as src/sb_half.h does). Same piece rule as above. Not for an
 * F8_E4M3 tensor (its codes depend on block scales the caller chooses: SB_ERR_INTERNAL). */
sb_status sb_safetensors_writer_write_f32(sb_safetensors_writer *writer, const float *values, size_t count,
                                          sb_error *err);

/* Advances the current tensor by `bytes` without writing them: the file gets a hole (reads as
 * zeros, takes no disk). For header-only test checkpoints of huge models (--plan). */
sb_status sb_safetensors_writer_skip(sb_safetensors_writer *writer, uint64_t bytes, sb_error *err);

/* The tensor the next write goes to, or NULL once all data are written. For progress messages. */
const char *sb_safetensors_writer_current(const sb_safetensors_writer *writer);

/* Total file size once complete (header + data), known after begin_data; 0 before. */
uint64_t sb_safetensors_writer_file_size(const sb_safetensors_writer *writer);

/* Checks that every tensor is complete, flushes, fsyncs and renames the file into place, then
 * frees the writer (also on failure: the temporary file is then removed). */
sb_status sb_safetensors_writer_commit(sb_safetensors_writer *writer, sb_error *err);

/* Removes the temporary file and frees the writer. NULL is a no-op. */
void sb_safetensors_writer_abort(sb_safetensors_writer *writer);

/* Writes `<dir>/model.safetensors.index.json` atomically: {"metadata": {"total_size": N},
 * "weight_map": {tensor: shard file}}, keys sorted as Hugging Face writes them. `shard_files[i]`
 * is the plain file name (no directory) holding `tensor_names[i]`; `total_size` is the sum of the
 * tensors' data bytes (as transformers records it). Names must be unique (SB_ERR_INTERNAL). */
sb_status sb_safetensors_write_index(const char *dir, int ntensors, const char *const *tensor_names,
                                     const char *const *shard_files, uint64_t total_size, sb_error *err);

#endif
