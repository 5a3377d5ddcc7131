#include "sb_mpi.h"

#include <stdio.h>
#include <string.h>

/* Pieces of a large message: 2^30 elements keeps every count and byte offset of a piece far
 * from INT_MAX whatever the element size. */
enum { PIECE = 1 << 30 };

sb_status sb_mpi_fail(int code, const char *call, const char *file, int line, sb_error *err)
{
    char reason[MPI_MAX_ERROR_STRING] = "";
    int length = 0;
    /* the error string is MPI's own; if even that fails, the number says enough */
    if (MPI_Error_string(code, reason, &length) != MPI_SUCCESS || length <= 0)
        snprintf(reason, sizeof reason, "MPI error code %d", code);
    /* the function name only: "MPI_Allreduce(&local, ...)" -> "MPI_Allreduce" */
    size_t name = strcspn(call, "(");
    const char *base = strrchr(file, '/');
    return sb_error_set(err, SB_ERR_MPI, "%.*s failed (%s:%d): %s", (int)(name < 64 ? name : 64), call,
                        base ? base + 1 : file, line, reason);
}

sb_status sb_mpi_rank_size(MPI_Comm comm, int *rank, int *size, sb_error *err)
{
    if (rank)
        SB_MPI_TRY(err, MPI_Comm_rank(comm, rank));
    if (size)
        SB_MPI_TRY(err, MPI_Comm_size(comm, size));
    return SB_OK;
}

sb_status sb_mpi_count(int64_t count, const char *what, int *mpi_count, sb_error *err)
{
    if (count < 0 || count > INT_MAX)
        return sb_error_set(err, SB_ERR_INPUT, "%s: %lld elements in one MPI message (at most %d)", what,
                            (long long)count, INT_MAX);
    *mpi_count = (int)count;
    return SB_OK;
}

sb_status sb_mpi_send_floats(const float *data, int64_t count, int to, int tag, MPI_Comm comm, sb_error *err)
{
    for (int64_t done = 0; done < count; done += PIECE) {
        int piece = (int)(count - done < PIECE ? count - done : PIECE);
        SB_MPI_TRY(err, MPI_Send(data + done, piece, MPI_FLOAT, to, tag, comm));
    }
    return SB_OK;
}

sb_status sb_mpi_recv_floats(float *data, int64_t count, int from, int tag, MPI_Comm comm, sb_error *err)
{
    for (int64_t done = 0; done < count; done += PIECE) {
        int piece = (int)(count - done < PIECE ? count - done : PIECE);
        SB_MPI_TRY(err, MPI_Recv(data + done, piece, MPI_FLOAT, from, tag, comm, MPI_STATUS_IGNORE));
    }
    return SB_OK;
}
