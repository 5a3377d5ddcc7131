/* The tensor-name classifier: names and ids are exact inverses, the canonical order is the one
 * the file format documents (and that Llama files have always had), hostile names classify
 * without undefined behaviour. */
#include <stdlib.h>
#include <string.h>

#include "sb_catalogue.h"
#include "sb_test.h"
#include "sb_tensor_name.h"

static void check_known_names(void)
{
    static const struct {
        const char *name;
        sb_tensor_role role;
        int64_t layer, expert;
    } cases[] = {
        {"model.embed_tokens.weight", SB_ROLE_EMBED, -1, -1},
        {"model.norm.weight", SB_ROLE_FINAL_NORM, -1, -1},
        {"lm_head.weight", SB_ROLE_LM_HEAD, -1, -1},
        {"model.layers.0.self_attn.q_proj.weight", SB_ROLE_Q, 0, -1},
        {"model.layers.3.self_attn.k_proj.weight", SB_ROLE_K, 3, -1},
        {"model.layers.12.self_attn.v_proj.weight", SB_ROLE_V, 12, -1},
        {"model.layers.125.self_attn.o_proj.weight", SB_ROLE_O, 125, -1},
        {"model.layers.1.mlp.gate_proj.weight", SB_ROLE_GATE, 1, -1},
        {"model.layers.1.mlp.up_proj.weight", SB_ROLE_UP, 1, -1},
        {"model.layers.1.mlp.down_proj.weight", SB_ROLE_DOWN, 1, -1},
        {"model.layers.7.input_layernorm.weight", SB_ROLE_ATTN_NORM, 7, -1},
        {"model.layers.7.post_attention_layernorm.weight", SB_ROLE_MLP_NORM, 7, -1},
        {"model.layers.2.self_attn.q_norm.weight", SB_ROLE_Q_NORM, 2, -1},
        {"model.layers.2.self_attn.k_norm.weight", SB_ROLE_K_NORM, 2, -1},
        {"model.layers.2.mlp.gate.weight", SB_ROLE_ROUTER, 2, -1},
        {"model.layers.2.mlp.experts.0.gate_proj.weight", SB_ROLE_GATE, 2, 0},
        {"model.layers.61.mlp.experts.159.up_proj.weight", SB_ROLE_UP, 61, 159},
        {"model.layers.93.mlp.experts.127.down_proj.weight", SB_ROLE_DOWN, 93, 127},
        {"model.layers.4.self_attn.q_proj.bias", SB_ROLE_Q_BIAS, 4, -1},
        {"model.layers.4.self_attn.k_proj.bias", SB_ROLE_K_BIAS, 4, -1},
        {"model.layers.4.self_attn.v_proj.bias", SB_ROLE_V_BIAS, 4, -1},
        {"model.layers.4.self_attn.o_proj.bias", SB_ROLE_O_BIAS, 4, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_tensor_id id = sb_tensor_name_parse(cases[i].name);
        SB_CHECK_MSG(id.role == cases[i].role && id.layer == cases[i].layer && id.expert == cases[i].expert,
                     "%s -> role %d layer %lld expert %lld", cases[i].name, (int)id.role, (long long)id.layer,
                     (long long)id.expert);
        char name[256];
        int length = sb_tensor_name_format(id, name, sizeof name);
        SB_CHECK_MSG(length == (int)strlen(cases[i].name) && strcmp(name, cases[i].name) == 0, "%s formats as %s",
                     cases[i].name, name);
    }
    /* a short buffer: snprintf's contract (full length returned, the name cut) */
    char small[8];
    int length = sb_tensor_name_format(sb_tensor_name_parse("model.layers.3.mlp.down_proj.weight"), small, sizeof small);
    SB_CHECK(length == (int)strlen("model.layers.3.mlp.down_proj.weight") && strlen(small) == 7);
    /* every role's name parses back */
    for (int r = 0; r < SB_ROLE_COUNT; r++) {
        sb_tensor_role parsed;
        SB_CHECK(sb_role_parse(sb_role_name((sb_tensor_role)r), &parsed) && parsed == (sb_tensor_role)r);
    }
    sb_tensor_role unused;
    SB_CHECK(!sb_role_parse("q_proj ", &unused) && !sb_role_parse("", &unused));
    SB_CHECK(strcmp(sb_role_name((sb_tensor_role)SB_ROLE_COUNT), "?") == 0);
}

static void check_odd_names(void)
{
    static const struct {
        const char *name;
        int64_t layer; /* the layer it still belongs to, or -1 */
    } others[] = {
        {"", -1},
        {"model.layers.", -1},
        {"model.layers.3", -1},
        {"model.layers.-1.mlp.up_proj.weight", -1},
        {"model.layers.+1.mlp.up_proj.weight", -1},
        {"model.layers.007.mlp.up_proj.weight", -1},    /* not canonical decimal */
        {"model.layers.2049638230412172402.mlp.up_proj.weight", -1}, /* beyond SB_TENSOR_INDEX_MAX */
        {"model.layers.99999999999999999999999999.mlp.up_proj.weight", -1}, /* would overflow int64 */
        {"model.layers.1.mlp.up_proj.weight.x", 1},
        {"model.layers.1.mlp.up_proj.weight/pad", 1},
        {"model.layers.1.mlp.experts.x.up_proj.weight", 1},
        {"model.layers.1.mlp.experts.01.up_proj.weight", 1},
        {"model.layers.1.mlp.experts.1.up_proj.bias", 1},
        {"model.layers.1.mlp.experts.1.gate.weight", 1},
        {"/tensors/model.layers.0.self_attn.q_proj.weight/pad", -1},
        {"../x", -1},
        {".", -1},
        {"model.embed_tokens.weight ", -1},
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        sb_tensor_id id = sb_tensor_name_parse(others[i].name);
        SB_CHECK_MSG(id.role == SB_ROLE_OTHER && id.layer == others[i].layer && id.expert == -1,
                     "'%s' -> role %d layer %lld", others[i].name, (int)id.role, (long long)id.layer);
        char name[64] = "x";
        SB_CHECK(sb_tensor_name_format(id, name, sizeof name) == -1 && name[0] == '\0');
    }
    /* the largest index still parses; ids that have no name do not format */
    sb_tensor_id big = sb_tensor_name_parse("model.layers.1099511627776.mlp.up_proj.weight");
    SB_CHECK(big.role == SB_ROLE_UP && big.layer == SB_TENSOR_INDEX_MAX);
    char name[64];
    SB_CHECK(sb_tensor_name_format((sb_tensor_id){SB_ROLE_Q, -1, -1}, name, sizeof name) == -1);
    SB_CHECK(sb_tensor_name_format((sb_tensor_id){SB_ROLE_EMBED, 3, -1}, name, sizeof name) == -1);
    SB_CHECK(sb_tensor_name_format((sb_tensor_id){SB_ROLE_Q, 3, 1}, name, sizeof name) == -1);
    SB_CHECK(sb_tensor_name_format((sb_tensor_id){SB_ROLE_ROUTER, 3, 1}, name, sizeof name) == -1);
    SB_CHECK(sb_tensor_name_format((sb_tensor_id){(sb_tensor_role)-1, 3, -1}, name, sizeof name) == -1);
    SB_CHECK(sb_tensor_name_format((sb_tensor_id){SB_ROLE_COUNT, 3, -1}, name, sizeof name) == -1);
}

static int compare_names(const void *a, const void *b)
{
    return sb_tensor_name_compare(*(const char *const *)a, *(const char *const *)b);
}

/* The documented order, written out by hand: sorting any permutation of it gives it back. */
static void check_canonical_order(void)
{
    static const char *const ordered[] = {
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.a_thing_we_do_not_know",
        "model.layers.0.z_thing_we_do_not_know",
        "model.layers.2.input_layernorm.weight",
        "model.layers.2.self_attn.q_proj.weight",
        "model.layers.2.self_attn.q_proj.bias",
        "model.layers.2.self_attn.q_norm.weight",
        "model.layers.2.self_attn.k_proj.weight",
        "model.layers.2.self_attn.k_norm.weight",
        "model.layers.2.self_attn.v_proj.weight",
        "model.layers.2.self_attn.o_proj.weight",
        "model.layers.2.post_attention_layernorm.weight",
        "model.layers.2.mlp.gate.weight",
        "model.layers.2.mlp.experts.2.gate_proj.weight",
        "model.layers.2.mlp.experts.2.up_proj.weight",
        "model.layers.2.mlp.experts.2.down_proj.weight",
        "model.layers.2.mlp.experts.10.gate_proj.weight", /* numerically, not by name */
        "model.layers.2.mlp.experts.10.up_proj.weight",
        "model.layers.2.mlp.experts.10.down_proj.weight",
        "model.layers.10.input_layernorm.weight",          /* layer 10 after layer 2 */
        "model.norm.weight",
        "lm_head.weight",
        "a.global.other",
        "model.layers.007.x",
        "z.global.other",
    };
    enum { N = sizeof ordered / sizeof ordered[0] };
    const char *shuffled[N];
    sb_test_rng rng = {42};
    for (int round = 0; round < 50; round++) {
        memcpy(shuffled, ordered, sizeof shuffled);
        for (int i = N - 1; i > 0; i--) {
            int j = (int)(sb_test_next(&rng) % (uint64_t)(i + 1));
            const char *t = shuffled[i];
            shuffled[i] = shuffled[j];
            shuffled[j] = t;
        }
        qsort(shuffled, N, sizeof shuffled[0], compare_names);
        bool same = true;
        for (int i = 0; i < N; i++)
            same = same && strcmp(shuffled[i], ordered[i]) == 0;
        SB_CHECK_MSG(same, "round %d: sorted order differs from the documented one", round);
        if (!same) {
            for (int i = 0; i < N; i++)
                fprintf(stderr, "  %-50s %s\n", shuffled[i], ordered[i]);
            break;
        }
    }
    /* antisymmetric and reflexive */
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            int c = sb_tensor_name_compare(ordered[i], ordered[j]);
            SB_CHECK((i < j && c < 0) || (i == j && c == 0) || (i > j && c > 0));
        }
}

