/* Hostile and careless inputs of the hardening review, end to end through the
 * tools of $SB_BUILD_DIR (so the same binary checks an older build: every case here failed on
 * f405c31). Each one must end with a clear error and a non-zero exit, or succeed correctly;
 * never crash, hang, use memory the input does not hold, write where the user did not ask, or
 * destroy a file:
 *   - config.json numbers whose products wrap (2^61 layers), through scalebits-mpi;
 *   - a scalebits file whose tile count wraps ([2^24, 2^40] in 1x1 tiles), and one of 0.5 MB
 *     that declares 2^29 tiles it does not store, through inspect, export and eval, under a
 *     1 GiB address-space limit (under AddressSanitizer: at most 1 GiB per allocation);
 *   - tensor names that are HDF5 paths ("/tensors/...q_proj.weight/pad", "/x", "a/b", ".",
 *     "..", "../x", control bytes, a 1000-byte name): quantized, inspected and exported back
 *     with every name and value intact, the budget honoured as inspect recounts it; a name
 *     beyond the limit refused at the open stage;
 *   - non-finite scales (affine-f16 scale, affine-q8 tile bound): export, eval and inspect
 *     refuse them, exit 1, no output;
 *   - outputs that are inputs (--out the source shard, --log-json the config, export --out the
 *     source model), a user's own OUT.h5.state directory (plain, or a link), an --out too long
 *     to keep whole: refused before anything is written, the files untouched;
 * and the surfaces merged after the review (issues 11 and 12), on a generated FP8 Qwen3-MoE:
 *   - config.json expert counts huge, negative or zero, top-k above the experts, mlp_only_layers
 *     out of range or repeated, decoder_sparse_step 0, head_dim odd, weight_block_size 0, huge
 *     or not the checkpoint's, through scalebits-mpi and scalebits-eval --model;
 *   - its quantized file with damaged expert stacks (experts huge or one too many, code offsets
 *     that descend, shift a byte or miss one, a 1-D stacked bit map, a negative expert token
 *     count) refused by inspect, eval --quantized (packed) and generate --quantized (the good
 *     file read by those, export and the dequantized eval);
 *   - llama2.c tokenizer files cut short, with a negative or huge piece length or
 *     max_token_length, or bytes left over, refused by scalebits-generate --tokenizer. */
#include <fcntl.h>
#include <hdf5.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_half.h"
#include "sb_safetensors.h"
#include "sb_test.h"

static char work[4096], model[4200], build[4096];

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Runs `command` (in `work`, output to work/log.txt, under `ulimit -v` KiB if `memory_kib` > 0)
 * and returns its exit code (128 + signal for a crash, 124 for a hang); *log gets the output. */
static int run(const char *command, long memory_kib, char **log)
{
    char full[30000], log_path[4200];
    sb_test_format(log_path, sizeof log_path, "%s/log.txt", work);
#if defined(__SANITIZE_ADDRESS__)
    /* AddressSanitizer reserves terabytes of address space for its shadow: no ulimit -v; its
     * own cap on a single allocation stands in (an allocation beyond it fails) */
    if (memory_kib > 0)
        sb_test_format(full, sizeof full, "cd '%s' && ASAN_OPTIONS=\"$ASAN_OPTIONS:max_allocation_size_mb=%ld:"
                       "allocator_may_return_null=1\" timeout 300 %s > '%s' 2>&1", work, memory_kib / 1024, command,
                       log_path);
#else
    if (memory_kib > 0)
        sb_test_format(full, sizeof full, "cd '%s' && (ulimit -v %ld; timeout 300 %s) > '%s' 2>&1", work, memory_kib,
                       command, log_path);
#endif
    else
        sb_test_format(full, sizeof full, "cd '%s' && timeout 300 %s > '%s' 2>&1", work, command, log_path);
    int raw = system(full);
    int rc = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
    *log = sb_test_read_text(log_path);
    return rc;
}

/* Expects exit code `expected_rc` and every needle in the output. */
static void expect(const char *label, const char *command, long memory_kib, int expected_rc, const char *const *needles)
{
    char *log;
    int rc = run(command, memory_kib, &log);
    SB_CHECK_MSG(rc == expected_rc, "%s: exit code %d, expected %d (124: a hang, >128: a crash); output:\n%s", label,
                 rc, expected_rc, log);
    for (int i = 0; needles && needles[i]; i++)
        SB_CHECK_MSG(strstr(log, needles[i]), "%s: '%s' not in the output:\n%s", label, needles[i], log);
    const char *line = strstr(log, "error: ");
    printf("%-44s rc=%d  %.160s\n", label, rc, line ? line : "");
    free(log);
}

static void fresh_model(void)
{
    char command[12000];
    sb_test_format(command, sizeof command, "rm -rf '%s' && cp -r '%s/tiny-austen-kjv' '%s'", model, sb_test_data_dir(),
                   model);
    sb_test_shell(command);
}

/* ---- config.json --------------------------------------------------------------------------- */

static void set_config(const char *key, json_int_t value)
{
    char path[4300];
    sb_test_format(path, sizeof path, "%s/config.json", model);
    json_t *root = json_load_file(path, 0, NULL);
    json_object_set_new(root, key, json_integer(value));
    json_dump_file(root, path, JSON_INDENT(2));
    json_decref(root);
}

