#include "sb_agree.h"

#include <stdio.h>
#include <string.h>

sb_status sb_agree(MPI_Comm comm, sb_status local_status, sb_error *err)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    /* The lowest failing rank speaks for everyone: MIN over (failed ? rank : size). */
    int candidate = local_status != SB_OK ? rank : size, speaker = size;
    if (MPI_Allreduce(&candidate, &speaker, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        return sb_error_set(err, SB_ERR_MPI, "MPI_Allreduce failed while agreeing on the run's status");
    if (speaker == size)
        return SB_OK;
    struct {
        int status;
        char message[SB_ERROR_MESSAGE_MAX];
    } shared;
    memset(&shared, 0, sizeof shared);
    if (rank == speaker) {
        shared.status = (int)local_status;
        if (size > 1)
            snprintf(shared.message, sizeof shared.message, "rank %d: %s", rank, err->message);
        else
            snprintf(shared.message, sizeof shared.message, "%s", err->message);
    }
    if (MPI_Bcast(&shared, (int)sizeof shared, MPI_BYTE, speaker, comm) != MPI_SUCCESS)
        return sb_error_set(err, SB_ERR_MPI, "MPI_Bcast failed while sharing rank %d's error", speaker);
    err->status = (sb_status)shared.status;
    memcpy(err->message, shared.message, sizeof err->message);
    return err->status;
}
