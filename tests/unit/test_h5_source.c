/* A scalebits file as the runtime's weight source (io/sb_h5_source.h).
 *
 * The embedded model quantized with every tile at 8 bits (groups of 32), in each scale encoding
 * (the default affine-q8, and affine-f16), runs from the file alone (config from its
 * config_json attribute, weights dequantized or passed through) at the FP perplexity of
 * ../shared/reference.md within 0.1%: 3.3824 over the first 200 windows of 256 bytes of
 * heldout.txt (the reference's own RTN 8-bit g32 gives 3.3825). Pass-through tensors arrive bit
 * for bit; a missing tensor or a wrong shape is an error naming the file and tensor.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_config.h"
#include "sb_h5_source.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_safetensors.h"
#include "sb_test.h"
#include "sb_tokens.h"

/* reference.md, tiny-austen-kjv, FP (BF16 weights, float32 math), first 200 windows of 256 */
static const double REFERENCE_FP_PERPLEXITY = 3.3824;

static double perplexity(const sb_model *model, const sb_tokens *tokens)
{
    sb_error err;
    sb_window_range range;
    sb_model_workspace *workspace = NULL;
    sb_nll nll = {0, 0};
    if (sb_tokens_windows(tokens, 256, 200, false, &range, &err) != SB_OK ||
        sb_model_workspace_create(&model->shape, 256, 16, 1, false, &workspace, &err) != SB_OK ||
        sb_model_forward(model, range.tokens, range.n_windows, 256, workspace, NULL, NULL, &nll, &err) != SB_OK) {
        fprintf(stderr, "forward: %s\n", err.message);
        sb_model_workspace_free(workspace);
        return NAN;
    }
    sb_model_workspace_free(workspace);
    return exp(nll.sum / (double)nll.count);
}

/* Quantizes the embedded model at 8 bits with `scales` ("" for the default) into `path`, which
 * must then hold `format`; runs it from the file. Returns false if the file cannot be had. */
