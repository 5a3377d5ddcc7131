/* sb_test: the few helpers the unit tests share. A test is a main() that calls SB_CHECK and
 * friends; the first failing check prints file:line and the condition, and the test exits 1 at
 * the end (all checks run, so one run shows every failure). Exit 77 means "skipped" (CTest's
 * SKIP_RETURN_CODE), used only when shared test material is absent, with a message saying so. */
#ifndef SB_TEST_H
#define SB_TEST_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include "sb_kernel.h"

extern int sb_test_failures;

#define SB_CHECK(condition)                                                               \
    do {                                                                                  \
        if (!(condition)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
            sb_test_failures++;                                                           \
        }                                                                                 \
    } while (0)

#define SB_CHECK_MSG(condition, ...)                                                      \
    do {                                                                                  \
        if (!(condition)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #condition); \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
            sb_test_failures++;                                                           \
        }                                                                                 \
    } while (0)

#define SB_CHECK_NEAR(actual, expected, tolerance)                                                  \
    do {                                                                                            \
        double sb_a_ = (actual), sb_e_ = (expected);                                                \
        if (!(sb_a_ - sb_e_ <= (tolerance) && sb_e_ - sb_a_ <= (tolerance))) {                      \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %.9g +- %g\n", __FILE__, __LINE__, #actual, \
                    sb_a_, sb_e_, (double)(tolerance));                                            \
            sb_test_failures++;                                                                     \
        }                                                                                           \
    } while (0)

/* snprintf that fails the test (exit 1, naming the text) rather than run a truncated command or
 * path. */
void sb_test_format(char *out, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A whole file as a NUL-terminated string (malloc'd; "" if it cannot be read). */
char *sb_test_read_text(const char *path);
/* system(command), failing the test (exit 1, naming the command) if it does not succeed: for
 * setting up what a test needs, not for what it checks. */
void sb_test_shell(const char *command);

/* MPI tests: MPI_Init with errors returned (not fatal) on MPI_COMM_WORLD, this rank and the
 * size; sb_test_mpi_finish sums the failures of every rank, finalizes MPI and returns the
 * exit status (rank 0 prints the summary). */
void sb_test_mpi_init(int *argc, char ***argv, int *rank, int *size);
int sb_test_mpi_finish(const char *name, int rank);

/* Exit status of a test: 0 if every check passed. Prints a summary line. */
int sb_test_finish(const char *name);

/* Directory of the repository's test data (tests/data), from $SB_TEST_DATA. */
const char *sb_test_data_dir(void);
/* The shared material directory, or NULL (with a printed reason) if it is not present. */
const char *sb_test_shared_dir(void);
/* Exits 77 (skip) with a message if `path` does not exist. */
void sb_test_require_file(const char *path);

/* Deterministic pseudo-random numbers (splitmix64), so failures reproduce. */
typedef struct sb_test_rng { uint64_t state; } sb_test_rng;
uint64_t sb_test_next(sb_test_rng *rng);
double sb_test_uniform(sb_test_rng *rng);            /* [0, 1) */
double sb_test_normal(sb_test_rng *rng);             /* N(0, 1) */
/* A fresh temporary directory (mkdtemp under $TMPDIR); the caller removes it. */
char *sb_test_temp_dir(const char *label);
/* rm -rf of a temporary directory made by sb_test_temp_dir. */
void sb_test_remove_tree(const char *path);

/* A valid llama2.c tokenizer file (io/sb_tokenizer.h) of SB_TEST_TOKENIZER_VOCAB tokens in a
 * fresh malloc'd buffer of *size bytes: <unk>, BOS, EOS, the 256 byte tokens, the letters a..z,
 * " " and 14 merges (" a", "the", " the", "abc", a 2-byte UTF-8 "é", ...); max_token_length 8.
 * token_at[i] (if not NULL) gets where token i's score is (its int32 length follows it). */
enum { SB_TEST_TOKENIZER_VOCAB = 300 };
uint8_t *sb_test_tokenizer_bytes(size_t *size, size_t token_at[SB_TEST_TOKENIZER_VOCAB]);

/* Every kernel path (src/sb_kernel.h) this CPU runs into kernels[SB_ISA_COUNT]; prints the ones
 * skipped and why. Returns how many. */
int sb_test_kernel_paths(sb_kernel kernels[SB_ISA_COUNT]);

#endif
