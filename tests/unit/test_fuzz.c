/* Fuzzing the input surface: thousands of random byte and field mutations of a safetensors
 * header (and its index), a config.json and a scalebits .h5 file, each fed to the readers and
 * to what the tools do with what the readers accept, in this process: checkpoint open, tensor
 * reads, catalogue, plan, model check and load (safetensors); config parse, catalogue, model
 * check and load (config); reader open, inspect's summary, the stored-bit recount and the
 * allocation hash, dequantizing every tensor, pass-through reads, the file's own config and a
 * model load from it (.h5); and every 100th .h5 case through the inspect, export, eval and
 * generate binaries (every 250th tokenizer case through generate). The surfaces merged after
 * that (issues 11 and 12) have their own kinds: a Qwen3-MoE config.json (expert counts, top-k,
 * moe_intermediate_size, mlp_only_layers, decoder_sparse_step, head_dim, the FP8
 * quantization_config) parsed and used against an FP8 Qwen3-MoE checkpoint
 * opened with its block sizes; a Qwen3-MoE .h5 (expert stacks: experts, expert_code_offsets,
 * the stacked datasets, /calibration/tokens_per_expert) as a third .h5 base; every .h5 case
 * also loads each tensor through the packed path (sb_h5_load_qmatrix) and runs the packed model
 * (a window of scalebits-eval's forward; tokens through the KV-cache decoder); and llama2.c
 * tokenizer files (truncated, lengths negative or huge, scores NaN) loaded, encoding and
 * decoding text. Nothing may crash, hang (20 s per case) or leak (LeakSanitizer, in the
 * sanitizer build of .ci/run), and what a reader accepts must be sane (every dequantized weight
 * finite).
 *
 * Reproducible: every case draws from its own generator, seeded from (seed, kind, case). A
 * failure prints the seed and the case; SB_FUZZ_SEED=S SB_FUZZ_ONLY=kind:N reruns that one case
 * (kind: st, config, moe, h5, tok), SB_FUZZ_CASES=N changes how many cases of each kind run
 * (default 1000; .h5 runs 2/5 as many, the costly kind).
 *
 * .h5 mutations touch what scalebits reads (attributes, datasets, links, and the bytes of the
 * datasets' data), not the internal structures of the HDF5 library (see README, "Safety"). */
#include <fcntl.h>
#include <hdf5.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sb_catalogue.h"
#include "sb_config.h"
#include "sb_decoder.h"
#include "sb_h5_qmatrix.h"
#include "sb_h5_reader.h"
#include "sb_h5_source.h"
#include "sb_inspect_summary.h"
#include "sb_log.h"
#include "sb_model_load.h"
#include "sb_plan.h"
#include "sb_safetensors.h"
#include "sb_safetensors_write.h"
#include "sb_test.h"
#include "sb_tokenizer.h"

/* The case in progress, for the messages of a crash or a hang (written from signal handlers). */
static uint64_t fuzz_seed = 20261201;
static const char *case_kind = "setup";
static int case_number = -1;
static char work[4096], build[4096];
/* How many mutated inputs each reader accepted: a fuzzer whose inputs are all refused at the
 * first check exercises nothing. */
static int accepted_st, accepted_config, accepted_moe, accepted_h5, loaded_h5, packed_h5, decoded_h5, forwarded_h5, accepted_tok;

static void say_case(const char *what)
{
    char line[256];
    int length = snprintf(line, sizeof line,
                          "\nfuzz: %s in %s case %d (seed %llu): rerun it with SB_FUZZ_SEED=%llu SB_FUZZ_ONLY=%s:%d\n",
                          what, case_kind, case_number, (unsigned long long)fuzz_seed,
                          (unsigned long long)fuzz_seed, case_kind, case_number);
    if (length > 0)
        (void)!write(2, line, (size_t)(length < (int)sizeof line ? length : (int)sizeof line - 1));
}

static void on_death(void) { say_case("a crash"); }

static void on_signal(int signal_number)
{
    say_case(signal_number == SIGALRM ? "a hang (20 s)" : "a crash");
    signal(signal_number, SIG_DFL);
    raise(signal_number);
}

/* AddressSanitizer calls this before it exits on an error (weak: absent in normal builds). */
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

/* ---- randomness ------------------------------------------------------------------------------ */

static sb_test_rng case_rng(const char *kind, int number)
{
    uint64_t state = fuzz_seed * 0x9E3779B97F4A7C15ull + (uint64_t)number * 0xBF58476D1CE4E5B9ull;
    for (const char *p = kind; *p; p++)
        state = state * 31 + (uint64_t)*p;
    return (sb_test_rng){state};
}

static uint64_t below(sb_test_rng *rng, uint64_t n) { return n ? sb_test_next(rng) % n : 0; }

/* Integers that break arithmetic: signs, zero, powers of two around every width, extremes. */
static json_int_t interesting_int(sb_test_rng *rng)
{
    static const json_int_t values[] = {0, 1, -1, 2, 3, 7, 8, 16, 63, 64, 127, 128, 255, 256, 1000, 4095, 65535, 65536,
                                        65537, (json_int_t)1 << 24, INT32_MAX, (json_int_t)INT32_MAX + 1,
                                        UINT32_MAX, (json_int_t)1 << 40, (json_int_t)1 << 52, (json_int_t)1 << 61,
                                        (json_int_t)1 << 62, INT64_MAX, INT64_MIN, -((json_int_t)1 << 31),
                                        2049638230412172402LL};
    if (below(rng, 4) == 0)
        return (json_int_t)below(rng, 2000) - 100;
    return values[below(rng, sizeof values / sizeof values[0])];
}

static const char *const hostile_names[] = {
    "", "/x", "a/b", ".", "..", "../x", "/tensors/model.layers.0.self_attn.q_proj.weight/pad", "ctl\x01\x1b[2J",
    "%", "%2F", "model.layers.0.self_attn.q_proj.weight", "model.layers.99999999999999999999.mlp.up_proj.weight",
    "model.layers.007.mlp.up_proj.weight", "model.layers.1.mlp.experts.3.gate_proj.weight", "lm_head.weight",
    "model.embed_tokens.weight", "model.norm.weight", "model.layers.-1.input_layernorm.weight"};

static const char *hostile_name(sb_test_rng *rng, char *buffer, size_t size)
{
    if (below(rng, 8) == 0) {
        size_t length = below(rng, 2) ? 1024 + below(rng, 3) : 1 + below(rng, size - 2);
        if (length >= size)
            length = size - 1;
        for (size_t i = 0; i < length; i++)
            buffer[i] = "ab/.%\x01 "[below(rng, 7)];
        buffer[length] = '\0';
        return buffer;
    }
    return hostile_names[below(rng, sizeof hostile_names / sizeof hostile_names[0])];
}

/* A random JSON value of any kind. */
static json_t *random_json(sb_test_rng *rng, int depth)
{
    switch (below(rng, depth > 1 ? 6 : 9)) {
    case 0: return json_integer(interesting_int(rng));
    case 1: return json_integer(interesting_int(rng));
    case 2: {
        static const double reals[] = {0.0, -1.0, 1e-300, 1e300, 0.5, 3.25, -0.0, 1e19, 9.3e18};
        return json_real(reals[below(rng, sizeof reals / sizeof reals[0])]);
    }
    case 3: {
        char buffer[1100];
        return json_string(hostile_name(rng, buffer, sizeof buffer));
    }
    case 4: return below(rng, 2) ? json_true() : json_false();
    case 5: return json_null();
    case 6: {
        json_t *array = json_array();
        for (uint64_t i = below(rng, 5); i > 0; i--)
            json_array_append_new(array, random_json(rng, depth + 1));
        return array;
    }
    default: {
        json_t *object = json_object();
        for (uint64_t i = below(rng, 4); i > 0; i--) {
            char key[32];
            sb_test_format(key, sizeof key, "%s", (const char *[]){"type", "rope_type", "factor", "x"}[below(rng, 4)]);
            json_object_set_new(object, key, random_json(rng, depth + 1));
        }
        return object;
    }
    }
}

