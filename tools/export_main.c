/* scalebits-export: a scalebits file back to a Hugging Face checkpoint (dequantized).
 *
 *   open the file -> choose each tensor's dtype -> cut into shards -> check the output directory
 *   -> write everything into a temporary directory beside it (config.json verbatim, shards
 *   streamed tensor by tensor, the index when sharded) -> swap it into place
 *
 * Quantized tensors are dequantized with the rule of docs/FORMAT.md and converted to their
 * source dtype (or --dtype); pass-through tensors are copied bit for bit when their dtype is
 * kept. Memory stays at one chunk of rows (about 16 MiB of float32) whatever the model size.
 * Readers never see a half-written directory: the new one appears whole (rename), and a failed
 * run removes its temporary directory. Serial: no MPI.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_atomic.h"
#include "sb_error.h"
#include "sb_h5_reader.h"
#include "sb_safetensors.h"
#include "sb_safetensors_write.h"
#include "sb_tensor_name.h"

/* Rows are streamed in chunks of about this many values (16 MiB of float32). */
enum { CHUNK_VALUES = 4 << 20 };

typedef struct export_options {
    const char *path;
    char out_dir[4096];
    bool dtype_is_source;
    sb_dtype dtype;   /* when not source */
    double shard_gb;  /* shard size limit in 10^9 bytes, as Hugging Face counts "5GB" */
    bool force;
} export_options;

typedef struct export_tensor {
    const char *name;
    const sb_h5_quantized *quantized;     /* exactly one of these two */
    const sb_h5_passthrough *passthrough;
    sb_dtype dtype;                       /* written as */
    int ndim;
    int64_t shape[SB_MAX_DIMS];
    uint64_t bytes;
    int shard;
} export_tensor;

typedef struct export_plan {
    export_tensor *tensors; /* canonical order */
    int ntensors;
    int nshards;
    char (*shard_names)[64];
    uint64_t total_bytes;
} export_plan;

/* ---- plan ---------------------------------------------------------------------------------- */

static int compare_tensors(const void *a, const void *b)
{
    return sb_tensor_name_compare(((const export_tensor *)a)->name, ((const export_tensor *)b)->name);
}

