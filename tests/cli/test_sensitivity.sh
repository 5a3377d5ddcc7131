#!/usr/bin/env bash
# The calibration-based sensitivities end to end: act, fisher, taylor and --imatrix run, stay
# within budget, give the same file for 1-4 ranks (pipeline stages), and a llama.cpp importance
# matrix saved from a calibration reproduces that calibration's act allocation exactly.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
calib="--calib-text $DEFAULT_MODEL/heldout.txt --calib-ctx 128 --calib-windows 8 --calib-batch 4"
common="--model $DEFAULT_MODEL --tile 64x64 --group 32"
for sens in act fisher taylor; do
  "$BIN/scalebits-mpi" $common --budget 3.2 --sensitivity "$sens" $calib --out "$sens.h5" > "$sens.log" 2>&1
  check "$sens: exits 0" [ $? -eq 0 ]
  bits=$(stored_bits "$sens.h5")
  bpw=$(awk -v b="$bits" 'BEGIN { printf "%.6f", b / 737280 }')
  check "$sens: recounted $bpw bpw <= 3.2" le "$bpw" 3.2
done
check "taylor logs its loss-checked rounds" grep -q "taylor round 1:" taylor.log
check "taylor reports the search" grep -q "taylor search:" taylor.log
check "taylor says where its time went" grep -q "taylor search time: .* estimating moves" taylor.log
# the search's speed cache changes nothing: every product decoded from the packed tiles instead
"$BIN/scalebits-mpi" $common --budget 3.2 --sensitivity taylor $calib --debug-search-cache 0 --out panels.h5 \
  > panels.log 2>&1
check "taylor without its cache: exits 0" [ $? -eq 0 ]
check "taylor without its cache: no tile decoded ahead" grep -q "MiB of tiles at every bitwidth, 0.0 MiB decoded" panels.log
check "taylor without its cache: the same allocation" [ "$(h5attr panels.h5 allocation_sha256)" = "$(h5attr taylor.h5 allocation_sha256)" ]
check "taylor without its cache: the same datasets" h5diff taylor.h5 panels.h5 /tensors /tensors
for sens in act fisher taylor; do
  for np in 2 3 4; do
    mkdir -p "np$np-$sens"
    (cd "np$np-$sens" && run_mpi "$np" "$BIN/scalebits-mpi" $common --budget 3.2 --sensitivity "$sens" $calib \
      --out "$sens.h5" --quiet)
    check "$sens: mpirun -n $np exits 0" [ $? -eq 0 ]
    check "$sens: $np ranks give the one-process datasets" h5diff "$sens.h5" "np$np-$sens/$sens.h5" /tensors /tensors
    check "$sens: $np ranks give the one-process allocation" \
      [ "$(h5attr "np$np-$sens/$sens.h5" allocation_sha256)" = "$(h5attr "$sens.h5" allocation_sha256)" ]
  done
done
# --refine-windows: the estimates from one micro-batch in two (rotating by round), the loss checks
# over all: within budget, and the same file for 1 and 3 ranks (stages pick the same micro-batches)
"$BIN/scalebits-mpi" $common --budget 3.2 --sensitivity taylor $calib --refine-windows 4 --out sub.h5 > sub.log 2>&1
check "taylor --refine-windows: exits 0" [ $? -eq 0 ]
bpw=$(awk -v b="$(stored_bits sub.h5)" 'BEGIN { printf "%.6f", b / 737280 }')
check "taylor --refine-windows: recounted $bpw bpw <= 3.2" le "$bpw" 3.2
mkdir -p np3-sub
(cd np3-sub && run_mpi 3 "$BIN/scalebits-mpi" $common --budget 3.2 --sensitivity taylor $calib --refine-windows 4 \
  --out sub.h5 --quiet)
check "taylor --refine-windows: 3 ranks give the one-process allocation" \
  [ "$(h5attr np3-sub/sub.h5 allocation_sha256)" = "$(h5attr sub.h5 allocation_sha256)" ]
check "taylor --refine-windows: 3 ranks give the one-process datasets" h5diff sub.h5 np3-sub/sub.h5 /tensors /tensors
# --save-imatrix, then --imatrix: the same E[x^2], the same allocation
"$BIN/scalebits-mpi" $common --budget 3.2 --sensitivity act $calib --save-imatrix saved.dat --out a1.h5 --quiet
"$BIN/scalebits-mpi" $common --budget 3.2 --imatrix saved.dat --out a2.h5 --quiet
check "imatrix saved" [ -s saved.dat ]
check "--imatrix reproduces the calibration's act allocation" \
  [ "$(h5attr a1.h5 allocation_sha256)" = "$(h5attr a2.h5 allocation_sha256)" ]
check "--imatrix reproduces the datasets" h5diff a1.h5 a2.h5 /tensors /tensors
# options that cannot work are refused before any work
"$BIN/scalebits-mpi" $common --budget 3.2 --sensitivity fisher --out x.h5 > bad.log 2>&1
check "fisher without calibration data: exit 2" [ $? -eq 2 ]
check "fisher without calibration data: says why" grep -q "needs calibration data" bad.log
"$BIN/scalebits-mpi" $common --budget 3.2 --sensitivity act --imatrix /nonexistent.dat --out x.h5 > bad2.log 2>&1
check "missing imatrix: exit 1 with its name" grep -q "/nonexistent.dat" bad2.log
check "no output left by refused runs" [ ! -e x.h5 ]
finish
