#include "sb_agree.h"

#include <stdio.h>
#include <string.h>

#include "sb_mpi.h"

sb_status sb_agree(MPI_Comm comm, sb_status local_status, sb_error *err)
{
    int rank, size;
    SB_MPI_TRY(err, MPI_Comm_rank(comm, &rank));
    SB_MPI_TRY(err, MPI_Comm_size(comm, &size));
    /* One MIN all-reduce ranks the outcomes: a real error on rank r is r, a stop is size + r,
     * success is 2 x size. The smallest value names the speaker, and errors come first. */
    int candidate = local_status == SB_OK ? 2 * size : local_status == SB_ERR_STOPPED ? size + rank : rank;
    int smallest = 2 * size;
    SB_MPI_TRY(err, MPI_Allreduce(&candidate, &smallest, 1, MPI_INT, MPI_MIN, comm));
    if (smallest == 2 * size)
        return SB_OK;
    int speaker = smallest % size;
    struct {
        int status;
        char message[SB_ERROR_MESSAGE_MAX];
    } shared;
    memset(&shared, 0, sizeof shared);
    if (rank == speaker) {
        shared.status = (int)local_status;
        const char *message = err ? err->message : "(no message)";
        /* the speaker's message with its rank in front (once: an agreement on an outcome that
         * was already agreed on keeps its message), cut to the message size if need be (a
         * message is for people; nothing is built from it) */
        int prefix = size > 1 ? snprintf(shared.message, sizeof shared.message, "rank %d: ", rank) : 0;
        if (prefix > 0 && strncmp(message, shared.message, (size_t)prefix) == 0)
            prefix = 0;
        size_t room = sizeof shared.message - (size_t)prefix - 1, length = strlen(message);
        memcpy(shared.message + prefix, message, length < room ? length : room);
    }
    SB_MPI_TRY(err, MPI_Bcast(&shared, (int)sizeof shared, MPI_BYTE, speaker, comm));
    if (err) {
        err->status = (sb_status)shared.status;
        memcpy(err->message, shared.message, sizeof err->message);
    }
    return (sb_status)shared.status;
}
