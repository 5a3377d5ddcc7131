/* sb_h5_qmatrix: a quantized tensor of a scalebits file (io/sb_h5_reader.h) loaded into the
 * kernels' packed layout (src/sb_kernel.h), without ever holding it as floats.
 *
 * The tensor is read one tile row at a time, in file order: the tile row's codes (one
 * contiguous range of the `codes` dataset) and its rows of `scales` and `zeros` (contiguous
 * rows), then repacked; so the reads are sequential and the memory is the packed matrix plus
 * one tile row of stored data. The bit map must hold only widths of the file's bit set (root
 * attribute `bits`, when present); the builder refuses non-finite scales and zeros, naming the
 * file, tensor, row and group.
 *
 * Not thread-safe (the reader is not).
 */
#ifndef SB_H5_QMATRIX_H
#define SB_H5_QMATRIX_H

#include "sb_error.h"
#include "sb_h5_reader.h"
#include "sb_kernel.h"

/* Loads `tensor` of `reader` into `matrix` (freed with sb_qmatrix_free). Errors: SB_ERR_FORMAT
 * (bit map, scales, sizes), SB_ERR_IO (a read failed), SB_ERR_INPUT (a group the kernels do not
 * run), SB_ERR_NOMEM; each names the file and the tensor. On failure nothing needs freeing. */
sb_status sb_h5_load_qmatrix(const sb_h5_reader *reader, const sb_h5_quantized *tensor, sb_qmatrix *matrix,
                             sb_error *err);

/* The bits of the file's bit set as a mask (bit b set: width b allowed); 0 when the file does
 * not say (every width 1..8 is then accepted). */
uint32_t sb_h5_allowed_bits(const sb_h5_reader *reader);

#endif
