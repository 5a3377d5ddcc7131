/* sb_assert: assertions for what cannot happen (SQLite's assert(), ALWAYS() and NEVER()).
 *
 * Invariants of our own code (a tile's bytes inside the buffer read for it, offsets that sum
 * to a dataset's length, counts that match) are asserted where a wrong value would otherwise
 * read or write out of bounds. In debug builds (no NDEBUG: CMAKE_BUILD_TYPE=Debug, and the
 * sanitizer build of .ci/run) a failed assertion prints file, line and condition and aborts;
 * in release builds they cost nothing. They never check input: what a file, an option or
 * another rank may get wrong is an sb_error, whatever the build.
 *
 *   SB_ASSERT(x)       x must hold
 *   if (SB_NEVER(x))   x must not hold; a release build still takes the branch (defence)
 *   if (SB_ALWAYS(x))  x must hold; a release build still tests it
 */
#ifndef SB_ASSERT_H
#define SB_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#ifdef NDEBUG
#define SB_ASSERT(x) ((void)0)
#define SB_ALWAYS(x) (x)
#define SB_NEVER(x) (x)
#else
static inline int sb_assert_failed(const char *condition, const char *file, int line)
{
    fprintf(stderr, "%s:%d: internal invariant violated: %s\n", file, line, condition);
    abort();
    return 0;
}
#define SB_ASSERT(x) ((x) ? (void)0 : (void)sb_assert_failed(#x, __FILE__, __LINE__))
#define SB_ALWAYS(x) ((x) ? 1 : sb_assert_failed(#x, __FILE__, __LINE__))
#define SB_NEVER(x) ((x) ? sb_assert_failed("!(" #x ")", __FILE__, __LINE__) : 0)
#endif

#endif
