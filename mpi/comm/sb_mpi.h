/* sb_mpi: every MPI call of the project checked, and the few MPI helpers everyone needs.
 *
 * The executables set MPI_ERRORS_RETURN on the communicators they use, so a failing call
 * returns an error code instead of aborting the job. PETSc's PetscCallMPI is the model: the
 * code becomes an sb_error naming the call, the source file and line and MPI's own error
 * string, with status SB_ERR_MPI, and travels up like any other error:
 *
 *     SB_MPI_TRY(err, MPI_Allreduce(&local, &total, 1, MPI_INT64_T, MPI_SUM, comm));
 *     status = SB_MPI_CALL(err, MPI_Bcast(...));   (when cleanup must run before returning)
 *
 * Every MPI call of the project goes through one of the two (tests/cli/test_mpi_checked.sh
 * fails on a bare one). A failed collective usually fails on every rank (a lost peer); when it
 * does not, the ranks still waiting in it cannot be freed by any code of ours: the error is
 * reported once by the rank that has it and mpirun ends the job.
 *
 * Not collective unless the wrapped call is.
 */
#ifndef SB_MPI_H
#define SB_MPI_H

#include <limits.h>
#include <mpi.h>
#include <stdint.h>

#include "sb_error.h"

/* Fills `err` (may be NULL) for MPI error `code` of `call` at file:line; returns SB_ERR_MPI. */
sb_status sb_mpi_fail(int code, const char *call, const char *file, int line, sb_error *err);

static inline sb_status sb_mpi_check(int code, const char *call, const char *file, int line, sb_error *err)
{
    return code == MPI_SUCCESS ? SB_OK : sb_mpi_fail(code, call, file, line, err);
}

/* SB_OK, or SB_ERR_MPI with the call named in `err`. */
#define SB_MPI_CALL(err, call) sb_mpi_check((call), #call, __FILE__, __LINE__, (err))
/* Returns from the enclosing function on failure. */
#define SB_MPI_TRY(err, call) SB_TRY(SB_MPI_CALL(err, call))

/* This process's rank and the size of `comm` (either pointer may be NULL). */
sb_status sb_mpi_rank_size(MPI_Comm comm, int *rank, int *size, sb_error *err);

/* An element count as MPI's int, or SB_ERR_INPUT naming `what` when it does not fit (MPI
 * counts are int: 2^31 - 1 elements per call). */
sb_status sb_mpi_count(int64_t count, const char *what, int *mpi_count, sb_error *err);

/* Point-to-point of `count` floats in pieces of at most 2^30 elements (MPI counts are int),
 * each piece on `tag`. The receiver must ask for the same count. */
sb_status sb_mpi_send_floats(const float *data, int64_t count, int to, int tag, MPI_Comm comm, sb_error *err);
sb_status sb_mpi_recv_floats(float *data, int64_t count, int from, int tag, MPI_Comm comm, sb_error *err);

#endif
