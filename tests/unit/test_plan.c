/* The plan (mpi/sb_plan.h) on random model shapes, tile shapes, unit sizes and rank counts:
 * units cover every tile and every pass-through row exactly once, in canonical order, with
 * owners that never decrease and tile ranges per rank that are exactly their units'; the work is
 * balanced within one unit of the mean; units (and so the resume state) and every total are the
 * same for any rank count; a layered plan puts every layer's tensors on the stage that runs it;
 * and a model with more tiles than MPI counts hold is refused at planning. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_catalogue.h"
#include "sb_plan.h"
#include "sb_safetensors.h"
#include "sb_test.h"

typedef struct model {
    sb_model_shape shape;
    sb_checkpoint checkpoint;
    sb_tensor_desc *descs;
    sb_catalogue catalogue;
} model;

static void add_tensor(sb_checkpoint *c, const char *name, int ndim, int64_t rows, int64_t cols)
{
    sb_tensor_info *t = &c->tensors[c->ntensors++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dtype = SB_DTYPE_BF16;
    t->ndim = ndim;
    t->shape[0] = ndim == 1 ? cols : rows;
    t->shape[1] = cols;
    t->nbytes = (uint64_t)(rows * cols * 2);
}

static void make_model(model *m, sb_test_rng *rng)
{
    memset(m, 0, sizeof *m);
    sb_model_shape *s = &m->shape;
    s->num_key_value_heads = 1 + (int64_t)(sb_test_next(rng) % 3);
    s->num_attention_heads = s->num_key_value_heads * (1 + (int64_t)(sb_test_next(rng) % 3));
    s->head_dim = 2 * (1 + (int64_t)(sb_test_next(rng) % 24));
    s->hidden_size = s->num_attention_heads * s->head_dim;
    s->intermediate_size = 1 + (int64_t)(sb_test_next(rng) % 300);
    s->num_hidden_layers = 1 + (int64_t)(sb_test_next(rng) % 7);
    s->vocab_size = 1 + (int64_t)(sb_test_next(rng) % 200);
    s->tie_word_embeddings = sb_test_next(rng) % 2;
    int64_t q = s->num_attention_heads * s->head_dim, kv = s->num_key_value_heads * s->head_dim, h = s->hidden_size;
    m->checkpoint.tensors = calloc((size_t)(9 * s->num_hidden_layers + 3), sizeof *m->checkpoint.tensors);
    char name[128];
    /* stored in a scrambled order: the plan must follow the canonical one, not the file's */
    add_tensor(&m->checkpoint, "model.norm.weight", 1, 1, h);
    for (int64_t l = s->num_hidden_layers - 1; l >= 0; l--) {
        const struct { const char *suffix; int ndim; int64_t rows, cols; } parts[] = {
            {"mlp.down_proj.weight", 2, h, s->intermediate_size}, {"self_attn.q_proj.weight", 2, q, h},
            {"input_layernorm.weight", 1, 1, h},                   {"self_attn.k_proj.weight", 2, kv, h},
            {"self_attn.v_proj.weight", 2, kv, h},                 {"self_attn.o_proj.weight", 2, h, q},
            {"post_attention_layernorm.weight", 1, 1, h},          {"mlp.gate_proj.weight", 2, s->intermediate_size, h},
            {"mlp.up_proj.weight", 2, s->intermediate_size, h},
        };
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            sb_test_format(name, sizeof name, "model.layers.%lld.%s", (long long)l, parts[i].suffix);
            add_tensor(&m->checkpoint, name, parts[i].ndim, parts[i].rows, parts[i].cols);
        }
    }
    add_tensor(&m->checkpoint, "model.embed_tokens.weight", 2, s->vocab_size, h);
    if (!s->tie_word_embeddings)
        add_tensor(&m->checkpoint, "lm_head.weight", 2, s->vocab_size, h);
    m->descs = calloc((size_t)m->checkpoint.ntensors, sizeof *m->descs);
    for (int i = 0; i < m->checkpoint.ntensors; i++)
        m->descs[i] = (sb_tensor_desc){.name = m->checkpoint.tensors[i].name, .ndim = m->checkpoint.tensors[i].ndim,
                                       .shape = m->checkpoint.tensors[i].shape};
    sb_catalogue_options options = {sb_test_next(rng) % 2 == 0, sb_test_next(rng) % 3 == 0, false};
    sb_error err;
    SB_CHECK_MSG(sb_catalogue_build(m->descs, m->checkpoint.ntensors, s, &options, NULL, &m->catalogue, &err) == SB_OK, "%s",
                 err.message);
}

