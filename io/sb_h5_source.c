#include "sb_h5_source.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_h5_qmatrix.h"

static void shape_text(char *text, size_t size, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(text, size, "[");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(text + used, size - used, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (used < size)
        snprintf(text + used, size - used, "]");
}

static sb_status shape_mismatch(const sb_h5_reader *reader, const char *tensor_name, int ndim, const int64_t *shape,
                                int64_t rows, int64_t cols, sb_error *err)
{
    char actual[160], expected[64];
    shape_text(actual, sizeof actual, ndim, shape);
    if (rows == 1)
        snprintf(expected, sizeof expected, "[%lld]", (long long)cols);
    else
        snprintf(expected, sizeof expected, "[%lld, %lld]", (long long)rows, (long long)cols);
    return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' has shape %s, but the model's config implies %s",
                        reader->path, tensor_name, actual, expected);
}

sb_status sb_h5_fetch(void *source, const char *tensor_name, int64_t rows, int64_t cols, float *dst, sb_error *err)
{
    const sb_h5_reader *reader = ((const sb_h5_source *)source)->reader;
    const sb_h5_quantized *quantized = sb_h5_find_quantized(reader, tensor_name);
    if (quantized) {
        if (quantized->rows != rows || quantized->cols != cols)
            return shape_mismatch(reader, tensor_name, 2, (const int64_t[]){quantized->rows, quantized->cols}, rows,
                                  cols, err);
        if (!dst)
            return SB_OK; /* checked only */
        SB_TRY(sb_h5_dequantize_rows(reader, quantized, 0, rows, dst, err));
        /* A finite scale and zero give finite weights; anything else is a damaged file, and the
         * runtime would only report it as a NaN perplexity far from its cause. */
        for (int64_t i = 0; i < rows * cols; i++)
            if (!isfinite(dst[i]))
                return sb_error_set(err, SB_ERR_FORMAT,
                                    "%s: tensor '%s': dequantized weight at row %lld, column %lld is %f (a corrupt "
                                    "scale or zero)",
                                    reader->path, tensor_name, (long long)(i / cols), (long long)(i % cols),
                                    (double)dst[i]);
        return SB_OK;
    }
    const sb_h5_passthrough *passthrough = sb_h5_find_passthrough(reader, tensor_name);
    if (!passthrough)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: tensor '%s' is missing (neither under /tensors nor under /passthrough)", reader->path,
                            tensor_name);
    bool shape_ok = (passthrough->ndim == 2 && passthrough->shape[0] == rows && passthrough->shape[1] == cols) ||
                    (passthrough->ndim == 1 && rows == 1 && passthrough->shape[0] == cols);
    if (!shape_ok)
        return shape_mismatch(reader, tensor_name, passthrough->ndim, passthrough->shape, rows, cols, err);
    if (!dst)
        return SB_OK; /* checked only */
    SB_TRY(sb_h5_read_passthrough_f32(reader, passthrough, 0, passthrough->rows, dst, err));
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(dst[i]))
            return sb_error_set(err, SB_ERR_FORMAT, "%s: pass-through tensor '%s': value %lld is %f", reader->path,
                                tensor_name, (long long)i, (double)dst[i]);
    return SB_OK;
}

sb_status sb_model_load_h5(const sb_model_shape *shape, const sb_h5_reader *reader, sb_model *model, sb_error *err)
{
    sb_h5_source source = {.reader = reader};
    /* the file holds every tensor with its shape before the model is allocated from its config */
    SB_TRY(sb_model_check_source(shape, sb_h5_fetch, &source, 0, shape->num_hidden_layers, true, true, err));
    SB_TRY(sb_model_alloc(shape, model, err));
    sb_status status = sb_model_load(sb_h5_fetch, &source, model, err);
    if (status != SB_OK)
        sb_model_free(model);
    return status;
}

sb_status sb_h5_fetch_linear(void *source, const char *tensor_name, int64_t rows, int64_t cols, sb_linear *linear,
                             sb_error *err)
{
    const sb_h5_source *h5 = source;
    const sb_h5_quantized *quantized = sb_h5_find_quantized(h5->reader, tensor_name);
    if (quantized && h5->kernel) {
        if (quantized->rows != rows || quantized->cols != cols)
            return shape_mismatch(h5->reader, tensor_name, 2, (const int64_t[]){quantized->rows, quantized->cols},
                                  rows, cols, err);
        sb_qmatrix *matrix = sb_malloc(sizeof *matrix, "packed matrix", err);
        if (!matrix)
            return SB_ERR_NOMEM;
        sb_status status = sb_h5_load_qmatrix(h5->reader, quantized, matrix, err);
        if (status != SB_OK) {
            free(matrix);
            return status;
        }
        *linear = sb_linear_packed(matrix, h5->kernel);
        return SB_OK;
    }
    float *values = sb_malloc((size_t)(rows * cols) * sizeof(float), tensor_name, err);
    if (!values)
        return SB_ERR_NOMEM;
    sb_status status = sb_h5_fetch(source, tensor_name, rows, cols, values, err);
    if (status != SB_OK) {
        free(values);
        return status;
    }
    *linear = sb_linear_f32(values, rows, cols);
    linear->owned = values;
    return SB_OK;
}

sb_status sb_model_load_h5_packed(const sb_model_shape *shape, const sb_h5_reader *reader, const sb_kernel *kernel,
                                  sb_model *model, sb_error *err)
{
    SB_TRY(sb_model_alloc_norms(shape, model, err));
    sb_h5_source source = {reader, kernel};
    sb_status status = sb_model_load_linears(sb_h5_fetch, sb_h5_fetch_linear, &source, model, err);
    if (status != SB_OK)
        sb_model_free(model);
    return status;
}

sb_status sb_h5_reader_config(const sb_h5_reader *reader, sb_model_config *config, sb_error *err)
{
    memset(config, 0, sizeof *config);
    if (!reader->root.config_json)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: root attribute 'config_json' is missing", reader->path);
    char where[4200];
    snprintf(where, sizeof where, "%s (attribute config_json)", reader->path);
    return sb_config_parse(where, reader->root.config_json, config, err);
}
