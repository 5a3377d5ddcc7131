/* sb_h5_reader: reading a scalebits file (docs/FORMAT.md, version 1) back, in one process.
 *
 * Opening checks what the rest of the reader relies on, so that later reads cannot go out of
 * bounds: the root `format` = "scalebits" and `format_version` = 1; the accounting attributes;
 * for every /tensors/<name> group its attributes (shape, tile, group dividing the tile width,
 * layer, role, source_dtype, encoding "affine-f16") and its four datasets (uint8 `codes` whose
 * length equals the sum implied by `bitmap` and `shape`; uint8 `bitmap` of ceil(tiles / 2) bytes
 * whose nibbles are bitwidths 1..8 with a zero trailing nibble; 16-bit float `scales` and `zeros`
 * of [rows, ceil(cols / group)]); for every /passthrough/<name> dataset its `dtype` attribute and
 * a matching HDF5 type. Open therefore reads every bit map: one byte per two tiles, about
 * weights / 32768 bytes at 128x128 tiles (12 MB for a 405B model), kept as one byte per tile.
 * Any violation is an SB_ERR_FORMAT naming the file, the tensor and what is wrong; a missing or
 * unreadable file is SB_ERR_IO; a valid HDF5 file that is not a scalebits file is
 * SB_ERR_FORMAT ("not a scalebits file").
 *
 * Serial: the file is opened read-only with HDF5's default (sec2) driver, no MPI needed.
 * HDF5's own error printing is silenced (errors come back as sb_error messages). A reader is
 * not thread-safe (the HDF5 library build is not); one reader per thread, or a lock.
 *
 * Tensors are listed in the canonical order of src/sb_tensor_name.h (by name, the order the
 * writer used), which is also the order the allocation hash follows.
 */
#ifndef SB_H5_READER_H
#define SB_H5_READER_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_safetensors.h"
#include "sb_quant.h"
#include "sb_tiling.h"

enum { SB_H5_FORMAT_VERSION = 1 };

/* One quantized weight matrix: the group /tensors/<name>. Owned by the reader. */
typedef struct sb_h5_quantized {
    char *name;
    int64_t rows, cols;              /* attribute `shape` */
    int tile_rows, tile_cols, group; /* attributes `tile`, `group` */
    int64_t layer;                   /* -1 outside the decoder layers */
    char role[32];                   /* "q_proj", ..., "lm_head" */
    sb_dtype source_dtype;           /* the dtype to export back to */
    sb_tiling tiling;                /* the tile grid and groups (src/sb_tiling.h) */
    int64_t tiles;                   /* tiling.tiles_down x tiling.tiles_across */
    uint8_t *bits_per_tile;          /* [tiles], each 1..8 (from `bitmap`) */
    int64_t *tile_row_offsets;       /* [tiles_down + 1]: byte offset in `codes` where tile row i starts */
    int64_t code_bytes, bitmap_bytes, scale_count; /* dataset extents (scale_count = rows x groups) */
    int64_t storage_bytes;           /* H5Dget_storage_size of its datasets together */
    sb_scale_format format;          /* attribute `encoding`: affine-f16 or affine-q8 */
    uint16_t *tile_scales;           /* affine-q8: [tiles] F16 scale bounds; NULL for affine-f16 */
} sb_h5_quantized;

/* One tensor stored unchanged: the dataset /passthrough/<name>. Owned by the reader. */
typedef struct sb_h5_passthrough {
    char *name;
    sb_dtype dtype; /* attribute `dtype` */
    int ndim;
    int64_t shape[SB_MAX_DIMS];
    int64_t rows, cols; /* seen as a matrix: the product of the leading extents, the last extent */
    int64_t nbytes;     /* elements x dtype size */
    int64_t storage_bytes;
} sb_h5_passthrough;

/* The root attributes. Strings are NULL when an optional attribute is absent. */
typedef struct sb_h5_root {
    int64_t format_version;
    double budget_bpw, achieved_bpw;
    int64_t stored_bits, quantized_weights, tiles;
    int64_t tile[2], group;  /* 0 when absent */
    int nbits;
    int64_t bits[8];
    char *sensitivity, *scale_search, *allocation_sha256, *config_json;
    char *source_model, *command_line, *tool_version;
    int nsource_headers;
    char **source_header_sha256; /* "<file> sha256:<hex>" each */
} sb_h5_root;

