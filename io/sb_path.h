/* sb_path: building file paths that fail loudly, and keeping outputs away from inputs.
 *
 * Every path the tools build (from options, from the output's name, from a directory and a
 * file name) goes through sb_path_format: a path that does not fit its buffer is an error
 * naming the path, never a silently truncated name that would write somewhere else. Buffers
 * are SB_PATH_MAX bytes (Linux's PATH_MAX: the kernel refuses longer paths anyway); options
 * that name an output leave SB_PATH_ROOM bytes for the names derived from them
 * ("OUT.h5.state/curves/123.bin", "DIR/.name.tmp-<pid>").
 *
 * The output guard (sb_outputs) holds the identity (device, inode) of every input file of a
 * run; an output path that is an existing input, or an existing directory, or the same path as
 * another output, is refused before any work: no option can make a tool overwrite its own
 * source.
 */
#ifndef SB_PATH_H
#define SB_PATH_H

#include <stdbool.h>
#include <stddef.h>

#include "sb_error.h"

enum { SB_PATH_MAX = 4096, SB_PATH_ROOM = 256 };

/* snprintf into `out` (`size` bytes). If the path does not fit: SB_ERR_USAGE naming the start
 * of the path and its length, and `out` holds "". */
sb_status sb_path_format(char *out, size_t size, sb_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The same into a fresh buffer (*out, malloc'd, the caller frees): SB_ERR_USAGE if longer than
 * SB_PATH_MAX - 1, SB_ERR_NOMEM. */
sb_status sb_path_alloc(char **out, sb_error *err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Is `length` (a user's path) short enough to derive other paths from? SB_ERR_USAGE naming
 * `option` otherwise. */
sb_status sb_path_check_length(const char *option, const char *path, sb_error *err);

/* Do `a` and `b` name the same existing file (same device and inode)? */
bool sb_path_same_file(const char *a, const char *b);

/* The inputs of a run, by identity. */
typedef struct sb_outputs {
    int count, capacity;
    struct sb_input_file {
        unsigned long long device, inode;
        char *path;
    } *inputs;
    int noutputs;
    char **outputs; /* the outputs checked so far, as given */
} sb_outputs;

/* Records `path` (a file or directory the run reads) if it exists. Only SB_ERR_NOMEM fails. */
sb_status sb_outputs_add_input(sb_outputs *guard, const char *path, sb_error *err);
/* Refuses `path` as an output named by `option` (e.g. "--report") when it is an existing
 * directory, or an existing file that is one of the inputs, or a path already checked as
 * another output (SB_ERR_USAGE, naming both). Records it as an output. */
sb_status sb_outputs_check(sb_outputs *guard, const char *option, const char *path, sb_error *err);
/* Refuses `dir` as an output directory whose files a tool replaces (export --out) when it is
 * an input directory or holds an input file (SB_ERR_USAGE naming the input). */
sb_status sb_outputs_check_dir(sb_outputs *guard, const char *option, const char *dir, sb_error *err);
void sb_outputs_free(sb_outputs *guard);

#endif