static void hostile_configs(void)
{
    char command[9000];
    fresh_model();
    set_config("num_hidden_layers", 2049638230412172402LL);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out out.h5", build, model);
    expect("config: 2^61 layers", command, 0, 1, (const char *[]){"config.json", "num_hidden_layers", NULL});
    sb_test_format(command, sizeof command, "mpirun --timeout 120 -n 2 '%s/scalebits-mpi' --model '%s' --budget 3 "
                   "--out out.h5", build, model);
    expect("config: 2^61 layers, 2 ranks", command, 0, 1, (const char *[]){"num_hidden_layers", NULL});
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --plan --plan-ranks 4", build, model);
    expect("config: 2^61 layers, --plan", command, 0, 1, (const char *[]){"num_hidden_layers", NULL});
    /* layers x (heads x head_dim) x hidden wraps int64 while each number is below 2^31 */
    fresh_model();
    set_config("num_attention_heads", 1 << 20);
    set_config("num_key_value_heads", 1 << 20);
    set_config("head_dim", 1 << 10);
    set_config("num_hidden_layers", 1 << 30);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out out.h5", build, model);
    expect("config: product overflow", command, 0, 1, (const char *[]){"config.json", NULL});
    sb_test_format(command, sizeof command, "'%s/scalebits-eval' --model '%s' --text '%s/heldout.txt' --windows 1",
                   build, model, model);
    expect("config: product overflow, eval", command, 0, 1, (const char *[]){"config.json", NULL});
}

/* ---- crafted scalebits files ------------------------------------------------------------------ */

static hid_t open_rw(const char *path)
{
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (file < 0) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    return file;
}

static void set_int64s(hid_t object, const char *name, const int64_t *values, int count)
{
    if (H5Aexists(object, name) > 0)
        H5Adelete(object, name);
    hsize_t dims[1] = {(hsize_t)count};
    hid_t space = count == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    hid_t attr = H5Acreate2(object, name, H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT);
    SB_CHECK(attr >= 0 && H5Awrite(attr, H5T_NATIVE_INT64, values) >= 0);
    H5Aclose(attr);
    H5Sclose(space);
}

/* A dataset `name` of `group` replaced by a chunked one of `dims` that stores nothing: HDF5
 * returns `fill` for every element of it. */
static void unstored_dataset(hid_t group, const char *name, hid_t type, int rank, const hsize_t *dims, const void *fill)
{
    H5Ldelete(group, name, H5P_DEFAULT);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* chunks no larger than the extents (HDF5 requires it of fixed-size datasets) */
    hsize_t chunk[2] = {dims[0] < (1 << 16) ? dims[0] : 1 << 16, 1};
    if (rank == 2)
        chunk[0] = 1, chunk[1] = dims[1] < (1 << 16) ? dims[1] : 1 << 16;
    H5Pset_chunk(dcpl, rank, chunk);
    H5Pset_fill_value(dcpl, type, fill);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_INCR);
    hid_t dataset = H5Dcreate2(group, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    SB_CHECK(dataset >= 0);
    H5Dclose(dataset);
    H5Pclose(dcpl);
    H5Sclose(space);
}

static const char q_proj[] = "/tensors/model.layers.0.self_attn.q_proj.weight";

/* Tools reading `file`: every one must refuse it with `needle` (exit 1), within `memory_kib`. */
static void refused_by_readers(const char *label, const char *file, long memory_kib, const char *needle)
{
    char command[9000], name[200];
    sb_test_format(command, sizeof command, "'%s/scalebits-inspect' '%s'", build, file);
    sb_test_format(name, sizeof name, "%s: inspect", label);
    expect(name, command, memory_kib, 1, (const char *[]){needle, NULL});
    sb_test_format(command, sizeof command, "rm -rf exported && '%s/scalebits-export' '%s' --out exported", build, file);
    sb_test_format(name, sizeof name, "%s: export", label);
    expect(name, command, memory_kib, 1, (const char *[]){needle, NULL});
    char exported[4200];
    sb_test_format(exported, sizeof exported, "%s/exported", work);
    SB_CHECK_MSG(!exists(exported), "%s: export left a directory", label);
    sb_test_format(command, sizeof command, "'%s/scalebits-eval' --quantized '%s' --text '%s/heldout.txt' --windows 2",
                   build, file, model);
    sb_test_format(name, sizeof name, "%s: eval --quantized", label);
    expect(name, command, memory_kib, 1, (const char *[]){needle, NULL});
    sb_test_format(command, sizeof command, "mpirun --timeout 120 -n 2 '%s/scalebits-eval' --quantized '%s' --text "
                   "'%s/heldout.txt' --windows 2", build, file, model);
    sb_test_format(name, sizeof name, "%s: eval, 2 ranks", label);
    expect(name, command, memory_kib, 1, (const char *[]){needle, NULL});
}

