#!/usr/bin/env bash
# Uniform min-max RTN written by scalebits-mpi and scored by scalebits-eval reproduces the RTN
# rows of ../shared/reference.md (stories260K, g32, first 200 windows). The stored F16 scale and
# zero move the grid slightly, so agreement is to 1% (2% at 2 bits, where everything is noisy).
source "$(dirname "$0")/lib.sh"
skip_without_stories
cd "$WORK"
tokens=$SB_SHARED_DIR/data/tinystories_val.tok512.u32
for row in "2 254.46 0.02" "3 6.9300 0.01" "4 4.5540 0.01" "8 4.1535 0.01"; do
  set -- $row
  "$BIN/scalebits-mpi" --model "$STORIES" --budget 16 --bits "$1" --search minmax --scales f16 --tile 32x32 --group 32 \
    --out "rtn$1.h5" --quiet
  got=$("$BIN/scalebits-eval" --quantized "rtn$1.h5" --tokens "$tokens" --windows 200 | sed 's/perplexity=\([0-9.]*\).*/\1/')
  echo "RTN $1-bit g32: perplexity $got, reference $2"
  check "RTN $1-bit within $3 of reference.md" awk -v a="$got" -v b="$2" -v t="$3" 'BEGIN { d = a / b - 1; exit !(d < t && -d < t) }'
done
finish
