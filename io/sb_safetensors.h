/* sb_safetensors: reading Hugging Face safetensors checkpoints by byte range.
 *
 * A checkpoint is a directory holding either `model.safetensors` or a sharded set described by
 * `model.safetensors.index.json` ("weight_map": tensor name -> shard file). Opening reads and
 * validates only the headers (sane length, valid JSON, dtype known, shape x dtype size = byte
 * count, offsets inside the file, no two tensors overlapping, names unique across shards, the
 * index and the shards agreeing both ways: every listed tensor stored in the shard the index
 * names, every stored tensor listed); tensor data are read later, a range of rows at a time, so memory stays around what
 * the caller asks for whatever the checkpoint size. Supported dtypes: F32, F16, BF16; any other
 * dtype is refused at open with the file, the tensor and the dtype named.
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

typedef enum sb_dtype { SB_DTYPE_F32 = 0, SB_DTYPE_F16, SB_DTYPE_BF16 } sb_dtype;

size_t sb_dtype_size(sb_dtype dtype);
const char *sb_dtype_name(sb_dtype dtype);           /* "F32", "F16", "BF16" */
/* Parses "F32"/"F16"/"BF16"; returns false for anything else. */
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
    sb_tensor_info *tensors; /* in the order of the files, then of offsets within a file */
} sb_checkpoint;

/* Opens the checkpoint in `dir` and validates every header. On failure nothing needs closing. */
sb_status sb_checkpoint_open(const char *dir, sb_checkpoint *checkpoint, sb_error *err);
void sb_checkpoint_close(sb_checkpoint *checkpoint);

/* The tensor called `name`, or NULL. */
const sb_tensor_info *sb_checkpoint_find(const sb_checkpoint *checkpoint, const char *name);

/* Number of rows and columns of a tensor seen as a matrix: 2-D as is, 1-D as one row. */
int64_t sb_tensor_rows(const sb_tensor_info *tensor);
int64_t sb_tensor_cols(const sb_tensor_info *tensor);

/* Reads rows [row_begin, row_begin + row_count) of a 1-D or 2-D tensor into `dst` as float32
 * (row-major, sb_tensor_cols() floats per row). With `check_finite`, a NaN or Inf is an
 * SB_ERR_INPUT error naming the file, the tensor and the element's row and column. */
sb_status sb_checkpoint_read_rows(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor,
                                  int64_t row_begin, int64_t row_count, bool check_finite,
                                  float *dst, sb_error *err);

/* The index of the first NaN or Inf among `count` values stored as `dtype` (little-endian, as
 * in the file), or -1 if all are finite. */
int64_t sb_first_nonfinite(sb_dtype dtype, const void *raw, int64_t count);

/* Reads the tensor's bytes exactly as stored (for pass-through), `tensor->nbytes` of them. */
sb_status sb_checkpoint_read_raw(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor,
                                 void *dst, sb_error *err);

/* Reads rows [row_begin, row_begin + row_count) of a tensor's bytes exactly as stored. */
sb_status sb_checkpoint_read_raw_rows(const sb_checkpoint *checkpoint, const sb_tensor_info *tensor,
                                      int64_t row_begin, int64_t row_count, void *dst, sb_error *err);

#endif
