/* sb_error: how every scalebits function reports failure.
 *
 * Contract: a function that can fail returns sb_status and takes an `sb_error *err` last.
 * On failure it fills `err` with one human line that names the file, the tensor and what is
 * wrong ("model.safetensors: tensor 'x.weight': dtype I8 is not supported (F32, F16, BF16)"),
 * and returns the same non-zero status. Callers that add context prefix it with
 * sb_error_prefix() and return the status unchanged. Nothing below the executables' main()
 * prints an error or calls exit(): the top reports once (on every rank, see mpi/comm/sb_agree.h).
 */
#ifndef SB_ERROR_H
#define SB_ERROR_H

#include <stddef.h>

typedef enum sb_status {
    SB_OK = 0,
    SB_ERR_USAGE,     /* bad command line or option value */
    SB_ERR_IO,        /* a file cannot be opened, read, written or renamed */
    SB_ERR_FORMAT,    /* a file is malformed: truncated, corrupt header, bad JSON */
    SB_ERR_INPUT,     /* well-formed input we must refuse: shape mismatch, NaN weights, wrong dtype */
    SB_ERR_BUDGET,    /* the requested budget cannot be met */
    SB_ERR_NOMEM,     /* an allocation failed */
    SB_ERR_MPI,       /* an MPI call failed, or another rank failed */
    SB_ERR_STOPPED,   /* stopped on request (signal); state saved, resumable */
    SB_ERR_INTERNAL,  /* a bug: an invariant does not hold */
} sb_status;

enum { SB_ERROR_MESSAGE_MAX = 1024 };

typedef struct sb_error {
    sb_status status;
    char message[SB_ERROR_MESSAGE_MAX];
} sb_error;

/* Sets the error (status and printf-style message) and returns `status`. `err` may be NULL. */
sb_status sb_error_set(sb_error *err, sb_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "<context>: " to the message already in `err`; returns err->status. */
sb_status sb_error_prefix(sb_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void sb_error_clear(sb_error *err);

/* A short word for a status ("i/o error", "bad input", ...). */
const char *sb_status_name(sb_status status);

/* Process exit code for a status: 0 ok, 2 usage, 3 budget, 4 stopped (resumable), 1 otherwise. */
int sb_status_exit_code(sb_status status);

/* Allocation helpers that fill `err` on failure: `what` names the buffer in the message. */
void *sb_malloc(size_t bytes, const char *what, sb_error *err);
void *sb_calloc(size_t count, size_t size, const char *what, sb_error *err);

/* Propagate: if `call` fails, return its status (the error is already filled in). */
#define SB_TRY(call)                      \
    do {                                  \
        sb_status sb_try_status_ = (call); \
        if (sb_try_status_ != SB_OK)       \
            return sb_try_status_;         \
    } while (0)

#endif