/* The catalogue refuses a config that declares more layers than the checkpoint could hold,
 * before allocating anything for them (the 2^61-layer config.json of the hardening issue). */
static void check_catalogue_declared_layers(void)
{
    sb_model_shape shape;
    memset(&shape, 0, sizeof shape);
    shape.hidden_size = 8;
    shape.intermediate_size = 16;
    shape.num_attention_heads = shape.num_key_value_heads = 2;
    shape.head_dim = 4;
    shape.vocab_size = 32;
    int64_t embed_shape[2] = {32, 8}, norm_shape[1] = {8};
    sb_tensor_desc tensors[2] = {{"model.embed_tokens.weight", 2, embed_shape}, {"model.norm.weight", 1, norm_shape}};
    sb_catalogue_options options = {false, false};
    sb_catalogue catalogue;
    sb_error err;
    const int64_t declared[] = {2049638230412172402LL, INT64_MAX, -5, 3};
    for (size_t i = 0; i < sizeof declared / sizeof declared[0]; i++) {
        shape.num_hidden_layers = declared[i];
        sb_error_clear(&err);
        SB_CHECK(sb_catalogue_build(tensors, 2, &shape, &options, &catalogue, &err) == SB_ERR_INPUT);
        SB_CHECK_MSG(strstr(err.message, "num_hidden_layers") != NULL, "message: %s", err.message);
    }
}

int main(void)
{
    check_known_names();
    check_odd_names();
    check_canonical_order();
    check_catalogue_declared_layers();
    return sb_test_finish("test_tensor_name");
}