static sb_status plan_export(const sb_h5_reader *reader, const export_options *options, export_plan *plan,
                             sb_error *err)
{
    memset(plan, 0, sizeof *plan);
    int count = reader->nquantized + reader->npassthrough;
    if (count == 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: the file holds no tensors", reader->path);
    plan->tensors = sb_calloc((size_t)count, sizeof *plan->tensors, "tensor list", err);
    if (!plan->tensors)
        return SB_ERR_NOMEM;
    for (int i = 0; i < reader->nquantized; i++) {
        const sb_h5_quantized *tensor = &reader->quantized[i];
        export_tensor *entry = &plan->tensors[plan->ntensors++];
        entry->name = tensor->name;
        entry->quantized = tensor;
        entry->dtype = options->dtype_is_source ? tensor->source_dtype : options->dtype;
        if (entry->dtype == SB_DTYPE_F8_E4M3) /* an FP8 source: its dequantized values go out as BF16, exact */
            entry->dtype = SB_DTYPE_BF16;
        entry->ndim = 2;
        entry->shape[0] = tensor->rows;
        entry->shape[1] = tensor->cols;
    }
    for (int i = 0; i < reader->npassthrough; i++) {
        const sb_h5_passthrough *tensor = &reader->passthrough[i];
        if (sb_h5_find_quantized(reader, tensor->name))
            return sb_error_set(err, SB_ERR_FORMAT, "%s: tensor '%s' is both under /tensors and under /passthrough",
                                reader->path, tensor->name);
        export_tensor *entry = &plan->tensors[plan->ntensors++];
        entry->name = tensor->name;
        entry->passthrough = tensor;
        entry->dtype = options->dtype_is_source ? tensor->dtype : options->dtype;
        entry->ndim = tensor->ndim;
        memcpy(entry->shape, tensor->shape, sizeof entry->shape);
    }
    /* canonical (layer) order: a shard then holds consecutive layers, as Hugging Face's do */
    qsort(plan->tensors, (size_t)plan->ntensors, sizeof *plan->tensors, compare_tensors);
    uint64_t limit = (uint64_t)(options->shard_gb * 1e9);
    uint64_t in_shard = 0;
    int shard = 0;
    for (int i = 0; i < plan->ntensors; i++) {
        export_tensor *entry = &plan->tensors[i];
        uint64_t elements = 1;
        for (int d = 0; d < entry->ndim; d++)
            elements *= (uint64_t)entry->shape[d];
        entry->bytes = elements * sb_dtype_size(entry->dtype);
        /* a new shard when this tensor would overflow a non-empty one (a tensor larger than the
         * limit gets a shard of its own, as transformers does) */
        if (in_shard > 0 && in_shard + entry->bytes > limit) {
            shard++;
            in_shard = 0;
        }
        entry->shard = shard;
        in_shard += entry->bytes;
        plan->total_bytes += entry->bytes;
    }
    plan->nshards = shard + 1;
    plan->shard_names = sb_calloc((size_t)plan->nshards, sizeof *plan->shard_names, "shard names", err);
    if (!plan->shard_names)
        return SB_ERR_NOMEM;
    for (int s = 0; s < plan->nshards; s++) {
        if (plan->nshards == 1)
            snprintf(plan->shard_names[s], sizeof plan->shard_names[s], "model.safetensors");
        else
            snprintf(plan->shard_names[s], sizeof plan->shard_names[s], "model-%05d-of-%05d.safetensors", s + 1,
                     plan->nshards);
    }
    return SB_OK;
}

static void plan_free(export_plan *plan)
{
    free(plan->tensors);
    free(plan->shard_names);
    memset(plan, 0, sizeof *plan);
}

/* ---- the output directory ------------------------------------------------------------------ */

/* Is `name` a file an export writes? --force only replaces directories made of such files, so
 * that a mistyped --out can never delete a directory of other work. */
static bool is_export_file(const char *name)
{
    if (strcmp(name, "config.json") == 0 || strcmp(name, "model.safetensors") == 0 ||
        strcmp(name, "model.safetensors.index.json") == 0)
        return true;
    int a, b, consumed = 0;
    return sscanf(name, "model-%5d-of-%5d.safetensors%n", &a, &b, &consumed) == 2 && name[consumed] == '\0';
}

/* Checks `dir` before any work: absent, or an empty directory, or (with --force) a directory
 * holding only a previous export. Sets *exists. */
static sb_status check_out_dir(const export_options *options, bool *exists, sb_error *err)
{
    const char *dir = options->out_dir;
    struct stat st;
    *exists = false;
    if (lstat(dir, &st) != 0) {
        if (errno != ENOENT)
            return sb_error_set(err, SB_ERR_IO, "--out %s: %s", dir, strerror(errno));
        return sb_check_writable_dir_of(dir, err);
    }
    if (!S_ISDIR(st.st_mode))
        return sb_error_set(err, SB_ERR_INPUT, "--out %s exists and is not a directory", dir);
    *exists = true;
    SB_TRY(sb_check_writable_dir_of(dir, err));
    DIR *handle = opendir(dir);
    if (!handle)
        return sb_error_set(err, SB_ERR_IO, "--out %s: cannot list it: %s", dir, strerror(errno));
    sb_status status = SB_OK;
    struct dirent *entry;
    while ((entry = readdir(handle)) && status == SB_OK) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        if (!options->force)
            status = sb_error_set(err, SB_ERR_INPUT,
                                  "--out %s exists and is not empty: refusing to overwrite it (add --force to replace "
                                  "a previous export)",
                                  dir);
        else if (!is_export_file(entry->d_name))
            status = sb_error_set(err, SB_ERR_INPUT,
                                  "--out %s holds '%s', which an export does not write: --force only replaces a "
                                  "previous export; choose another directory",
                                  dir, entry->d_name);
    }
    closedir(handle);
    return status;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf of a directory this program created (or an old export being replaced). */
static void remove_tree(const char *dir)
{
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Puts the finished temporary directory in place of `dir`: a plain rename when `dir` is absent
 * or empty; otherwise an atomic exchange (renameat2 RENAME_EXCHANGE, Linux 3.15+) so that `dir`
 * always names a complete export, then the old one is removed. */
static sb_status swap_into_place(const char *temp_dir, const char *dir, bool exists, sb_error *err)
{
    if (rename(temp_dir, dir) == 0)
        return sb_fsync_parent_dir(dir, err);
    if (!exists || (errno != ENOTEMPTY && errno != EEXIST))
        return sb_error_set(err, SB_ERR_IO, "--out %s: cannot rename %s to it: %s", dir, temp_dir, strerror(errno));
    if (renameat2(AT_FDCWD, temp_dir, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
        remove_tree(temp_dir); /* now the previous export */
        return sb_fsync_parent_dir(dir, err);
    }
    /* No exchange on this file system: move the old export aside, then the new one in. */
    char old_dir[4300];
    snprintf(old_dir, sizeof old_dir, "%s.old-%ld", temp_dir, (long)getpid());
    if (rename(dir, old_dir) != 0)
        return sb_error_set(err, SB_ERR_IO, "--out %s: cannot move the previous export aside: %s", dir,
                            strerror(errno));
    if (rename(temp_dir, dir) != 0) {
        sb_status status = sb_error_set(err, SB_ERR_IO, "--out %s: cannot rename %s to it: %s", dir, temp_dir,
                                        strerror(errno));
        rename(old_dir, dir); /* put the previous export back */
        return status;
    }
    remove_tree(old_dir);
    return sb_fsync_parent_dir(dir, err);
}

/* ---- writing ------------------------------------------------------------------------------- */

/* The data of one tensor, in chunks of whole tile rows (or rows). */
static sb_status write_tensor(const sb_h5_reader *reader, const export_tensor *entry, sb_safetensors_writer *writer,
                              void *buffer, float *values, sb_error *err)
{
    if (entry->quantized) {
        const sb_h5_quantized *tensor = entry->quantized;
        /* whole tile rows, so that no tile's codes are read twice */
        int64_t step = tensor->tile_rows * (int64_t)fmax(1, floor((double)CHUNK_VALUES /
                                                                  ((double)tensor->tile_rows * (double)tensor->cols)));
        for (int64_t row = 0; row < tensor->rows; row += step) {
            int64_t rows = tensor->rows - row < step ? tensor->rows - row : step;
            SB_TRY(sb_h5_dequantize_rows(reader, tensor, row, rows, values, err));
            SB_TRY(sb_safetensors_writer_write_f32(writer, values, (size_t)(rows * tensor->cols), err));
        }
        return SB_OK;
    }
    const sb_h5_passthrough *tensor = entry->passthrough;
    bool copy = entry->dtype == tensor->dtype; /* bit for bit */
    int64_t step = tensor->ndim > 2 ? tensor->rows : (int64_t)fmax(1, floor((double)CHUNK_VALUES / (double)tensor->cols));
    for (int64_t row = 0; row < tensor->rows; row += step) {
        int64_t rows = tensor->rows - row < step ? tensor->rows - row : step;
        size_t count = (size_t)(rows * tensor->cols);
        if (copy) {
            SB_TRY(sb_h5_read_passthrough_raw(reader, tensor, row, rows, buffer, err));
            SB_TRY(sb_safetensors_writer_write(writer, buffer, count * sb_dtype_size(tensor->dtype), err));
        } else {
            SB_TRY(sb_h5_read_passthrough_f32(reader, tensor, row, rows, values, err));
            SB_TRY(sb_safetensors_writer_write_f32(writer, values, count, err));
        }
    }
    return SB_OK;
}

static sb_status write_shard(const sb_h5_reader *reader, const export_plan *plan, int shard, const char *temp_dir,
                             void *buffer, float *values, sb_error *err)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", temp_dir, plan->shard_names[shard]);
    sb_safetensors_writer *writer;
    SB_TRY(sb_safetensors_writer_create(path, &writer, err));
    const char *base = strrchr(reader->path, '/');
    /* "format": "pt" is what transformers expects of a PyTorch checkpoint's metadata */
    sb_status status = sb_safetensors_writer_add_metadata(writer, "format", "pt", err);
    if (status == SB_OK)
        status = sb_safetensors_writer_add_metadata(writer, "scalebits_source", base ? base + 1 : reader->path, err);
    if (status == SB_OK && reader->root.allocation_sha256)
        status = sb_safetensors_writer_add_metadata(writer, "scalebits_allocation_sha256",
                                                    reader->root.allocation_sha256, err);
    for (int i = 0; i < plan->ntensors && status == SB_OK; i++) {
        const export_tensor *entry = &plan->tensors[i];
        if (entry->shard == shard)
            status = sb_safetensors_writer_declare(writer, entry->name, entry->dtype, entry->ndim, entry->shape, err);
    }
    if (status == SB_OK)
        status = sb_safetensors_writer_begin_data(writer, err);
    for (int i = 0; i < plan->ntensors && status == SB_OK; i++) {
        const export_tensor *entry = &plan->tensors[i];
        if (entry->shard == shard)
            status = write_tensor(reader, entry, writer, buffer, values, err);
    }
    if (status != SB_OK) {
        sb_safetensors_writer_abort(writer);
        return status;
    }
    return sb_safetensors_writer_commit(writer, err);
}

static sb_status write_index(const export_plan *plan, const char *temp_dir, sb_error *err)
{
    const char **names = sb_calloc((size_t)plan->ntensors, sizeof *names, "index", err);
    const char **files = sb_calloc((size_t)plan->ntensors, sizeof *files, "index", err);
    sb_status status = SB_ERR_NOMEM;
    if (names && files) {
        for (int i = 0; i < plan->ntensors; i++) {
            names[i] = plan->tensors[i].name;
            files[i] = plan->shard_names[plan->tensors[i].shard];
        }
        status = sb_safetensors_write_index(temp_dir, plan->ntensors, names, files, plan->total_bytes, err);
    }
    free(names);
    free(files);
    return status;
}

static sb_status export_file(const export_options *options, sb_error *err)
{
    sb_h5_reader reader;
    SB_TRY(sb_h5_reader_open(options->path, &reader, err));
    export_plan plan;
    char temp_dir[4300] = "";
    void *buffer = NULL;
    float *values = NULL;
    bool exists = false;
    sb_status status = plan_export(&reader, options, &plan, err);
    if (status == SB_OK && !reader.root.config_json)
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: root attribute 'config_json' is missing: cannot write config.json",
                              reader.path);
    if (status == SB_OK)
        status = check_out_dir(options, &exists, err);
    if (status == SB_OK) {
        /* a chunk of whole tile rows may exceed CHUNK_VALUES when one tile row alone does */
        int64_t largest = CHUNK_VALUES;
        for (int i = 0; i < reader.nquantized; i++) {
            int64_t tile_row = reader.quantized[i].tile_rows * reader.quantized[i].cols;
            largest = tile_row > largest ? tile_row : largest;
        }
        for (int i = 0; i < reader.npassthrough; i++) {
            int64_t whole = reader.passthrough[i].ndim > 2 ? reader.passthrough[i].rows * reader.passthrough[i].cols
                                                           : reader.passthrough[i].cols;
            largest = whole > largest ? whole : largest;
        }
        values = sb_malloc((size_t)largest * sizeof *values, "row buffer", err);
        buffer = sb_malloc((size_t)largest * sizeof(float), "row buffer", err); /* raw values: at most 4 bytes each */
        if (!buffer || !values)
            status = SB_ERR_NOMEM;
    }
    if (status == SB_OK) {
        /* beside the final directory, so that the last step is a rename on one file system */
        char parent[4096], base[4096];
        snprintf(parent, sizeof parent, "%s", options->out_dir);
        char *slash = strrchr(parent, '/');
        if (slash) {
            snprintf(base, sizeof base, "%s", slash + 1);
            if (slash == parent)
                parent[1] = '\0';
            else
                *slash = '\0';
        } else {
            snprintf(base, sizeof base, "%s", parent);
            snprintf(parent, sizeof parent, ".");
        }
        snprintf(temp_dir, sizeof temp_dir, "%s/.%s.tmp-%ld", parent, base, (long)getpid());
        if (mkdir(temp_dir, 0777) != 0) {
            status = sb_error_set(err, SB_ERR_IO, "--out %s: cannot create the temporary directory %s: %s",
                                  options->out_dir, temp_dir, strerror(errno));
            temp_dir[0] = '\0';
        }
    }
    if (status == SB_OK) {
        char path[4400];
        snprintf(path, sizeof path, "%s/config.json", temp_dir);
        status = sb_atomic_write_file(path, reader.root.config_json, strlen(reader.root.config_json), err);
    }
    for (int shard = 0; shard < plan.nshards && status == SB_OK; shard++)
        status = write_shard(&reader, &plan, shard, temp_dir, buffer, values, err);
    if (status == SB_OK && plan.nshards > 1)
        status = write_index(&plan, temp_dir, err);
    if (status == SB_OK)
        status = swap_into_place(temp_dir, options->out_dir, exists, err);
    if (status == SB_OK) {
        int dequantized = 0;
        for (int i = 0; i < plan.ntensors; i++)
            dequantized += plan.tensors[i].quantized != NULL;
        printf("exported %d tensors (%d dequantized, %d copied) to %s: %d shard%s, %.2f MiB of tensor data\n",
               plan.ntensors, dequantized, plan.ntensors - dequantized, options->out_dir, plan.nshards,
               plan.nshards == 1 ? "" : "s", (double)plan.total_bytes / (1024.0 * 1024.0));
    } else if (temp_dir[0]) {
        remove_tree(temp_dir);
    }
    free(buffer);
    free(values);
    plan_free(&plan);
    sb_h5_reader_close(&reader);
    return status;
}

/* ---- main ---------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: scalebits-export FILE.h5 --out DIR [--dtype source|F32|F16|BF16] [--shard-gb N] [--force]\n"
            "\n"
            "Writes a dequantized Hugging Face checkpoint: DIR/config.json (the source's, verbatim) and\n"
            "DIR/model.safetensors with every tensor of the file. Quantized weights are decoded as\n"
            "docs/FORMAT.md says and stored in their source dtype; pass-through tensors are copied bit\n"
            "for bit. The directory appears complete or not at all.\n"
            "\n"
            "  --out DIR      output directory; must not exist or be empty\n"
            "  --dtype D      source (default: each tensor's own), or F32, F16, BF16 for every tensor\n"
            "                 (pass-through tensors are then converted too)\n"
            "  --shard-gb N   start a new shard before N GB (10^9 bytes; default 5); with more than one\n"
            "                 shard: model-00001-of-0000K.safetensors + model.safetensors.index.json\n"
            "  --force        replace DIR if it holds a previous export (and nothing else)\n");
}

static sb_status parse_options(int argc, char **argv, export_options *options, bool *help, sb_error *err)
{
    static const struct option long_options[] = {
        {"out", required_argument, NULL, 'o'},      {"dtype", required_argument, NULL, 'd'},
        {"shard-gb", required_argument, NULL, 's'}, {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    memset(options, 0, sizeof *options);
    options->dtype_is_source = true;
    options->shard_gb = 5;
    *help = false;
    opterr = 0;
    int option;
    char *end;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (option) {
        case 'o':
            if (strlen(optarg) == 0 || strlen(optarg) >= sizeof options->out_dir - 64)
                return sb_error_set(err, SB_ERR_USAGE, "--out needs a directory path of reasonable length");
            snprintf(options->out_dir, sizeof options->out_dir, "%s", optarg);
            break;
        case 'd':
            if (strcmp(optarg, "source") == 0)
                options->dtype_is_source = true;
            else if (sb_dtype_parse(optarg, &options->dtype) && options->dtype != SB_DTYPE_F8_E4M3)
                options->dtype_is_source = false;
            else
                return sb_error_set(err, SB_ERR_USAGE, "--dtype must be source, F32, F16 or BF16 (got '%s')", optarg);
            break;
        case 's':
            options->shard_gb = strtod(optarg, &end);
            if (*optarg == '\0' || *end != '\0' || !(options->shard_gb > 0) || options->shard_gb > 1e6)
                return sb_error_set(err, SB_ERR_USAGE, "--shard-gb must be a positive number of GB (got '%s')", optarg);
            break;
        case 'f': options->force = true; break;
        case 'h': *help = true; return SB_OK;
        default: return sb_error_set(err, SB_ERR_USAGE, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return sb_error_set(err, SB_ERR_USAGE, "which file? give FILE.h5");
    options->path = argv[optind++];
    if (optind < argc)
        return sb_error_set(err, SB_ERR_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!options->out_dir[0])
        return sb_error_set(err, SB_ERR_USAGE, "--out DIR is required");
    /* "dir/" and "dir" are the same directory; the temporary one is built from the last name */
    size_t length = strlen(options->out_dir);
    while (length > 1 && options->out_dir[length - 1] == '/')
        options->out_dir[--length] = '\0';
    return SB_OK;
}

int main(int argc, char **argv)
{
    sb_error err;
    sb_error_clear(&err);
    export_options options;
    bool help;
    sb_status status = parse_options(argc, argv, &options, &help, &err);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (status != SB_OK) {
        fprintf(stderr, "scalebits-export: %s\n", err.message);
        usage(stderr);
        return sb_status_exit_code(status);
    }
    status = export_file(&options, &err);
    if (status != SB_OK) {
        fprintf(stderr, "scalebits-export: error: %s\n", err.message);
        return sb_status_exit_code(status);
    }
    return 0;
}