static void crafted_files(void)
{
    char command[9000], good[4200], good_f16[4200], path[4200];
    fresh_model();
    sb_test_format(good, sizeof good, "%s/good.h5", work);
    sb_test_format(good_f16, sizeof good_f16, "%s/good-f16.h5", work);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out '%s' --quiet", build,
                   model, good);
    sb_test_shell(command);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 4 --scales f16 --out '%s' --quiet",
                   build, model, good_f16);
    sb_test_shell(command);
    /* 1 GiB of address space: far above what the real file needs, far below what the
     * declarations below would make a trusting reader allocate */
    const long limit_kib = 1L << 20;

    /* [2^24, 2^40] in 1x1 tiles, group 1: 2^64 tiles wrap to 0 in int64 */
    sb_test_format(path, sizeof path, "%s/wrap.h5", work);
    sb_test_format(command, sizeof command, "cp '%s' '%s'", good, path);
    sb_test_shell(command);
    hid_t file = open_rw(path);
    hid_t group = H5Gopen2(file, q_proj, H5P_DEFAULT);
    set_int64s(group, "shape", (int64_t[]){(int64_t)1 << 24, (int64_t)1 << 40}, 2);
    set_int64s(group, "tile", (int64_t[]){1, 1}, 2);
    set_int64s(group, "group", (int64_t[]){1}, 1);
    H5Gclose(group);
    H5Fclose(file);
    refused_by_readers("tile count wraps", path, limit_kib, "too large");

    /* 2^29 tiles declared ([2^15, 2^14] in 1x1 tiles at 1 bit), nothing of them stored: every
     * dataset chunked and unwritten, fill values that would even pass the bit-map checks */
    sb_test_format(path, sizeof path, "%s/declared.h5", work);
    sb_test_format(command, sizeof command, "cp '%s' '%s'", good, path);
    sb_test_shell(command);
    file = open_rw(path);
    group = H5Gopen2(file, q_proj, H5P_DEFAULT);
    int64_t rows = (int64_t)1 << 15, cols = (int64_t)1 << 14, tiles = rows * cols;
    set_int64s(group, "shape", (int64_t[]){rows, cols}, 2);
    set_int64s(group, "tile", (int64_t[]){1, 1}, 2);
    set_int64s(group, "group", (int64_t[]){1}, 1);
    uint8_t ones = 0x11, zero = 0;
    uint16_t one_f16 = 0x3C00;
    unstored_dataset(group, "bitmap", H5T_STD_U8LE, 1, (hsize_t[]){(hsize_t)tiles / 2}, &ones);
    unstored_dataset(group, "codes", H5T_STD_U8LE, 1, (hsize_t[]){(hsize_t)tiles}, &zero);
    unstored_dataset(group, "scales", H5T_STD_U8LE, 2, (hsize_t[]){(hsize_t)rows, (hsize_t)cols}, &zero);
    unstored_dataset(group, "zeros", H5T_STD_U8LE, 2, (hsize_t[]){(hsize_t)rows, (hsize_t)cols}, &zero);
    hid_t f16 = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(f16, 15, 10, 5, 0, 10);
    H5Tset_precision(f16, 16);
    H5Tset_size(f16, 2);
    H5Tset_ebias(f16, 15);
    unstored_dataset(group, "tile_scales", f16, 1, (hsize_t[]){(hsize_t)tiles}, &one_f16);
    H5Tclose(f16);
    H5Gclose(group);
    H5Fclose(file);
    struct stat st;
    SB_CHECK(stat(path, &st) == 0 && st.st_size < 4 << 20);
    printf("declared.h5: %lld bytes declaring %lld tiles\n", (long long)st.st_size, (long long)tiles);
    refused_by_readers("2^29 tiles declared, not stored", path, limit_kib, "declares");

    /* non-finite scales: an affine-f16 scale set to NaN, an affine-q8 tile bound set to Inf */
    sb_test_format(path, sizeof path, "%s/nan-scale.h5", work);
    sb_test_format(command, sizeof command, "cp '%s' '%s'", good_f16, path);
    sb_test_shell(command);
    file = open_rw(path);
    char dataset_path[300];
    sb_test_format(dataset_path, sizeof dataset_path, "%s/scales", q_proj);
    hid_t dataset = H5Dopen2(file, dataset_path, H5P_DEFAULT);
    hid_t space = H5Dget_space(dataset);
    hsize_t start[2] = {3, 0}, count[2] = {1, 1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    hid_t memory = H5Screate_simple(2, count, NULL);
    uint16_t nan = 0x7E00;
    /* the file's own float16 type in memory: the bits are written as they are (a uint16 memory
     * type would be converted, 0x7E00 becoming the number 32256) */
    hid_t file_type = H5Dget_type(dataset);
    SB_CHECK(H5Dwrite(dataset, file_type, memory, space, H5P_DEFAULT, &nan) >= 0);
    H5Tclose(file_type);
    H5Sclose(memory);
    H5Sclose(space);
    H5Dclose(dataset);
    H5Fclose(file);
    refused_by_readers("NaN scale (affine-f16)", path, 0, "scale at row 3, group 0 is nan");

    sb_test_format(path, sizeof path, "%s/inf-bound.h5", work);
    sb_test_format(command, sizeof command, "cp '%s' '%s'", good, path);
    sb_test_shell(command);
    file = open_rw(path);
    sb_test_format(dataset_path, sizeof dataset_path, "%s/tile_scales", q_proj);
    dataset = H5Dopen2(file, dataset_path, H5P_DEFAULT);
    space = H5Dget_space(dataset);
    hsize_t first[1] = {0}, one[1] = {1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, first, NULL, one, NULL);
    memory = H5Screate_simple(1, one, NULL);
    uint16_t inf = 0x7C00;
    file_type = H5Dget_type(dataset);
    SB_CHECK(H5Dwrite(dataset, file_type, memory, space, H5P_DEFAULT, &inf) >= 0);
    H5Tclose(file_type);
    H5Sclose(memory);
    H5Sclose(space);
    H5Dclose(dataset);
    H5Fclose(file);
    refused_by_readers("Inf tile bound (affine-q8)", path, 0, "tile_scales[0] is inf");
}

/* ---- tensor names that are paths -------------------------------------------------------------- */

/* Adds 1-D F32 tensors of 4 values each to the model's safetensors file, value i of tensor n
 * being 100 n + i. */
