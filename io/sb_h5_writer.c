#include "sb_h5_writer.h"

#include <hdf5.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "sb_agree.h"
#include "sb_atomic.h"
#include "sb_fault.h"
#include "sb_h5_name.h"
#include "sb_mpi.h"
#include "sb_path.h"

typedef struct tensor_datasets {
    char *name;
    hid_t codes, bitmap, scales, zeros; /* quantized */
    hid_t tile_scales;                  /* affine-q8 */
    int q8;
    hid_t passthrough;
    int64_t groups_per_row, tiles;
    int passthrough_is_float;
    /* an expert of a stack: where its part starts in the stack's datasets; the handles belong
     * to the stack's first expert (shared: closed once) */
    int shared;
    int64_t bitmap_row; /* -1: a 1-D bit map (plain tensor) */
    int64_t code_offset, row_offset, tile_offset;
} tensor_datasets;

struct sb_h5_writer {
    MPI_Comm comm;
    int rank;
    char final_path[SB_PATH_MAX];
    char temp_path[SB_PATH_MAX];
    bool failed_write; /* the h5_write fault (sb_fault.h) fired once already */
    hid_t file, tensors_group, passthrough_group;
    hid_t independent; /* dataset transfer property list */
    hid_t f16;
    tensor_datasets *datasets;
    int count, capacity;
};

int64_t sb_h5_f16_type(void)
{
    /* IEEE binary16: sign bit 15, exponent bits 10..14 (bias 15), mantissa bits 0..9. Built
     * from a float32 copy because HDF5 1.10 has no predefined half type; h5py and h5dump read
     * this layout as float16. */
    hid_t type = H5Tcopy(H5T_IEEE_F32LE);
    if (type < 0)
        return -1;
    if (H5Tset_fields(type, 15, 10, 5, 0, 10) < 0 || H5Tset_precision(type, 16) < 0 || H5Tset_size(type, 2) < 0 ||
        H5Tset_ebias(type, 15) < 0) {
        H5Tclose(type);
        return -1;
    }
    return type;
}

static sb_status h5_fail(sb_h5_writer *writer, sb_error *err, const char *what, const char *name)
{
    return sb_error_set(err, SB_ERR_IO, "%s: HDF5 failed to %s%s%s%s", writer->final_path, what,
                        name ? " '" : "", name ? name : "", name ? "'" : "");
}

/* Rank 0 creates the temporary file empty, then every rank opens it for writing: a rank that
 * cannot see or write the output's directory (another node's mount, permissions) is found
 * here, and all ranks agree, before H5Fcreate. H5Fcreate over MPI-IO is collective, and when
 * it fails on some ranks only, the others wait inside HDF5 forever (Open MPI 4.1, HDF5 1.10):
 * no agreement after the call could free them. */
