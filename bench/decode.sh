#!/usr/bin/env bash
# Decode and prefill speed of the packed kernels against the machine's memory bandwidth, the
# float OpenBLAS path and llama.cpp, all measured in one run of this script. Prints one markdown
# table (the README's) and whether each target is met.
#
#   bench/decode.sh [--dir DIR] [--layers 4] [--threads "1 2"] [--budgets "2.75 3.5 4.5"]
#                   [--tiles "128x128:128 32x32:32"] [--llamacpp DIR | --no-llamacpp]
#                   [--tokens 16] [--repeat 3]
#
# The model: bench-gen-checkpoint's synthetic Llama with Llama-7B widths (hidden 4096, FFN
# 11008, 32 heads) and --layers layers (4: 0.81 G linear weights, 280-460 MB packed, far beyond
# the last-level cache), vocabulary 256 so that the embedding and lm_head (which llama-bench
# counts and our kernels do not run) are negligible. It is quantized by scalebits-mpi at each
# budget with each tile shape (--search minmax: the scale search changes quality, not the kernels'
# speed, and keeps the bench minutes shorter), and converted for llama.cpp (f32 GGUF, then Q2_K,
# Q3_K_S, Q4_K_S: the nearest mixes to 2.75, 3.5 and 4.5 bits per weight). Files are cached in
# DIR (default $TMPDIR/sb-decode); delete them to regenerate.
#
# Measured by bench-decode (bench/bench_decode.c) per file and thread count: STREAM-style read
# GB/s; decode tokens/s (one token = y = W x over every linear weight of every layer) and its
# effective GB/s = packed bytes read per token / seconds per token; prefill tokens/s at 64 and
# 512 tokens; the float OpenBLAS SGEMM on the same shapes. llama.cpp: llama-bench -p 64,512
# -n 128 (tg128 = decode, pp = prefill) on the same threads; its bits per weight are its file's
# size over its parameters. Build llama.cpp first: ../shared/tools/llamacpp/build.sh /tmp/lcpp.
# The machine is shared: every figure comes with the load average (uptime) it was taken under.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
shared=${SB_SHARED_DIR:-$repo/../shared}
dir=${TMPDIR:-/tmp}/sb-decode layers=4 threads="1 2" budgets="2.75 3.5 4.5" tiles="128x128:128 32x32:32"
llamacpp=/tmp/lcpp tokens=16 repeat=3
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=$2; shift 2;;
    --layers) layers=$2; shift 2;;
    --threads) threads=$2; shift 2;;
    --budgets) budgets=$2; shift 2;;
    --tiles) tiles=$2; shift 2;;
    --llamacpp) llamacpp=$2; shift 2;;
    --no-llamacpp) llamacpp=; shift;;
    --tokens) tokens=$2; shift 2;;
    --repeat) repeat=$2; shift 2;;
    *) sed -n '2,9p' "$0" >&2; exit 2;;
  esac
done
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j"$(getconf _NPROCESSORS_ONLN)" --target scalebits-mpi bench-gen-checkpoint bench-decode >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$dir"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
load() { uptime | sed 's/.*load average: //'; }

model=$dir/model
if [ ! -f "$model/config.json" ]; then
  log "generating the synthetic checkpoint ($layers layers of Llama-7B widths)"
  "$build/bench/bench-gen-checkpoint" --out "$model" --layers "$layers" --vocab 256 >/dev/null