static void add_named_tensors(const char *const *names, int count)
{
    char path[4300];
    sb_test_format(path, sizeof path, "%s/model.safetensors", model);
    FILE *f = fopen(path, "rb");
    uint64_t length = 0;
    if (!f || fread(&length, 8, 1, f) != 1)
        exit(1);
    char *header = malloc(length + 1);
    if (fread(header, 1, length, f) != length)
        exit(1);
    header[length] = '\0';
    fseek(f, 0, SEEK_END);
    size_t data_bytes = (size_t)ftell(f) - 8 - length;
    char *data = malloc(data_bytes + (size_t)count * 16);
    fseek(f, (long)(8 + length), SEEK_SET);
    if (fread(data, 1, data_bytes, f) != data_bytes)
        exit(1);
    fclose(f);
    json_t *root = json_loads(header, 0, NULL);
    for (int n = 0; n < count; n++) {
        float values[4];
        for (int i = 0; i < 4; i++)
            values[i] = (float)(100 * n + i);
        memcpy(data + data_bytes, values, 16);
        json_t *entry = json_pack("{s:s, s:[i], s:[I,I]}", "dtype", "F32", "shape", 4, "data_offsets",
                                  (json_int_t)data_bytes, (json_int_t)(data_bytes + 16));
        json_object_set_new(root, names[n], entry);
        data_bytes += 16;
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    size_t new_length = (strlen(text) + 7) / 8 * 8;
    f = fopen(path, "wb");
    uint64_t le = new_length;
    fwrite(&le, 8, 1, f);
    fwrite(text, 1, strlen(text), f);
    for (size_t i = strlen(text); i < new_length; i++)
        fputc(' ', f);
    fwrite(data, 1, data_bytes, f);
    fclose(f);
    free(text);
    json_decref(root);
    free(header);
    free(data);
}

static herr_t count_link(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)group;
    (void)name;
    (void)info;
    (*(int *)data)++;
    return 0;
}

static int links_in(hid_t file, const char *group_path)
{
    int count = 0;
    hid_t group = H5Gopen2(file, group_path, H5P_DEFAULT);
    if (group < 0)
        return -1;
    H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, NULL, count_link, &count);
    H5Gclose(group);
    return count;
}

static void hostile_names(void)
{
    char long_name[1001];
    memset(long_name, 'n', 1000);
    memcpy(long_name, "very/long/", 10);
    long_name[1000] = '\0';
    const char *names[] = {"/tensors/model.layers.0.self_attn.q_proj.weight/pad", "/x", "a/b", ".", "..", "../x",
                           "ctl\x01\x1f\x7f\n", "%2F", "50%", long_name};
    const char *links[] = {"%2Ftensors%2Fmodel.layers.0.self_attn.q_proj.weight%2Fpad", "%2Fx", "a%2Fb", "%2E", "%2E.",
                           "%2E.%2Fx", "ctl%01%1F%7F%0A", "%252F", "50%25", NULL};
    const int count = (int)(sizeof names / sizeof names[0]);
    char command[9000], path[4200];
    fresh_model();
    add_named_tensors(names, count);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out names.h5 --report r.json "
                   "--quiet", build, model);
    expect("hostile names: quantize", command, 0, 0, NULL);
    sb_test_format(command, sizeof command, "mpirun --timeout 120 -n 3 '%s/scalebits-mpi' --model '%s' --budget 3 --out "
                   "names3.h5 --quiet", build, model);
    expect("hostile names: quantize, 3 ranks", command, 0, 0, NULL);
    sb_test_format(command, sizeof command, "h5diff names.h5 names3.h5 /tensors /tensors && h5diff names.h5 names3.h5 "
                   "/passthrough /passthrough");
    expect("hostile names: same datasets at 1 and 3 ranks", command, 0, 0, NULL);
    /* the budget as inspect recounts it from the datasets under /tensors */
    sb_test_format(command, sizeof command, "'%s/scalebits-inspect' names.h5", build);
    expect("hostile names: inspect recount matches", command, 0, 0, (const char *[]){"matches stored_bits", NULL});
    sb_test_format(path, sizeof path, "%s/names.h5", work);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    SB_CHECK(file >= 0);
    if (file >= 0) {
        SB_CHECK_MSG(links_in(file, "/") == 2, "the file's root holds %d links (/tensors and /passthrough only)",
                     links_in(file, "/"));
        SB_CHECK_MSG(links_in(file, "/tensors") == 7 * 4, "/tensors holds %d links", links_in(file, "/tensors"));
        char link_path[1200];
        for (int n = 0; links[n]; n++) {
            sb_test_format(link_path, sizeof link_path, "/passthrough/%s", links[n]);
            SB_CHECK_MSG(H5Lexists(file, link_path, H5P_DEFAULT) > 0, "%s is missing", link_path);
        }
        H5Fclose(file);
    }
    /* exported back: every name, byte for byte, with its values */
    sb_test_format(command, sizeof command, "rm -rf exported && '%s/scalebits-export' names.h5 --out exported", build);
    expect("hostile names: export", command, 0, 0, NULL);
    sb_test_format(path, sizeof path, "%s/exported", work);
    sb_checkpoint checkpoint;
    sb_error err;
    SB_CHECK_MSG(sb_checkpoint_open(path, &checkpoint, &err) == SB_OK, "%s", err.message);
    for (int n = 0; n < count && checkpoint.ntensors; n++) {
        const sb_tensor_info *info = sb_checkpoint_find(&checkpoint, names[n]);
        SB_CHECK_MSG(info, "the export lost tensor '%s'", names[n]);
        float values[4] = {0};
        if (info && sb_checkpoint_read_rows(&checkpoint, info, 0, 1, true, values, &err) == SB_OK)
            for (int i = 0; i < 4; i++)
                SB_CHECK(values[i] == (float)(100 * n + i));
    }
    sb_checkpoint_close(&checkpoint);

    /* beyond the name limit: refused at the open stage (no state directory was made) */
    char *too_long = malloc(1100);
    memset(too_long, 'q', 1099);
    too_long[1099] = '\0';
    fresh_model();
    add_named_tensors((const char *[]){too_long}, 1);
    free(too_long);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out long.h5", build, model);
    expect("name beyond the limit: refused at open", command, 0, 1, (const char *[]){"tensor name of 1099 bytes", NULL});
    sb_test_format(path, sizeof path, "%s/long.h5.state", work);
    SB_CHECK(!exists(path));
}