/* Byte mutations of a text: flips, insertions, deletions, digit runs (huge numbers). */
static char *mutate_bytes(sb_test_rng *rng, const char *text, size_t *length)
{
    size_t size = *length, capacity = size + 64;
    char *out = malloc(capacity + 1);
    memcpy(out, text, size);
    for (uint64_t n = 1 + below(rng, 4); n > 0; n--) {
        size_t at = (size_t)below(rng, size ? size : 1);
        switch (below(rng, 5)) {
        case 0: if (size) out[at] = (char)below(rng, 256); break;
        case 1: if (size) out[at] = "{}[]\":,0123456789-.e\\"[below(rng, 22)]; break;
        case 2:
            if (size + 1 < capacity) {
                memmove(out + at + 1, out + at, size - at);
                out[at] = (char)below(rng, 128);
                size++;
            }
            break;
        case 3:
            if (size) {
                memmove(out + at, out + at + 1, size - at - 1);
                size--;
            }
            break;
        default:
            /* a run of nines inside a number: 352 -> 3529999999999999999999 */
            if (size + 20 < capacity) {
                memmove(out + at + 20, out + at, size - at);
                memset(out + at, '9', 20);
                size += 20;
            }
            break;
        }
    }
    out[size] = '\0';
    *length = size;
    return out;
}

/* ---- the tiny model everything starts from ------------------------------------------------------ */

static const char base_config[] =
    "{\"model_type\": \"llama\", \"hidden_size\": 16, \"intermediate_size\": 24, \"num_attention_heads\": 2, "
    "\"num_key_value_heads\": 1, \"num_hidden_layers\": 2, \"vocab_size\": 32, \"max_position_embeddings\": 64, "
    "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, \"hidden_act\": \"silu\", "
    "\"rope_scaling\": null}";

static char model_dir[4200];
static uint8_t *base_header, *base_data;
static size_t base_header_length, base_data_length;

static void write_text(const char *path, const char *text, size_t length)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, length, f) != length) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

static void make_tiny_model(void)
{
    sb_test_format(model_dir, sizeof model_dir, "%s/tiny", work);
    if (mkdir(model_dir, 0755) != 0)
        exit(1);
    char path[4400];
    sb_test_format(path, sizeof path, "%s/config.json", model_dir);
    write_text(path, base_config, strlen(base_config));
    struct { char name[96]; int ndim; int64_t shape[2]; } tensors[32];
    int count = 0;
#define ADD(n, d, r, c)                                                                 \
    do {                                                                                \
        snprintf(tensors[count].name, sizeof tensors[count].name, "%s", n);             \
        tensors[count].ndim = d;                                                        \
        tensors[count].shape[0] = d == 1 ? c : r;                                       \
        tensors[count].shape[1] = c;                                                    \
        count++;                                                                        \
    } while (0)
    ADD("model.embed_tokens.weight", 2, 32, 16);
    for (int l = 0; l < 2; l++) {
        char name[96];
        const struct { const char *suffix; int ndim; int64_t rows, cols; } parts[] = {
            {"input_layernorm.weight", 1, 1, 16},   {"self_attn.q_proj.weight", 2, 16, 16},
            {"self_attn.k_proj.weight", 2, 8, 16},  {"self_attn.v_proj.weight", 2, 8, 16},
            {"self_attn.o_proj.weight", 2, 16, 16}, {"post_attention_layernorm.weight", 1, 1, 16},
            {"mlp.gate_proj.weight", 2, 24, 16},    {"mlp.up_proj.weight", 2, 24, 16},
            {"mlp.down_proj.weight", 2, 16, 24},
        };
        for (int i = 0; i < 9; i++) {
            sb_test_format(name, sizeof name, "model.layers.%d.%s", l, parts[i].suffix);
            ADD(name, parts[i].ndim, parts[i].rows, parts[i].cols);
        }
    }
    ADD("model.norm.weight", 1, 1, 16);
    ADD("lm_head.weight", 2, 32, 16);
#undef ADD
    sb_test_format(path, sizeof path, "%s/model.safetensors", model_dir);
    sb_safetensors_writer *writer;
    sb_error err;
    sb_test_rng rng = {99};
    SB_CHECK(sb_safetensors_writer_create(path, &writer, &err) == SB_OK);
    for (int i = 0; i < count; i++)
        SB_CHECK(sb_safetensors_writer_declare(writer, tensors[i].name, SB_DTYPE_BF16, tensors[i].ndim, tensors[i].shape,
                                               &err) == SB_OK);
    SB_CHECK(sb_safetensors_writer_begin_data(writer, &err) == SB_OK);
    for (int i = 0; i < count; i++) {
        int64_t n = tensors[i].ndim == 1 ? tensors[i].shape[0] : tensors[i].shape[0] * tensors[i].shape[1];
        float values[32 * 24];
        for (int64_t k = 0; k < n; k++)
            values[k] = tensors[i].ndim == 1 ? 1.0f + 0.1f * (float)sb_test_normal(&rng)
                                             : 0.2f * (float)sb_test_normal(&rng);
        SB_CHECK(sb_safetensors_writer_write_f32(writer, values, (size_t)n, &err) == SB_OK);
    }
    SB_CHECK(sb_safetensors_writer_commit(writer, &err) == SB_OK);
    /* its header and data, the material of the safetensors cases */
    uint8_t *bytes;
    size_t size;
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    bytes = malloc(size);
    if (fread(bytes, 1, size, f) != size)
        exit(1);
    fclose(f);
    uint64_t length;
    memcpy(&length, bytes, 8);
    base_header_length = (size_t)length;
    base_header = malloc(base_header_length + 1);
    memcpy(base_header, bytes + 8, base_header_length);
    base_header[base_header_length] = '\0';
    base_data_length = size - 8 - base_header_length;
    base_data = malloc(base_data_length);
    memcpy(base_data, bytes + 8 + base_header_length, base_data_length);
    free(bytes);
}

/* ---- safetensors cases ------------------------------------------------------------------------- */

static void mutate_header_fields(sb_test_rng *rng, json_t *root)
{
    const char *names[64];
    int count = 0;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) if (count < 64) names[count++] = key;
    if (count == 0)
        return;
    const char *name = names[below(rng, (uint64_t)count)];
    json_t *entry = json_object_get(root, name);
    char buffer[1100];
    switch (below(rng, 9)) {
    case 0: { /* one extent */
        json_t *shape = json_object_get(entry, "shape");
        if (json_is_array(shape) && json_array_size(shape) > 0)
            json_array_set_new(shape, below(rng, json_array_size(shape)), json_integer(interesting_int(rng)));
        break;
    }
    case 1: { /* a new shape of any rank */
        json_t *shape = json_array();
        for (uint64_t d = below(rng, 7); d > 0; d--)
            json_array_append_new(shape, json_integer(below(rng, 2) ? interesting_int(rng) : (json_int_t)below(rng, 40)));
        json_object_set_new(entry, "shape", shape);
        break;
    }
    case 2: {
        static const char *const dtypes[] = {"F32", "F16", "BF16", "I8", "F64", "F8_E4M3", "", "bf16"};
        json_object_set_new(entry, "dtype", below(rng, 5) ? json_string(dtypes[below(rng, 8)]) : random_json(rng, 0));
        break;
    }
    case 3: { /* offsets */
        json_t *offsets = json_object_get(entry, "data_offsets");
        if (json_is_array(offsets) && json_array_size(offsets) == 2)
            json_array_set_new(offsets, below(rng, 2), json_integer(interesting_int(rng)));
        else
            json_object_set_new(root, name, random_json(rng, 0));
        break;
    }
    case 4: /* a field of any type */
        json_object_set_new(entry, (const char *[]){"shape", "dtype", "data_offsets"}[below(rng, 3)], random_json(rng, 0));
        break;
    case 5: { /* renamed to a hostile name */
        json_incref(entry);
        const char *new_name = hostile_name(rng, buffer, sizeof buffer);
        json_object_del(root, name);
        json_object_set_new(root, new_name, entry);
        break;
    }
    case 6: json_object_del(root, name); break;
    case 7: /* a copy under another name: overlapping data */
        json_object_set(root, hostile_name(rng, buffer, sizeof buffer), entry);
        break;
    default:
        json_object_set_new(root, "__metadata__", below(rng, 2) ? random_json(rng, 0) : json_pack("{s:s}", "format", "pt"));
        break;
    }
}

