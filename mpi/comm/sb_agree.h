/* sb_agree: every rank learns whether any rank failed, and why, so that all exit together.
 *
 * The rule that keeps a failed run from hanging: ranks work locally, then meet at an agreement
 * point (a collective) where the worst status and the message of the lowest failing rank are
 * shared. After sb_agree() returns non-OK on one rank it returns the same on all ranks, with
 * the same message (prefixed "rank N: " when more than one rank runs). Collective over `comm`.
 */
#ifndef SB_AGREE_H
#define SB_AGREE_H

#include <mpi.h>

#include "sb_error.h"

sb_status sb_agree(MPI_Comm comm, sb_status local_status, sb_error *err);

#endif
