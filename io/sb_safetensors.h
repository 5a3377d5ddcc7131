/* sb_safetensors: reading Hugging Face safetensors checkpoints by byte range.
 *
 * A checkpoint is a directory holding either `model.safetensors` or a sharded set described by
 * `model.safetensors.index.json` ("weight_map": tensor name -> shard file). Opening reads and
 * validates only the headers (sane length, valid JSON, dtype known, shape x dtype size = byte
 * count, offsets inside the file, no two tensors overlapping, names unique across shards, the
 * index and the shards agreeing both ways: every listed tensor stored in the shard the index
 * names, every stored tensor listed); tensor data are read later, a range of rows at a time, so memory stays around what
 * the caller asks for whatever the checkpoint size. Supported dtypes: F32, F16, BF16, F8_E4M3; any
 * other dtype is refused at open with the file, the tensor and the dtype named.
 *
 * FP8 sources (the FP8 releases of Qwen3 and DeepSeek). An F8_E4M3 weight `<name>` (2-D,
 * [rows, cols]) comes with `<name>_scale_inv` (F32, BF16 or F16, shape [ceil(rows / R),
 * ceil(cols / C)] for the config's quantization_config.weight_block_size [R, C], passed in
 * sb_checkpoint_options): element (r, c) is decoded exactly (src/sb_fp8.h) and multiplied, in
 * float32, by scale_inv[r / R][c / C] (the last block row and column may be ragged), as the
 * reference loaders dequantize. The row readers do this, so everything above sees float32 as
 * for any other dtype. At open: an F8_E4M3 tensor without its scale tensor, a scale tensor of
 * the wrong dtype or shape, a `_scale_inv` tensor whose weight is missing or not F8_E4M3, or
 * F8_E4M3 tensors without a block size are errors naming the file and the tensor. At read: a
 * scale that is not finite and positive (naming the file, the scale tensor and its block), a
 * NaN code 0x7F / 0xFF (naming the file, the tensor, the row and the column).
 *
 * Scale tensors are consumed by the reader: after open they are NOT in `tensors` (so neither
 * the catalogue nor sb_checkpoint_find sees them) but in `scales`, and the weight's
 * `scale_index` points to its scale. An F8_E4M3 tensor's stored bytes are not its values: the
 * raw readers refuse it (pass-through of an FP8 tensor is refused, never stored without its
 * scales); quantize it, or dequantize the checkpoint first.
 *
 * Thread-safety: a sb_checkpoint is read-only after open; reads use pread() and may run from
 * several threads at once.
 */
#ifndef SB_SAFETENSORS_H
#define SB_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_error.h"

typedef enum sb_dtype { SB_DTYPE_F32 = 0, SB_DTYPE_F16, SB_DTYPE_BF16, SB_DTYPE_F8_E4M3 } sb_dtype;

size_t sb_dtype_size(sb_dtype dtype);
const char *sb_dtype_name(sb_dtype dtype);           /* "F32", "F16", "BF16", "F8_E4M3" */
/* Parses "F32"/"F16"/"BF16"/"F8_E4M3"; returns false for anything else. */
bool sb_dtype_parse(const char *name, sb_dtype *dtype);

enum { SB_MAX_DIMS = 4 };

typedef struct sb_tensor_info {
    char *name;
    sb_dtype dtype;
    int ndim;
    int64_t shape[SB_MAX_DIMS];
    int file_index;        /* index into sb_checkpoint.files */
    uint64_t data_offset;  /* absolute byte offset of the first element in that file */
    uint64_t nbytes;
    int scale_index;       /* F8_E4M3: its weight_scale_inv in sb_checkpoint.scales; -1 otherwise */
} sb_tensor_info;

typedef struct sb_checkpoint_file {
    char *path;                /* full path */
    uint64_t size;             /* bytes */
    uint64_t header_length;    /* the 8-byte little-endian length at the start */
    uint8_t header_sha256[32]; /* SHA-256 of the JSON header bytes: identifies the file cheaply */
} sb_checkpoint_file;

typedef struct sb_checkpoint {
    char *dir;
    int nfiles;
    sb_checkpoint_file *files;
    int ntensors;
    sb_tensor_info *tensors; /* in the order of the files, then of offsets within a file; no scale tensor */
    int nscales;
    sb_tensor_info *scales;  /* the `_scale_inv` tensors of the F8_E4M3 weights (file order) */
    int64_t fp8_block_rows, fp8_block_cols; /* from sb_checkpoint_options */
    int *name_order;         /* tensor indices in name order (sb_checkpoint_find is a binary search) */
} sb_checkpoint;

/* What the checkpoint's config.json says about its files (io/sb_config.h fills it). */
typedef struct sb_checkpoint_options {
    /* quantization_config.weight_block_size; 0 when the config has none (then an F8_E4M3
     * tensor is an error) */
    int64_t fp8_block_rows, fp8_block_cols;
} sb_checkpoint_options;

/* Opens the checkpoint in `dir` and validates every header. On failure nothing needs closing.
 * `options` may be NULL (no FP8 block size: F8_E4M3 tensors are refused). */
sb_status sb_checkpoint_open_with(const char *dir, const sb_checkpoint_options *options, sb_checkpoint *checkpoint,
                                  sb_error *err);
/* The same with options NULL. */
sb_status sb_checkpoint_open(const char *dir, sb_checkpoint *checkpoint, sb_error *err);
void sb_checkpoint_close(sb_checkpoint *checkpoint);

/* The tensor called `name`, or NULL. */
const sb_tensor_info *sb_checkpoint_find(const sb_checkpoint *checkpoint, const char *name);

/* Number of rows and columns of a tensor seen as a matrix: 2-D as is, 1-D as one row. */
int64_t sb_tensor_rows(const sb_tensor_info *tensor);
int64_t sb_tensor_cols(const sb_tensor_info *tensor);

/* Reads rows [row_begin, row_begin + row_count) of a 1-D or 2-D tensor into `dst` as float32
 * (row-major, sb_tensor_cols() floats per row); F8_E4M3 tensors dequantized with their scales.
 * With `check_finite`, a NaN or Inf is an SB_ERR_INPUT error naming the file, the tensor and
 * the element's row and column. Allocates a few rows of scales for F8_E4M3 tensors. */
sb_status sb_checkpoint_read_rows(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor,
                                  int64_t row_begin, int64_t row_count, bool check_finite,
                                  float *dst, sb_error *err);

/* Reads the tensor's bytes exactly as stored (for pass-through), `tensor->nbytes` of them.
 * SB_ERR_INPUT for an F8_E4M3 tensor (its bytes mean nothing without its scales). */
sb_status sb_checkpoint_read_raw(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor,
                                 void *dst, sb_error *err);

/* Reads rows [row_begin, row_begin + row_count) of a tensor's bytes exactly as stored (not for
 * F8_E4M3, as above). */
sb_status sb_checkpoint_read_raw_rows(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor,
                                      int64_t row_begin, int64_t row_count, void *dst, sb_error *err);

#endif