static void free_model(model *m)
{
    sb_catalogue_free(&m->catalogue);
    free(m->descs);
    for (int i = 0; i < m->checkpoint.ntensors; i++)
        free(m->checkpoint.tensors[i].name);
    free(m->checkpoint.tensors);
}

/* The invariants of one plan. */
static void check_plan(const model *m, const sb_plan *plan, const sb_options *o, int nranks, bool layered)
{
    int64_t next_tile = 0, max_unit_work = 0, total_work = 0;
    int u = 0;
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        SB_CHECK(tensor->entry == &m->catalogue.entries[i]);
        if (tensor->quantize) {
            SB_CHECK_MSG(tensor->first_tile_id == next_tile, "tensor %d starts at tile %lld, expected %lld", i,
                         (long long)tensor->first_tile_id, (long long)next_tile);
            next_tile += sb_tiling_count(&tensor->tiling);
        }
        /* this tensor's units are consecutive and cover its rows (and tiles) exactly once */
        int64_t row = 0, tile_row = 0, tile = tensor->first_tile_id;
        for (; u < plan->nunits && plan->units[u].tensor == i; u++) {
            const sb_unit *unit = &plan->units[u];
            SB_CHECK_MSG(unit->row_begin == row && unit->row_end > unit->row_begin, "unit %d rows %lld..%lld", u,
                         (long long)unit->row_begin, (long long)unit->row_end);
            row = unit->row_end;
            if (tensor->quantize) {
                SB_CHECK(unit->tile_row_begin == tile_row && unit->tile_row_end > unit->tile_row_begin);
                SB_CHECK(unit->first_tile_id == tile);
                SB_CHECK(unit->tiles == (unit->tile_row_end - unit->tile_row_begin) * tensor->tiling.tiles_across);
                SB_CHECK(unit->row_begin == unit->tile_row_begin * tensor->tiling.tile_rows);
                tile_row = unit->tile_row_end;
                tile += unit->tiles;
            }
            SB_CHECK(unit->owner >= 0 && unit->owner < nranks);
            SB_CHECK_MSG(u == 0 || plan->units[u - 1].owner <= unit->owner, "owners decrease at unit %d", u);
            max_unit_work = unit->work > max_unit_work ? unit->work : max_unit_work;
            total_work += unit->work;
            if (layered && tensor->entry->layer >= 0) {
                int stages = sb_stage_count(nranks, m->shape.num_hidden_layers), stage = 0;
                for (int st = 0; st < stages; st++)
                    if (tensor->entry->layer >= sb_stage_first_layer(m->shape.num_hidden_layers, stages, st))
                        stage = st;
                SB_CHECK_MSG(unit->owner == stage, "layer %lld on rank %d, its stage is %d",
                             (long long)tensor->entry->layer, unit->owner, stage);
            }
        }
        SB_CHECK_MSG(row == tensor->entry->rows, "tensor %d: units cover %lld of %lld rows", i, (long long)row,
                     (long long)tensor->entry->rows);
        if (tensor->quantize)
            SB_CHECK(tile_row == tensor->tiling.tiles_down && tile == tensor->first_tile_id + sb_tiling_count(&tensor->tiling));
    }
    SB_CHECK_MSG(u == plan->nunits, "%d units of %d belong to no tensor in order", plan->nunits - u, plan->nunits);
    SB_CHECK(next_tile == plan->total_tiles);
    /* rank r owns exactly the tiles of its units: [first[r], first[r + 1]) */
    SB_CHECK(plan->rank_first_tile[0] == 0 && plan->rank_first_tile[nranks] == plan->total_tiles);
    for (int r = 0; r < nranks; r++) {
        int64_t owned = 0;
        for (int k = 0; k < plan->nunits; k++)
            if (plan->units[k].owner == r && plan->tensors[plan->units[k].tensor].quantize) {
                const sb_unit *unit = &plan->units[k];
                SB_CHECK_MSG(unit->first_tile_id >= plan->rank_first_tile[r] &&
                                 unit->first_tile_id + unit->tiles <= plan->rank_first_tile[r + 1],
                             "rank %d owns tiles outside its range", r);
                owned += unit->tiles;
            }
        SB_CHECK_MSG(owned == plan->rank_first_tile[r + 1] - plan->rank_first_tile[r], "rank %d: %lld tiles in units, "
                     "%lld in its range", r, (long long)owned,
                     (long long)(plan->rank_first_tile[r + 1] - plan->rank_first_tile[r]));
    }
    /* balance: the contiguous split by work midpoints leaves every rank within one unit of
     * the mean (a layered plan follows the layers instead) */
    if (!layered)
        for (int r = 0; r < nranks; r++)
            SB_CHECK_MSG(plan->rank_work[r] * nranks <= total_work + 2 * max_unit_work * nranks,
                         "rank %d has work %lld, mean %lld, largest unit %lld", r, (long long)plan->rank_work[r],
                         (long long)(total_work / nranks), (long long)max_unit_work);
    int64_t weights = 0;
    for (int i = 0; i < plan->ntensors; i++)
        if (plan->tensors[i].quantize)
            weights += plan->tensors[i].entry->rows * plan->tensors[i].entry->cols;
    SB_CHECK(weights == plan->quantized_weights && weights == m->catalogue.quantized_weights);
    (void)o;
}

