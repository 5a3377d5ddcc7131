/* The agreement step and the MPI error discipline (mpi/comm): sb_agree gives every rank the same
 * status and message; an error always wins over a stop (rank 0's SB_ERR_STOPPED must not hide
 * rank 2's I/O error), the lowest failing rank speaks; a failing MPI call becomes SB_ERR_MPI
 * naming the call, the file and line and MPI's error string; the fault hook fires on the one
 * rank it names; large messages travel in pieces. Run by CTest under mpirun -n 4 (or more). */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "sb_agree.h"
#include "sb_fault.h"
#include "sb_mpi.h"
#include "sb_test.h"

/* Each rank's status from `statuses` (indexed by rank, SB_OK beyond the list), agreed. */
static void expect(int rank, const sb_status *statuses, int count, sb_status expected, const char *speaker)
{
    sb_status local = rank < count ? statuses[rank] : SB_OK;
    sb_error err = {0};
    if (local != SB_OK)
        sb_error_set(&err, local, "failure of rank %d", rank);
    sb_status agreed = sb_agree(MPI_COMM_WORLD, local, &err);
    SB_CHECK_MSG(agreed == expected, "rank %d: agreed %d, expected %d", rank, (int)agreed, (int)expected);
    if (expected != SB_OK) {
        SB_CHECK_MSG(err.status == expected && strstr(err.message, speaker), "rank %d: message '%s', expected '%s'",
                     rank, err.message, speaker);
    }
}

int main(int argc, char **argv)
{
    int rank, size;
    sb_test_mpi_init(&argc, &argv, &rank, &size);
    sb_error err = {0};
    if (size < 4) {
        if (rank == 0)
            fprintf(stderr, "test_agree needs 4 ranks or more (mpirun -n 4)\n");
        MPI_Finalize();
        return 1;
    }

    expect(rank, NULL, 0, SB_OK, "");
    /* rank 0 was asked to stop (Slurm would requeue) while rank 2 hit an I/O error */
    expect(rank, (sb_status[]){SB_ERR_STOPPED, SB_OK, SB_ERR_IO}, 3, SB_ERR_IO, "rank 2: failure of rank 2");
    expect(rank, (sb_status[]){SB_ERR_STOPPED, SB_ERR_STOPPED, SB_OK, SB_ERR_FORMAT}, 4, SB_ERR_FORMAT,
           "rank 3: failure of rank 3");
    /* the lowest failing rank speaks */
    expect(rank, (sb_status[]){SB_OK, SB_ERR_INPUT, SB_ERR_IO, SB_ERR_NOMEM}, 4, SB_ERR_INPUT,
           "rank 1: failure of rank 1");
    expect(rank, (sb_status[]){SB_ERR_USAGE, SB_ERR_IO}, 2, SB_ERR_USAGE, "rank 0: failure of rank 0");
    /* stops alone: the lowest stopped rank */
    expect(rank, (sb_status[]){SB_OK, SB_ERR_STOPPED, SB_ERR_STOPPED}, 3, SB_ERR_STOPPED, "rank 1: failure of rank 1");
    /* the last rank alone */
    sb_status last[64] = {SB_OK};
    if (size <= 64) {
        last[size - 1] = SB_ERR_MPI;
        char speaker[64];
        sb_test_format(speaker, sizeof speaker, "rank %d: failure of rank %d", size - 1, size - 1);
        expect(rank, last, size, SB_ERR_MPI, speaker);
    }
    /* a NULL err on a rank that succeeds is fine */
    SB_CHECK(sb_agree(MPI_COMM_WORLD, SB_OK, NULL) == SB_OK);

    /* a failing MPI call: SB_ERR_MPI naming the call, file:line and MPI's reason */
    int value = 1;
    sb_status failed = SB_MPI_CALL(&err, MPI_Send(&value, 1, MPI_INT, size + 5, 0, MPI_COMM_WORLD));
    SB_CHECK_MSG(failed == SB_ERR_MPI && strstr(err.message, "MPI_Send failed (test_agree.c:") &&
                     strlen(strstr(err.message, "): ")) > 4,
                 "message '%s'", err.message);
    sb_status good = SB_MPI_CALL(&err, MPI_Barrier(MPI_COMM_WORLD));
    SB_CHECK(good == SB_OK);
    int count;
    SB_CHECK(sb_mpi_count(5, "x", &count, &err) == SB_OK && count == 5);
    SB_CHECK(sb_mpi_count((int64_t)1 << 31, "the residual stream", &count, &err) == SB_ERR_INPUT &&
             strstr(err.message, "the residual stream"));

    /* the fault hook: only the rank it names, only the point it names */
    setenv("SCALEBITS_TEST_FAULT", "h5_create@2", 1);
    SB_CHECK(sb_fault_injected(MPI_COMM_WORLD, "h5_create") == (rank == 2));
    SB_CHECK(!sb_fault_injected(MPI_COMM_WORLD, "h5_write"));
    SB_CHECK(!sb_fault_injected(MPI_COMM_WORLD, "h5_creat"));
    setenv("SCALEBITS_TEST_FAULT", "h5_create@x", 1);
    SB_CHECK(!sb_fault_injected(MPI_COMM_WORLD, "h5_create"));
    unsetenv("SCALEBITS_TEST_FAULT");
    SB_CHECK(!sb_fault_injected(MPI_COMM_WORLD, "h5_create"));

    /* floats in pieces: rank 0 sends to rank 1 (a count of zero sends nothing) */
    enum { N = 100003 };
    float *buffer = malloc(N * sizeof *buffer);
    for (int i = 0; i < N; i++)
        buffer[i] = rank == 0 ? (float)i * 0.5f : -1.0f;
    if (rank == 0) {
        SB_CHECK(sb_mpi_send_floats(buffer, N, 1, 7, MPI_COMM_WORLD, &err) == SB_OK);
        SB_CHECK(sb_mpi_send_floats(buffer, 0, 1, 8, MPI_COMM_WORLD, &err) == SB_OK);
    } else if (rank == 1) {
        SB_CHECK(sb_mpi_recv_floats(buffer, N, 0, 7, MPI_COMM_WORLD, &err) == SB_OK);
        SB_CHECK(sb_mpi_recv_floats(buffer, 0, 0, 8, MPI_COMM_WORLD, &err) == SB_OK);
        bool same = true;
        for (int i = 0; i < N; i++)
            same = same && buffer[i] == (float)i * 0.5f;
        SB_CHECK(same);
    }
    free(buffer);

    return sb_test_mpi_finish("test_agree", rank);
}