typedef struct sb_h5_reader {
    char *path;
    int64_t file_bytes; /* size of the file on disk */
    sb_h5_root root;
    int nquantized;
    sb_h5_quantized *quantized;   /* canonical order */
    int npassthrough;
    sb_h5_passthrough *passthrough; /* canonical order */
    int64_t file_id, f16_type;      /* HDF5 handles (hid_t); private */
} sb_h5_reader;

/* Opens and validates `path` (see above). On failure nothing needs closing. */
sb_status sb_h5_reader_open(const char *path, sb_h5_reader *reader, sb_error *err);
/* Closes the file and frees everything the reader owns. Safe on a zeroed reader. */
void sb_h5_reader_close(sb_h5_reader *reader);

/* The tensor called `name`, or NULL. */
const sb_h5_quantized *sb_h5_find_quantized(const sb_h5_reader *reader, const char *name);
const sb_h5_passthrough *sb_h5_find_passthrough(const sb_h5_reader *reader, const char *name);

/* The bits docs/FORMAT.md charges a quantized tensor:
 * 8 x code_bytes + 8 x ceil(tiles / 2) + 32 x rows x ceil(cols / group), from its extents. */
int64_t sb_h5_tensor_bits(const sb_h5_quantized *tensor);

/* Dequantizes rows [row_begin, row_begin + row_count) of `tensor` to float32 in
 * dst[(r - row_begin) * cols + c], with the decoding rule of docs/FORMAT.md:
 * w = float32(scale) x q + float32(zero). Reads one tile row of codes at a time (at most
 * tile_rows x cols bytes) plus the scales and zeros of the rows asked for. Errors: a range
 * outside the tensor (SB_ERR_INTERNAL), an HDF5 read failure (SB_ERR_IO, naming the tensor). */
sb_status sb_h5_dequantize_rows(const sb_h5_reader *reader, const sb_h5_quantized *tensor, int64_t row_begin,
                                int64_t row_count, float *dst, sb_error *err);

/* The packed codes of tile `tile` as stored (sb_tile_code_bytes(rows_t, cols_t, bits) bytes). */
sb_status sb_h5_read_tile_codes(const sb_h5_reader *reader, const sb_h5_quantized *tensor, int64_t tile,
                                uint8_t *packed, sb_error *err);

/* Rows [row_begin, row_begin + row_count) of a pass-through tensor seen as a matrix (a 1-D
 * tensor is one row; more than two dimensions only as a whole, row_begin = 0 and
 * row_count = rows), converted to float32 (exact for every stored dtype). */
sb_status sb_h5_read_passthrough_f32(const sb_h5_reader *reader, const sb_h5_passthrough *tensor,
                                     int64_t row_begin, int64_t row_count, float *dst, sb_error *err);
/* The same rows as stored, little-endian in the tensor's dtype (BF16 as its bit patterns):
 * row_count x cols x dtype size bytes, exactly the bytes a safetensors file holds. */
sb_status sb_h5_read_passthrough_raw(const sb_h5_reader *reader, const sb_h5_passthrough *tensor,
                                     int64_t row_begin, int64_t row_count, void *dst, sb_error *err);

/* The independent accounting check of docs/FORMAT.md: visits every dataset under /tensors
 * (whatever its name, so stray datasets are charged too) and sums H5Dget_storage_size x 8.
 * `datasets` (may be NULL) receives how many were counted. */
sb_status sb_h5_recount_stored_bits(const sb_h5_reader *reader, int64_t *stored_bits, int64_t *datasets,
                                    sb_error *err);

/* SHA-256 (lower-case hex) of every tile's bitwidth, one byte per tile, quantized tensors in
 * canonical order: compare with root.allocation_sha256. */
void sb_h5_allocation_sha256(const sb_h5_reader *reader, char hex[65]);

#endif