static bool same_units(const sb_plan *a, const sb_plan *b)
{
    if (a->nunits != b->nunits || a->total_tiles != b->total_tiles || a->fixed_bits != b->fixed_bits ||
        a->quantized_weights != b->quantized_weights)
        return false;
    for (int u = 0; u < a->nunits; u++) {
        const sb_unit *x = &a->units[u], *y = &b->units[u];
        if (x->tensor != y->tensor || x->row_begin != y->row_begin || x->row_end != y->row_end ||
            x->first_tile_id != y->first_tile_id || x->tiles != y->tiles || x->work != y->work)
            return false;
    }
    return true;
}

int main(void)
{
    sb_test_rng rng = {77};
    int plans = 0;
    for (int trial = 0; trial < 300; trial++) {
        model m;
        make_model(&m, &rng);
        sb_options o;
        memset(&o, 0, sizeof o);
        static const int tiles[] = {1, 2, 3, 8, 16, 32, 128};
        o.tile_rows = tiles[sb_test_next(&rng) % 7];
        o.tile_cols = tiles[sb_test_next(&rng) % 7];
        o.group = o.tile_cols / (1 + (int)(sb_test_next(&rng) % 2) * (o.tile_cols % 2 == 0));
        o.nbits = 1 + (int)(sb_test_next(&rng) % 4);
        for (int k = 0; k < o.nbits; k++)
            o.bits[k] = 2 * k + 1;
        o.scales = sb_test_next(&rng) % 2 ? SB_SCALES_Q8 : SB_SCALES_F16;
        o.unit_weights = 1 + (int64_t)(sb_test_next(&rng) % 20000);
        for (int layered = 0; layered < 2; layered++) {
            sb_plan first;
            sb_error err;
            bool have_first = false;
            for (int nranks = 1; nranks <= 9; nranks++) {
                sb_plan plan;
                sb_status status = layered ? sb_plan_build_layered(&m.catalogue, &m.checkpoint, &o, nranks,
                                                                   m.shape.num_hidden_layers, &plan, &err)
                                           : sb_plan_build(&m.catalogue, &m.checkpoint, &o, nranks, &plan, &err);
                SB_CHECK_MSG(status == SB_OK, "trial %d: %s", trial, err.message);
                if (status != SB_OK)
                    continue;
                plans++;
                check_plan(&m, &plan, &o, nranks, layered);
                /* the units, and so the names of the resume state's files, do not depend on the
                 * rank count (mpi/sb_state.h: a run resumes with any number of ranks) */
                if (!layered && have_first)
                    SB_CHECK_MSG(same_units(&first, &plan), "trial %d: units differ at %d ranks", trial, nranks);
                if (!layered && !have_first) {
                    first = plan;
                    have_first = true;
                } else {
                    sb_plan_free(&plan);
                }
            }
            if (have_first)
                sb_plan_free(&first);
        }
        free_model(&m);
    }
    printf("%d plans checked\n", plans);

    /* more tiles than MPI counts hold: refused at planning, with a clear message */
    model big;
    sb_test_rng fixed = {1};
    make_model(&big, &fixed);
    for (int i = 0; i < big.catalogue.count; i++)
        if (big.catalogue.entries[i].quantize) {
            big.catalogue.entries[i].rows = (int64_t)1 << 20;
            big.catalogue.entries[i].cols = (int64_t)1 << 12;
        }
    sb_options o;
    memset(&o, 0, sizeof o);
    o.tile_rows = o.tile_cols = o.group = 1;
    o.nbits = 1;
    o.bits[0] = 2;
    o.unit_weights = (int64_t)1 << 40;
    sb_plan plan;
    sb_error err;
    SB_CHECK(sb_plan_build(&big.catalogue, &big.checkpoint, &o, 4, &plan, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "tiles") && strstr(err.message, "larger tiles"), "%s", err.message);
    free_model(&big);
    return sb_test_finish("test_plan");
}
