#!/usr/bin/env bash
# The same command under mpirun -n 1, 2, 3, 4 and 8 gives the same allocation and identical
# HDF5 datasets (h5diff), with tensors split into tile-row units spread over ranks.
source "$(dirname "$0")/lib.sh"

compare_ranks() {
  local label=$1; shift
  for np in 1 2 3 4 8; do
    mkdir -p "$WORK/$label-np$np"
    (cd "$WORK/$label-np$np" && run_mpi "$np" "$BIN/scalebits-mpi" "$@" --out out.h5 --quiet)
    check "$label: mpirun -n $np exits 0" [ $? -eq 0 ]
  done
  local reference_hash
  reference_hash=$(h5attr "$WORK/$label-np1/out.h5" allocation_sha256)
  for np in 2 3 4 8; do
    check "$label: allocation hash for $np ranks" [ "$(h5attr "$WORK/$label-np$np/out.h5" allocation_sha256)" = "$reference_hash" ]
    check "$label: h5diff 1 vs $np ranks" h5diff "$WORK/$label-np1/out.h5" "$WORK/$label-np$np/out.h5"
  done
}

compare_ranks embedded --model "$DEFAULT_MODEL" --budget 2.75 --unit-weights 16K
compare_ranks embedded-small-tiles --model "$DEFAULT_MODEL" --budget 3.1 --tile 32x64 --group 32 --bits 1,2,3,4,6 --unit-weights 4K
if have_stories; then
  compare_ranks stories --model "$STORIES" --budget 3.5 --tile 32x32 --group 32 --unit-weights 2K
fi
# the user's own words: mpirun -n 64 scalebits-mpi --budget 2.75 (the embedded model), same bytes
mkdir -p "$WORK/main-np1" "$WORK/main-np64"
(cd "$WORK/main-np1" && "$BIN/scalebits-mpi" --budget 2.75 --quiet)
(cd "$WORK/main-np64" && run_mpi 64 "$BIN/scalebits-mpi" --budget 2.75 --quiet)
check "mpirun -n 64 scalebits-mpi --budget 2.75: exit 0" [ $? -eq 0 ]
check "64 ranks give the one-process file" h5diff "$WORK/main-np1/tiny-austen-kjv-2.75bpw.h5" \
  "$WORK/main-np64/tiny-austen-kjv-2.75bpw.h5" /tensors /tensors
finish
