/* sb_agree: every rank learns whether any rank failed, and why, so that all exit together.
 *
 * The rule that keeps a failed run from hanging: ranks work locally, then meet at an agreement
 * point (a collective) where the outcome is shared. After sb_agree() returns non-OK on one rank
 * it returns the same status on all ranks, with the same message (prefixed "rank N: " when
 * more than one rank runs). Which rank speaks:
 *   - an error always wins over a stop: SB_ERR_STOPPED (a stop request, exit code 4, which
 *     Slurm answers by requeueing) on rank 0 must not hide an I/O error on rank 2, or the job
 *     would be requeued forever instead of reporting the error;
 *   - among the ranks with a real error, the lowest speaks; among stopped ranks, the lowest.
 * `err` is read on a failing rank (its message) and written on every rank when the outcome is
 * not OK. Collective over `comm`; errors of the agreement itself are SB_ERR_MPI.
 */
#ifndef SB_AGREE_H
#define SB_AGREE_H

#include <mpi.h>

#include "sb_error.h"

sb_status sb_agree(MPI_Comm comm, sb_status local_status, sb_error *err);

#endif