static void run_checkpoint(const char *dir)
{
    sb_checkpoint checkpoint;
    sb_error err;
    if (sb_checkpoint_open(dir, &checkpoint, &err) != SB_OK) {
        SB_CHECK_MSG(err.message[0] && !strchr(err.message, '\n'), "%s case %d: empty or multi-line error '%s'",
                     case_kind, case_number, err.message);
        return;
    }
    accepted_st++;
    /* every accepted tensor reads: its first and last rows, as float32 and raw */
    for (int i = 0; i < checkpoint.ntensors; i++) {
        const sb_tensor_info *tensor = &checkpoint.tensors[i];
        int64_t rows = sb_tensor_rows(tensor), cols = sb_tensor_cols(tensor);
        SB_CHECK_MSG(tensor->nbytes <= 64 << 20, "%s case %d: tensor of %llu bytes accepted from a small file", case_kind,
                     case_number, (unsigned long long)tensor->nbytes);
        if (rows == 0 || cols == 0 || tensor->nbytes > 64 << 20)
            continue;
        float *row = malloc((size_t)cols * sizeof *row);
        sb_checkpoint_read_rows(&checkpoint, tensor, 0, 1, true, row, &err);
        sb_checkpoint_read_raw_rows(&checkpoint, tensor, rows - 1, 1, row, &err);
        free(row);
    }
    /* what scalebits-mpi builds from it: catalogue, plan, the model's tensors checked, loaded */
    sb_model_config config;
    if (sb_config_parse("config.json", base_config, &config, &err) == SB_OK) {
        sb_tensor_desc *descs = calloc((size_t)checkpoint.ntensors + 1, sizeof *descs);
        for (int i = 0; i < checkpoint.ntensors; i++)
            descs[i] = (sb_tensor_desc){.name = checkpoint.tensors[i].name, .ndim = checkpoint.tensors[i].ndim, .shape = checkpoint.tensors[i].shape};
        sb_catalogue catalogue;
        sb_catalogue_options catalogue_options = {case_number % 2 == 0, case_number % 3 == 0, case_number % 5 == 0};
        if (sb_catalogue_build(descs, checkpoint.ntensors, &config.shape, &catalogue_options, NULL, &catalogue, &err) == SB_OK) {
            sb_options options;
            memset(&options, 0, sizeof options);
            options.tile_rows = options.tile_cols = options.group = 8;
            options.nbits = 3;
            options.bits[0] = 2, options.bits[1] = 4, options.bits[2] = 8;
            options.unit_weights = 100;
            sb_plan plan;
            if (sb_plan_build(&catalogue, &checkpoint, &options, 3, &plan, &err) == SB_OK)
                sb_plan_free(&plan);
            if (sb_plan_build_layered(&catalogue, &checkpoint, &options, 3, 2, &plan, &err) == SB_OK)
                sb_plan_free(&plan);
            sb_catalogue_free(&catalogue);
        }
        free(descs);
        sb_model model;
        if (sb_model_load_checkpoint(&config.shape, &checkpoint, &model, &err) == SB_OK)
            sb_model_free(&model);
        sb_config_free(&config);
    }
    sb_checkpoint_close(&checkpoint);
}

static void safetensors_case(int number)
{
    sb_test_rng rng = case_rng("st", number);
    char dir[4200], path[4400];
    sb_test_format(dir, sizeof dir, "%s/st-case", work);
    mkdir(dir, 0755);
    sb_test_format(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    char index_path[4400];
    sb_test_format(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    unlink(index_path);
    char *header;
    size_t length = base_header_length;
    if (below(&rng, 3) == 0) {
        header = mutate_bytes(&rng, (const char *)base_header, &length);
    } else {
        json_t *root = json_loadb((const char *)base_header, base_header_length, 0, NULL);
        for (uint64_t n = 1 + below(&rng, 3); n > 0; n--)
            mutate_header_fields(&rng, root);
        header = json_dumps(root, JSON_COMPACT);
        length = strlen(header);
        json_decref(root);
    }
    uint64_t declared = length;
    if (below(&rng, 10) == 0)
        declared = below(&rng, 2) ? (uint64_t)interesting_int(&rng) : length + below(&rng, 64) - 32;
    FILE *f = fopen(path, "wb");
    fwrite(&declared, 8, 1, f);
    fwrite(header, 1, length, f);
    size_t data = below(&rng, 8) == 0 ? (size_t)below(&rng, base_data_length) : base_data_length; /* truncated */
    fwrite(base_data, 1, data, f);
    fclose(f);
    free(header);
    if (below(&rng, 6) == 0) {
        /* an index beside it: shard names and the weight map mutated */
        json_t *map = json_object();
        json_t *header_json = json_loadb((const char *)base_header, base_header_length, 0, NULL);
        const char *key;
        json_t *value;
        char buffer[1100];
        json_object_foreach(header_json, key, value) json_object_set_new(map, key, json_string("model.safetensors"));
        json_decref(header_json);
        for (uint64_t n = 1 + below(&rng, 3); n > 0; n--) {
            static const char *const shards[] = {"../model.safetensors", "", ".", "..", "a/b", "model.safetensors",
                                                 "missing.safetensors", "ctl\x01", "model.safetensors/"};
            if (below(&rng, 2))
                json_object_set_new(map, below(&rng, 2) ? "model.norm.weight" : hostile_name(&rng, buffer, sizeof buffer),
                                    json_string(shards[below(&rng, sizeof shards / sizeof shards[0])]));
            else
                json_object_set_new(map, "lm_head.weight", random_json(&rng, 0));
        }
        json_t *index = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)1, "weight_map", map);
        if (below(&rng, 5) == 0)
            json_object_set_new(index, "weight_map", random_json(&rng, 0));
        json_dump_file(index, index_path, 0);
        json_decref(index);
    }
    run_checkpoint(dir);
}

/* ---- config.json cases ------------------------------------------------------------------------ */

static const char *const config_keys[] = {
    "model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
    "num_hidden_layers", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
    "hidden_act", "head_dim", "rope_scaling", "attention_bias", "mlp_bias", "sliding_window", "torch_dtype"};

/* The Qwen3-MoE fields (io/sb_config.c parse_moe, parse_quantization) and what they interact
 * with: the mutations of a qwen3_moe config pick among these. */
static const char *const moe_keys[] = {
    "num_experts", "num_experts_per_tok", "moe_intermediate_size", "mlp_only_layers", "decoder_sparse_step",
    "head_dim", "quantization_config", "norm_topk_prob", "num_hidden_layers", "hidden_size", "num_attention_heads",
    "num_key_value_heads", "use_sliding_window", "layer_types", "attention_bias", "vocab_size", "intermediate_size"};

/* A value for `key` of a qwen3_moe config: what breaks that field in particular. */
static json_t *moe_value(sb_test_rng *rng, const char *key)
{
    if (strcmp(key, "mlp_only_layers") == 0 && below(rng, 4)) {
        json_t *list = json_array();
        for (uint64_t n = below(rng, 4); n > 0; n--)
            json_array_append_new(list, json_integer(below(rng, 2) ? interesting_int(rng) : (json_int_t)below(rng, 4)));
        return list;
    }
    if (strcmp(key, "quantization_config") == 0 && below(rng, 4)) {
        json_int_t sides[2];
        for (int d = 0; d < 2; d++)
            sides[d] = below(rng, 2) ? interesting_int(rng) : (json_int_t)(4 << below(rng, 3));
        json_t *quant = json_pack("{s:s, s:s, s:[I, I]}", "quant_method", below(rng, 8) ? "fp8" : "gptq", "fmt",
                                  below(rng, 8) ? "e4m3" : "e5m2", "weight_block_size", sides[0], sides[1]);
        if (below(rng, 6) == 0)
            json_object_set_new(quant, "weight_block_size", random_json(rng, 0));
        return quant;
    }
    if (strcmp(key, "layer_types") == 0 && below(rng, 2)) {
        json_t *list = json_array();
        for (uint64_t n = below(rng, 4); n > 0; n--)
            json_array_append_new(list, json_string(below(rng, 3) ? "full_attention" : "sliding_attention"));
        return list;
    }
    if (strcmp(key, "head_dim") == 0 && below(rng, 2))
        return json_integer((json_int_t)(below(rng, 40) * (below(rng, 2) ? 1 : 2) + 1)); /* odd, or small and even */
    return below(rng, 2) ? json_integer(interesting_int(rng)) : random_json(rng, 0);
}

/* `base` mutated: bytes, or 1 to 3 of `keys` set to hostile values (or deleted). */
static char *mutated_config(sb_test_rng *rng, const char *base, const char *const *keys, size_t nkeys, bool moe)
{
    size_t length = strlen(base);
    if (below(rng, 3) == 0)
        return mutate_bytes(rng, base, &length);
    json_t *root = json_loads(base, 0, NULL);
    for (uint64_t n = 1 + below(rng, 3); n > 0; n--) {
        const char *key = keys[below(rng, nkeys)];
        if (below(rng, 8) == 0)
            json_object_del(root, key);
        else if (moe)
            json_object_set_new(root, key, moe_value(rng, key));
        else if (strcmp(key, "rope_scaling") == 0 && below(rng, 2))
            json_object_set_new(root, key, json_pack("{s:s, s:o, s:o, s:o, s:o}", "rope_type", "llama3", "factor",
                                                     random_json(rng, 1), "low_freq_factor", random_json(rng, 1),
                                                     "high_freq_factor", random_json(rng, 1),
                                                     "original_max_position_embeddings", random_json(rng, 1)));
        else
            json_object_set_new(root, key, below(rng, 2) ? json_integer(interesting_int(rng)) : random_json(rng, 0));
    }
    char *text = json_dumps(root, 0);
    json_decref(root);
    return text;
}

