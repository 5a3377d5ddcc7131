/* sb_h5_name: tensor names as HDF5 link names, by an escaping no name can break out of.
 *
 * A tensor name comes from a safetensors header: any non-empty UTF-8 string, possibly holding
 * '/' (HDF5's path separator: "a/b" would create a group "a", and "/x" would land at the file's
 * root), "." (the group itself), '%', control bytes. The writer stores /tensors/<link> and
 * /passthrough/<link> with <link> = sb_h5_name_escape(name); readers undo it. The rule
 * (docs/FORMAT.md, "Tensor names"):
 *
 *   every '%', every '/', every control byte (0x01..0x1F, 0x7F) and a '.' at the start of the
 *   name is written as '%' and two upper-case hex digits ("%25", "%2F", "%0A", "%2E");
 *   every other byte is itself.
 *
 * So a link name never holds '/', never is "." or "..", and every Hugging Face name
 * ("model.layers.0.mlp.down_proj.weight") is its own link name: files of such models are
 * unchanged. The escaping is a bijection between non-empty names without NUL and canonical
 * link names: sb_h5_name_unescape refuses a link that is not exactly the escape of what it
 * decodes to ("%41" for "A", lower-case hex, a stray '%', "%00", an empty link), so two links
 * can never decode to the same tensor.
 *
 * Pure functions; results are malloc'd and owned by the caller.
 */
#ifndef SB_H5_NAME_H
#define SB_H5_NAME_H

#include <stdbool.h>

#include "sb_error.h"

/* The link name of tensor `name`. SB_ERR_INPUT for an empty name, SB_ERR_NOMEM. */
sb_status sb_h5_name_escape(const char *name, char **link, sb_error *err);
/* The tensor name of link `link`; false (and *name = NULL) if `link` is not a canonical escape
 * or memory runs out. */
bool sb_h5_name_unescape(const char *link, char **name);

#endif
