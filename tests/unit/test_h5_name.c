/* The escaping of tensor names into HDF5 link names (io/sb_h5_name.h, docs/FORMAT.md "Tensor
 * names"): identity for Hugging Face names, no '/' and never "." or ".." in a link, an exact
 * round trip for hostile names, canonical links only (two links never decode to one name), and
 * random names round-tripping. */
#include <stdlib.h>
#include <string.h>

#include "sb_h5_name.h"
#include "sb_test.h"

static void round_trip(const char *name, const char *expected_link)
{
    char *link = NULL, *back = NULL;
    SB_CHECK_MSG(sb_h5_name_escape(name, &link, NULL) == SB_OK, "escaping '%s'", name);
    if (!link)
        return;
    if (expected_link)
        SB_CHECK_MSG(strcmp(link, expected_link) == 0, "'%s' -> '%s', expected '%s'", name, link, expected_link);
    SB_CHECK_MSG(!strchr(link, '/'), "link '%s' holds a '/'", link);
    SB_CHECK_MSG(strcmp(link, ".") != 0 && strcmp(link, "..") != 0 && link[0] != '.', "link '%s'", link);
    for (const unsigned char *p = (const unsigned char *)link; *p; p++)
        SB_CHECK_MSG(*p >= 0x20 && *p != 0x7F, "link of '%s' holds control byte %u", name, *p);
    SB_CHECK_MSG(sb_h5_name_unescape(link, &back) && back && strcmp(back, name) == 0, "'%s' does not come back",
                 name);
    free(link);
    free(back);
}

static void refused_link(const char *link)
{
    char *name = (char *)"untouched";
    SB_CHECK_MSG(!sb_h5_name_unescape(link, &name), "link '%s' was accepted", link);
    SB_CHECK(name == NULL);
}

int main(void)
{
    /* Hugging Face names are their own links: files of real models do not change */
    const char *normal[] = {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                            "model.layers.31.mlp.down_proj.weight", "lm_head.weight", "model.norm.weight",
                            "model.layers.3.mlp.experts.127.gate_proj.weight", "weird name with spaces+[]{}",
                            "ünïcödé.weight", "a.b..c...", NULL};
    for (int i = 0; normal[i]; i++)
        round_trip(normal[i], normal[i]);

    /* names that are HDF5 paths, relative and absolute, and worse */
    round_trip("/tensors/model.layers.0.self_attn.q_proj.weight/pad",
               "%2Ftensors%2Fmodel.layers.0.self_attn.q_proj.weight%2Fpad");
    round_trip("/x", "%2Fx");
    round_trip("a/b", "a%2Fb");
    round_trip(".", "%2E");
    round_trip("..", "%2E.");
    round_trip("../x", "%2E.%2Fx");
    round_trip("./x", "%2E%2Fx");
    round_trip("x/.", "x%2F.");
    round_trip("100%", "100%25");
    round_trip("%2F", "%252F");
    round_trip("line\nbreak\ttab\x1b[31m\x7f", "line%0Abreak%09tab%1B[31m%7F");
    round_trip("\x01", "%01");
    char longest[1025];
    memset(longest, '/', 1024);
    longest[1024] = '\0';
    round_trip(longest, NULL);
    memset(longest, 'w', 1024);
    round_trip(longest, longest);

    /* empty names have no link */
    char *link = (char *)"untouched";
    SB_CHECK(sb_h5_name_escape("", &link, NULL) == SB_ERR_INPUT && link == NULL);

    /* only canonical links decode */
    const char *bad[] = {"", "%", "%2", "%2f", "%41", "%00", "%G0", "a%", "%2Fx%", ".x", ".", "..", "a/b", "%2e",
                         "x\n", NULL};
    for (int i = 0; bad[i]; i++)
        refused_link(bad[i]);

    /* random names of printable and control bytes, '/', '%' and '.' round-trip */
    sb_test_rng rng = {20261201};
    const char alphabet[] = "ab./%\x01\x1f\x7f" "Z9_- ";
    for (int trial = 0; trial < 20000; trial++) {
        char name[40];
        int length = 1 + (int)(sb_test_next(&rng) % 38);
        for (int i = 0; i < length; i++)
            name[i] = alphabet[sb_test_next(&rng) % (sizeof alphabet - 1)];
        name[length] = '\0';
        round_trip(name, NULL);
    }
    return sb_test_finish("test_h5_name");
}
