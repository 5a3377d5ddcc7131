#include "sb_tensor_name.h"

#include <stdio.h>
#include <string.h>

static const char *const role_names[SB_ROLE_COUNT] = {
    [SB_ROLE_Q] = "q_proj",
    [SB_ROLE_K] = "k_proj",
    [SB_ROLE_V] = "v_proj",
    [SB_ROLE_O] = "o_proj",
    [SB_ROLE_GATE] = "gate_proj",
    [SB_ROLE_UP] = "up_proj",
    [SB_ROLE_DOWN] = "down_proj",
    [SB_ROLE_EMBED] = "embed_tokens",
    [SB_ROLE_LM_HEAD] = "lm_head",
    [SB_ROLE_ATTN_NORM] = "input_layernorm",
    [SB_ROLE_MLP_NORM] = "post_attention_layernorm",
    [SB_ROLE_FINAL_NORM] = "norm",
    [SB_ROLE_Q_NORM] = "q_norm",
    [SB_ROLE_K_NORM] = "k_norm",
    [SB_ROLE_ROUTER] = "router",
    [SB_ROLE_Q_BIAS] = "q_proj_bias",
    [SB_ROLE_K_BIAS] = "k_proj_bias",
    [SB_ROLE_V_BIAS] = "v_proj_bias",
    [SB_ROLE_O_BIAS] = "o_proj_bias",
    [SB_ROLE_OTHER] = "other",
};

const char *sb_role_name(sb_tensor_role role)
{
    return (unsigned)role < SB_ROLE_COUNT ? role_names[role] : "?";
}

bool sb_role_parse(const char *text, sb_tensor_role *role)
{
    for (int r = 0; r < SB_ROLE_COUNT; r++) {
        if (strcmp(text, role_names[r]) == 0) {
            *role = (sb_tensor_role)r;
            return true;
        }
    }
    return false;
}

/* Names of tensors outside the layers. */
static const struct {
    const char *name;
    sb_tensor_role role;
} global_names[] = {
    {"model.embed_tokens.weight", SB_ROLE_EMBED},
    {"model.norm.weight", SB_ROLE_FINAL_NORM},
    {"lm_head.weight", SB_ROLE_LM_HEAD},
};

/* What follows "model.layers.L." for each per-layer role (experts apart). */
static const struct {
    const char *suffix;
    sb_tensor_role role;
} layer_suffixes[] = {
    {"self_attn.q_proj.weight", SB_ROLE_Q},
    {"self_attn.k_proj.weight", SB_ROLE_K},
    {"self_attn.v_proj.weight", SB_ROLE_V},
    {"self_attn.o_proj.weight", SB_ROLE_O},
    {"mlp.gate_proj.weight", SB_ROLE_GATE},
    {"mlp.up_proj.weight", SB_ROLE_UP},
    {"mlp.down_proj.weight", SB_ROLE_DOWN},
    {"input_layernorm.weight", SB_ROLE_ATTN_NORM},
    {"post_attention_layernorm.weight", SB_ROLE_MLP_NORM},
    {"self_attn.q_norm.weight", SB_ROLE_Q_NORM},
    {"self_attn.k_norm.weight", SB_ROLE_K_NORM},
    {"mlp.gate.weight", SB_ROLE_ROUTER},
    {"self_attn.q_proj.bias", SB_ROLE_Q_BIAS},
    {"self_attn.k_proj.bias", SB_ROLE_K_BIAS},
    {"self_attn.v_proj.bias", SB_ROLE_V_BIAS},
    {"self_attn.o_proj.bias", SB_ROLE_O_BIAS},
};

/* What follows "model.layers.L.mlp.experts.E." */
static const struct {
    const char *suffix;
    sb_tensor_role role;
} expert_suffixes[] = {
    {"gate_proj.weight", SB_ROLE_GATE},
    {"up_proj.weight", SB_ROLE_UP},
    {"down_proj.weight", SB_ROLE_DOWN},
};

#define COUNT(array) (sizeof(array) / sizeof((array)[0]))

static const char LAYER_PREFIX[] = "model.layers.";
static const char EXPERT_PREFIX[] = "mlp.experts.";

/* Parses a canonical decimal index followed by '.': digits without a leading zero (but "0"), at
 * most SB_TENSOR_INDEX_MAX. Returns the text after the '.', or NULL. */
static const char *parse_index(const char *text, int64_t *index)
{
    if (text[0] < '0' || text[0] > '9' || (text[0] == '0' && text[1] != '.'))
        return NULL;
    int64_t value = 0;
    const char *p = text;
    for (; *p >= '0' && *p <= '9'; p++) {
        value = value * 10 + (*p - '0');
        if (value > SB_TENSOR_INDEX_MAX)
            return NULL;
    }
    if (*p != '.')
        return NULL;
    *index = value;
    return p + 1;
}