static sb_status check_temp_file(sb_h5_writer *writer, sb_error *err)
{
    sb_status status = SB_OK;
    if (writer->rank == 0) {
        int fd = open(writer->temp_path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0)
            status = sb_error_set(err, SB_ERR_IO, "%s: cannot create the output's temporary file %s: %s",
                                  writer->final_path, writer->temp_path, strerror(errno));
        else
            close(fd);
    }
    SB_TRY(sb_agree(writer->comm, status, err));
    int fd = open(writer->temp_path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        status = sb_error_set(err, SB_ERR_IO, "%s: cannot open the output's temporary file %s on this rank: %s",
                              writer->final_path, writer->temp_path, strerror(errno));
    else
        close(fd);
    if (status == SB_OK && sb_fault_injected(writer->comm, "h5_create"))
        status = sb_error_set(err, SB_ERR_IO, "%s: cannot open the output's temporary file %s on this rank: "
                              "(injected fault h5_create)", writer->final_path, writer->temp_path);
    status = sb_agree(writer->comm, status, err);
    if (status != SB_OK && writer->rank == 0)
        unlink(writer->temp_path);
    return status;
}

sb_status sb_h5_writer_create(const char *final_path, const char *temp_path, MPI_Comm comm, sb_h5_writer **out,
                              sb_error *err)
{
    *out = NULL;
    /* Failures are reported through sb_error; HDF5's stack dumps would only confuse users. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    sb_h5_writer *writer = calloc(1, sizeof *writer);
    sb_status status = writer ? SB_OK : sb_error_set(err, SB_ERR_NOMEM, "out of memory creating %s", final_path);
    if (writer) {
        writer->comm = comm;
        writer->file = writer->tensors_group = writer->passthrough_group = writer->independent = writer->f16 = -1;
        status = sb_mpi_rank_size(comm, &writer->rank, NULL, err);
    }
    if (status == SB_OK)
        status = sb_path_format(writer->final_path, sizeof writer->final_path, err, "%s", final_path);
    /* Every rank must open the same temporary name: rank 0 picks it (its pid), all receive it. */
    if (status == SB_OK && writer->rank == 0)
        status = temp_path ? sb_path_format(writer->temp_path, sizeof writer->temp_path, err, "%s", temp_path)
                           : sb_atomic_temp_name(final_path, writer->temp_path, sizeof writer->temp_path, err);
    status = sb_agree(comm, status, err);
    if (status == SB_OK)
        status = sb_agree(comm, SB_MPI_CALL(err, MPI_Bcast(writer->temp_path, (int)sizeof writer->temp_path,
                                                           MPI_CHAR, 0, comm)), err);
    if (status == SB_OK)
        status = check_temp_file(writer, err);
    if (status != SB_OK) {
        free(writer);
        return status;
    }
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    herr_t rc = fapl < 0 ? -1 : 0;
    if (rc >= 0)
        rc = H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    if (rc >= 0)
        rc = H5Pset_all_coll_metadata_ops(fapl, 1);
    if (rc >= 0)
        rc = H5Pset_coll_metadata_write(fapl, 1);
    /* Large datasets start on 1 MiB boundaries (stripe-friendly on parallel file systems). */
    if (rc >= 0)
        rc = H5Pset_alignment(fapl, 1 << 20, 1 << 20);
    if (rc >= 0)
        rc = H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
    /* every rank reaches H5Fcreate, or none: the property list is built alike everywhere */
    status = sb_agree(comm, rc < 0 ? h5_fail(writer, err, "set up the file access", NULL) : SB_OK, err);
    if (status == SB_OK) {
        writer->file = H5Fcreate(writer->temp_path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
        status = sb_agree(comm,
                          writer->file < 0 ? sb_error_set(err, SB_ERR_IO, "%s: cannot create the output (temporary file "
                                                          "%s)", final_path, writer->temp_path)
                                           : SB_OK,
                          err);
    }
    if (fapl >= 0)
        H5Pclose(fapl);
    if (status != SB_OK) {
        /* Failed everywhere (the check above makes a partial failure of H5Fcreate as unlikely
         * as HDF5 allows): nothing to close collectively. */
        if (writer->file >= 0)
            H5Fclose(writer->file);
        if (writer->rank == 0)
            unlink(writer->temp_path);
        free(writer);
        return status;
    }
    writer->tensors_group = H5Gcreate2(writer->file, "/tensors", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    writer->passthrough_group = H5Gcreate2(writer->file, "/passthrough", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    writer->independent = H5Pcreate(H5P_DATASET_XFER);
    if (writer->independent >= 0 && H5Pset_dxpl_mpio(writer->independent, H5FD_MPIO_INDEPENDENT) < 0) {
        H5Pclose(writer->independent);
        writer->independent = -1;
    }
    writer->f16 = (hid_t)sb_h5_f16_type();
    bool ok = writer->tensors_group >= 0 && writer->passthrough_group >= 0 && writer->independent >= 0 &&
              writer->f16 >= 0;
    status = sb_agree(comm, ok ? SB_OK : h5_fail(writer, err, "create the top-level groups", NULL), err);
    if (status != SB_OK) {
        sb_h5_writer_abort(writer);
        return status;
    }
    *out = writer;
    return SB_OK;
}

static hid_t create_dataset(hid_t parent, const char *name, hid_t type, int ndim, const hsize_t *dims)
{
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* contiguous, allocated at creation, never filled: raw writes are then independent */
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t dataset = H5Dcreate2(parent, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    return dataset;
}

static herr_t attr_write(hid_t object, const char *name, hid_t type, int count, const void *value)
{
    hsize_t dims[1] = {(hsize_t)count};
    hid_t space = count == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    hid_t attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, type, value);
    if (attr >= 0)
        H5Aclose(attr);
    H5Sclose(space);
    return rc;
}

static herr_t attr_string(hid_t object, const char *name, const char *value)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, strlen(value) + 1);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, type, value);
    if (attr >= 0)
        H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    return rc;
}

static sb_status push_datasets(sb_h5_writer *writer, const char *name, int *handle, sb_error *err)
{
    if (writer->count == writer->capacity) {
        int capacity = writer->capacity ? writer->capacity * 2 : 256;
        tensor_datasets *grown = realloc(writer->datasets, (size_t)capacity * sizeof *grown);
        if (!grown)
            return sb_error_set(err, SB_ERR_NOMEM, "out of memory defining '%s'", name);
        writer->datasets = grown;
        writer->capacity = capacity;
    }
    tensor_datasets *entry = &writer->datasets[writer->count];
    memset(entry, 0, sizeof *entry);
    entry->codes = entry->bitmap = entry->scales = entry->zeros = entry->passthrough = entry->tile_scales = -1;
    entry->bitmap_row = -1;
    entry->name = strdup(name);
    if (!entry->name)
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory defining '%s'", name);
    *handle = writer->count++;
    return SB_OK;
}

/* Handles for experts 1 .. experts-1 of a stack defined at `first`: views of its datasets. */
static sb_status define_stack_views(sb_h5_writer *writer, const sb_h5_quantized_desc *desc, int first, sb_error *err)
{
    int64_t code_offset = desc->expert_code_bytes[0];
    for (int64_t e = 1; e < desc->experts; e++) {
        int handle;
        SB_TRY(push_datasets(writer, desc->name, &handle, err));
        tensor_datasets *stack = &writer->datasets[first], *view = &writer->datasets[handle];
        char *name = view->name;
        *view = *stack;
        view->name = name;
        view->shared = 1;
        view->bitmap_row = e;
        view->code_offset = code_offset;
        view->row_offset = e * desc->rows;
        view->tile_offset = e * desc->tiles;
        code_offset += desc->expert_code_bytes[e];
    }
    return SB_OK;
}

static sb_status define_quantized(sb_h5_writer *writer, const sb_h5_quantized_desc *desc, int *handle, sb_error *err)
{
    if (!desc->encoding || (strcmp(desc->encoding, "affine-q8") != 0 && strcmp(desc->encoding, "affine-f16") != 0))
        return sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s': encoding '%s' is not affine-f16 or affine-q8",
                            writer->final_path, desc->name, desc->encoding ? desc->encoding : "(none)");
    char *link;
    SB_TRY(sb_h5_name_escape(desc->name, &link, err));
    sb_status status = push_datasets(writer, desc->name, handle, err);
    hid_t group = status == SB_OK ? H5Gcreate2(writer->tensors_group, link, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
    free(link);
    SB_TRY(status);
    if (group < 0)
        return h5_fail(writer, err, "create the group of tensor", desc->name);
    tensor_datasets *entry = &writer->datasets[*handle];
    entry->groups_per_row = (desc->cols + desc->group - 1) / desc->group;
    entry->tiles = desc->tiles;
    int64_t experts = desc->experts > 0 ? desc->experts : 1;
    bool stack = desc->experts > 0;
    if (stack && !desc->expert_code_bytes) {
        H5Gclose(group);
        return sb_error_set(err, SB_ERR_INTERNAL, "%s: expert stack '%s' without its experts' code sizes",
                            writer->final_path, desc->name);
    }
    if (stack)
        entry->bitmap_row = 0;
    entry->q8 = strcmp(desc->encoding, "affine-q8") == 0;
    /* a stack: experts one after another along the first dimension (docs/FORMAT.md, "Experts");
     * each expert's bit map is a row of its own, packed exactly as a plain tensor's */
    hsize_t code_dims[1] = {(hsize_t)desc->code_bytes};
    hsize_t bitmap_dims[2] = {(hsize_t)experts, (hsize_t)((desc->tiles + 1) / 2)};
    hsize_t scale_dims[2] = {(hsize_t)(experts * desc->rows), (hsize_t)entry->groups_per_row};
    entry->codes = create_dataset(group, "codes", H5T_STD_U8LE, 1, code_dims);
    entry->bitmap = stack ? create_dataset(group, "bitmap", H5T_STD_U8LE, 2, bitmap_dims)
                          : create_dataset(group, "bitmap", H5T_STD_U8LE, 1, bitmap_dims + 1);
    hid_t scale_type = entry->q8 ? H5T_STD_U8LE : writer->f16;
    entry->scales = create_dataset(group, "scales", scale_type, 2, scale_dims);
    entry->zeros = create_dataset(group, "zeros", scale_type, 2, scale_dims);
    if (entry->q8) {
        hsize_t tile_dims[1] = {(hsize_t)(experts * desc->tiles)};
        entry->tile_scales = create_dataset(group, "tile_scales", writer->f16, 1, tile_dims);
    }
    int64_t shape[2] = {desc->rows, desc->cols};
    int64_t tile[2] = {desc->tile_rows, desc->tile_cols};
    int64_t group_size = desc->group;
    int64_t layer = desc->layer;
    herr_t rc = 0;
    rc |= attr_write(group, "shape", H5T_NATIVE_INT64, 2, shape);
    rc |= attr_write(group, "tile", H5T_NATIVE_INT64, 2, tile);
    rc |= attr_write(group, "group", H5T_NATIVE_INT64, 1, &group_size);
    rc |= attr_write(group, "layer", H5T_NATIVE_INT64, 1, &layer);
    rc |= attr_string(group, "source_dtype", desc->source_dtype);
    rc |= attr_string(group, "role", desc->role);
    rc |= attr_string(group, "encoding", entry->q8 ? "affine-q8" : "affine-f16");
    if (stack) {
        int64_t *offsets = malloc((size_t)(experts + 1) * sizeof *offsets);
        if (!offsets) {
            H5Gclose(group);
            return sb_error_set(err, SB_ERR_NOMEM, "out of memory defining '%s'", desc->name);
        }
        offsets[0] = 0;
        for (int64_t e = 0; e < experts; e++)
            offsets[e + 1] = offsets[e] + desc->expert_code_bytes[e];
        rc |= attr_write(group, "experts", H5T_NATIVE_INT64, 1, &experts);
        rc |= attr_write(group, "expert_code_offsets", H5T_NATIVE_INT64, (int)(experts + 1), offsets);
        free(offsets);
    }
    H5Gclose(group);
    if (entry->codes < 0 || entry->bitmap < 0 || entry->scales < 0 || entry->zeros < 0 || rc < 0 ||
        (entry->q8 && entry->tile_scales < 0))
        return h5_fail(writer, err, "create the datasets of tensor", desc->name);
    return stack ? define_stack_views(writer, desc, *handle, err) : SB_OK;
}

sb_status sb_h5_define_quantized(sb_h5_writer *writer, const sb_h5_quantized_desc *desc, int *handle, sb_error *err)
{
    return sb_agree(writer->comm, define_quantized(writer, desc, handle, err), err);
}

static sb_status define_passthrough(sb_h5_writer *writer, const char *name, const char *dtype, int ndim,
                                    const int64_t *shape, int *handle, sb_error *err)
{
    hsize_t dims[8];
    if (ndim < 0 || ndim > 8)
        return sb_error_set(err, SB_ERR_INTERNAL, "%s: tensor '%s' has %d dimensions", writer->final_path, name, ndim);
    for (int d = 0; d < ndim; d++)
        dims[d] = (hsize_t)shape[d];
    char *link;
    SB_TRY(sb_h5_name_escape(name, &link, err));
    sb_status status = push_datasets(writer, name, handle, err);
    if (status != SB_OK) {
        free(link);
        return status;
    }
    tensor_datasets *entry = &writer->datasets[*handle];
    hid_t type = strcmp(dtype, "F32") == 0 ? H5T_IEEE_F32LE : strcmp(dtype, "F16") == 0 ? writer->f16 : H5T_STD_U16LE;
    entry->passthrough = create_dataset(writer->passthrough_group, link, type, ndim, dims);
    free(link);
    if (entry->passthrough < 0 || attr_string(entry->passthrough, "dtype", dtype) < 0)
        return h5_fail(writer, err, "create the pass-through dataset of tensor", name);
    return SB_OK;
}

sb_status sb_h5_define_passthrough(sb_h5_writer *writer, const char *name, const char *dtype, int ndim,
                                   const int64_t *shape, int *handle, sb_error *err)
{
    return sb_agree(writer->comm, define_passthrough(writer, name, dtype, ndim, shape, handle, err), err);
}

/* The h5_write fault (sb_fault.h): the first data write of the chosen rank fails. */
static bool write_fault(sb_h5_writer *writer)
{
    if (writer->failed_write || !sb_fault_injected(writer->comm, "h5_write"))
        return false;
    writer->failed_write = true;
    return true;
}

static sb_status write_1d(sb_h5_writer *writer, hid_t dataset, hid_t memtype, int64_t offset, int64_t count,
                          const void *data, const char *what, const char *name, sb_error *err)
{
    if (count == 0)
        return SB_OK;
    if (write_fault(writer))
        return h5_fail(writer, err, what, name);
    hid_t file_space = H5Dget_space(dataset);
    hsize_t start[1] = {(hsize_t)offset}, length[1] = {(hsize_t)count};
    hid_t memory_space = H5Screate_simple(1, length, NULL);
    herr_t rc = file_space < 0 || memory_space < 0 ? -1 : 0;
    if (rc >= 0)
        rc = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, NULL, length, NULL);
    if (rc >= 0)
        rc = H5Dwrite(dataset, memtype, memory_space, file_space, writer->independent, data);
    if (memory_space >= 0)
        H5Sclose(memory_space);
    if (file_space >= 0)
        H5Sclose(file_space);
    return rc < 0 ? h5_fail(writer, err, what, name) : SB_OK;
}

