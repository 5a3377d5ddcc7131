#!/usr/bin/env python3
"""Quality table and plot from bench/quality.sh's CSV: perplexity against stored bits per
weight, one line per sensitivity, uniform precision as points, llama.cpp's figures for
austen-256 (../shared/reference.md). Standard library only: the SVG is written by hand.

usage: plot_quality.py DATA.csv OUT.svg NAME [austen|qwen3-moe]   (prints the markdown table)
"""
import csv
import math
import sys

# llama.cpp on austen-256 (../shared/reference.md): bits per linear weight, perplexity
LLAMA_CPP = [("IQ2_XS", 2.360, 3.6335), ("IQ2_S", 2.458, 3.6267), ("IQ2_M", 2.681, 3.6144),
             ("Q2_K", 2.948, 3.6251), ("IQ3_XXS", 3.072, 3.6042), ("Q3_K_S", 3.438, 3.5872),
             ("IQ3_S", 3.461, 3.5830), ("IQ3_M", 3.553, 3.5801), ("Q3_K_M", 3.837, 3.5818),
             ("IQ4_XS", 4.277, 3.5757), ("Q4_K_S", 4.515, 3.5748)]
# qwen3-moe-tiny (../shared/reference.md): round-to-nearest min-max on all 91 linear tensors, F16
# scale and zero per group (groups of 64, then of 128): bits per weight, perplexity
REFERENCE_RTN = [("RTN 2-bit g64", 2.5, 4.4870), ("RTN 3-bit g64", 3.5, 3.6724), ("RTN 4-bit g64", 4.5, 3.5755),
                 ("RTN 2-bit g128", 2.25, 4.7658), ("RTN 3-bit g128", 3.25, 3.6809), ("RTN 4-bit g128", 4.25, 3.5819)]
COLOURS = {"mse": "#7f7f7f", "act": "#1f77b4", "fisher": "#ff7f0e", "taylor": "#d62728", "taylor+gptq+reorder": "#9467bd",
           "fisher+gptq": "#ff7f0e", "taylor+gptq": "#d62728"}
DASHED = "+reorder"


