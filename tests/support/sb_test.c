#include <mpi.h>
#include <stdarg.h>
#include "sb_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sb_test_failures = 0;

int sb_test_finish(const char *name)
{
    if (sb_test_failures == 0) {
        printf("%s: all checks passed\n", name);
        return 0;
    }
    printf("%s: %d check(s) failed\n", name, sb_test_failures);
    return 1;
}

const char *sb_test_data_dir(void)
{
    const char *dir = getenv("SB_TEST_DATA");
    return dir ? dir : "tests/data";
}

const char *sb_test_shared_dir(void)
{
    const char *dir = getenv("SB_SHARED_DIR");
    struct stat st;
    if (!dir || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        printf("shared test material not found (SB_SHARED_DIR=%s)\n", dir ? dir : "(unset)");
        return NULL;
    }
    return dir;
}

void sb_test_require_file(const char *path)
{
    if (access(path, R_OK) != 0) {
        printf("SKIP: %s is not present (fetched test material lives in ../shared and is never committed)\n", path);
        exit(77);
    }
}

uint64_t sb_test_next(sb_test_rng *rng)
{
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double sb_test_uniform(sb_test_rng *rng) { return (double)(sb_test_next(rng) >> 11) * 0x1p-53; }

double sb_test_normal(sb_test_rng *rng)
{
    double u1 = sb_test_uniform(rng), u2 = sb_test_uniform(rng);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

char *sb_test_temp_dir(const char *label)
{
    const char *base = getenv("TMPDIR");
    char *path = malloc(4096);
    snprintf(path, 4096, "%s/sb-%s-XXXXXX", base ? base : "/tmp", label);
    if (!mkdtemp(path)) {
        perror("mkdtemp");
        exit(1);
    }
    return path;
}

void sb_test_remove_tree(const char *path)
{
    char command[4200];
    snprintf(command, sizeof command, "rm -rf '%s'", path);
    if (system(command) != 0)
        fprintf(stderr, "warning: could not remove %s\n", path);
}

void sb_test_format(char *out, size_t size, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int length = vsnprintf(out, size, fmt, args);
    va_end(args);
    if (length < 0 || (size_t)length >= size) {
        fprintf(stderr, "test setup: text of %d bytes does not fit in %zu: %.200s...\n", length, size, out);
        exit(1);
    }
}

char *sb_test_read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = calloc(1, (size_t)(size > 0 ? size : 0) + 1);
    if (size > 0 && fread(text, 1, (size_t)size, f) != (size_t)size)
        text[0] = '\0';
    fclose(f);
    return text;
}

void sb_test_shell(const char *command)
{
    if (system(command) != 0) {
        fprintf(stderr, "setup command failed: %s\n", command);
        exit(1);
    }
}

void sb_test_mpi_init(int *argc, char ***argv, int *rank, int *size)
{
    if (MPI_Init(argc, argv) != MPI_SUCCESS) {
        fprintf(stderr, "MPI_Init failed\n");
        exit(1);
    }
    if (MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN) != MPI_SUCCESS ||
        MPI_Comm_rank(MPI_COMM_WORLD, rank) != MPI_SUCCESS || MPI_Comm_size(MPI_COMM_WORLD, size) != MPI_SUCCESS) {
        fprintf(stderr, "MPI set-up failed\n");
        exit(1);
    }
}

int sb_test_mpi_finish(const char *name, int rank)
{
    int failures = sb_test_failures, total = 0;
    if (MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
        total = failures + 1;
    sb_test_failures = total;
    MPI_Finalize();
    return rank == 0 ? sb_test_finish(name) : (total ? 1 : 0);
}

static void append(uint8_t **bytes, size_t *size, const void *data, size_t length)
{
    uint8_t *grown = realloc(*bytes, *size + length);
    if (!grown) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    *bytes = grown;
    memcpy(*bytes + *size, data, length);
    *size += length;
}

uint8_t *sb_test_tokenizer_bytes(size_t *size, size_t token_at[SB_TEST_TOKENIZER_VOCAB])
{
    static const char *const merges[] = {" a", " t", "th", "he", "the", " the", "ab", "abc", "\xc3\xa9", "e\xc3\xa9",
                                         "ca", "ta", "at", " c"};
    uint8_t *bytes = NULL;
    *size = 0;
    int32_t max_length = 8;
    append(&bytes, size, &max_length, 4);
    for (int i = 0; i < SB_TEST_TOKENIZER_VOCAB; i++) {
        char piece[16];
        if (i < 3)
            snprintf(piece, sizeof piece, "%s", (const char *[]){"<unk>", "\n<s>\n", "\n</s>\n"}[i]);
        else if (i < 259)
            snprintf(piece, sizeof piece, "<0x%02X>", i - 3);
        else if (i < 285)
            snprintf(piece, sizeof piece, "%c", 'a' + (i - 259));
        else if (i == 285)
            snprintf(piece, sizeof piece, " ");
        else
            snprintf(piece, sizeof piece, "%s", merges[i - 286]);
        float score = i < 286 ? 0.0f : -(float)(i - 286);
        int32_t length = (int32_t)strlen(piece);
        if (token_at)
            token_at[i] = *size;
        append(&bytes, size, &score, 4);
        append(&bytes, size, &length, 4);
        append(&bytes, size, piece, (size_t)length);
    }
    return bytes;
}

int sb_test_kernel_paths(sb_kernel kernels[SB_ISA_COUNT])
{
    int count = 0;
    for (int i = 0; i < SB_ISA_COUNT; i++) {
        sb_error err;
        if (sb_kernel_select((sb_isa)i, &kernels[count], &err) == SB_OK)
            count++;
        else
            printf("skipping the %s path: %s\n", sb_isa_name((sb_isa)i), err.message);
    }
    return count;
}