sb_status sb_h5_write_codes(sb_h5_writer *writer, int handle, int64_t offset, int64_t bytes, const uint8_t *data,
                            sb_error *err)
{
    tensor_datasets *entry = &writer->datasets[handle];
    return write_1d(writer, entry->codes, H5T_NATIVE_UINT8, entry->code_offset + offset, bytes, data,
                    "write the codes of", entry->name, err);
}

sb_status sb_h5_write_bitmap(sb_h5_writer *writer, int handle, const uint8_t *packed_bitmap, sb_error *err)
{
    tensor_datasets *entry = &writer->datasets[handle];
    int64_t bytes = (entry->tiles + 1) / 2;
    if (entry->bitmap_row < 0)
        return write_1d(writer, entry->bitmap, H5T_NATIVE_UINT8, 0, bytes, packed_bitmap, "write the bit map of",
                        entry->name, err);
    /* an expert's row of its stack's [experts, bytes] bit map */
    hid_t file_space = H5Dget_space(entry->bitmap);
    hsize_t start[2] = {(hsize_t)entry->bitmap_row, 0}, length[2] = {1, (hsize_t)bytes};
    hid_t memory_space = H5Screate_simple(2, length, NULL);
    herr_t rc = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, NULL, length, NULL);
    if (rc >= 0 && bytes > 0)
        rc = H5Dwrite(entry->bitmap, H5T_NATIVE_UINT8, memory_space, file_space, writer->independent, packed_bitmap);
    H5Sclose(memory_space);
    H5Sclose(file_space);
    return rc < 0 ? h5_fail(writer, err, "write the bit map of", entry->name) : SB_OK;
}