def main():
    data_path, svg_path, name = sys.argv[1:4]
    austen = len(sys.argv) > 4 and sys.argv[4] == "austen"
    moe = len(sys.argv) > 4 and sys.argv[4] == "qwen3-moe"
    rows = list(csv.DictReader(open(data_path)))
    fp = next(float(r["perplexity"]) for r in rows if r["method"] == "FP")
    methods = []
    for r in rows:
        if r["method"] not in ("FP",) and not r["method"].startswith("uniform") and r["method"] not in methods:
            methods.append(r["method"])
    budgets = sorted({r["budget"] for r in rows if r["method"] in methods}, key=float)
    # the table
    print(f"| {name} | " + " | ".join(f"{b} bpw" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for m in methods:
        cells = []
        for b in budgets:
            hit = [r for r in rows if r["method"] == m and r["budget"] == b]
            cells.append(f"{float(hit[0]['perplexity']):.4f} ({float(hit[0]['bpw']):.3f} bpw, {hit[0]['seconds']} s)"
                         if hit else "")
        print(f"| {m} | " + " | ".join(cells) + " |")
    print()
    print(f"FP perplexity {fp:.4f}. Uniform precision (every tile at one bitwidth), by in-tile quantizer:")
    print()
    print("| uniform | bpw | perplexity |")
    print("|---|---|---|")
    for r in rows:
        if r["method"].startswith("uniform"):
            print(f"| {r['method'][8:]} | {float(r['bpw']):.3f} | {float(r['perplexity']):.4f} |")
    if austen:
        print()
        print("llama.cpp (reference.md): " + "; ".join(f"{t} {p} at {b}" for t, b, p in LLAMA_CPP))
    if moe:
        print()
        print("reference.md, round-to-nearest min-max with F16 scale and zero: " +
              "; ".join(f"{t} {p} at {b}" for t, b, p in REFERENCE_RTN))
    write_svg(svg_path, name, rows, methods, fp, austen, REFERENCE_RTN if moe else [])


def write_svg(path, name, rows, methods, fp, austen, reference=()):
    points = [(float(r["bpw"]), float(r["perplexity"])) for r in rows if r["method"] != "FP"]
    if austen:
        points += [(b, p) for _, b, p in LLAMA_CPP]
    # reference points on the plot's range only (2-bit RTN is far above everything else)
    reference = [(t, b, p) for t, b, p in reference if p < 4.0]
    points += [(b, p) for _, b, p in reference]
    xs = [p[0] for p in points]
    ys = [math.log(p[1]) for p in points] + [math.log(fp)]
    x0, x1 = math.floor(min(xs) * 4) / 4, math.ceil(max(xs) * 4) / 4
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or 0.01
    y0, y1 = y0 - pad, y1 + pad
    width, height, left, right, top, bottom = 780, 440, 70, 230, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x):
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(v):
        return top + (1 - (math.log(v) - y0) / (y1 - y0)) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{name}: perplexity against stored bits '
           f'per weight (lower is better)</text>']
    # grid and axes
    tick = x0
    while tick <= x1 + 1e-9:
        out.append(f'<line x1="{px(tick):.1f}" y1="{top}" x2="{px(tick):.1f}" y2="{top + plot_h}" stroke="#eee"/>')
        out.append(f'<text x="{px(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{tick:g}</text>')
        tick += 0.25 if x1 - x0 <= 3 else 0.5
    for k in range(6):
        v = math.exp(y0 + (y1 - y0) * k / 5)
        out.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{left + plot_w}" y2="{py(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">bits per quantized weight '
               f'(every stored bit)</text>')
    out.append(f'<text x="16" y="{top + plot_h / 2}" transform="rotate(-90 16 {top + plot_h / 2})" '
               f'text-anchor="middle">perplexity (log scale)</text>')
    # FP line
    out.append(f'<line x1="{left}" y1="{py(fp):.1f}" x2="{left + plot_w}" y2="{py(fp):.1f}" stroke="#2ca02c" '
               f'stroke-dasharray="6 4"/>')
    legend = [("FP (BF16/F32)", "#2ca02c", "dash")]
    for m in methods:
        pts = sorted((float(r["bpw"]), float(r["perplexity"])) for r in rows if r["method"] == m)
        colour = COLOURS.get(m, COLOURS.get(m.split("+")[0], "#9467bd"))
        dash = ' stroke-dasharray="5 3"' if DASHED in m else ""
        path_d = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(pts))
        out.append(f'<path d="{path_d}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}">'
                       f'<title>{m}: {y:.4f} at {x:.3f} bpw</title></circle>')
        legend.append((f"scalebits {m}", colour, "dashline" if dash else "line"))
    for r in rows:
        if r["method"].startswith("uniform") and r["method"].count(" ") == 1:
            x, y = float(r["bpw"]), float(r["perplexity"])
            out.append(f'<rect x="{px(x) - 4:.1f}" y="{py(y) - 4:.1f}" width="8" height="8" fill="none" '
                       f'stroke="black"><title>{r["method"]}: {y:.4f} at {x:.3f} bpw</title></rect>')
    legend.append(("uniform precision", "black", "square"))
    if austen:
        pts = sorted((b, p) for _, b, p in LLAMA_CPP)
        for t, b, p in LLAMA_CPP:
            out.append(f'<path d="M{px(b) - 5:.1f},{py(p) + 4:.1f} L{px(b) + 5:.1f},{py(p) + 4:.1f} '
                       f'L{px(b):.1f},{py(p) - 5:.1f} Z" fill="#17becf"><title>llama.cpp {t}: {p} at {b} bpw'
                       f'</title></path>')
        path_d = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(pts))
        out.append(f'<path d="{path_d}" fill="none" stroke="#17becf" stroke-width="1.5" stroke-dasharray="3 3"/>')
        legend.append(("llama.cpp (imatrix)", "#17becf", "triangle"))
    for t, b, p in reference:
        out.append(f'<path d="M{px(b):.1f},{py(p) - 6:.1f} L{px(b) + 6:.1f},{py(p):.1f} L{px(b):.1f},{py(p) + 6:.1f} '
                   f'L{px(b) - 6:.1f},{py(p):.1f} Z" fill="#8c564b"><title>reference.md {t}: {p} at {b} bpw</title>'
                   f'</path>')
    if reference:
        legend.append(("RTN min-max, F16 (reference.md)", "#8c564b", "diamond"))
    for i, (label, colour, kind) in enumerate(legend):
        y = top + 14 + i * 20
        x = left + plot_w + 14
        if kind == "dashline":
            out.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" stroke-width="2" '
                       f'stroke-dasharray="5 3"/>')
        elif kind == "line":
            out.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" stroke-width="2"/>')
        elif kind == "dash":
            out.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" stroke-dasharray="6 4"/>')
        elif kind == "diamond":
            out.append(f'<path d="M{x + 11},{y - 6} L{x + 17},{y} L{x + 11},{y + 6} L{x + 5},{y} Z" fill="{colour}"/>')
        elif kind == "square":
            out.append(f'<rect x="{x + 7}" y="{y - 4}" width="8" height="8" fill="none" stroke="{colour}"/>')
        else:
            out.append(f'<path d="M{x + 6},{y + 4} L{x + 16},{y + 4} L{x + 11},{y - 5} Z" fill="{colour}"/>')
        out.append(f'<text x="{x + 28}" y="{y + 4}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
