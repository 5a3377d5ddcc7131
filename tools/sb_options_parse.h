/* sb_options_parse: the command line of scalebits-mpi, parsed the same way on every rank.
 *
 * Parsing is pure (no I/O, no MPI): every rank parses its own argv, so all agree without
 * communication; errors are SB_ERR_USAGE with the offending flag named. Defaults and the
 * checks that combine flags (a sensitivity that needs calibration data, ...) live here too.
 */
#ifndef SB_OPTIONS_PARSE_H
#define SB_OPTIONS_PARSE_H

#include "sb_error.h"
#include "sb_options.h"

/* Parses argv (argv[0] is the program name) into `options` (fully overwritten). */
sb_status sb_options_parse(int argc, char **argv, sb_options *options, sb_error *err);
/* Prints the usage text to stdout. */
void sb_options_usage(const char *program);

#endif