/* ---- outputs that are inputs, and a user's directory ------------------------------------------ */

static bool same_content(const char *a, const char *b)
{
    char command[9000];
    sb_test_format(command, sizeof command, "cmp -s '%s' '%s'", a, b);
    return system(command) == 0;
}

static void protected_files(void)
{
    char command[12000], source[4300], saved[4300], config[4300], path[4300];
    fresh_model();
    sb_test_format(source, sizeof source, "%s/model.safetensors", model);
    sb_test_format(config, sizeof config, "%s/config.json", model);
    sb_test_format(saved, sizeof saved, "%s/saved.safetensors", work);
    sb_test_format(command, sizeof command, "cp '%s' '%s' && cp '%s' '%s/saved-config.json'", source, saved, config,
                   work);
    sb_test_shell(command);
    char saved_config[4300];
    sb_test_format(saved_config, sizeof saved_config, "%s/saved-config.json", work);

    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out '%s'", build, model, source);
    expect("--out is the source shard", command, 0, 2, (const char *[]){"--out", "model.safetensors", NULL});
    SB_CHECK(same_content(source, saved));
    fresh_model();
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out o.h5 --log-json '%s'",
                   build, model, config);
    expect("--log-json is the config", command, 0, 2, (const char *[]){"--log-json", NULL});
    SB_CHECK(same_content(config, saved_config));
    fresh_model(); /* each case from an intact model, whatever the previous one did */
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out o.h5 --report '%s'", build,
                   model, source);
    expect("--report is the source shard", command, 0, 2, (const char *[]){"--report", NULL});
    SB_CHECK(same_content(source, saved));
    fresh_model();
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out '%s'", build, model, model);
    expect("--out is a directory", command, 0, 2, (const char *[]){"directory", NULL});
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out o.h5 --report o.h5", build,
                   model);
    expect("--report is --out", command, 0, 2, (const char *[]){"--report", NULL});
    fresh_model();

    /* export into the model the file was made from, even with --force */
    sb_test_format(command, sizeof command, "cd '%s' && '%s/scalebits-mpi' --model '%s' --budget 3 --out made.h5 --quiet",
                   work, build, model);
    sb_test_shell(command);
    /* a model directory of only what an export writes: without the guard, --force would
     * replace it (the embedded model also holds heldout.txt, which alone would stop that) */
    char heldout[4400];
    sb_test_format(heldout, sizeof heldout, "%s/heldout.txt", model);
    unlink(heldout);
    sb_test_format(command, sizeof command, "'%s/scalebits-export' made.h5 --out '%s' --force", build, model);
    expect("export --out the source model --force", command, 0, 2, (const char *[]){"--out", NULL});
    SB_CHECK(same_content(source, saved) && same_content(config, saved_config));
    fresh_model();

    /* a user's own directory named like the state directory: never deleted, never reused */
    sb_test_format(path, sizeof path, "%s/mine.h5.state", work);
    sb_test_format(command, sizeof command, "mkdir -p '%s/curves' && echo precious > '%s/notes.txt' && echo data > "
                   "'%s/curves/1-1.bin'", path, path, path);
    sb_test_shell(command);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out mine.h5", build, model);
    expect("a user's OUT.h5.state", command, 0, 2, (const char *[]){"mine.h5.state", "not a scalebits state", NULL});
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out mine.h5 --resume", build,
                   model);
    expect("a user's OUT.h5.state, --resume", command, 0, 2, (const char *[]){"not a scalebits state", NULL});
    char notes[4400];
    sb_test_format(notes, sizeof notes, "%s/notes.txt", path);
    SB_CHECK_MSG(exists(notes), "the user's %s was deleted", notes);
    sb_test_format(notes, sizeof notes, "%s/curves/1-1.bin", path);
    SB_CHECK_MSG(exists(notes), "the user's %s was deleted", notes);
    /* a link in its place, pointing at a user's directory: the link and its target untouched */
    sb_test_format(command, sizeof command, "mkdir -p '%s/elsewhere' && echo precious > '%s/elsewhere/keep.txt' && ln -s "
                   "'%s/elsewhere' '%s/linked.h5.state'", work, work, work, work);
    sb_test_shell(command);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out linked.h5", build, model);
    expect("OUT.h5.state is a link", command, 0, 2, (const char *[]){"not a scalebits state", NULL});
    sb_test_format(notes, sizeof notes, "%s/elsewhere/keep.txt", work);
    SB_CHECK(exists(notes));

    /* an --out too long to keep whole: refused, not cut to a path nobody asked for */
    char *long_out = malloc(5000);
    size_t used = 0;
    while (used < 4300) {
        memcpy(long_out + used, "d/", 2);
        used += 2;
    }
    memcpy(long_out + used, "x.h5", 5);
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 3 --out '%s'", build, model,
                   long_out);
    expect("--out of 4300 bytes", command, 0, 2, (const char *[]){"--out", "too long", NULL});
    free(long_out);
}

/* ---- Qwen3-MoE: config.json, expert stacks, tokenizer files ----------------------------------- */

static char moe[4200], moe_pristine[4200];

