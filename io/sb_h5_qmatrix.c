#include "sb_h5_qmatrix.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t sb_h5_allowed_bits(const sb_h5_reader *reader)
{
    uint32_t mask = 0;
    for (int i = 0; i < reader->root.nbits; i++)
        if (reader->root.bits[i] >= 1 && reader->root.bits[i] <= 8)
            mask |= 1u << reader->root.bits[i];
    return mask;
}

/* Reads [start, start + count) of a 1-D dataset, or rows [start, start + count) x all `cols`
 * of a 2-D one, as `memtype`. */
static herr_t read_range(hid_t dataset, hid_t memtype, int rank, int64_t start, int64_t count, int64_t cols, void *dst)
{
    hsize_t offset[2] = {(hsize_t)start, 0}, extent[2] = {(hsize_t)count, (hsize_t)cols};
    hid_t file_space = H5Dget_space(dataset), memory_space = H5Screate_simple(rank, extent, NULL);
    herr_t rc = file_space < 0 || memory_space < 0 ? -1 : 0;
    if (rc >= 0)
        rc = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, offset, NULL, extent, NULL);
    if (rc >= 0)
        rc = H5Dread(dataset, memtype, memory_space, file_space, H5P_DEFAULT, dst);
    if (memory_space >= 0)
        H5Sclose(memory_space);
    if (file_space >= 0)
        H5Sclose(file_space);
    return rc;
}

/* A dataset of the group holding the tensor: its escaped link (io/sb_h5_name.h), the stack's for
 * an expert. */
static hid_t open_dataset(const sb_h5_reader *reader, const sb_h5_quantized *tensor, const char *child)
{
    size_t length = strlen(tensor->link) + strlen(child) + 16;
    char *path = malloc(length);
    if (!path)
        return -1;
    snprintf(path, length, "/tensors/%s/%s", tensor->link, child);
    hid_t dataset = H5Dopen2((hid_t)reader->file_id, path, H5P_DEFAULT);
    free(path);
    return dataset;
}

sb_status sb_h5_load_qmatrix(const sb_h5_reader *reader, const sb_h5_quantized *tensor, sb_qmatrix *matrix,
                             sb_error *err)
{
    sb_qmatrix_desc desc = {tensor->name,      tensor->rows,  tensor->cols,   tensor->tile_rows,
                            tensor->tile_cols, tensor->group, tensor->format, sb_h5_allowed_bits(reader)};
    sb_status status = sb_qmatrix_create(&desc, tensor->bits_per_tile, tensor->tile_scales, matrix, err);
    if (status != SB_OK)
        return sb_error_prefix(err, "%s", reader->path);
    const sb_tiling *tiling = &tensor->tiling;
    int64_t max_code_bytes = 0;
    for (int64_t tile_row = 0; tile_row < tiling->tiles_down; tile_row++) {
        int64_t bytes = tensor->tile_row_offsets[tile_row + 1] - tensor->tile_row_offsets[tile_row];
        max_code_bytes = bytes > max_code_bytes ? bytes : max_code_bytes;
    }
    int64_t meta_count = (int64_t)tiling->tile_rows * tiling->groups_per_row;
    uint8_t *codes = sb_malloc((size_t)(max_code_bytes > 0 ? max_code_bytes : 1), "codes", err);
    uint16_t *scales = sb_malloc((size_t)meta_count * sizeof(uint16_t), "scales", err);
    uint16_t *zeros = sb_malloc((size_t)meta_count * sizeof(uint16_t), "zeros", err);
    hid_t codes_set = open_dataset(reader, tensor, "codes"), scales_set = open_dataset(reader, tensor, "scales");
    hid_t zeros_set = open_dataset(reader, tensor, "zeros");
    /* affine-q8 metadata is uint8, widened by HDF5; affine-f16 is read as the file's half type
     * so the raw F16 bits arrive unchanged */
    hid_t meta_type = tensor->format == SB_SCALES_Q8 ? H5T_NATIVE_UINT16 : (hid_t)reader->f16_type;
    if (!codes || !scales || !zeros) {
        status = SB_ERR_NOMEM;
    } else if (codes_set < 0 || scales_set < 0 || zeros_set < 0) {
        status = sb_error_set(err, SB_ERR_IO, "cannot open the datasets of tensor '%s'", tensor->name);
    }
    for (int64_t tile_row = 0; status == SB_OK && tile_row < tiling->tiles_down; tile_row++) {
        int64_t offset = tensor->tile_row_offsets[tile_row];
        int64_t bytes = tensor->tile_row_offsets[tile_row + 1] - offset;
        int64_t row0 = tile_row * tiling->tile_rows;
        int64_t rows = tensor->rows - row0 < tiling->tile_rows ? tensor->rows - row0 : tiling->tile_rows;
        /* an expert's part of a stack starts at its own offsets (0 for a plain tensor) */
        int64_t stacked_row0 = tensor->stack_row_offset + row0;
        if (read_range(codes_set, H5T_NATIVE_UINT8, 1, tensor->stack_code_offset + offset, bytes, 0, codes) < 0 ||
            read_range(scales_set, meta_type, 2, stacked_row0, rows, tiling->groups_per_row, scales) < 0 ||
            read_range(zeros_set, meta_type, 2, stacked_row0, rows, tiling->groups_per_row, zeros) < 0)
            status = sb_error_set(err, SB_ERR_IO, "tensor '%s': cannot read tile row %lld (corrupt file?)", tensor->name,
                                  (long long)tile_row);
        else
            status = sb_qmatrix_fill_tile_row(matrix, tile_row, codes, bytes, scales, zeros, err);
    }
    if (codes_set >= 0)
        H5Dclose(codes_set);
    if (scales_set >= 0)
        H5Dclose(scales_set);
    if (zeros_set >= 0)
        H5Dclose(zeros_set);
    free(codes);
    free(scales);
    free(zeros);
    if (status != SB_OK) {
        sb_error_prefix(err, "%s", reader->path);
        sb_qmatrix_free(matrix);
    }
    return status;
}