sb_status sb_h5_write_scale_rows(sb_h5_writer *writer, int handle, int64_t row_begin, int64_t rows,
                                 const uint16_t *scales, const uint16_t *zeros, sb_error *err)
{
    tensor_datasets *entry = &writer->datasets[handle];
    if (rows == 0)
        return SB_OK;
    if (write_fault(writer))
        return h5_fail(writer, err, "write the scales and zeros of", entry->name);
    hsize_t start[2] = {(hsize_t)(entry->row_offset + row_begin), 0};
    hsize_t length[2] = {(hsize_t)rows, (hsize_t)entry->groups_per_row};
    hid_t memory_space = H5Screate_simple(2, length, NULL);
    herr_t rc = memory_space < 0 ? -1 : 0;
    hid_t datasets[2] = {entry->scales, entry->zeros};
    const uint16_t *buffers[2] = {scales, zeros};
    for (int i = 0; i < 2 && rc >= 0; i++) {
        hid_t file_space = H5Dget_space(datasets[i]);
        rc = file_space < 0 ? -1 : H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, NULL, length, NULL);
        /* F16: the buffers already hold F16 bit patterns, written with the file's own type;
         * Q8: 8-bit codes held in uint16, converted by HDF5 */
        if (rc >= 0)
            rc = H5Dwrite(datasets[i], entry->q8 ? H5T_NATIVE_UINT16 : writer->f16, memory_space, file_space,
                          writer->independent, buffers[i]);
        if (file_space >= 0)
            H5Sclose(file_space);
    }
    if (memory_space >= 0)
        H5Sclose(memory_space);
    return rc < 0 ? h5_fail(writer, err, "write the scales and zeros of", entry->name) : SB_OK;
}