/* Parses `text`; false (with the error checked) when refused. */
static bool parse_config(const char *text, sb_model_config *config)
{
    sb_error err;
    if (sb_config_parse("config.json", text, config, &err) != SB_OK) {
        SB_CHECK_MSG(err.message[0] && !strchr(err.message, '\n'), "%s case %d: bad error '%s'", case_kind, case_number,
                     err.message);
        return false;
    }
    /* an accepted config: its shape is sane and its products fit (src/sb_model.h) */
    SB_CHECK_MSG(sb_model_shape_check(&config->shape, &err) == SB_OK, "%s case %d: accepted config fails the shape check: %s",
                 case_kind, case_number, err.message);
    return true;
}

/* What the tools build from an accepted config and a checkpoint: catalogue, checked model load. */
static void use_config(const sb_model_config *config, const sb_checkpoint *checkpoint)
{
    sb_error err;
    sb_tensor_desc *descs = calloc((size_t)checkpoint->ntensors + 1, sizeof *descs);
    for (int i = 0; i < checkpoint->ntensors; i++)
        descs[i] = (sb_tensor_desc){.name = checkpoint->tensors[i].name, .ndim = checkpoint->tensors[i].ndim, .shape = checkpoint->tensors[i].shape};
    sb_catalogue catalogue;
    sb_catalogue_options options = {false, false, false};
    if (sb_catalogue_build(descs, checkpoint->ntensors, &config->shape, &options, NULL, &catalogue, &err) == SB_OK)
        sb_catalogue_free(&catalogue);
    free(descs);
    /* the model is allocated only once the checkpoint is known to hold it */
    sb_model model;
    if (sb_model_load_checkpoint(&config->shape, checkpoint, &model, &err) == SB_OK)
        sb_model_free(&model);
}

static void config_case(int number, const sb_checkpoint *checkpoint)
{
    sb_test_rng rng = case_rng("config", number);
    char *text = mutated_config(&rng, base_config, config_keys, sizeof config_keys / sizeof config_keys[0], false);
    sb_model_config config;
    if (parse_config(text, &config)) {
        accepted_config++;
        use_config(&config, checkpoint);
        sb_config_free(&config);
    }
    free(text);
}

/* The generated FP8 Qwen3-MoE checkpoint (made in main) and its config.json. */
static char moe_dir[4200];
static char *moe_config;

/* A qwen3_moe config.json mutated, then the FP8 checkpoint opened with the block sizes it gives
 * (quantization_config.weight_block_size) and every tensor's first and last rows decoded. */
static void moe_config_case(int number)
{
    sb_test_rng rng = case_rng("moe", number);
    char *text = mutated_config(&rng, moe_config, moe_keys, sizeof moe_keys / sizeof moe_keys[0], true);
    sb_model_config config;
    if (parse_config(text, &config)) {
        accepted_moe++;
        sb_checkpoint_options options = sb_config_checkpoint_options(&config);
        sb_checkpoint checkpoint;
        sb_error err;
        if (sb_checkpoint_open_with(moe_dir, &options, &checkpoint, &err) == SB_OK) {
            for (int i = 0; i < checkpoint.ntensors; i++) {
                const sb_tensor_info *tensor = &checkpoint.tensors[i];
                int64_t rows = sb_tensor_rows(tensor), cols = sb_tensor_cols(tensor);
                float *row = malloc((size_t)(cols > 0 ? cols : 1) * sizeof *row);
                if (row && rows > 0 && cols > 0) {
                    sb_checkpoint_read_rows(&checkpoint, tensor, 0, 1, true, row, &err);
                    sb_checkpoint_read_rows(&checkpoint, tensor, rows - 1, 1, true, row, &err);
                }
                free(row);
            }
            use_config(&config, &checkpoint);
            sb_checkpoint_close(&checkpoint);
        } else {
            SB_CHECK_MSG(err.message[0] && !strchr(err.message, '\n'), "%s case %d: bad error '%s'", case_kind,
                         case_number, err.message);
        }
        sb_config_free(&config);
    }
    free(text);
}

/* ---- .h5 cases ------------------------------------------------------------------------------ */

typedef struct base_file {
    char path[4400];
    uint8_t *bytes;
    size_t size;
    int ndatasets;
    struct { char path[1200]; haddr_t offset; hsize_t size; } datasets[128];
    int ngroups;
    char groups[64][300];
} base_file;

static herr_t visit_object(hid_t object, const char *name, const H5O_info_t *info, void *data)
{
    base_file *base = data;
    if (info->type == H5O_TYPE_DATASET && base->ndatasets < 128) {
        hid_t dataset = H5Dopen2(object, name, H5P_DEFAULT);
        snprintf(base->datasets[base->ndatasets].path, sizeof base->datasets[0].path, "/%s", name);
        base->datasets[base->ndatasets].offset = H5Dget_offset(dataset);
        base->datasets[base->ndatasets].size = H5Dget_storage_size(dataset);
        base->ndatasets++;
        H5Dclose(dataset);
    } else if (info->type == H5O_TYPE_GROUP && strncmp(name, "tensors/", 8) == 0 && base->ngroups < 64) {
        snprintf(base->groups[base->ngroups++], sizeof base->groups[0], "/%s", name);
    }
    return 0;
}

static void load_base(base_file *base, const char *path)
{
    memset(base, 0, sizeof *base);
    snprintf(base->path, sizeof base->path, "%s", path);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    base->size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    base->bytes = malloc(base->size);
    if (fread(base->bytes, 1, base->size, f) != base->size)
        exit(1);
    fclose(f);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    H5Ovisit(file, H5_INDEX_NAME, H5_ITER_INC, visit_object, base);
    H5Fclose(file);
}

static hid_t f16_type(void)
{
    hid_t type = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(type, 15, 10, 5, 0, 10);
    H5Tset_precision(type, 16);
    H5Tset_size(type, 2);
    H5Tset_ebias(type, 15);
    return type;
}

/* The .h5 case in progress mutates the MoE base (its config_json mutates as a qwen3_moe one). */
static bool case_moe;

static void set_attribute(sb_test_rng *rng, hid_t object)
{
    static const char *const names[] = {"shape", "tile", "group", "layer", "role", "encoding", "source_dtype", "dtype",
                                        "format", "format_version", "tiles", "quantized_weights", "stored_bits",
                                        "budget_bpw", "achieved_bpw", "config_json", "allocation_sha256",
                                        "source_header_sha256", "bits", "experts", "expert_code_offsets",
                                        "expert_min_tokens"};
    const char *name = names[below(rng, sizeof names / sizeof names[0])];
    if (H5Aexists(object, name) > 0)
        H5Adelete(object, name);
    if (below(rng, 6) == 0)
        return; /* deleted */
    hid_t space, type, attr;
    switch (below(rng, 5)) {
    case 0:
    case 1: { /* integers */
        int count = 1 + (int)below(rng, 3);
        int64_t values[3];
        for (int i = 0; i < count; i++)
            values[i] = below(rng, 3) ? (int64_t)interesting_int(rng) : (int64_t)below(rng, 70);
        hsize_t dims[1] = {(hsize_t)count};
        space = count == 1 && below(rng, 2) ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
        type = H5Tcopy(below(rng, 4) ? H5T_NATIVE_INT64 : below(rng, 2) ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT8);
        attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        if (attr >= 0)
            H5Awrite(attr, H5T_NATIVE_INT64, values);
        break;
    }
    case 2: { /* a double */
        double value = (double[]){NAN, INFINITY, -1.0, 1e300, 3.0, 0.0}[below(rng, 6)];
        space = H5Screate(H5S_SCALAR);
        type = H5Tcopy(H5T_NATIVE_DOUBLE);
        attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        if (attr >= 0)
            H5Awrite(attr, type, &value);
        break;
    }
    case 3: { /* a fixed-length string, possibly an array of them */
        static const char *const strings[] = {"q_proj", "affine-q8", "affine-f16", "F32", "BF16", "scalebits", "lm_head",
                                              "other", "", "affine-q4", "I8"};
        char buffer[1100];
        const char *value = below(rng, 3) ? strings[below(rng, sizeof strings / sizeof strings[0])]
                                          : hostile_name(rng, buffer, sizeof buffer);
        type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, strlen(value) + 1);
        hsize_t dims[1] = {1 + below(rng, 2)};
        space = dims[0] == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
        attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        char both[2][1100];
        snprintf(both[0], sizeof both[0], "%s", value);
        snprintf(both[1], sizeof both[1], "%s", value);
        char *packed = calloc(2, strlen(value) + 1);
        memcpy(packed, value, strlen(value));
        memcpy(packed + strlen(value) + 1, value, strlen(value));
        if (attr >= 0)
            H5Awrite(attr, type, packed);
        free(packed);
        break;
    }
    default: { /* the config, mutated */
        char *text = case_moe ? mutated_config(rng, moe_config, moe_keys, sizeof moe_keys / sizeof moe_keys[0], true)
                              : mutated_config(rng, base_config, config_keys, sizeof config_keys / sizeof config_keys[0],
                                               false);
        type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, H5T_VARIABLE);
        space = H5Screate(H5S_SCALAR);
        attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        if (attr >= 0)
            H5Awrite(attr, type, &text);
        free(text);
        break;
    }
    }
    if (attr >= 0)
        H5Aclose(attr);
    H5Tclose(type);
    H5Sclose(space);
}

