#!/usr/bin/env bash
# --reorder end to end: the file holds an equivalent (permuted) model: at 8 bits it scores the
# FP perplexity, its export scores what the file scores, and 1 and 3 ranks write the same file.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
text=$DEFAULT_MODEL/heldout.txt
calib="--calib-text $text --calib-ctx 128 --calib-windows 8"
ppl() { "$BIN/scalebits-eval" "$@" --text "$text" --windows 20 | sed 's/perplexity=\([0-9.]*\).*/\1/'; }
fp=$(ppl --model "$DEFAULT_MODEL")
"$BIN/scalebits-mpi" --model "$DEFAULT_MODEL" --budget 16 --bits 8 --reorder --out r8.h5 --quiet
r8=$(ppl --quantized r8.h5)
echo "FP $fp, reordered 8-bit $r8"
check "reordered 8-bit file is the FP model within 0.1%" awk -v a="$r8" -v b="$fp" 'BEGIN { d = a / b - 1; exit !(d < 0.001 && -d < 0.001) }'
check "the file says it is reordered" sh -c "h5dump -a /reordered r8.h5 | grep -q folded"
for sens in mse fisher taylor; do
  args="--model $DEFAULT_MODEL --budget 3 --tile 64x64 --group 32 --reorder"
  [ "$sens" = mse ] || args="$args --sensitivity $sens $calib"
  "$BIN/scalebits-mpi" $args --out "$sens.h5" --quiet
  check "$sens --reorder: exit 0" [ $? -eq 0 ]
  mkdir -p "np3-$sens"
  (cd "np3-$sens" && run_mpi 3 "$BIN/scalebits-mpi" $args --out "$sens.h5" --quiet)
  check "$sens --reorder: 3 ranks give the one-process file" h5diff "$sens.h5" "np3-$sens/$sens.h5" /tensors /tensors
  check "$sens --reorder: 3 ranks give the same pass-through tensors" h5diff "$sens.h5" "np3-$sens/$sens.h5" /passthrough /passthrough
done
"$BIN/scalebits-export" taylor.h5 --out exported > /dev/null
q=$(ppl --quantized taylor.h5)
e=$(ppl --model exported)
echo "taylor --reorder at 3 bpw: file $q, its export $e"
check "the export (folded, dequantized) scores what the file scores" awk -v a="$q" -v b="$e" 'BEGIN { d = a / b - 1; exit !(d < 0.0005 && -d < 0.0005) }'
"$BIN/scalebits-mpi" --model "$DEFAULT_MODEL" --budget 3 --gptq --out x.h5 > gptq.log 2>&1
check "--gptq without calibration: exit 2" [ $? -eq 2 ]
"$BIN/scalebits-mpi" --model "$DEFAULT_MODEL" --budget 3 --tile 64x64 --group 32 --sensitivity fisher $calib --gptq --reorder --out g.h5 --quiet
check "--gptq --reorder: exit 0" [ $? -eq 0 ]
mkdir -p np2-gptq
(cd np2-gptq && run_mpi 2 "$BIN/scalebits-mpi" --model "$DEFAULT_MODEL" --budget 3 --tile 64x64 --group 32 --sensitivity fisher $calib --gptq --reorder --out g.h5 --quiet)
check "--gptq --reorder: 2 ranks give the one-process file" h5diff g.h5 np2-gptq/g.h5 /tensors /tensors
finish
