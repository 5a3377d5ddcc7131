/* Quantized tensors loaded from a scalebits file into the kernel layout (io/sb_h5_qmatrix.h).
 *
 * scalebits-mpi's own output on the embedded model (32x32 tiles, groups of 32, widths
 * {2,3,4,8}), in both encodings: every tensor loads, keeps about its stored size in memory, and
 * its product with random activations on every kernel path equals the reader's dequantized
 * rows (sb_h5_dequantize_rows, the stored decoding rule) times the int8-rounded activations.
 * Damaged files are refused with the file and tensor named: a bit map holding a width outside
 * the file's bit set, a non-finite F16 scale, a NaN Q8 tile bound; scalebits-eval and
 * scalebits-generate then exit 1 with that one line.
 */
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sys/wait.h>

#include "sb_atomic.h"
#include "sb_h5_qmatrix.h"
#include "sb_h5_reader.h"
#include "sb_half.h"
#include "sb_kernel.h"
#include "sb_test.h"

static bool quantize(const char *path, const char *scales)
{
    const char *build = getenv("SB_BUILD_DIR") ? getenv("SB_BUILD_DIR") : "build";
    char command[9000];
    snprintf(command, sizeof command,
             "'%s/scalebits-mpi' --budget 3.5 --tile 32x32 --group 32 --bits 2,3,4,8 --scales %s --out '%s' --quiet", build,
             scales, path);
    bool ok = system(command) == 0;
    SB_CHECK_MSG(ok, "failed: %s", command);
    return ok;
}

static void check_products(const char *path, const sb_kernel *kernels, int nkernels)
{
    sb_error err;
    sb_h5_reader reader;
    if (sb_h5_reader_open(path, &reader, &err) != SB_OK) {
        SB_CHECK_MSG(0, "%s", err.message);
        return;
    }
    sb_test_rng rng = {3};
    int64_t packed = 0, stored = 0;
    bool widths[9] = {false};
    for (int i = 0; i < reader.nquantized; i++) {
        const sb_h5_quantized *tensor = &reader.quantized[i];
        for (int64_t t = 0; t < tensor->tiles; t++)
            widths[tensor->bits_per_tile[t]] = true;
        sb_qmatrix m;
        if (sb_h5_load_qmatrix(&reader, tensor, &m, &err) != SB_OK) {
            SB_CHECK_MSG(0, "%s", err.message);
            continue;
        }
        packed += sb_qmatrix_bytes(&m);
        stored += sb_h5_tensor_bits(tensor) / 8;
        int64_t rows = tensor->rows, cols = tensor->cols, n = 3;
        float *w = malloc((size_t)(rows * cols) * sizeof(float)), *x = malloc((size_t)(n * cols) * sizeof(float));
        float *y = malloc((size_t)(n * rows) * sizeof(float));
        SB_CHECK(sb_h5_dequantize_rows(&reader, tensor, 0, rows, w, &err) == SB_OK);
        for (int64_t j = 0; j < n * cols; j++)
            x[j] = (float)sb_test_normal(&rng);
        sb_qact act;
        SB_CHECK(sb_qact_create(&m, n, SB_ACT_INT16, &act, &err) == SB_OK);
        sb_qact_quantize(&act, x, n, cols, 1);
        for (int k = 0; k < nkernels; k++) {
            sb_qmatrix_mul(&kernels[k], &m, &act, y, rows, false, 2);
            double worst = 0.0;
            for (int64_t t = 0; t < n; t++)
                for (int64_t r = 0; r < rows; r++) {
                    double sum = 0.0, size = 0.0;
                    for (int64_t c = 0; c < cols; c++) {
                        double term = (double)w[r * cols + c] * sb_qact_value(&act, t, c);
                        sum += term;
                        size += fabs(term);
                    }
                    /* the kernels add scale x q and zero terms separately: allow for both */
                    worst = fmax(worst, fabs(y[t * rows + r] - sum) / (1e-4 * size + 1e-6));
                }
            SB_CHECK_MSG(worst <= 1.0, "%s: %s on %s: %.3g x the tolerance", path, tensor->name,
                         sb_isa_name(kernels[k].isa), worst);
        }
        sb_qact_free(&act);
        sb_qmatrix_free(&m);
        free(w);
        free(x);
        free(y);
    }
    /* the packed matrices are the stored bytes (less the bit maps) plus ragged-edge padding */
    SB_CHECK_MSG(packed >= stored * 9 / 10 && packed <= stored * 13 / 10, "%s: %lld bytes packed for %lld stored", path,
                 (long long)packed, (long long)stored);
    SB_CHECK(widths[2] || widths[3] || widths[4]);
    sb_h5_reader_close(&reader);
}