/* A JSON value into `dir`/config.json at `key`, or inside its quantization_config with `quant`. */
static void set_moe_config(const char *key, json_t *value, bool quant)
{
    char path[4300];
    sb_test_format(path, sizeof path, "%s/config.json", moe);
    json_t *root = json_load_file(path, 0, NULL);
    json_object_set_new(quant ? json_object_get(root, "quantization_config") : root, key, value);
    json_dump_file(root, path, JSON_INDENT(2));
    json_decref(root);
}

static void fresh_moe(void)
{
    char command[12000];
    sb_test_format(command, sizeof command, "rm -rf '%s' && cp -r '%s' '%s'", moe, moe_pristine, moe);
    sb_test_shell(command);
}

static void moe_configs(void)
{
    static const struct {
        const char *label, *key, *value; /* value: JSON text */
        bool quant;
        const char *needle;
    } cases[] = {
        {"num_experts 2^40", "num_experts", "1099511627776", false, "num_experts"},
        {"num_experts -1", "num_experts", "-1", false, "num_experts"},
        {"num_experts 0 (a dense model with expert tensors)", "num_experts", "0", false, "model.layers.1.mlp"},
        {"num_experts 5 (one more than stored)", "num_experts", "5", false, "mlp.gate.weight"},
        {"num_experts_per_tok 5 > num_experts", "num_experts_per_tok", "5", false, "num_experts_per_tok"},
        {"num_experts_per_tok 0", "num_experts_per_tok", "0", false, "num_experts_per_tok"},
        {"moe_intermediate_size 2^31", "moe_intermediate_size", "2147483648", false, "moe_intermediate_size"},
        {"moe_intermediate_size 17 (not stored)", "moe_intermediate_size", "17", false, "experts.0"},
        {"mlp_only_layers [2] (2 layers)", "mlp_only_layers", "[2]", false, "mlp_only_layers"},
        {"mlp_only_layers [-1]", "mlp_only_layers", "[-1]", false, "mlp_only_layers"},
        {"mlp_only_layers [0, 0]", "mlp_only_layers", "[0, 0]", false, "mlp_only_layers"},
        {"mlp_only_layers [2^62]", "mlp_only_layers", "[4611686018427387904]", false, "mlp_only_layers"},
        {"mlp_only_layers \"0\"", "mlp_only_layers", "\"0\"", false, "mlp_only_layers"},
        {"decoder_sparse_step 0", "decoder_sparse_step", "0", false, "decoder_sparse_step"},
        {"decoder_sparse_step 2^40", "decoder_sparse_step", "1099511627776", false, "decoder_sparse_step"},
        {"head_dim 15 (odd)", "head_dim", "15", false, "head_dim"},
        {"head_dim 2^31", "head_dim", "2147483648", false, "head_dim"},
        {"weight_block_size [0, 8]", "weight_block_size", "[0, 8]", true, "weight_block_size"},
        {"weight_block_size [8, -8]", "weight_block_size", "[8, -8]", true, "weight_block_size"},
        {"weight_block_size [2^40, 8]", "weight_block_size", "[1099511627776, 8]", true, "weight_block_size"},
        {"weight_block_size [8]", "weight_block_size", "[8]", true, "weight_block_size"},
        {"weight_block_size [4096, 4096] (not the file's)", "weight_block_size", "[4096, 4096]", true, "scale_inv"},
        {"weight_block_size [1, 1] (not the file's)", "weight_block_size", "[1, 1]", true, "scale_inv"},
    };
    char command[12000];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fresh_moe();
        set_moe_config(cases[c].key, json_loads(cases[c].value, JSON_DECODE_ANY, NULL), cases[c].quant);
        char label[200];
        sb_test_format(label, sizeof label, "moe config: %s", cases[c].label);
        sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --model '%s' --budget 5 --tile 8x16 --group 8 --out out.h5",
                       build, moe);
        expect(label, command, 0, 1, (const char *[]){cases[c].needle, NULL});
        char out[4300];
        sb_test_format(out, sizeof out, "%s/out.h5", work);
        SB_CHECK_MSG(!exists(out), "%s: an output was written", label);
        if (c % 8 == 0) {
            sb_test_format(label, sizeof label, "moe config: %s, eval", cases[c].label);
            sb_test_format(command, sizeof command, "'%s/scalebits-eval' --model '%s' --tokens tokens.u32 --ctx 8 "
                           "--windows 1", build, moe);
            expect(label, command, 0, 1, (const char *[]){cases[c].needle, NULL});
        }
    }
}

/* The readers of a quantized file, on its packed path too: every one must refuse `file` with
 * `needle` (exit 1), or, with `needle` NULL, accept it (exit 0). */
static void moe_file_readers(const char *label, const char *file, const char *needle)
{
    static const char *const commands[] = {
        "'%s/scalebits-inspect' '%s'",
        "rm -rf exported && '%s/scalebits-export' '%s' --out exported",
        "'%s/scalebits-eval' --quantized '%s' --tokens tokens.u32 --ctx 8 --windows 2",
        "'%s/scalebits-eval' --quantized '%s' --tokens tokens.u32 --ctx 8 --windows 2 --dequantize",
        "'%s/scalebits-generate' --quantized '%s' --prompt-tokens tokens.u32 --max-tokens 3",
    };
    static const char *const names[] = {"inspect", "export", "eval --quantized", "eval --quantized --dequantize",
                                        "generate --quantized"};
    for (int c = 0; c < 5; c++) {
        /* a damaged file is refused when the reader opens it, the same for every tool: export and
         * the dequantized eval only on the good file (the sanitizer build's time) */
        if (needle && (c == 1 || c == 3))
            continue;
        char command[9000], name[300];
        sb_test_format(command, sizeof command, commands[c], build, file);
        sb_test_format(name, sizeof name, "%s: %s", label, names[c]);
        expect(name, command, 0, needle ? 1 : 0, (const char *[]){needle, NULL});
    }
}