sb_status sb_h5_write_tile_scales(sb_h5_writer *writer, int handle, int64_t first_tile, int64_t count,
                                  const uint16_t *tile_scales, sb_error *err)
{
    tensor_datasets *entry = &writer->datasets[handle];
    if (!entry->q8)
        return SB_OK;
    return write_1d(writer, entry->tile_scales, writer->f16, entry->tile_offset + first_tile, count, tile_scales,
                    "write the tile scale bounds of", entry->name, err);
}

sb_status sb_h5_write_passthrough_rows(sb_h5_writer *writer, int handle, int64_t row_begin, int64_t rows,
                                       const void *raw, sb_error *err)
{
    tensor_datasets *entry = &writer->datasets[handle];
    if (rows == 0)
        return SB_OK;
    if (write_fault(writer))
        return h5_fail(writer, err, "write the pass-through dataset of tensor", entry->name);
    hid_t type = H5Dget_type(entry->passthrough);
    hid_t file_space = H5Dget_space(entry->passthrough);
    int ndim = file_space < 0 ? -1 : H5Sget_simple_extent_ndims(file_space);
    hsize_t dims[8], start[8] = {0}, count[8];
    herr_t rc = type < 0 || ndim < 0 || ndim > 8 ? -1 : 0;
    if (rc >= 0 && H5Sget_simple_extent_dims(file_space, dims, NULL) < 0)
        rc = -1;
    hid_t memory_space = -1;
    if (rc >= 0 && ndim <= 1) {
        /* a vector (or scalar) is one row: written whole */
        memory_space = H5S_ALL;
        H5Sclose(file_space);
        file_space = H5S_ALL;
    } else if (rc >= 0) {
        for (int d = 0; d < ndim; d++)
            count[d] = dims[d];
        start[0] = (hsize_t)row_begin;
        count[0] = (hsize_t)rows;
        rc = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, NULL, count, NULL);
        memory_space = H5Screate_simple(ndim, count, NULL);
        if (memory_space < 0)
            rc = -1;
    }
    if (rc >= 0)
        rc = H5Dwrite(entry->passthrough, type, memory_space, file_space, writer->independent, raw);
    if (memory_space >= 0 && memory_space != H5S_ALL)
        H5Sclose(memory_space);
    if (file_space >= 0 && file_space != H5S_ALL)
        H5Sclose(file_space);
    if (type >= 0)
        H5Tclose(type);
    return rc < 0 ? h5_fail(writer, err, "write the pass-through dataset of tensor", entry->name) : SB_OK;
}