sb_tensor_id sb_tensor_name_parse(const char *name)
{
    sb_tensor_id id = {SB_ROLE_OTHER, -1, -1};
    for (size_t i = 0; i < COUNT(global_names); i++) {
        if (strcmp(name, global_names[i].name) == 0) {
            id.role = global_names[i].role;
            return id;
        }
    }
    if (strncmp(name, LAYER_PREFIX, sizeof LAYER_PREFIX - 1) != 0)
        return id;
    int64_t layer;
    const char *rest = parse_index(name + sizeof LAYER_PREFIX - 1, &layer);
    if (!rest)
        return id;
    id.layer = layer;
    for (size_t i = 0; i < COUNT(layer_suffixes); i++) {
        if (strcmp(rest, layer_suffixes[i].suffix) == 0) {
            id.role = layer_suffixes[i].role;
            return id;
        }
    }
    int64_t expert;
    const char *expert_rest = strncmp(rest, EXPERT_PREFIX, sizeof EXPERT_PREFIX - 1) == 0
                                  ? parse_index(rest + sizeof EXPERT_PREFIX - 1, &expert)
                                  : NULL;
    for (size_t i = 0; expert_rest && i < COUNT(expert_suffixes); i++) {
        if (strcmp(expert_rest, expert_suffixes[i].suffix) == 0) {
            id.role = expert_suffixes[i].role;
            id.expert = expert;
            return id;
        }
    }
    return id;
}

static int no_name(char *name, size_t size)
{
    if (size > 0)
        name[0] = '\0';
    return -1;
}

int sb_tensor_name_format(sb_tensor_id id, char *name, size_t size)
{
    if ((unsigned)id.role >= SB_ROLE_COUNT || id.role == SB_ROLE_OTHER)
        return no_name(name, size);
    bool expert_role = id.role == SB_ROLE_GATE || id.role == SB_ROLE_UP || id.role == SB_ROLE_DOWN;
    if (id.expert >= 0) {
        if (!expert_role || id.layer < 0 || id.layer > SB_TENSOR_INDEX_MAX || id.expert > SB_TENSOR_INDEX_MAX)
            return no_name(name, size);
        for (size_t i = 0; i < COUNT(expert_suffixes); i++)
            if (expert_suffixes[i].role == id.role)
                return snprintf(name, size, "%s%lld.%s%lld.%s", LAYER_PREFIX, (long long)id.layer, EXPERT_PREFIX,
                                (long long)id.expert, expert_suffixes[i].suffix);
        return no_name(name, size);
    }
    for (size_t i = 0; i < COUNT(global_names); i++)
        if (global_names[i].role == id.role)
            return id.layer < 0 ? snprintf(name, size, "%s", global_names[i].name) : no_name(name, size);
    if (id.layer < 0 || id.layer > SB_TENSOR_INDEX_MAX)
        return no_name(name, size);
    for (size_t i = 0; i < COUNT(layer_suffixes); i++)
        if (layer_suffixes[i].role == id.role)
            return snprintf(name, size, "%s%lld.%s", LAYER_PREFIX, (long long)id.layer, layer_suffixes[i].suffix);
    return no_name(name, size);
}

/* ---- canonical order --------------------------------------------------------------------- */

enum { GROUP_EMBED = 0, GROUP_LAYERS, GROUP_FINAL_NORM, GROUP_LM_HEAD, GROUP_OTHER };

/* Position of a role inside a layer: norms before the linears they feed, biases after their
 * projection, the experts after the router, anything unknown last. */
static int position_in_layer(sb_tensor_id id)
{
    enum { ROUTER = 15, EXPERTS = 16, UNKNOWN = 17 };
    if (id.expert >= 0)
        return EXPERTS;
    switch (id.role) {
    case SB_ROLE_ATTN_NORM: return 0;
    case SB_ROLE_Q: return 1;
    case SB_ROLE_Q_BIAS: return 2;
    case SB_ROLE_Q_NORM: return 3;
    case SB_ROLE_K: return 4;
    case SB_ROLE_K_BIAS: return 5;
    case SB_ROLE_K_NORM: return 6;
    case SB_ROLE_V: return 7;
    case SB_ROLE_V_BIAS: return 8;
    case SB_ROLE_O: return 9;
    case SB_ROLE_O_BIAS: return 10;
    case SB_ROLE_MLP_NORM: return 11;
    case SB_ROLE_GATE: return 12;
    case SB_ROLE_UP: return 13;
    case SB_ROLE_DOWN: return 14;
    case SB_ROLE_ROUTER: return ROUTER;
    default: return UNKNOWN;
    }
}

static int group_of(sb_tensor_id id)
{
    if (id.layer >= 0)
        return GROUP_LAYERS;
    switch (id.role) {
    case SB_ROLE_EMBED: return GROUP_EMBED;
    case SB_ROLE_FINAL_NORM: return GROUP_FINAL_NORM;
    case SB_ROLE_LM_HEAD: return GROUP_LM_HEAD;
    default: return GROUP_OTHER;
    }
}

static int compare_int64(int64_t a, int64_t b) { return a < b ? -1 : a > b ? 1 : 0; }

int sb_tensor_id_compare(sb_tensor_id a, const char *name_a, sb_tensor_id b, const char *name_b)
{
    int c = compare_int64(group_of(a), group_of(b));
    if (c == 0 && group_of(a) == GROUP_LAYERS) {
        c = compare_int64(a.layer, b.layer);
        if (c == 0)
            c = compare_int64(position_in_layer(a), position_in_layer(b));
        if (c == 0 && a.expert >= 0)
            c = compare_int64(a.expert, b.expert);
        if (c == 0 && a.expert >= 0)
            c = compare_int64(a.role, b.role); /* gate, up, down: the enum's order */
    }
    if (c != 0)
        return c;
    return strcmp(name_a, name_b);
}

int sb_tensor_name_compare(const char *name_a, const char *name_b)
{
    return sb_tensor_id_compare(sb_tensor_name_parse(name_a), name_a, sb_tensor_name_parse(name_b), name_b);
}
