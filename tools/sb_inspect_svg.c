#include "sb_inspect_svg.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sb_atomic.h"
#include "sb_tensor_name.h"

/* Viridis at eight evenly spaced points: perceptually ordered (more bits = lighter), readable in
 * grey scale and by the common colour-vision deficiencies. */
static const unsigned char VIRIDIS[8][3] = {
    {0x44, 0x01, 0x54}, {0x46, 0x32, 0x7e}, {0x36, 0x5c, 0x8d}, {0x27, 0x7f, 0x8e},
    {0x1f, 0xa1, 0x87}, {0x4a, 0xc1, 0x6d}, {0xa0, 0xda, 0x39}, {0xfd, 0xe7, 0x25},
};

/* Where a (possibly fractional) bitwidth sits on the colour scale, 0..1. The scale is spread
 * over the bitwidths the file uses, evenly by rank, not by value: with {2,3,4,8} the three
 * bitwidths that most tiles get would otherwise share the dark third of the palette and look
 * alike. A mean between two bitwidths sits proportionally between their positions. */
static double colour_position(const sb_file_summary *summary, double bits)
{
    const int *levels = summary->columns;
    int count = summary->ncolumns;
    if (count < 2)
        return 0.5;
    if (bits <= levels[0])
        return 0;
    for (int k = 1; k < count; k++)
        if (bits <= levels[k])
            return (k - 1 + (bits - levels[k - 1]) / (double)(levels[k] - levels[k - 1])) / (count - 1);
    return 1;
}

static void palette_colour(double position, int rgb[3])
{
    double scaled = fmin(fmax(position, 0), 1) * 7;
    int low = (int)floor(scaled), high = low < 7 ? low + 1 : 7;
    double t = scaled - low;
    for (int k = 0; k < 3; k++)
        rgb[k] = (int)lround(VIRIDIS[low][k] * (1 - t) + VIRIDIS[high][k] * t);
}

