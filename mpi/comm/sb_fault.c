#include "sb_fault.h"

#include <stdlib.h>
#include <string.h>

#include "sb_mpi.h"

bool sb_fault_injected(MPI_Comm comm, const char *point)
{
    const char *spec = getenv("SCALEBITS_TEST_FAULT");
    if (!spec || !spec[0])
        return false;
    const char *at = strchr(spec, '@');
    size_t length = strlen(point);
    if (!at || (size_t)(at - spec) != length || strncmp(spec, point, length) != 0)
        return false;
    char *end;
    long wanted = strtol(at + 1, &end, 10);
    int rank;
    if (end == at + 1 || *end != '\0' || sb_mpi_rank_size(comm, &rank, NULL, NULL) != SB_OK)
        return false;
    return rank == wanted;
}