/* Loads every tensor of `path`; expects the first failure to mention `needle` and the file. */
static void expect_refused(const char *path, const char *needle)
{
    sb_error err;
    sb_h5_reader reader;
    sb_status status = sb_h5_reader_open(path, &reader, &err);
    bool opened = status == SB_OK;
    for (int i = 0; status == SB_OK && i < reader.nquantized; i++) {
        sb_qmatrix m;
        status = sb_h5_load_qmatrix(&reader, &reader.quantized[i], &m, &err);
        if (status == SB_OK)
            sb_qmatrix_free(&m);
    }
    SB_CHECK_MSG(status == SB_ERR_FORMAT && strstr(err.message, needle) && strstr(err.message, path) &&
                     strstr(err.message, "tensor '"),
                 "%s: status %d, message '%s' (expected '%s')", path, (int)status, err.message, needle);
    if (opened)
        sb_h5_reader_close(&reader);
    /* the tools: one line naming the file, exit 1, no crash */
    const char *build = getenv("SB_BUILD_DIR") ? getenv("SB_BUILD_DIR") : "build";
    const char *data = sb_test_data_dir();
    static const char *const tools[2][2] = {{"scalebits-eval", "--text '%s/tiny-austen-kjv/heldout.txt' --windows 2"},
                                            {"scalebits-generate", "--prompt 'abc' --max-tokens 2"}};
    for (int i = 0; i < 2; i++) {
        char args[4400], command[13000], log[4300];
        snprintf(args, sizeof args, tools[i][1], data);
        snprintf(log, sizeof log, "%s.log", path);
        snprintf(command, sizeof command, "'%s/%s' --quantized '%s' %s > '%s' 2>&1", build, tools[i][0], path, args, log);
        int rc = system(command);
        uint8_t *text = NULL;
        size_t size = 0;
        sb_error read_err;
        int lines = 0;
        if (sb_read_file(log, &text, &size, &read_err) == SB_OK)
            for (size_t k = 0; k < size; k++)
                lines += text[k] == '\n';
        SB_CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 1 && lines == 1 && text && strstr((char *)text, needle) &&
                         strstr((char *)text, path),
                     "%s on %s: exit %d, output '%s'", tools[i][0], path, WIFEXITED(rc) ? WEXITSTATUS(rc) : -1,
                     text ? (char *)text : "");
        free(text);
    }
}

/* Overwrites element 0 of dataset `dataset` of the first quantized tensor with the raw 16-bit
 * pattern `value` (written in the dataset's own type, so no conversion touches the bits). */
static void damage_dataset(const char *path, const char *dataset, uint16_t value)
{
    sb_error err;
    sb_h5_reader reader;
    if (sb_h5_reader_open(path, &reader, &err) != SB_OK) {
        SB_CHECK_MSG(0, "%s", err.message);
        return;
    }
    char name[1200];
    snprintf(name, sizeof name, "/tensors/%s/%s", reader.quantized[0].name, dataset);
    sb_h5_reader_close(&reader);
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t set = H5Dopen2(file, name, H5P_DEFAULT);
    hid_t space = H5Dget_space(set);
    hsize_t start[2] = {0, 0}, count[2] = {1, 1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    hid_t memory = H5Screate_simple(H5Sget_simple_extent_ndims(space), count, NULL);
    hid_t type = H5Dget_type(set);
    SB_CHECK(H5Tget_size(type) == 2 && H5Dwrite(set, type, memory, space, H5P_DEFAULT, &value) >= 0);
    H5Tclose(type);
    H5Sclose(memory);
    H5Sclose(space);
    H5Dclose(set);
    H5Fclose(file);
}

static void copy_file(const char *from, const char *to)
{
    char command[9000];
    snprintf(command, sizeof command, "cp '%s' '%s'", from, to);
    SB_CHECK(system(command) == 0);
}

int main(void)
{
    sb_kernel kernels[SB_ISA_COUNT];
    int nkernels = sb_test_kernel_paths(kernels);
    char *dir = sb_test_temp_dir("h5-qmatrix");
    char q8[4200], f16[4200], broken[4200];
    snprintf(q8, sizeof q8, "%s/q8.h5", dir);
    snprintf(f16, sizeof f16, "%s/f16.h5", dir);
    snprintf(broken, sizeof broken, "%s/broken.h5", dir);
    if (quantize(q8, "q8") && quantize(f16, "f16")) {
        check_products(q8, kernels, nkernels);
        check_products(f16, kernels, nkernels);
        /* a width the file's bit set does not hold: the root `bits` {2,3,4,8} becomes {2,2,2,2} */
        copy_file(q8, broken);
        hid_t file = H5Fopen(broken, H5F_ACC_RDWR, H5P_DEFAULT);
        hid_t attr = H5Aopen(file, "bits", H5P_DEFAULT);
        int64_t only_two[4] = {2, 2, 2, 2};
        SB_CHECK(H5Awrite(attr, H5T_NATIVE_INT64, only_two) >= 0);
        H5Aclose(attr);
        H5Fclose(file);
        expect_refused(broken, "outside the file's bit set");
        /* a non-finite F16 scale; a NaN Q8 tile bound */
        copy_file(f16, broken);
        damage_dataset(broken, "scales", 0x7c00); /* +inf */
        expect_refused(broken, "non-finite scale");
        copy_file(q8, broken);
        damage_dataset(broken, "tile_scales", 0x7e00); /* NaN */
        expect_refused(broken, "scale bound");
    }
    sb_test_remove_tree(dir);
    free(dir);
    return sb_test_finish("test_h5_qmatrix");
}