sb_status sb_h5_root_string(sb_h5_writer *writer, const char *name, const char *value, sb_error *err)
{
    sb_status status = attr_string(writer->file, name, value) < 0 ? h5_fail(writer, err, "write attribute", name) : SB_OK;
    return sb_agree(writer->comm, status, err);
}

sb_status sb_h5_root_double(sb_h5_writer *writer, const char *name, double value, sb_error *err)
{
    sb_status status = attr_write(writer->file, name, H5T_NATIVE_DOUBLE, 1, &value) < 0
                           ? h5_fail(writer, err, "write attribute", name)
                           : SB_OK;
    return sb_agree(writer->comm, status, err);
}

sb_status sb_h5_root_int64s(sb_h5_writer *writer, const char *name, const int64_t *values, int count, sb_error *err)
{
    sb_status status = attr_write(writer->file, name, H5T_NATIVE_INT64, count, values) < 0
                           ? h5_fail(writer, err, "write attribute", name)
                           : SB_OK;
    return sb_agree(writer->comm, status, err);
}

sb_status sb_h5_root_strings(sb_h5_writer *writer, const char *name, const char *const *values, int count,
                             sb_error *err)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    herr_t rc = type < 0 ? -1 : 0;
    if (rc >= 0)
        rc = H5Tset_size(type, H5T_VARIABLE);
    if (rc >= 0)
        rc = H5Tset_cset(type, H5T_CSET_UTF8);
    if (rc >= 0)
        rc = attr_write(writer->file, name, type, count, values);
    if (type >= 0)
        H5Tclose(type);
    return sb_agree(writer->comm, rc < 0 ? h5_fail(writer, err, "write attribute", name) : SB_OK, err);
}