fi
files=()
for budget in $budgets; do
  for tile in $tiles; do
    shape=${tile%%:*} group=${tile##*:}
    file=$dir/q-$budget-${shape%%x*}.h5
    if [ ! -f "$file" ]; then
      log "quantizing at $budget bpw, tiles $shape, groups of $group"
      "$build/scalebits-mpi" --model "$model" --budget "$budget" --tile "$shape" --group "$group" --search minmax \
        --out "$file" --quiet
    fi
    files+=("$file:$budget:$shape")
  done
done

# ---- ours ----
results=$dir/results.txt
: > "$results"
float=""   # the OpenBLAS comparison depends on the shapes only: measured with the first file
for entry in "${files[@]}"; do
  IFS=: read -r file budget shape <<< "$entry"
  log "bench-decode $file (load $(load))"
  "$build/bench/bench-decode" --quantized "$file" --threads "$threads" --tokens "$tokens" --prefill "64 512" \
    --repeat "$repeat" $float > "$dir/bench.out"
  float=--no-float
  header=$(head -1 "$dir/bench.out")
  tail -n +2 "$dir/bench.out" | while read -r line; do
    echo "budget=$budget tiles=$shape load=\"$(load)\" $header $line" >> "$results"
  done
done
kv() { sed -nE "s/(^|.* )$1=([^ ]*).*/\2/p"; }

# ---- llama.cpp ----
lresults=$dir/llamacpp.csv
: > "$lresults"
version="not run"
if [ -n "$llamacpp" ] && [ -x "$llamacpp/src/build/bin/llama-bench" ]; then
  bin=$llamacpp/src/build/bin
  version=$(git -C "$llamacpp/src" describe --tags --always 2>/dev/null || echo unknown)
  if [ ! -f "$dir/m-f32.gguf" ]; then
    log "converting to GGUF"
    /usr/bin/python3 "$shared/tools/llamacpp/hf2gguf.py" "$model" "$dir/m-f32.gguf" --gguf-py "$llamacpp/src/gguf-py" >/dev/null
  fi
  for type in Q2_K Q3_K_S Q4_K_S; do
    if [ ! -f "$dir/m-$type.gguf" ]; then
      log "llama-quantize $type"
      "$bin/llama-quantize" "$dir/m-f32.gguf" "$dir/m-$type.gguf" "$type" >/dev/null 2>&1
    fi
    log "llama-bench $type (load $(load))"
    "$bin/llama-bench" -m "$dir/m-$type.gguf" -p 64,512 -n 128 -t "$(tr ' ' ',' <<< "$threads")" -r "$repeat" -o csv \
      2>/dev/null | awk -v type="$type" -v load="$(load)" -F, '
        { gsub(/"/, "") }
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { print type, $col["model_size"], $col["model_n_params"], $col["n_threads"], $col["n_prompt"], $col["n_gen"],
          $col["avg_ts"], load }' >> "$lresults"
  done
else
  log "llama.cpp not found in '$llamacpp' (build it: $shared/tools/llamacpp/build.sh /tmp/lcpp); its rows are left out"
fi

# ---- the table ----
echo
echo "Decode and prefill, synthetic Llama-7B widths ($layers layers, $(awk '{ print $0 }' <<< "$(kv weights < "$results" | head -1)") linear weights), $(kv isa < "$results" | head -1) kernels, $(nproc) cores; llama.cpp $version"
echo
echo "| engine | weights | bits/weight | threads | decode tok/s | decode GB/s | vs STREAM | prefill 64 tok/s | prefill 512 tok/s | float OpenBLAS 512 tok/s | load (1 min) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
while read -r line; do
  t=$(kv threads <<< "$line")
  float512=$(while read -r other; do
               if [ "$(kv threads <<< "$other")" = "$t" ]; then kv float512_tps <<< "$other"; fi
             done < "$results" | grep . | head -1 || true)
  printf '| scalebits | %s bpw, %s tiles | %.3f | %s | %.1f | %.2f | %.0f%% (STREAM %.1f GB/s) | %.1f | %.1f | %.1f | %s |\n' \
    "$(kv budget <<< "$line")" "$(kv tiles <<< "$line")" "$(kv stored_bpw <<< "$line")" "$(kv threads <<< "$line")" \
    "$(kv decode_tps <<< "$line")" "$(kv decode_gbs <<< "$line")" "$(awk -v r="$(kv decode_vs_stream <<< "$line")" 'BEGIN { print 100 * r }')" \
    "$(kv stream_gbs <<< "$line")" "$(kv prefill64_tps <<< "$line")" "$(kv prefill512_tps <<< "$line")" \
    "$float512" "$(sed 's/.*load="\([^,"]*\).*/\1/' <<< "$line")"
done < "$results"
# llama.cpp: one row per type and thread count; STREAM from our runs at that thread count (the best)
for t in $threads; do
  stream=$(awk -v t="$t" '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } if (v["threads"] == t && v["stream_gbs"] > s) s = v["stream_gbs"] } END { print s + 0 }' "$results")
  awk -v t="$t" -v stream="$stream" '
    $4 == t { key = $1; size[key] = $2; params[key] = $3; load[key] = $8 " " $9 " " $10
              if ($5 == 0 && $6 > 0) tg[key] = $7; else if ($5 == 64) pp64[key] = $7; else if ($5 == 512) pp512[key] = $7 }
    END { n = split("Q2_K Q3_K_S Q4_K_S", order, " ")
          for (i = 1; i <= n; i++) { k = order[i]; if (!(k in size)) continue
            bpw = 8 * size[k] / params[k]; gbs = size[k] * tg[k] / 1e9
            printf "| llama.cpp | %s | %.3f | %d | %.1f | %.2f | %.0f%% (STREAM %.1f GB/s) | %.1f | %.1f | | %s |\n",
                   k, bpw, t, tg[k], gbs, 100 * gbs / stream, stream, pp64[k], pp512[k], load[k] } }' "$lresults"
done

# ---- targets ----
echo
echo "Targets:"
while read -r line; do
  r=$(kv decode_vs_stream <<< "$line")
  printf -- '- decode %s bpw, %s tiles, %s thread(s): %.0f%% of STREAM (target >= 80%%): %s\n' "$(kv budget <<< "$line")" \
    "$(kv tiles <<< "$line")" "$(kv threads <<< "$line")" "$(awk -v r="$r" 'BEGIN { print 100 * r }')" \
    "$(awk -v r="$r" 'BEGIN { print (r >= 0.8 ? "met" : "NOT met") }')"
done < "$results"
if [ -s "$lresults" ]; then
  while read -r line; do
    budget=$(kv budget <<< "$line") t=$(kv threads <<< "$line") tiles_=$(kv tiles <<< "$line")
    type=$(case $budget in 2.75) echo Q2_K;; 3.5) echo Q3_K_S;; 4.5) echo Q4_K_S;; *) echo "";; esac)
    [ -n "$type" ] || continue
    tg=$(awk -v k="$type" -v t="$t" '$1 == k && $4 == t && $5 == 0 { print $7 }' "$lresults")
    pp=$(awk -v k="$type" -v t="$t" '$1 == k && $4 == t && $5 == 512 { print $7 }' "$lresults")
    ours_tg=$(kv decode_tps <<< "$line") ours_pp=$(kv prefill512_tps <<< "$line")
    printf -- '- %s bpw (%s tiles) vs %s, %s thread(s): decode %.1f vs %.1f tok/s (%s), prefill 512 %.1f vs %.1f tok/s = %.2fx (target >= 0.8x: %s)\n' \
      "$budget" "$tiles_" "$type" "$t" "$ours_tg" "$tg" "$(awk -v a="$ours_tg" -v b="$tg" 'BEGIN { print (a >= b ? "met" : "NOT met") }')" \
      "$ours_pp" "$pp" "$(awk -v a="$ours_pp" -v b="$pp" 'BEGIN { print a / b }')" \
      "$(awk -v a="$ours_pp" -v b="$pp" 'BEGIN { print (a >= 0.8 * b ? "met" : "NOT met") }')"
  done < "$results"
fi