static void bits_colour(const sb_file_summary *summary, double bits, char out[8])
{
    int rgb[3];
    palette_colour(colour_position(summary, bits), rgb);
    snprintf(out, 8, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

/* Black or white text, whichever reads better on the colour of `bits`. */
static const char *text_colour(const sb_file_summary *summary, double bits)
{
    int rgb[3];
    palette_colour(colour_position(summary, bits), rgb);
    double luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2];
    return luminance > 128 ? "#000" : "#fff";
}

static void svg_escaped(FILE *out, const char *text)
{
    for (; *text; text++) {
        switch (*text) {
        case '&': fputs("&amp;", out); break;
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '"': fputs("&quot;", out); break;
        default: fputc(*text, out); break;
        }
    }
}

static const char SVG_FONT[] = "DejaVu Sans, Helvetica, Arial, sans-serif";

static void svg_begin(FILE *out, double width, double height, const char *title)
{
    fprintf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"%s\">\n",
            width, height, width, height, SVG_FONT);
    fprintf(out, "<title>");
    svg_escaped(out, title);
    fprintf(out, "</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
}

/* Rough text width at `size` px for layout (DejaVu Sans averages about 0.6 em per character). */
static double text_width(const char *text, double size) { return (double)strlen(text) * size * 0.6; }

/* The layout scale shared by every layer picture, so that all are drawn to the same scale:
 * the largest matrix side spans about 420 px, but a tile side is never under 3 px (then the
 * picture grows instead: it is vector graphics, zoom in) nor a weight above 4 px. */
static double svg_scale(const sb_file_summary *summary)
{
    int64_t largest = 1, smallest_tile = 1 << 30;
    for (int i = 0; i < summary->ntensors; i++) {
        const sb_h5_quantized *tensor = summary->tensors[i].tensor;
        largest = tensor->rows > largest ? tensor->rows : largest;
        largest = tensor->cols > largest ? tensor->cols : largest;
        int tile_side = tensor->tile_rows < tensor->tile_cols ? tensor->tile_rows : tensor->tile_cols;
        smallest_tile = tile_side < smallest_tile ? tile_side : smallest_tile;
    }
    double scale = 420.0 / (double)largest;
    if (scale * (double)smallest_tile < 3)
        scale = 3.0 / (double)smallest_tile;
    return scale < 4 ? scale : 4;
}

typedef struct panel {
    const sb_tensor_summary *entry;
    double x, y;          /* top-left of the panel (its title) */
    double width, height; /* whole panel */
    double matrix_x, matrix_y, matrix_width, matrix_height;
} panel;

enum { PANEL_TITLE_HEIGHT = 54, PANEL_GAP = 28, MARGIN = 24, HEADER_HEIGHT = 96 };

/* A panel's three text lines: the kind in bold, its bits, its shape and tiles. Short lines, so
 * that panels sit close to their matrices instead of being spread apart by long captions. */
static void panel_lines(const sb_tensor_summary *entry, char lines[3][128])
{
    const sb_h5_quantized *tensor = entry->tensor;
    snprintf(lines[0], 128, "%s", tensor->role);
    snprintf(lines[1], 128, "mean %.2f bits · %.3f stored bpw", entry->mean_bits, entry->stored_bpw);
    snprintf(lines[2], 128, "%lld out × %lld in · %lld tile%s", (long long)tensor->rows, (long long)tensor->cols,
             (long long)tensor->tiles, tensor->tiles == 1 ? "" : "s");
}

static void panel_size(panel *p, double scale)
{
    char lines[3][128];
    panel_lines(p->entry, lines);
    p->matrix_width = (double)p->entry->tensor->cols * scale;
    p->matrix_height = (double)p->entry->tensor->rows * scale;
    double text = fmax(text_width(lines[0], 14), fmax(text_width(lines[1], 11), text_width(lines[2], 11)));
    p->width = fmax(p->matrix_width, text);
    p->height = PANEL_TITLE_HEIGHT + p->matrix_height;
}

/* One matrix: tiles coloured by bitwidth, runs of equal tiles along a tile row merged into one
 * rectangle (the reordering clusters bitwidths, so this keeps huge models' pictures small),
 * each with a tooltip; tile grid lines and bit labels when the tiles are large enough to see. */
static void svg_panel(FILE *out, const sb_file_summary *summary, const panel *p, double scale)
{
    const sb_h5_quantized *tensor = p->entry->tensor;
    const sb_tiling *tiling = &tensor->tiling;
    char lines[3][128], colour[8];
    panel_lines(p->entry, lines);
    fprintf(out, "<g>\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">", p->x,
            p->y + 14);
    svg_escaped(out, lines[0]);
    fprintf(out, "</text>\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"#333\">", p->x, p->y + 29);
    svg_escaped(out, lines[1]);
    fprintf(out, "</text>\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"#666\">", p->x, p->y + 43);
    svg_escaped(out, lines[2]);
    fprintf(out, "</text>\n<g transform=\"translate(%.2f,%.2f)\">\n", p->matrix_x, p->matrix_y);
    fprintf(out, "<title>");
    svg_escaped(out, tensor->name);
    fprintf(out, "</title>\n");
    for (int64_t tile_row = 0; tile_row < tiling->tiles_down; tile_row++) {
        int64_t run_start = 0;
        for (int64_t tile_col = 1; tile_col <= tiling->tiles_across; tile_col++) {
            int64_t first = tile_row * tiling->tiles_across + run_start;
            bool run_ends = tile_col == tiling->tiles_across ||
                            tensor->bits_per_tile[tile_row * tiling->tiles_across + tile_col] !=
                                tensor->bits_per_tile[first];
            if (!run_ends)
                continue;
            int64_t last = tile_row * tiling->tiles_across + tile_col - 1;
            sb_tile_rect a = sb_tiling_rect(tiling, first), b = sb_tiling_rect(tiling, last);
            int bits = tensor->bits_per_tile[first];
            bits_colour(summary, bits, colour);
            fprintf(out,
                    "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"><title>%d bits: rows "
                    "%lld-%lld, columns %lld-%lld (tile%s %lld",
                    (double)a.col0 * scale, (double)a.row0 * scale, (double)(b.col0 + b.cols - a.col0) * scale,
                    (double)a.rows * scale, colour, bits, (long long)a.row0, (long long)(a.row0 + a.rows - 1),
                    (long long)a.col0, (long long)(b.col0 + b.cols - 1), first == last ? "" : "s", (long long)first);
            if (last != first)
                fprintf(out, "-%lld", (long long)last);
            fprintf(out, ")</title></rect>\n");
            run_start = tile_col;
        }
    }
    double tile_width = tiling->tile_cols * scale, tile_height = tiling->tile_rows * scale;
    if (tile_width >= 4 && tile_height >= 4 && tensor->tiles > 1) {
        /* white grid lines between tiles: the hardware tile boundaries */
        fprintf(out, "<path fill=\"none\" stroke=\"#ffffff\" stroke-opacity=\"0.8\" stroke-width=\"%.1f\" d=\"",
                tile_width >= 12 && tile_height >= 12 ? 1.0 : 0.5);
        for (int64_t c = 1; c < tiling->tiles_across; c++)
            fprintf(out, "M%.2f 0V%.2f", (double)c * tile_width, p->matrix_height);
        for (int64_t r = 1; r < tiling->tiles_down; r++)
            fprintf(out, "M0 %.2fH%.2f", (double)r * tile_height, p->matrix_width);
        fprintf(out, "\"/>\n");
    }
    if (tile_width >= 18 && tile_height >= 16) {
        double font = fmin(14, fmin(tile_height * 0.45, tile_width * 0.5));
        for (int64_t t = 0; t < tensor->tiles; t++) {
            sb_tile_rect rect = sb_tiling_rect(tiling, t);
            if (rect.cols * scale < 12 || rect.rows * scale < 12)
                continue; /* a ragged sliver: no room for a label */
            int bits = tensor->bits_per_tile[t];
            fprintf(out,
                    "<text x=\"%.2f\" y=\"%.2f\" font-size=\"%.1f\" text-anchor=\"middle\" dominant-baseline=\"central\" "
                    "fill=\"%s\" pointer-events=\"none\">%d</text>\n",
                    ((double)rect.col0 + rect.cols / 2.0) * scale, ((double)rect.row0 + rect.rows / 2.0) * scale,
                    fmin(font, fmin(rect.cols * scale, rect.rows * scale) * 0.6), text_colour(summary, bits), bits);
        }
    }
    fprintf(out, "<rect width=\"%.2f\" height=\"%.2f\" fill=\"none\" stroke=\"#333\" stroke-width=\"1\"/>\n",
            p->matrix_width, p->matrix_height);
    fprintf(out, "</g>\n</g>\n");
}

/* Legend: one swatch per bitwidth shown, with this picture's tile count. Returns the x where
 * it ends; with out == NULL it only measures. */
static double svg_legend(FILE *out, const sb_file_summary *summary, const sb_bit_histogram *histogram, double x, double y)
{
    if (out)
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#333\">bits per weight in the tile:</text>\n",
                x, y + 12);
    x += 170;
    for (int k = 0; k < summary->ncolumns; k++) {
        int bits = summary->columns[k];
        char colour[8], label[64];
        bits_colour(summary, bits, colour);
        snprintf(label, sizeof label, "%d bits (%lld tile%s)", bits, (long long)histogram->tiles[bits],
                 histogram->tiles[bits] == 1 ? "" : "s");
        if (out) {
            fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"16\" fill=\"%s\" stroke=\"#333\" "
                         "stroke-width=\"0.5\"/>\n",
                    x, y, colour);
            fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#333\">%s</text>\n", x + 21, y + 12,
                    label);
        }
        x += 21 + text_width(label, 12) + 16;
    }
    return x;
}