static const char gate_stack[] = "/tensors/model.layers.1.mlp.experts.gate_proj.weight";

/* A copy of the good MoE file with one change made by `edit` on it. */
static void crafted_moe(const char *label, const char *good, void (*edit)(hid_t file), const char *needle)
{
    char path[4300], command[9000];
    sb_test_format(path, sizeof path, "%s/crafted-moe.h5", work);
    sb_test_format(command, sizeof command, "cp '%s' '%s'", good, path);
    sb_test_shell(command);
    hid_t file = open_rw(path);
    edit(file);
    H5Fclose(file);
    moe_file_readers(label, path, needle);
}

static void set_stack_int64s(hid_t file, const char *name, const int64_t *values, int count)
{
    hid_t group = H5Gopen2(file, gate_stack, H5P_DEFAULT);
    SB_CHECK(group >= 0);
    set_int64s(group, name, values, count);
    H5Gclose(group);
}

static int64_t offsets[5]; /* the gate stack's expert_code_offsets in the good file */

static void experts_huge(hid_t file) { set_stack_int64s(file, "experts", (int64_t[]){(int64_t)1 << 40}, 1); }
static void experts_one_more(hid_t file) { set_stack_int64s(file, "experts", (int64_t[]){5}, 1); }
static void experts_negative(hid_t file) { set_stack_int64s(file, "experts", (int64_t[]){-1}, 1); }
static void offsets_descend(hid_t file)
{
    set_stack_int64s(file, "expert_code_offsets", (int64_t[]){0, offsets[2], offsets[1], offsets[3], offsets[4]}, 5);
}
static void offsets_shifted(hid_t file)
{
    set_stack_int64s(file, "expert_code_offsets", (int64_t[]){0, offsets[1] + 1, offsets[2], offsets[3], offsets[4]}, 5);
}
static void offsets_short(hid_t file)
{
    set_stack_int64s(file, "expert_code_offsets", (int64_t[]){0, offsets[1], offsets[2], offsets[4]}, 4);
}
static void offsets_beyond(hid_t file)
{
    set_stack_int64s(file, "expert_code_offsets", (int64_t[]){0, offsets[1], offsets[2], INT64_MAX - 1, INT64_MAX}, 5);
}
static void bitmap_flat(hid_t file)
{
    char path[300];
    sb_test_format(path, sizeof path, "%s/bitmap", gate_stack);
    hid_t dataset = H5Dopen2(file, path, H5P_DEFAULT);
    hid_t space = H5Dget_space(dataset);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    uint8_t *bytes = malloc((size_t)n);
    SB_CHECK(H5Dread(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes) >= 0);
    H5Sclose(space);
    H5Dclose(dataset);
    H5Ldelete(file, path, H5P_DEFAULT);
    hsize_t dims[1] = {(hsize_t)n};
    space = H5Screate_simple(1, dims, NULL);
    dataset = H5Dcreate2(file, path, H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    SB_CHECK(H5Dwrite(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes) >= 0);
    H5Dclose(dataset);
    H5Sclose(space);
    free(bytes);
}
static void negative_tokens(hid_t file)
{
    hid_t dataset = H5Dopen2(file, "/calibration/tokens_per_expert", H5P_DEFAULT);
    SB_CHECK(dataset >= 0);
    hid_t space = H5Dget_space(dataset);
    hsize_t start[2] = {1, 2}, count[2] = {1, 1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    hid_t memory = H5Screate_simple(2, count, NULL);
    int64_t value = -5;
    SB_CHECK(H5Dwrite(dataset, H5T_NATIVE_INT64, memory, space, H5P_DEFAULT, &value) >= 0);
    H5Sclose(memory);
    H5Sclose(space);
    H5Dclose(dataset);
}

/* A tokenizer file of the generated model's vocabulary, with `edit` applied at token 100. */
static void write_tokenizer(const char *path, int edit)
{
    size_t size, at[SB_TEST_TOKENIZER_VOCAB];
    uint8_t *bytes = sb_test_tokenizer_bytes(&size, at);
    int32_t value;
    switch (edit) {
    case 1: size = at[100] + 6; break;                                    /* cut inside token 100 */
    case 2: value = -1, memcpy(bytes + at[100] + 4, &value, 4); break;    /* negative length */
    case 3: value = INT32_MAX, memcpy(bytes + at[100] + 4, &value, 4); break; /* huge length */
    case 4: value = 9, memcpy(bytes + at[100] + 4, &value, 4); break;     /* above max_token_length */
    case 5: value = -1, memcpy(bytes, &value, 4); break;                  /* max_token_length */
    case 6: value = INT32_MAX, memcpy(bytes, &value, 4); break;
    case 7: size = 3; break;                                              /* no header */
    default: break;
    }
    FILE *f = fopen(path, "wb");
    SB_CHECK(f && fwrite(bytes, 1, size, f) == size);
    if (edit == 8)
        fputs("left over", f);
    fclose(f);
    free(bytes);
}

static void moe_files(void)
{
    char command[12000], good[4300], tok[4300], tokens[4300];
    sb_test_format(tokens, sizeof tokens, "%s/tokens.u32", work);
    FILE *f = fopen(tokens, "wb");
    for (uint32_t i = 0; i < 64; i++) {
        uint32_t id = (i * 37 + 5) % SB_TEST_TOKENIZER_VOCAB;
        fwrite(&id, 4, 1, f);
    }
    fclose(f);
    sb_test_format(good, sizeof good, "%s/moe.h5", work);
    sb_test_format(command, sizeof command, "cd '%s' && '%s/scalebits-mpi' --model '%s' --budget 5 --tile 8x16 --group 8 --bits 2,4,8 --sensitivity fisher "
                   "--calib tokens.u32 --calib-ctx 16 --calib-windows 2 --out '%s' --quiet", work, build, moe_pristine, good);
    sb_test_shell(command);
    sb_test_format(tok, sizeof tok, "%s/tok.bin", work);
    moe_file_readers("good MoE file", good, NULL);
    hid_t file = H5Fopen(good, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t group = H5Gopen2(file, gate_stack, H5P_DEFAULT);
    hid_t attr = H5Aopen(group, "expert_code_offsets", H5P_DEFAULT);
    SB_CHECK(attr >= 0 && H5Aread(attr, H5T_NATIVE_INT64, offsets) >= 0);
    H5Aclose(attr);
    H5Gclose(group);
    H5Fclose(file);

    crafted_moe("stack: experts 2^40", good, experts_huge, "experts");
    crafted_moe("stack: experts 5 of 4 stored", good, experts_one_more, "expert_code_offsets");
    crafted_moe("stack: experts -1", good, experts_negative, "experts");
    crafted_moe("stack: code offsets descend", good, offsets_descend, "expert_code_offsets");
    crafted_moe("stack: code offsets shifted a byte", good, offsets_shifted, "expert model.layers.1.mlp.experts.0");
    crafted_moe("stack: code offsets one short", good, offsets_short, "expert_code_offsets");
    crafted_moe("stack: code offsets beyond the file", good, offsets_beyond, "codes");
    crafted_moe("stack: 1-D bit map", good, bitmap_flat, "bitmap");
    crafted_moe("negative expert token count", good, negative_tokens, "tokens_per_expert");

    /* tokenizer files, through scalebits-generate on a Llama model of their vocabulary */
    char llama[4300];
    sb_test_format(llama, sizeof llama, "%s/llama-300", work);
    sb_test_format(command, sizeof command, "'%s/bench/bench-gen-checkpoint' --out '%s' --arch llama --small --hidden 32 "
                   "--intermediate 40 --vocab %d --heads 2 --kv-heads 1 --layers 1 > /dev/null", build, llama,
                   SB_TEST_TOKENIZER_VOCAB);
    sb_test_shell(command);
    write_tokenizer(tok, 0);
    sb_test_format(command, sizeof command, "'%s/scalebits-generate' --model '%s' --tokenizer '%s' --prompt 'the cat' "
                   "--max-tokens 3", build, llama, tok);
    expect("a good tokenizer", command, 0, 0, NULL);
    static const struct { int edit; const char *label, *needle; } tokenizers[] = {
        {1, "tokenizer cut inside token 100", "ends at token 100"},
        {2, "tokenizer: token 100 of length -1", "token 100 has a length of -1"},
        {3, "tokenizer: token 100 of length 2^31 - 1", "token 100 has a length of 2147483647"},
        {4, "tokenizer: a length above max_token_length", "token 100 has a length of 9"},
        {5, "tokenizer: max_token_length -1", "max_token_length -1"},
        {6, "tokenizer: max_token_length 2^31 - 1", "max_token_length 2147483647"},
        {7, "tokenizer of 3 bytes", "not a llama2.c tokenizer"},
        {8, "tokenizer with bytes left over", "9 bytes left"},
    };
    for (size_t t = 0; t < sizeof tokenizers / sizeof tokenizers[0]; t++) {
        write_tokenizer(tok, tokenizers[t].edit);
        sb_test_format(command, sizeof command, "'%s/scalebits-generate' --model '%s' --tokenizer '%s' --prompt "
                       "'the cat' --max-tokens 3", build, llama, tok);
        expect(tokenizers[t].label, command, 0, 1, (const char *[]){"tok.bin", tokenizers[t].needle, NULL});
    }
    write_tokenizer(tok, 0);
}

int main(void)
{
    const char *build_dir = getenv("SB_BUILD_DIR");
    sb_test_format(build, sizeof build, "%s", build_dir ? build_dir : "build");
    char *dir = sb_test_temp_dir("hostile");
    sb_test_format(work, sizeof work, "%s", dir);
    sb_test_format(model, sizeof model, "%s/model", work);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    /* the generated FP8 Qwen3-MoE: 2 layers (layer 0 dense), 4 experts of FFN 16, top-2, the
     * vocabulary of sb_test_tokenizer_bytes */
    sb_test_format(moe, sizeof moe, "%s/moe", work);
    sb_test_format(moe_pristine, sizeof moe_pristine, "%s/moe-pristine", work);
    char command[12000];
    sb_test_format(command, sizeof command, "'%s/bench/bench-gen-checkpoint' --out '%s' --arch qwen3-moe --small --hidden "
                   "32 --intermediate 40 --vocab %d --heads 2 --kv-heads 1 --head-dim 16 --experts 4 --experts-per-tok 2 "
                   "--moe-intermediate 16 --layers 2 --fp8 --fp8-block 8x8 > /dev/null", build, moe_pristine,
                   SB_TEST_TOKENIZER_VOCAB);
    sb_test_shell(command);
    moe_files();
    moe_configs();
    hostile_configs();
    crafted_files();
    hostile_names();
    protected_files();
    sb_test_remove_tree(work);
    free(dir);
    return sb_test_finish("test_hostile_input");
}
