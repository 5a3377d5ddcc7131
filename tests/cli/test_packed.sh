#!/usr/bin/env bash
# scalebits-eval --quantized runs the packed tiles (src/sb_kernel.h) and agrees with the float
# path (--dequantize) within 0.1% in perplexity: on the embedded model (both scale encodings, a
# reordered file), stories260K (ragged 172-wide FFN) and austen-256 (default 128x128 tiles), on
# every kernel path the CPU has; the same line for 1 and 2 threads and under mpirun -n 2; peak
# RSS and load time reported; SCALEBITS_ISA refuses a path it does not know or the CPU lacks.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
text=$DEFAULT_MODEL/heldout.txt
field() { sed -n "s/.*\"$1\": \"\{0,1\}\([^,\"}]*\).*/\1/p"; }
within() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a / b - 1; exit !(d <= t && -d <= t) }'; }
isas=$(for isa in scalar avx2 avx512; do
  refusal=$(SCALEBITS_ISA=$isa "$BIN/scalebits-eval" --quantized /dev/null --text "$text" 2>&1)
  grep -q "cannot run" <<< "$refusal" || echo "$isa"
done)
echo "kernel paths on this CPU: $isas"

# compare FILE LABEL WINDOWS PATHS [eval arguments...]: packed on each of PATHS (those the CPU
# has) vs dequantized; the portable scalar path is a slow reference and runs at most 10 windows
compare() {
  local file=$1 label=$2 windows=$3 paths=$4; shift 4
  local reference packed n
  for isa in $isas; do
    grep -qw "$isa" <<< "$paths" || continue
    n=$windows
    [ "$isa" = scalar ] && [ "$n" -gt 10 ] && n=10
    reference=$("$BIN/scalebits-eval" --quantized "$file" --dequantize "$@" --windows "$n" --json)
    packed=$(SCALEBITS_ISA=$isa "$BIN/scalebits-eval" --quantized "$file" "$@" --windows "$n" --json)
    echo "$label $isa ($n windows): packed $(field perplexity <<< "$packed"), dequantized" \
      "$(field perplexity <<< "$reference"), load $(field load_seconds <<< "$packed") s," \
      "peak RSS $(field peak_rss_bytes <<< "$packed") bytes"
    check "$label: --dequantize runs the float path" [ "$(field weights <<< "$reference")" = dequantized ]
    check "$label $isa: runs packed on $isa" \
      [ "$(field weights <<< "$packed")/$(field isa <<< "$packed")" = "packed/$isa" ]
    check "$label $isa: packed within 0.1% of dequantized" \
      within "$(field perplexity <<< "$packed")" "$(field perplexity <<< "$reference")" 0.001
  done
}

"$BIN/scalebits-mpi" --budget 3 --tile 32x32 --group 32 --out q8.h5 --quiet
"$BIN/scalebits-mpi" --budget 3.5 --tile 32x32 --group 32 --scales f16 --out f16.h5 --quiet
"$BIN/scalebits-mpi" --budget 3 --tile 64x64 --group 32 --reorder --out reordered.h5 --quiet
compare q8.h5 "embedded q8" 40 "scalar avx2 avx512" --text "$text"
compare f16.h5 "embedded f16" 40 "scalar avx2 avx512" --text "$text"
compare reordered.h5 "embedded reordered" 40 "avx2 avx512" --text "$text"

# determinism: threads and ranks
one=$("$BIN/scalebits-eval" --quantized q8.h5 --text "$text" --windows 40 --threads 1)
check "packed: 2 threads print the 1-thread line ($one)" \
  [ "$("$BIN/scalebits-eval" --quantized q8.h5 --text "$text" --windows 40 --threads 2)" = "$one" ]
check "packed: mpirun -n 2 (each rank its layers, packed) prints the 1-process line" \
  [ "$(run_mpi 2 "$BIN/scalebits-eval" --quantized q8.h5 --text "$text" --windows 40 --threads 1 2>&1)" = "$one" ]

# memory: the packed model holds about the file, not the float weights
packed_rss=$("$BIN/scalebits-eval" --quantized q8.h5 --text "$text" --windows 8 --batch 1 --json | field peak_rss_bytes)
float_rss=$("$BIN/scalebits-eval" --quantized q8.h5 --dequantize --text "$text" --windows 8 --batch 1 --json | field peak_rss_bytes)
echo "peak RSS: packed $packed_rss, dequantized $float_rss bytes"
check "packed peak RSS below the dequantized run's" [ "$packed_rss" -lt "$float_rss" ]

# bad ISA requests: one line, non-zero exit
SCALEBITS_ISA=neon "$BIN/scalebits-eval" --quantized q8.h5 --text "$text" --windows 2 > isa.log 2>&1
check "SCALEBITS_ISA=neon: exit 2 with one line naming it" \
  sh -c "[ $? -eq 2 ] && grep -q 'SCALEBITS_ISA=neon' isa.log && [ \$(grep -c 'error' isa.log) -eq 1 ]"
for isa in avx2 avx512; do
  if ! grep -qw "$isa" <<< "$isas"; then
    SCALEBITS_ISA=$isa "$BIN/scalebits-eval" --quantized q8.h5 --text "$text" --windows 2 > isa.log 2>&1
    check "SCALEBITS_ISA=$isa on a CPU without it: exit 1, 'cannot run'" sh -c "[ $? -eq 1 ] && grep -q 'cannot run' isa.log"
  fi
done
"$BIN/scalebits-eval" --dequantize --text "$text" > usage.log 2>&1
check "--dequantize without --quantized: exit 2" [ $? -eq 2 ]

if have_stories; then
  tokens=$SB_SHARED_DIR/data/tinystories_val.tok512.u32
  "$BIN/scalebits-mpi" --model "$STORIES" --budget 3.5 --tile 32x32 --group 32 --search minmax --out stories.h5 --quiet
  compare stories.h5 "stories260K" 100 "avx2 avx512" --tokens "$tokens"
else
  echo "SKIP: stories260K not present"
fi
austen=$SB_SHARED_DIR/models/austen-256
if [ -f "$austen/model.safetensors" ]; then
  "$BIN/scalebits-mpi" --model "$austen" --budget 3 --search minmax --out austen.h5 --quiet
  compare austen.h5 "austen-256" 30 "avx2 avx512" --text "$austen/heldout.txt"
else
  echo "SKIP: austen-256 not present"
fi
finish
