/* sb_blas_start: make OpenBLAS use kernels this CPU can run at full speed (sb_cpu.h says why
 * it may not). Belongs with the executables' mains (it runs before MPI_Init).
 *
 * OpenBLAS (DYNAMIC_ARCH) picks its core in a library constructor, before main() runs, and reads
 * OPENBLAS_CORETYPE only then; so when its pick is slower than the CPU allows, the only remedy
 * is to set OPENBLAS_CORETYPE and re-execute the same program (/proc/self/exe, the same argv and
 * environment). execv keeps the process id, so a launcher that knows the process by it
 * (mpirun/PRRTE and PMIx, Slurm's srun) sees the same rank: call it first in main, before
 * MPI_Init and before any thread or file is made. It never loops: the re-executed process finds
 * OPENBLAS_CORETYPE set and keeps it. An OPENBLAS_CORETYPE the user set always wins.
 *
 * Test hook: SB_TEST_BLAS_CORENAME=NAME makes start-up believe OpenBLAS reported NAME (e.g.
 * Prescott, to simulate a CPU that OpenBLAS does not know).
 */
#ifndef SB_BLAS_START_H
#define SB_BLAS_START_H

#include <stdbool.h>

typedef struct sb_blas_start {
    bool changed;      /* OPENBLAS_CORETYPE was chosen by us (this process is the re-executed one) */
    bool slower;       /* OpenBLAS runs slower kernels than the CPU allows and we could not change it */
    char core[64];     /* the core OpenBLAS runs now */
    char message[320]; /* one line for the log: the core and why */
} sb_blas_start;

/* Checks OpenBLAS's core and, if it is slower than the CPU allows and the user did not set
 * OPENBLAS_CORETYPE, re-executes the program with the right one (does not return then). On
 * return, `start` says what runs and why. Never fails: if re-executing is impossible, the
 * message says so and the run goes on with OpenBLAS's choice. */
void sb_blas_start_check(char **argv, sb_blas_start *start);

#endif