static const char *file_base(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Writes `text` of `size` bytes to dir/name atomically. */
static sb_status svg_commit(const char *dir, const char *name, char *text, size_t size, sb_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return sb_atomic_write_file(path, text, size, err);
}

/* Which row of a layer picture a matrix goes to: attention, MLP, anything else. */
/* Panels are drawn in rows: attention (q, k, v, o), MLP (gate, up, down), the rest. */
static int panel_row(const char *role)
{
    sb_tensor_role parsed;
    if (!sb_role_parse(role, &parsed) || !sb_role_is_linear(parsed))
        return 2;
    return parsed <= SB_ROLE_O ? 0 : 1;
}

/* The picture of one layer (or of the tensors outside the layers). */
static sb_status svg_layer(const sb_file_summary *summary, const sb_layer_summary *layer, double scale, const char *dir,
                           const char *name, sb_error *err)
{
    const sb_h5_root *root = &summary->reader->root;
    panel *panels = sb_calloc((size_t)layer->count, sizeof *panels, "SVG layout", err);
    if (!panels)
        return SB_ERR_NOMEM;
    /* rows of panels: attention (q, k, v, o), MLP (gate, up, down), anything else */
    double y = HEADER_HEIGHT, width = 0;
    for (int row = 0; row < 3; row++) {
        double x = MARGIN, row_height = 0;
        for (int i = 0; i < layer->count; i++) {
            const sb_tensor_summary *entry = &summary->tensors[summary->by_layer[layer->first + i]];
            if (panel_row(entry->tensor->role) != row)
                continue;
            panel *p = &panels[i];
            p->entry = entry;
            panel_size(p, scale);
            p->x = x;
            p->y = y;
            p->matrix_x = x;
            p->matrix_y = y + PANEL_TITLE_HEIGHT;
            x += p->width + PANEL_GAP;
            row_height = fmax(row_height, p->height);
        }
        if (row_height > 0) {
            width = fmax(width, x - PANEL_GAP + MARGIN);
            y += row_height + PANEL_GAP;
        }
    }
    char title[512], subtitle[1024], layer_name[64];
    if (layer->layer >= 0)
        snprintf(layer_name, sizeof layer_name, "layer %lld", (long long)layer->layer);
    else
        snprintf(layer_name, sizeof layer_name, "tensors outside the decoder layers");
    snprintf(title, sizeof title, "%s: mean %.3f bits per weight (codes), %.3f stored bpw", layer_name,
             layer->mean_bits, layer->stored_bpw);
    snprintf(subtitle, sizeof subtitle,
             "%s · file %.4f bpw (budget %g) · to scale: rows = output channels, columns = input channels",
             file_base(summary->reader->path), root->achieved_bpw, root->budget_bpw);
    width = fmax(width, MARGIN + fmax(text_width(title, 18), text_width(subtitle, 12)) + MARGIN);
    width = fmax(width, 700);
    width = fmax(width, svg_legend(NULL, summary, &layer->histogram, MARGIN, 0) + MARGIN);
    double height = y - PANEL_GAP + MARGIN;
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (!out) {
        free(panels);
        return sb_error_set(err, SB_ERR_NOMEM, "cannot build %s", name);
    }
    svg_begin(out, width, height, title);
    fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"18\" font-weight=\"bold\" fill=\"#111\">", MARGIN, MARGIN + 10);
    svg_escaped(out, title);
    fprintf(out, "</text>\n<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#555\">", MARGIN, MARGIN + 30);
    svg_escaped(out, subtitle);
    fprintf(out, "</text>\n");
    svg_legend(out, summary, &layer->histogram, MARGIN, MARGIN + 42);
    for (int i = 0; i < layer->count; i++)
        if (panels[i].entry)
            svg_panel(out, summary, &panels[i], scale);
    fprintf(out, "</svg>\n");
    fclose(out);
    free(panels);
    sb_status status = svg_commit(dir, name, text, size, err);
    free(text);
    return status;
}

