/* sb_inspect_svg: pictures of a file's allocation, for scalebits-inspect --svg DIR.
 *
 * DIR/layer-NN.svg: every matrix of decoder layer NN drawn to scale as its grid of tiles, each
 * tile coloured by its bitwidth; DIR/overview.svg: mean bits per tensor kind and layer.
 * Each file is written under a temporary name and renamed (io/sb_atomic.h); DIR is created.
 */
#ifndef SB_INSPECT_SVG_H
#define SB_INSPECT_SVG_H

#include "sb_error.h"
#include "sb_inspect_summary.h"

sb_status sb_inspect_write_svgs(const sb_file_summary *summary, const char *dir, sb_error *err);

#endif