static bool check_encoding(const char *build, const char *model_dir, const char *text_path, const char *path,
                           const char *scales, sb_scale_format format)
{
    char command[16000];
    sb_test_format(command, sizeof command, "'%s/scalebits-mpi' --bits 8 --budget 16 --group 32%s%s --out '%s' --quiet", build,
             scales[0] ? " --scales " : "", scales, path);
    if (system(command) != 0) {
        fprintf(stderr, "failed: %s\n", command);
        return false;
    }
    const char *encoding = sb_scale_format_name(format);
    sb_error err;
    sb_h5_reader reader;
    sb_model_config config, source_config;
    sb_status status = sb_h5_reader_open(path, &reader, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    if (status != SB_OK)
        return false;
    bool all_in_format = reader.nquantized > 0;
    for (int i = 0; i < reader.nquantized; i++)
        all_in_format &= reader.quantized[i].format == format;
    SB_CHECK_MSG(all_in_format, "every tensor of %s is %s", path, encoding);
    SB_CHECK(sb_h5_reader_config(&reader, &config, &err) == SB_OK);
    SB_CHECK(sb_config_load(model_dir, &source_config, &err) == SB_OK);
    SB_CHECK(memcmp(&config.shape, &source_config.shape, sizeof config.shape) == 0);
    SB_CHECK(strcmp(config.json_text, source_config.json_text) == 0);

    sb_model model, fp;
    sb_checkpoint checkpoint;
    status = sb_model_load_h5(&config.shape, &reader, &model, &err);
    SB_CHECK_MSG(status == SB_OK, "load from the file: %s", err.message);
    SB_CHECK(sb_checkpoint_open(model_dir, &checkpoint, &err) == SB_OK);
    SB_CHECK(sb_model_load_checkpoint(&source_config.shape, &checkpoint, &fp, &err) == SB_OK);
    if (status == SB_OK) {
        const sb_model_shape *shape = &config.shape;
        size_t embed_bytes = (size_t)(shape->vocab_size * shape->hidden_size) * sizeof(float);
        SB_CHECK_MSG(memcmp(model.embed, fp.embed, embed_bytes) == 0, "pass-through embedding is bit exact");
        SB_CHECK(memcmp(model.final_norm, fp.final_norm, (size_t)shape->hidden_size * sizeof(float)) == 0);
        SB_CHECK(memcmp(model.layers[2].attn_norm, fp.layers[2].attn_norm, (size_t)shape->hidden_size * 4) == 0);
        double worst = 0;
        for (int64_t i = 0; i < shape->intermediate_size * shape->hidden_size; i++)
            worst = fmax(worst, fabs((double)sb_layer_linear(&model.layers[1], SB_LINEAR_GATE)[i] - sb_layer_linear(&fp.layers[1], SB_LINEAR_GATE)[i]));
        printf("%s, layer 1 gate: max |dequantized - source| = %.3g\n", encoding, worst);
        SB_CHECK_MSG(worst > 0 && worst < 0.01, "%s: layer 1 gate max error %.3g", encoding, worst);

        sb_tokens tokens;
        SB_CHECK(sb_tokens_read_bytes(text_path, shape->vocab_size, &tokens, &err) == SB_OK);
        double quantized = perplexity(&model, &tokens);
        printf("all 8-bit %s from %s: perplexity %.4f (FP reference %.4f, %+.3f%%)\n", encoding, path, quantized,
               REFERENCE_FP_PERPLEXITY, 100 * (quantized / REFERENCE_FP_PERPLEXITY - 1));
        SB_CHECK_MSG(fabs(quantized / REFERENCE_FP_PERPLEXITY - 1) < 0.001, "%s: 8-bit perplexity %.4f vs FP %.4f",
                     encoding, quantized, REFERENCE_FP_PERPLEXITY);
        sb_tokens_free(&tokens);
        sb_model_free(&model);
    }
    sb_model_free(&fp);
    sb_checkpoint_close(&checkpoint);

    /* errors name the file and the tensor */
    sb_h5_source source = {.reader = &reader};
    float buffer[128 * 128];
    status = sb_h5_fetch(&source, "model.layers.9.mlp.up_proj.weight", 352, 128, buffer, &err);
    SB_CHECK(status == SB_ERR_INPUT && strstr(err.message, path) && strstr(err.message, "layers.9.mlp.up_proj") &&
             strstr(err.message, "missing"));
    status = sb_h5_fetch(&source, "model.layers.0.self_attn.k_proj.weight", 128, 128, buffer, &err);
    SB_CHECK_MSG(status == SB_ERR_INPUT && strstr(err.message, "[64, 128]") && strstr(err.message, "[128, 128]"),
                 "%s", err.message);
    status = sb_h5_fetch(&source, "model.norm.weight", 1, 64, buffer, &err);
    SB_CHECK_MSG(status == SB_ERR_INPUT && strstr(err.message, "model.norm.weight"), "%s", err.message);

    sb_config_free(&config);
    sb_config_free(&source_config);
    sb_h5_reader_close(&reader);
    return true;
}

int main(void)
{
    const char *build_dir = getenv("SB_BUILD_DIR");
    char build[4096], model_dir[4200], text_path[4300], path[4200];
    sb_test_format(build, sizeof build, "%s", build_dir ? build_dir : "build");
    sb_test_format(model_dir, sizeof model_dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    sb_test_format(text_path, sizeof text_path, "%s/heldout.txt", model_dir);
    char *work = sb_test_temp_dir("h5-source");
    sb_test_format(path, sizeof path, "%s/all8-q8.h5", work);
    bool ran = check_encoding(build, model_dir, text_path, path, "", SB_SCALES_Q8); /* the default */
    sb_test_format(path, sizeof path, "%s/all8-f16.h5", work);
    ran &= check_encoding(build, model_dir, text_path, path, "f16", SB_SCALES_F16);
    int result = sb_test_finish("test_h5_source");
    sb_test_remove_tree(work);
    free(work);
    return ran ? result : 1;
}