/* Mean bits per tensor kind (columns) and layer (rows), as a coloured table with the numbers. */
static sb_status svg_overview(const sb_file_summary *summary, const char *dir, sb_error *err)
{
    enum { KINDS = SB_LINEAR_ROLES, CELL_WIDTH = 76, CELL_HEIGHT = 26, LABEL_WIDTH = 84 };
    const sb_h5_root *root = &summary->reader->root;
    int decoder_layers = 0, outside = 0;
    for (int l = 0; l < summary->nlayers; l++) {
        decoder_layers += summary->layers[l].layer >= 0;
        outside += summary->layers[l].layer < 0 ? summary->layers[l].count : 0;
    }
    double table_x = MARGIN + LABEL_WIDTH, table_y = HEADER_HEIGHT + 28;
    double width = table_x + (KINDS + 1) * CELL_WIDTH + MARGIN;
    double height = table_y + decoder_layers * CELL_HEIGHT + 80 + 16 * outside;
    char title[256], subtitle[1024];
    snprintf(title, sizeof title, "Mean bits per weight by tensor kind and layer");
    snprintf(subtitle, sizeof subtitle, "%s · %.4f bpw stored (budget %g) · %.3f code bits per weight overall",
             file_base(summary->reader->path), root->achieved_bpw, root->budget_bpw,
             sb_histogram_mean_bits(&summary->histogram, root->quantized_weights));
    width = fmax(width, MARGIN + fmax(text_width(title, 18), text_width(subtitle, 12)) + MARGIN);
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (!out)
        return sb_error_set(err, SB_ERR_NOMEM, "cannot build overview.svg");
    svg_begin(out, width, height, title);
    fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"18\" font-weight=\"bold\" fill=\"#111\">", MARGIN, MARGIN + 10);
    svg_escaped(out, title);
    fprintf(out, "</text>\n<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#555\">", MARGIN, MARGIN + 30);
    svg_escaped(out, subtitle);
    fprintf(out, "</text>\n");
    fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#555\">cells: code bits per weight of a matrix; "
                 "last column: the whole layer</text>\n",
            MARGIN, MARGIN + 48);
    for (int k = 0; k <= KINDS; k++)
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" font-weight=\"bold\" text-anchor=\"middle\" "
                     "fill=\"#222\">%s</text>\n",
                table_x + k * CELL_WIDTH + CELL_WIDTH / 2.0, table_y - 8, k < KINDS ? sb_role_name((sb_tensor_role)k) : "layer");
    int row = 0;
    for (int l = 0; l < summary->nlayers; l++) {
        const sb_layer_summary *layer = &summary->layers[l];
        if (layer->layer < 0)
            continue;
        double y = table_y + row * CELL_HEIGHT;
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\" dominant-baseline=\"central\" "
                     "fill=\"#222\">layer %lld</text>\n",
                table_x - 8, y + CELL_HEIGHT / 2.0, (long long)layer->layer);
        for (int k = 0; k <= KINDS; k++) {
            double x = table_x + k * CELL_WIDTH;
            const sb_tensor_summary *entry = NULL;
            for (int i = 0; i < layer->count && k < KINDS; i++)
                if (strcmp(summary->tensors[summary->by_layer[layer->first + i]].tensor->role, sb_role_name((sb_tensor_role)k)) == 0)
                    entry = &summary->tensors[summary->by_layer[layer->first + i]];
            if (k < KINDS && !entry) {
                fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"#eeeeee\" stroke=\"#fff\"/>"
                             "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\" "
                             "dominant-baseline=\"central\" fill=\"#888\">not quantized</text>\n",
                        x, y, CELL_WIDTH, CELL_HEIGHT, x + CELL_WIDTH / 2.0, y + CELL_HEIGHT / 2.0);
                continue;
            }
            double bits = entry ? entry->mean_bits : layer->mean_bits;
            char colour[8];
            bits_colour(summary, bits, colour);
            fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"#fff\" "
                         "stroke-width=\"%d\"><title>",
                    x, y, CELL_WIDTH, CELL_HEIGHT, colour, k < KINDS ? 1 : 3);
            svg_escaped(out, entry ? entry->tensor->name : "whole layer");
            fprintf(out, ": %.3f bits per weight</title></rect>\n", bits);
            fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\" "
                         "dominant-baseline=\"central\" fill=\"%s\" pointer-events=\"none\"%s>%.2f</text>\n",
                    x + CELL_WIDTH / 2.0, y + CELL_HEIGHT / 2.0, text_colour(summary, bits),
                    k < KINDS ? "" : " font-weight=\"bold\"", bits);
        }
        row++;
    }
    /* colour scale: the bitwidths in use at their (rank-spaced) positions, blended between */
    double y = table_y + decoder_layers * CELL_HEIGHT + 24;
    double bar_width = (KINDS + 1) * CELL_WIDTH;
    fprintf(out, "<defs><linearGradient id=\"bits\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">\n");
    for (int step = 0; step <= 28; step++) {
        int rgb[3];
        palette_colour(step / 28.0, rgb);
        fprintf(out, "<stop offset=\"%.3f\" stop-color=\"#%02x%02x%02x\"/>\n", step / 28.0, rgb[0], rgb[1], rgb[2]);
    }
    fprintf(out, "</linearGradient></defs>\n");
    fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\" fill=\"#222\">bits</text>\n",
            table_x - 8, y + 12);
    fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"16\" fill=\"url(#bits)\" stroke=\"#333\" "
                 "stroke-width=\"0.5\"/>\n",
            table_x, y, bar_width);
    for (int k = 0; k < summary->ncolumns; k++) {
        int bits = summary->columns[k];
        double x = table_x + bar_width * colour_position(summary, bits);
        fprintf(out, "<path d=\"M%.1f %.1fV%.1f\" stroke=\"#333\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" "
                     "text-anchor=\"middle\" fill=\"#222\">%d</text>\n",
                x, y + 16, y + 21, x, y + 33, bits);
    }
    /* tensors outside the layers (a quantized embedding or lm_head): listed under the table */
    y += 56;
    for (int l = 0; l < summary->nlayers; l++) {
        const sb_layer_summary *layer = &summary->layers[l];
        if (layer->layer >= 0)
            continue;
        for (int i = 0; i < layer->count; i++) {
            const sb_tensor_summary *entry = &summary->tensors[summary->by_layer[layer->first + i]];
            fprintf(out, "<text x=\"%d\" y=\"%.1f\" font-size=\"12\" fill=\"#222\">", MARGIN, y);
            svg_escaped(out, entry->tensor->name);
            fprintf(out, ": %.3f bits per weight</text>\n", entry->mean_bits);
            y += 16;
        }
    }
    fprintf(out, "</svg>\n");
    fclose(out);
    sb_status status = svg_commit(dir, "overview.svg", text, size, err);
    free(text);
    return status;
}

sb_status sb_inspect_write_svgs(const sb_file_summary *summary, const char *dir, sb_error *err)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return sb_error_set(err, SB_ERR_IO, "--svg %s: cannot create the directory: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return sb_error_set(err, SB_ERR_IO, "--svg %s: not a directory", dir);
    double scale = svg_scale(summary);
    int64_t max_layer = 0;
    for (int l = 0; l < summary->nlayers; l++)
        max_layer = summary->layers[l].layer > max_layer ? summary->layers[l].layer : max_layer;
    /* zero-padded to the widest layer number, at least two digits, so names sort in order */
    int digits = 2;
    for (int64_t limit = 100; max_layer >= limit; limit *= 10)
        digits++;
    for (int l = 0; l < summary->nlayers; l++) {
        const sb_layer_summary *layer = &summary->layers[l];
        char name[64];
        if (layer->layer >= 0)
            snprintf(name, sizeof name, "layer-%0*lld.svg", digits, (long long)layer->layer);
        else
            snprintf(name, sizeof name, "outside-layers.svg");
        SB_TRY(svg_layer(summary, layer, scale, dir, name, err));
    }
    return svg_overview(summary, dir, err);
}
