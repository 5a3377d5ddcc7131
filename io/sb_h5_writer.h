/* sb_h5_writer: the scalebits output file (docs/FORMAT.md), written with parallel HDF5.
 *
 * Collective calls (marked so) must be made by every rank of the communicator in the same
 * order with the same arguments: HDF5 keeps one metadata cache per rank and they must see the
 * same stream of changes, or the file hangs or corrupts at close. Every collective call ends
 * at an agreement point (mpi/comm/sb_agree.h): it returns the same status on every rank, with
 * the message of the rank that failed, so no rank goes on to the next collective alone. Data
 * writes are independent: each rank writes the bytes of the tensors (or rows) it owns, and the
 * caller agrees on their outcome before the next collective call.
 *
 * The file is created under a temporary name chosen by rank 0, after every rank has checked
 * that it can open that file (H5Fcreate itself hangs when it fails on some ranks only);
 * sb_h5_writer_commit() closes it, syncs it and renames it to its final name;
 * sb_h5_writer_abort() closes and removes it, so a failed run leaves nothing. Tensor names
 * become HDF5 link names through io/sb_h5_name.h (no name can leave its group). HDF5's own
 * error printing is silenced: failures come back as sb_error messages. Test faults
 * (mpi/comm/sb_fault.h): h5_create, h5_write.
 */
#ifndef SB_H5_WRITER_H
#define SB_H5_WRITER_H

#include <mpi.h>
#include <stdint.h>

#include "sb_error.h"

typedef struct sb_h5_writer sb_h5_writer;

/* Collective. Creates the temporary file for `final_path`: `temp_path` if not NULL (on the
 * same file system, e.g. in the run's state directory), else a name beside it chosen by rank 0. */
sb_status sb_h5_writer_create(const char *final_path, const char *temp_path, MPI_Comm comm, sb_h5_writer **writer,
                              sb_error *err);

/* What a quantized tensor's group holds (docs/FORMAT.md, /tensors/<name>). */
typedef struct sb_h5_quantized_desc {
    const char *name;
    int64_t rows, cols;
    int tile_rows, tile_cols, group;
    int64_t tiles;          /* tiles in the grid */
    int64_t code_bytes;     /* total packed code bytes */
    const char *source_dtype;
    const char *role;
    int layer;
    const char *encoding;   /* "affine-f16" or "affine-q8" (docs/FORMAT.md) */
    /* An expert stack (docs/FORMAT.md, "Experts"): `experts` > 0 matrices of rows x cols, one MoE
     * layer's experts of one role, stored together under `name` (sb_expert_stack_name);
     * expert_code_bytes[e] are expert e's packed code bytes (code_bytes is their sum). 0 and NULL
     * for a plain tensor. */
    int64_t experts;
    const int64_t *expert_code_bytes;
} sb_h5_quantized_desc;

/* Collective. Creates /tensors/<link>/{codes,bitmap,scales,zeros} (and tile_scales for
 * affine-q8), <link> the escaped name (io/sb_h5_name.h), and the group's attributes; returns a
 * handle for the writes. An empty name is SB_ERR_INPUT. For an expert stack the handles of
 * experts 0 .. experts-1 are *handle, *handle + 1, ...: every write through expert e's handle
 * lands in e's part of the stacked datasets (its offsets, rows, tiles and bit map row), so
 * callers write an expert exactly as a plain tensor. */
sb_status sb_h5_define_quantized(sb_h5_writer *writer, const sb_h5_quantized_desc *desc, int *handle, sb_error *err);

/* Collective. Creates /passthrough/<link> (the escaped name) holding the tensor as stored (F32
 * as float32, F16 as IEEE half, BF16 as uint16 bit patterns with attribute dtype = "BF16"). */
sb_status sb_h5_define_passthrough(sb_h5_writer *writer, const char *name, const char *dtype, int ndim,
                                   const int64_t *shape, int *handle, sb_error *err);

/* Independent writes (each returns this rank's status; the caller agrees afterwards). */
sb_status sb_h5_write_codes(sb_h5_writer *writer, int handle, int64_t offset, int64_t bytes, const uint8_t *data,
                            sb_error *err);
sb_status sb_h5_write_bitmap(sb_h5_writer *writer, int handle, const uint8_t *packed_bitmap, sb_error *err);
/* Rows of scales and zeros: F16 bit patterns (affine-f16) or 8-bit codes held in uint16
 * (affine-q8), [rows x groups]. */
sb_status sb_h5_write_scale_rows(sb_h5_writer *writer, int handle, int64_t row_begin, int64_t rows,
                                 const uint16_t *scales, const uint16_t *zeros, sb_error *err);
/* affine-q8: the F16 scale bounds of tiles [first_tile, first_tile + count). */
sb_status sb_h5_write_tile_scales(sb_h5_writer *writer, int handle, int64_t first_tile, int64_t count,
                                  const uint16_t *tile_scales, sb_error *err);
/* Rows [row_begin, row_begin + rows) of a pass-through tensor (along its first dimension; a 1-D
 * tensor is one row), bytes as stored in the source. */
sb_status sb_h5_write_passthrough_rows(sb_h5_writer *writer, int handle, int64_t row_begin, int64_t rows,
                                       const void *raw, sb_error *err);

/* Collective root attributes. */
sb_status sb_h5_root_string(sb_h5_writer *writer, const char *name, const char *value, sb_error *err);
sb_status sb_h5_root_double(sb_h5_writer *writer, const char *name, double value, sb_error *err);
sb_status sb_h5_root_int64s(sb_h5_writer *writer, const char *name, const int64_t *values, int count, sb_error *err);
sb_status sb_h5_root_strings(sb_h5_writer *writer, const char *name, const char *const *values, int count,
                             sb_error *err);

/* Collective: writes a 1-D dataset `path` (e.g. "/search/tile_bits") of uint8 or double from
 * rank 0's buffer (other ranks pass NULL). For small run metadata outside /tensors. */
sb_status sb_h5_write_small_u8(sb_h5_writer *writer, const char *path, const uint8_t *data, int64_t count,
                               sb_error *err);

/* Collective: writes a 2-D int64 dataset `path` [rows, cols] (intermediate groups created) from
 * rank 0's buffer (other ranks pass NULL). For small run metadata outside /tensors, e.g. the
 * calibration's token counts per expert. */
sb_status sb_h5_write_small_i64(sb_h5_writer *writer, const char *path, const int64_t *data, int64_t rows,
                                int64_t cols, sb_error *err);

/* Collective. Closes, syncs and renames to the final path. Frees the writer. */
sb_status sb_h5_writer_commit(sb_h5_writer *writer, sb_error *err);
/* Collective. Closes and removes the temporary file. Frees the writer. Safe on NULL. */
void sb_h5_writer_abort(sb_h5_writer *writer);

/* The HDF5 datatype scalebits uses for F16 values (IEEE binary16, little-endian); the caller
 * closes it with H5Tclose. Shared with the reader. */
int64_t sb_h5_f16_type(void);

#endif