/* A small dataset written by rank 0 only, its outcome agreed (see the two callers). */
static sb_status write_small(sb_h5_writer *writer, const char *path, hid_t file_type, hid_t memory_type, int ndim,
                             const hsize_t *dims, const void *data, sb_error *err)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl >= 0)
        H5Pset_create_intermediate_group(lcpl, 1);
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl >= 0) {
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    }
    hid_t dataset = lcpl < 0 || space < 0 || dcpl < 0
                        ? -1
                        : H5Dcreate2(writer->file, path, file_type, space, lcpl, dcpl, H5P_DEFAULT);
    herr_t rc = dataset < 0 ? -1 : 0;
    hsize_t count = 1;
    for (int d = 0; d < ndim; d++)
        count *= dims[d];
    if (rc >= 0 && writer->rank == 0 && count > 0)
        rc = H5Dwrite(dataset, memory_type, H5S_ALL, H5S_ALL, writer->independent, data);
    if (dataset >= 0)
        H5Dclose(dataset);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (lcpl >= 0)
        H5Pclose(lcpl);
    if (space >= 0)
        H5Sclose(space);
    /* rank 0's write result reaches everyone: all return the same status */
    return sb_agree(writer->comm, rc < 0 ? h5_fail(writer, err, "write", path) : SB_OK, err);
}

sb_status sb_h5_write_small_u8(sb_h5_writer *writer, const char *path, const uint8_t *data, int64_t count,
                               sb_error *err)
{
    hsize_t dims[1] = {(hsize_t)count};
    return write_small(writer, path, H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, dims, data, err);
}

sb_status sb_h5_write_small_i64(sb_h5_writer *writer, const char *path, const int64_t *data, int64_t rows,
                                int64_t cols, sb_error *err)
{
    hsize_t dims[2] = {(hsize_t)rows, (hsize_t)cols};
    return write_small(writer, path, H5T_STD_I64LE, H5T_NATIVE_INT64, 2, dims, data, err);
}

static void close_all(sb_h5_writer *writer)
{
    for (int i = 0; i < writer->count; i++) {
        tensor_datasets *entry = &writer->datasets[i];
        hid_t ids[6] = {entry->codes, entry->bitmap, entry->scales, entry->zeros, entry->passthrough, entry->tile_scales};
        for (int k = 0; k < 6 && !entry->shared; k++)
            if (ids[k] >= 0)
                H5Dclose(ids[k]);
        free(entry->name);
    }
    free(writer->datasets);
    writer->datasets = NULL;
    writer->count = 0;
    if (writer->tensors_group >= 0)
        H5Gclose(writer->tensors_group);
    if (writer->passthrough_group >= 0)
        H5Gclose(writer->passthrough_group);
    if (writer->independent >= 0)
        H5Pclose(writer->independent);
    if (writer->f16 >= 0)
        H5Tclose(writer->f16);
    writer->tensors_group = writer->passthrough_group = writer->independent = writer->f16 = -1;
}

sb_status sb_h5_writer_commit(sb_h5_writer *writer, sb_error *err)
{
    close_all(writer);
    herr_t rc = H5Fclose(writer->file);
    writer->file = -1;
    sb_status status = sb_agree(writer->comm,
                                rc < 0 ? sb_error_set(err, SB_ERR_IO, "%s: closing the HDF5 file failed (disk full?)",
                                                      writer->final_path)
                                       : SB_OK,
                                err);
    /* rank 0 renames; its result, and its message, are everyone's */
    if (status == SB_OK)
        status = sb_agree(writer->comm, writer->rank == 0 ? sb_atomic_commit(writer->temp_path, writer->final_path, err)
                                                          : SB_OK,
                          err);
    if (status != SB_OK && writer->rank == 0)
        unlink(writer->temp_path);
    free(writer);
    return status;
}

void sb_h5_writer_abort(sb_h5_writer *writer)
{
    if (!writer)
        return;
    close_all(writer);
    if (writer->file >= 0)
        H5Fclose(writer->file);
    /* the file is closed everywhere before rank 0 removes it; an error here leaves only a
     * temporary file behind, so it is not reported over the error that caused the abort */
    SB_MPI_CALL(NULL, MPI_Barrier(writer->comm));
    if (writer->rank == 0)
        unlink(writer->temp_path);
    free(writer);
}
