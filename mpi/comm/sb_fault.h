/* sb_fault: test-only fault injection, so that the error paths of collective code run in tests.
 *
 * Collective code must end every rank cleanly when one rank fails at any point; that is only
 * believable if a test makes one rank fail there. When the environment variable
 * SCALEBITS_TEST_FAULT is "POINT@RANK" (e.g. "h5_create@1"), sb_fault_injected(comm, "POINT")
 * is true on rank RANK of `comm` and false everywhere else; the caller then fails as if the
 * real operation had failed on that rank. Unset (every normal run), it is always false and
 * costs one getenv. The points (grep sb_fault_injected for the list):
 *
 *   h5_create   io/sb_h5_writer.c: this rank cannot open the output's temporary file
 *   h5_write    io/sb_h5_writer.c: this rank's first write of tensor data fails
 *   agree_io    mpi/sb_run.c: this rank reports an I/O error at the end of the open stage
 *
 * Not collective; `comm` only gives the rank.
 */
#ifndef SB_FAULT_H
#define SB_FAULT_H

#include <mpi.h>
#include <stdbool.h>

bool sb_fault_injected(MPI_Comm comm, const char *point);

#endif