/* Replaces a dataset by one of another extent, rank, type, storage or content. */
static void replace_dataset(sb_test_rng *rng, hid_t file, const char *path)
{
    hid_t old = H5Dopen2(file, path, H5P_DEFAULT);
    if (old < 0)
        return;
    hid_t old_space = H5Dget_space(old);
    hsize_t dims[2] = {1, 1};
    int rank = H5Sget_simple_extent_ndims(old_space);
    if (rank < 1 || rank > 2)
        rank = 1;
    H5Sget_simple_extent_dims(old_space, dims, NULL);
    H5Sclose(old_space);
    H5Dclose(old);
    H5Ldelete(file, path, H5P_DEFAULT);
    if (below(rng, 8) == 0)
        return; /* gone */
    switch (below(rng, 5)) {
    case 0: dims[0] = dims[0] + 1; break;
    case 1: dims[0] = dims[0] > 0 ? dims[0] - 1 : 0; break;
    case 2: dims[0] = (hsize_t)1 << (20 + below(rng, 20)); break; /* huge, and never stored */
    case 3: rank = 3 - rank, dims[1] = 1 + below(rng, 4); break;
    default: break;
    }
    hid_t types[5] = {H5T_STD_U8LE, H5T_STD_I16LE, H5T_IEEE_F32LE, f16_type(), H5T_STD_U16LE};
    int t = (int)below(rng, 5);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    bool huge = dims[0] > (1 << 20);
    if (huge || below(rng, 4) == 0) {
        hsize_t chunk[2] = {dims[0] < 4096 ? (dims[0] ? dims[0] : 1) : 4096, 1};
        H5Pset_chunk(dcpl, rank, chunk);
    }
    hid_t dataset = H5Dcreate2(file, path, types[t], space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dataset >= 0 && !huge && below(rng, 3)) {
        /* written with random bytes (so it is stored) */
        size_t count = (size_t)dims[0] * (rank == 2 ? (size_t)dims[1] : 1);
        uint8_t *values = malloc(count * 4 + 1);
        for (size_t i = 0; i < count * 4; i++)
            values[i] = (uint8_t)below(rng, 256);
        H5Dwrite(dataset, types[t], H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
        free(values);
    }
    if (dataset >= 0)
        H5Dclose(dataset);
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Tclose(types[3]);
}

static void mutate_links(sb_test_rng *rng, hid_t file, const base_file *base)
{
    const char *group = base->ngroups ? base->groups[below(rng, (uint64_t)base->ngroups)] : "/tensors";
    char target[400];
    switch (below(rng, 6)) {
    case 0: H5Lcreate_soft("/passthrough", file, "/tensors/soft", H5P_DEFAULT, H5P_DEFAULT); break;
    case 1: H5Lcreate_external("elsewhere.h5", "/x", file, "/passthrough/external", H5P_DEFAULT, H5P_DEFAULT); break;
    case 2: { /* renamed to a non-canonical or hostile escape */
        static const char *const names[] = {"%zz", "%2e", "%41", ".hidden", "%00", "a%2Fb", "%2Fx", "%"};
        sb_test_format(target, sizeof target, "/tensors/%s", names[below(rng, sizeof names / sizeof names[0])]);
        H5Lmove(file, group, file, target, H5P_DEFAULT, H5P_DEFAULT);
        break;
    }
    case 3: H5Ldelete(file, group, H5P_DEFAULT); break;
    case 4: { /* a stray group or dataset */
        hid_t made = H5Gcreate2(file, below(rng, 2) ? "/tensors/stray" : "/passthrough/stray", H5P_DEFAULT, H5P_DEFAULT,
                                H5P_DEFAULT);
        if (made >= 0) {
            set_attribute(rng, made);
            H5Gclose(made);
        }
        break;
    }
    default: /* the same tensor under /passthrough too */
        sb_test_format(target, sizeof target, "/passthrough/%s", group + 9);
        H5Lcreate_hard(file, group, file, target, H5P_DEFAULT, H5P_DEFAULT);
        break;
    }
}

static void write_int64s(hid_t object, const char *name, const int64_t *values, int count)
{
    if (H5Aexists(object, name) > 0)
        H5Adelete(object, name);
    hsize_t dims[1] = {(hsize_t)(count > 0 ? count : 1)};
    hid_t space = count == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    hid_t attr = H5Acreate2(object, name, H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr >= 0) {
        H5Awrite(attr, H5T_NATIVE_INT64, values);
        H5Aclose(attr);
    }
    H5Sclose(space);
}

/* Reads an int64 attribute of up to `capacity` values; returns how many (0 if absent or odd). */
static int read_int64s(hid_t object, const char *name, int64_t *values, int capacity)
{
    if (H5Aexists(object, name) <= 0)
        return 0;
    hid_t attr = H5Aopen(object, name, H5P_DEFAULT);
    hid_t space = H5Aget_space(attr);
    hssize_t count = H5Sget_simple_extent_npoints(space);
    int result = 0;
    if (count >= 1 && count <= capacity && H5Aread(attr, H5T_NATIVE_INT64, values) >= 0)
        result = (int)count;
    H5Sclose(space);
    H5Aclose(attr);
    return result;
}

/* Mutations of an expert stack (docs/FORMAT.md, "Experts"): its expert count, its code offsets
 * (shifted, swapped, one too few or many), its name (another layer's or role's stack, a plain
 * expert's), an expert's row of the bit map, the calibration's expert token counts. */
static void mutate_stack(sb_test_rng *rng, hid_t file, const base_file *base)
{
    const char *stacks[64];
    int nstacks = 0;
    for (int g = 0; g < base->ngroups; g++)
        if (strstr(base->groups[g], ".mlp.experts."))
            stacks[nstacks++] = base->groups[g];
    if (nstacks == 0)
        return;
    const char *stack = stacks[below(rng, (uint64_t)nstacks)];
    hid_t group = H5Gopen2(file, stack, H5P_DEFAULT);
    if (group < 0)
        return;
    int64_t experts = 0, offsets[1100];
    read_int64s(group, "experts", &experts, 1);
    int noffsets = read_int64s(group, "expert_code_offsets", offsets, 1024);
    switch (below(rng, 7)) {
    case 0: {
        int64_t value = (int64_t[]){experts + 1, experts - 1, 0, -1, (int64_t)interesting_int(rng)}[below(rng, 5)];
        write_int64s(group, "experts", &value, 1);
        break;
    }
    case 1:
        if (noffsets > 0) {
            int at = (int)below(rng, (uint64_t)noffsets);
            offsets[at] = below(rng, 2) ? offsets[at] + (int64_t)below(rng, 17) - 8 : (int64_t)interesting_int(rng);
            write_int64s(group, "expert_code_offsets", offsets, noffsets);
        }
        break;
    case 2:
        if (noffsets > 1) {
            if (below(rng, 2))
                offsets[noffsets] = offsets[noffsets - 1] + (int64_t)below(rng, 3), noffsets++;
            else
                noffsets--;
            write_int64s(group, "expert_code_offsets", offsets, noffsets);
        }
        break;
    case 3:
        if (noffsets > 2) {
            int at = 1 + (int)below(rng, (uint64_t)noffsets - 2);
            int64_t kept = offsets[at];
            offsets[at] = offsets[at + 1], offsets[at + 1] = kept;
            write_int64s(group, "expert_code_offsets", offsets, noffsets);
        }
        break;
    case 4: { /* the stack under another name, copied or moved */
        static const char *const names[] = {
            "/tensors/model.layers.0.mlp.experts.gate_proj.weight", "/tensors/model.layers.1.mlp.experts.up_proj.weight",
            "/tensors/model.layers.1.mlp.experts.0.gate_proj.weight", "/tensors/model.layers.1.mlp.experts.9.down_proj.weight",
            "/tensors/model.layers.1.mlp.gate_proj.weight", "/tensors/model.layers.1.mlp.experts.x_proj.weight",
            "/tensors/model.layers.99999999999.mlp.experts.gate_proj.weight"};
        const char *name = names[below(rng, sizeof names / sizeof names[0])];
        if (H5Lexists(file, name, H5P_DEFAULT) > 0)
            H5Ldelete(file, name, H5P_DEFAULT);
        if (below(rng, 2))
            H5Lcreate_hard(file, stack, file, name, H5P_DEFAULT, H5P_DEFAULT);
        else
            H5Lmove(file, stack, file, name, H5P_DEFAULT, H5P_DEFAULT);
        break;
    }
    case 5: { /* an expert's row of the bit map: other widths, a stray trailing nibble */
        hid_t dataset = H5Dopen2(group, "bitmap", H5P_DEFAULT);
        hid_t space = dataset >= 0 ? H5Dget_space(dataset) : -1;
        hsize_t dims[2] = {0, 0};
        if (space >= 0 && H5Sget_simple_extent_ndims(space) == 2 && H5Sget_simple_extent_dims(space, dims, NULL) == 2 &&
            dims[0] > 0 && dims[1] > 0 && dims[1] < 4096) {
            hsize_t start[2] = {below(rng, dims[0]), 0}, count[2] = {1, dims[1]};
            uint8_t row[4096];
            for (hsize_t i = 0; i < dims[1]; i++)
                row[i] = below(rng, 2) ? (uint8_t)(0x11 * (1 + below(rng, 8))) : (uint8_t)below(rng, 256);
            hid_t memory = H5Screate_simple(2, count, NULL);
            H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
            H5Dwrite(dataset, H5T_NATIVE_UINT8, memory, space, H5P_DEFAULT, row);
            H5Sclose(memory);
        }
        if (space >= 0)
            H5Sclose(space);
        if (dataset >= 0)
            H5Dclose(dataset);
        break;
    }
    default: { /* the calibration's token counts per expert: negative, huge */
        hid_t dataset = H5Dopen2(file, "/calibration/tokens_per_expert", H5P_DEFAULT);
        hid_t space = dataset >= 0 ? H5Dget_space(dataset) : -1;
        hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : 0;
        if (n > 0 && n < 4096) {
            int64_t values[4096];
            if (H5Dread(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) >= 0) {
                values[below(rng, (uint64_t)n)] = (int64_t[]){-2, -1, INT64_MAX, INT64_MIN, (int64_t)interesting_int(rng)}[below(rng, 5)];
                H5Dwrite(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
            }
        }
        if (space >= 0)
            H5Sclose(space);
        if (dataset >= 0)
            H5Dclose(dataset);
        break;
    }
    }
    H5Gclose(group);
}

/* The packed path of a file the reader accepts (scalebits-eval --quantized, scalebits-generate
 * --quantized): every tensor loaded into the kernels' layout, then, if the file's config fits
 * it, the packed model and one prompt of two tokens and a third token through the decoder. */
static void run_packed(const sb_h5_reader *reader, const sb_model_config *config)
{
    sb_error err;
    for (int i = 0; i < reader->nquantized; i++) {
        sb_qmatrix matrix;
        if (sb_h5_load_qmatrix(reader, &reader->quantized[i], &matrix, &err) == SB_OK)
            sb_qmatrix_free(&matrix);
        else
            SB_CHECK_MSG(err.message[0] && !strchr(err.message, '\n'), "%s case %d: bad error '%s'", case_kind,
                         case_number, err.message);
    }
    sb_kernel kernel;
    sb_model model;
    if (!config || sb_kernel_choose(&kernel, &err) != SB_OK ||
        sb_model_load_h5_packed(&config->shape, reader, &kernel, &model, &err) != SB_OK)
        return;
    packed_h5++;
    sb_decoder *decoder;
    float *logits = malloc((size_t)config->shape.vocab_size * sizeof *logits);
    if (logits && sb_decoder_create(&model, 4, 2, 1, &decoder, &err) == SB_OK) {
        uint32_t tokens[2] = {(uint32_t)(1 % config->shape.vocab_size), (uint32_t)(7 % config->shape.vocab_size)};
        if (sb_decoder_feed(decoder, tokens, 2, logits, &err) == SB_OK &&
            sb_decoder_feed(decoder, tokens + 1, 1, logits, &err) == SB_OK)
            decoded_h5++;
        sb_decoder_free(decoder);
    }
    free(logits);
    /* the batch forward of scalebits-eval */
    sb_model_workspace *workspace;
    if (sb_model_workspace_create(&config->shape, 4, 1, 1, false, &workspace, &err) == SB_OK) {
        uint32_t window[4];
        for (int i = 0; i < 4; i++)
            window[i] = (uint32_t)((i * 5 + 3) % config->shape.vocab_size);
        sb_nll nll;
        memset(&nll, 0, sizeof nll);
        if (sb_model_forward(&model, window, 1, 4, workspace, NULL, NULL, &nll, &err) == SB_OK)
            forwarded_h5++;
        sb_model_workspace_free(workspace);
    }
    sb_model_free(&model);
}

/* Everything the tools do with a file the reader accepts. */
static void run_reader(const char *path)
{
    sb_h5_reader reader;
    sb_error err;
    if (sb_h5_reader_open(path, &reader, &err) != SB_OK) {
        SB_CHECK_MSG(err.message[0] && !strchr(err.message, '\n'), "%s case %d: bad error '%s'", case_kind, case_number,
                     err.message);
        return;
    }
    accepted_h5++;
    sb_file_summary summary;
    if (sb_inspect_summarise(&reader, &summary, &err) == SB_OK) {
        char hex[65];
        sb_h5_allocation_sha256(&reader, hex);
    }
    sb_inspect_summary_free(&summary);
    int64_t bits, datasets;
    sb_h5_recount_stored_bits(&reader, &bits, &datasets, &err);
    for (int i = 0; i < reader.nquantized; i++) {
        const sb_h5_quantized *tensor = &reader.quantized[i];
        /* the codes bound the weights (at least one bit each): this stays small for small files */
        SB_CHECK_MSG(tensor->rows * tensor->cols <= 8 * reader.file_bytes + 64, "%s case %d: %lld weights accepted "
                     "from %lld bytes", case_kind, case_number, (long long)(tensor->rows * tensor->cols),
                     (long long)reader.file_bytes);
        float *values = malloc((size_t)(tensor->rows * tensor->cols) * sizeof *values);
        if (values && sb_h5_dequantize_rows(&reader, tensor, 0, tensor->rows, values, &err) == SB_OK) {
            for (int64_t k = 0; k < tensor->rows * tensor->cols; k++)
                if (!isfinite(values[k])) {
                    SB_CHECK_MSG(false, "%s case %d: tensor '%s' decodes to %g at %lld with exit OK", case_kind,
                                 case_number, tensor->name, (double)values[k], (long long)k);
                    break;
                }
        }
        free(values);
        uint8_t *codes = malloc((size_t)sb_tile_code_bytes((int)(tensor->tile_rows < tensor->rows ? tensor->tile_rows : tensor->rows),
                                                           (int)(tensor->tile_cols < tensor->cols ? tensor->tile_cols : tensor->cols), 8));
        if (codes && tensor->tiles > 0)
            sb_h5_read_tile_codes(&reader, tensor, tensor->tiles - 1, codes, &err);
        free(codes);
    }
    for (int i = 0; i < reader.npassthrough; i++) {
        const sb_h5_passthrough *tensor = &reader.passthrough[i];
        SB_CHECK(tensor->nbytes <= reader.file_bytes);
        float *values = malloc((size_t)(tensor->rows * tensor->cols + 1) * sizeof *values);
        if (values)
            sb_h5_read_passthrough_f32(&reader, tensor, 0, tensor->rows, values, &err);
        free(values);
    }
    sb_model_config config;
    if (sb_h5_reader_config(&reader, &config, &err) == SB_OK) {
        sb_model model;
        if (sb_model_load_h5(&config.shape, &reader, &model, &err) == SB_OK) {
            loaded_h5++;
            sb_model_free(&model);
        }
        run_packed(&reader, &config);
        sb_config_free(&config);
    } else {
        run_packed(&reader, NULL);
    }
    sb_h5_reader_close(&reader);
}

/* Runs `command` (a tool binary) with a time limit: exit 0 or a clean error (1), never a crash or
 * a hang. */
static void run_tool(const char *command)
{
    char full[21000];
    sb_test_format(full, sizeof full, "timeout 60 %s > /dev/null 2>&1", command);
    int raw = system(full);
    int rc = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
    SB_CHECK_MSG(rc == 0 || rc == 1, "%s case %d: `%s` exited with %d (124: hang; >128: crash)", case_kind,
                 case_number, command, rc);
}

/* The tool binaries on the same file. */
static void run_tools(const char *path)
{
    char command[20000];
    sb_test_format(command, sizeof command, "'%s/scalebits-inspect' '%s' --json", build, path);
    run_tool(command);
    sb_test_format(command, sizeof command, "rm -rf '%s/exported' && '%s/scalebits-export' '%s' --out '%s/exported'",
                   work, build, path, work);
    run_tool(command);
    sb_test_format(command, sizeof command, "'%s/scalebits-eval' --quantized '%s' --tokens '%s/tokens.u32' --ctx 8 "
                   "--windows 1", build, path, work);
    run_tool(command);
    sb_test_format(command, sizeof command, "'%s/scalebits-generate' --quantized '%s' --prompt-tokens '%s/tokens.u32' "
                   "--max-tokens 2", build, path, work);
    run_tool(command);
}

static void h5_case(int number, const base_file *bases, bool tools)
{
    sb_test_rng rng = case_rng("h5", number);
    const base_file *base = &bases[below(&rng, 3)];
    case_moe = base == &bases[2];
    char path[4400];
    sb_test_format(path, sizeof path, "%s/h5-case.h5", work);
    write_text(path, (const char *)base->bytes, base->size);
    /* data bytes first (raw), then structural mutations through HDF5 */
    if (below(&rng, 2)) {
        int fd = open(path, O_WRONLY);
        for (uint64_t n = 1 + below(&rng, 6); n > 0 && base->ndatasets > 0; n--) {
            int d = (int)below(&rng, (uint64_t)base->ndatasets);
            if (base->datasets[d].offset == HADDR_UNDEF || base->datasets[d].size == 0)
                continue;
            uint8_t value = below(&rng, 3) == 0 ? 0xFF : (uint8_t)below(&rng, 256);
            off_t at = (off_t)(base->datasets[d].offset + below(&rng, base->datasets[d].size));
            if (pwrite(fd, &value, 1, at) != 1)
                break;
        }
        close(fd);
    }
    uint64_t structural = below(&rng, 4);
    if (structural > 0) {
        hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
        hid_t file = H5Fopen(path, H5F_ACC_RDWR, fapl);
        H5Pclose(fapl);
        for (; file >= 0 && structural > 0; structural--) {
            switch (below(&rng, case_moe ? 6 : 4)) {
            case 4:
            case 5: mutate_stack(&rng, file, base); break;
            case 0: {
                const char *where = below(&rng, 4) == 0 ? "/" : base->ngroups ? base->groups[below(&rng, (uint64_t)base->ngroups)] : "/";
                hid_t object = H5Oopen(file, where, H5P_DEFAULT);
                if (object >= 0) {
                    set_attribute(&rng, object);
                    H5Oclose(object);
                }
                break;
            }
            case 1:
                if (base->ndatasets)
                    replace_dataset(&rng, file, base->datasets[below(&rng, (uint64_t)base->ndatasets)].path);
                break;
            case 2: mutate_links(&rng, file, base); break;
            default: { /* a pass-through dataset's attribute */
                for (int d = 0; d < base->ndatasets; d++)
                    if (strncmp(base->datasets[d].path, "/passthrough/", 13) == 0 && below(&rng, 4) == 0) {
                        hid_t object = H5Oopen(file, base->datasets[d].path, H5P_DEFAULT);
                        if (object >= 0) {
                            set_attribute(&rng, object);
                            H5Oclose(object);
                        }
                        break;
                    }
                break;
            }
            }
        }
        if (file >= 0)
            H5Fclose(file);
    }
    run_reader(path);
    if (tools)
        run_tools(path);
}

/* ---- llama2.c tokenizer cases ---------------------------------------------------------------- */

enum { TOK_VOCAB = SB_TEST_TOKENIZER_VOCAB };
static uint8_t *tok_base;
static size_t tok_base_size, tok_score_at[TOK_VOCAB]; /* where each token's score (then length) is */

/* A tokenizer file mutated: cut short, a length or max_token_length set to a hostile int32
 * (negative, huge, one past the maximum), a score NaN or infinite, bytes flipped or appended;
 * loaded for a vocabulary that is mostly right. What loads must encode any bytes into ids of the
 * vocabulary and decode every id (in or out of it) to a bounded piece. */
static void tokenizer_case(int number, bool tools)
{
    sb_test_rng rng = case_rng("tok", number);
    size_t size = tok_base_size;
    uint8_t *bytes = malloc(size + 64);
    memcpy(bytes, tok_base, size);
    static const int32_t hostile[] = {-1, INT32_MIN, INT32_MAX, 0, 1, 8, 9, 65536, 65537, 1 << 30, -65536};
    for (uint64_t n = 1 + below(&rng, 3); n > 0; n--) {
        size_t token = tok_score_at[below(&rng, TOK_VOCAB)];
        switch (below(&rng, 6)) {
        case 0: size = (size_t)below(&rng, size + 1); break;
        case 1:
            if (token + 8 <= size)
                memcpy(bytes + token + 4, &hostile[below(&rng, sizeof hostile / sizeof hostile[0])], 4);
            break;
        case 2:
            if (size >= 4)
                memcpy(bytes, &hostile[below(&rng, sizeof hostile / sizeof hostile[0])], 4);
            break;
        case 3:
            if (token + 4 <= size) {
                float score = (float[]){NAN, INFINITY, -INFINITY, 1e30f}[below(&rng, 4)];
                memcpy(bytes + token, &score, 4);
            }
            break;
        case 4:
            for (uint64_t k = 1 + below(&rng, 8); k > 0 && size > 0; k--)
                bytes[below(&rng, size)] = (uint8_t)below(&rng, 256);
            break;
        default:
            for (uint64_t k = 1 + below(&rng, 16); k > 0 && size < tok_base_size + 64; k--)
                bytes[size++] = (uint8_t)below(&rng, 256);
            break;
        }
    }
    char path[4400];
    sb_test_format(path, sizeof path, "%s/tok-case.bin", work);
    write_text(path, (const char *)bytes, size);
    free(bytes);
    int64_t vocab = TOK_VOCAB;
    if (below(&rng, 10) == 0)
        vocab = (int64_t[]){TOK_VOCAB - 1, TOK_VOCAB + 1, 258, 259, 0, -1, 1 << 24, (1 << 24) + 1, INT64_MAX}[below(&rng, 9)];
    sb_tokenizer tokenizer;
    sb_error err;
    if (sb_tokenizer_load_llama2c(path, vocab, &tokenizer, &err) != SB_OK) {
        SB_CHECK_MSG(err.message[0] && !strchr(err.message, '\n'), "%s case %d: bad error '%s'", case_kind, case_number,
                     err.message);
    } else {
        accepted_tok++;
        char text[64];
        size_t length = (size_t)below(&rng, sizeof text);
        for (size_t i = 0; i < length; i++)
            text[i] = "abcthe \xc3\xa9\xff\x80\x00<>"[below(&rng, 15)];
        uint32_t *ids;
        int64_t count;
        bool bos = below(&rng, 2);
        if (sb_tokenizer_encode(&tokenizer, text, length, bos, &ids, &count, &err) == SB_OK) {
            SB_CHECK_MSG(count >= 0 && count <= (int64_t)length + 2, "%s case %d: %lld ids for %zu bytes", case_kind,
                         case_number, (long long)count, length);
            int64_t previous = -1;
            for (int64_t i = 0; i < count; i++) {
                SB_CHECK_MSG(ids[i] < (uint64_t)vocab, "%s case %d: id %u outside the vocabulary", case_kind,
                             case_number, ids[i]);
                const char *piece;
                char byte[1];
                size_t piece_length = sb_tokenizer_piece(&tokenizer, previous, ids[i], &piece, byte);
                SB_CHECK(piece_length <= 65536 && piece);
                previous = ids[i];
            }
            free(ids);
        }
        for (int k = 0; k < 8; k++) {
            const char *piece;
            char byte[1];
            uint32_t id = below(&rng, 4) ? (uint32_t)below(&rng, (uint64_t)vocab + 2) : UINT32_MAX - (uint32_t)below(&rng, 3);
            size_t piece_length = sb_tokenizer_piece(&tokenizer, (int64_t)below(&rng, 3) - 1, id, &piece, byte);
            SB_CHECK(piece_length <= 65536 && piece);
        }
        sb_tokenizer_free(&tokenizer);
    }
    if (tools) {
        /* scalebits-generate end to end, on a Llama model of the tokenizer's vocabulary */
        char command[20000];
        sb_test_format(command, sizeof command, "'%s/scalebits-generate' --model '%s/llama-300' --tokenizer '%s' "
                       "--prompt 'the cat' --max-tokens 2", build, work, path);
        run_tool(command);
    }
}

/* ---- main ------------------------------------------------------------------------------------- */

static int env_int(const char *name, int fallback)
{
    const char *text = getenv(name);
    return text && *text ? atoi(text) : fallback;
}

static void start_case(const char *kind, int number)
{
    case_kind = kind;
    case_number = number;
    alarm(20);
}

int main(void)
{
    const char *seed_text = getenv("SB_FUZZ_SEED");
    if (seed_text && *seed_text)
        fuzz_seed = strtoull(seed_text, NULL, 10);
    int cases = env_int("SB_FUZZ_CASES", 1000);
    const char *only = getenv("SB_FUZZ_ONLY");
    const char *build_dir = getenv("SB_BUILD_DIR");
    sb_test_format(build, sizeof build, "%s", build_dir ? build_dir : "build");
    if (__sanitizer_set_death_callback)
        __sanitizer_set_death_callback(on_death);
    signal(SIGALRM, on_signal);
    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGFPE, on_signal);
    signal(SIGABRT, on_signal);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char *dir = sb_test_temp_dir("fuzz");
    sb_test_format(work, sizeof work, "%s", dir);
    printf("fuzz: seed %llu, %d cases of each kind (%d of .h5)\n", (unsigned long long)fuzz_seed, cases, cases * 2 / 5);
    double setup_start = sb_now();
    make_tiny_model();
    sb_checkpoint checkpoint;
    sb_error err;
    if (sb_checkpoint_open(model_dir, &checkpoint, &err) != SB_OK) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    /* tokens for eval and calibration (ids below every base model's vocabulary) */
    char command[20000], q8[4400], f16[4400], moe[4400], tokens[4400];
    sb_test_format(tokens, sizeof tokens, "%s/tokens.u32", work);
    uint32_t ids[64];
    for (int i = 0; i < 64; i++)
        ids[i] = (uint32_t)(i * 7 % 32);
    write_text(tokens, (const char *)ids, sizeof ids);
    /* the base files: the tiny model quantized in both scale encodings; a generated FP8
     * Qwen3-MoE (2 layers, layer 0 dense, 4 experts of FFN 16, top-2, head_dim 16, 8x8 FP8
     * blocks, the tokenizer's vocabulary) quantized with a little calibration, so that its file
     * has expert stacks and /calibration/tokens_per_expert; a Llama of that vocabulary for
     * scalebits-generate --tokenizer */
    sb_test_format(q8, sizeof q8, "%s/base-q8.h5", work);
    sb_test_format(f16, sizeof f16, "%s/base-f16.h5", work);
    sb_test_format(moe, sizeof moe, "%s/base-moe.h5", work);
    sb_test_format(moe_dir, sizeof moe_dir, "%s/moe", work);
    sb_test_format(command, sizeof command,
                   "'%s/scalebits-mpi' --model '%s' --budget 6 --tile 8x8 --group 8 --bits 2,4,8 --out '%s' --quiet && "
                   "'%s/scalebits-mpi' --model '%s' --budget 8 --tile 8x16 --group 8 --scales f16 --quantize-embeddings "
                   "--out '%s' --quiet && "
                   "'%s/bench/bench-gen-checkpoint' --out '%s' --arch qwen3-moe --small --hidden 32 --intermediate 40 "
                   "--vocab %d --heads 2 --kv-heads 1 --head-dim 16 --experts 4 --experts-per-tok 2 --moe-intermediate 16 "
                   "--layers 2 --fp8 --fp8-block 8x8 > /dev/null && "
                   "'%s/scalebits-mpi' --model '%s' --budget 5 --tile 8x16 --group 8 --bits 2,4,8 --sensitivity fisher --calib '%s' "
                   "--calib-ctx 16 --calib-windows 2 --out '%s' --quiet && "
                   "'%s/bench/bench-gen-checkpoint' --out '%s/llama-300' --arch llama --small --hidden 32 "
                   "--intermediate 40 --vocab %d --heads 2 --kv-heads 1 --layers 1 > /dev/null",
                   build, model_dir, q8, build, model_dir, f16, build, moe_dir, TOK_VOCAB, build, moe_dir, tokens, moe,
                   build, work, TOK_VOCAB);
    if (system(command) != 0) {
        fprintf(stderr, "cannot make the base files: %s\n", command);
        return 1;
    }
    char moe_config_path[4400];
    sb_test_format(moe_config_path, sizeof moe_config_path, "%s/config.json", moe_dir);
    moe_config = sb_test_read_text(moe_config_path);
    tok_base = sb_test_tokenizer_bytes(&tok_base_size, tok_score_at);
    static base_file bases[3];
    load_base(&bases[0], q8);
    load_base(&bases[1], f16);
    load_base(&bases[2], moe);
    printf("fuzz: base files made in %.1f s\n", sb_now() - setup_start);
    double start = sb_now();
    int ran = 0;
    if (only && *only) {
        const char *colon = strchr(only, ':');
        int number = colon ? atoi(colon + 1) : 0;
        if (strncmp(only, "st:", 3) == 0) {
            start_case("st", number);
            safetensors_case(number);
        } else if (strncmp(only, "config:", 7) == 0) {
            start_case("config", number);
            config_case(number, &checkpoint);
        } else if (strncmp(only, "moe:", 4) == 0) {
            start_case("moe", number);
            moe_config_case(number);
        } else if (strncmp(only, "tok:", 4) == 0) {
            start_case("tok", number);
            tokenizer_case(number, true);
        } else {
            start_case("h5", number);
            h5_case(number, bases, true);
        }
        ran = 1;
    } else {
        /* fewer .h5 cases (each reads, dequantizes, packs and runs a model; 4 tool runs):
         * the whole run stays within about 2 minutes under the sanitizers on a loaded 2-core
         * machine */
        int quick = cases, slow = cases * 2 / 5;
        double kind_start = sb_now();
        for (int i = 0; i < quick; i++, ran++) {
            start_case("st", i);
            safetensors_case(i);
        }
        printf("fuzz: st %.1f s", sb_now() - kind_start);
        kind_start = sb_now();
        for (int i = 0; i < quick; i++, ran++) {
            start_case("config", i);
            config_case(i, &checkpoint);
        }
        printf(", config %.1f s", sb_now() - kind_start);
        kind_start = sb_now();
        for (int i = 0; i < quick; i++, ran++) {
            start_case("moe", i);
            moe_config_case(i);
        }
        printf(", moe %.1f s", sb_now() - kind_start);
        kind_start = sb_now();
        for (int i = 0; i < quick; i++, ran++) {
            start_case("tok", i);
            tokenizer_case(i, i % 250 == 0);
        }
        printf(", tok %.1f s", sb_now() - kind_start);
        kind_start = sb_now();
        for (int i = 0; i < slow; i++, ran++) {
            start_case("h5", i);
            h5_case(i, bases, i % 100 == 0);
        }
        printf(", h5 %.1f s\n", sb_now() - kind_start);
    }
    alarm(0);
    case_kind = "teardown";
    printf("fuzz: %d cases in %.1f s (seed %llu); accepted: %d safetensors, %d config.json, %d qwen3_moe config.json, "
           "%d tokenizers, %d .h5 (%d of them loaded as a model, %d as a packed model, %d running a window, %d decoding "
           "tokens)\n", ran, sb_now() - start, (unsigned long long)fuzz_seed, accepted_st, accepted_config, accepted_moe,
           accepted_tok, accepted_h5, loaded_h5, packed_h5, forwarded_h5, decoded_h5);
    if (sb_test_failures)
        printf("fuzz: a failing case reruns alone with SB_FUZZ_SEED=%llu SB_FUZZ_ONLY=<kind>:<case> (see above)\n",
               (unsigned long long)fuzz_seed);
    for (int b = 0; b < 3; b++)
        free(bases[b].bytes);
    free(moe_config);
    free(tok_base);
    free(base_header);
    free(base_data);
    sb_checkpoint_close(&checkpoint);
    sb_test_remove_tree(work);
    free(dir);
    return sb_test_finish("test_fuzz");
}
