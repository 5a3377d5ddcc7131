#!/usr/bin/env bash
# FP8 sources end to end: an FP8 copy of a model (F8_E4M3 weights with 32x32 block scales,
# bench-gen-checkpoint --fp8) quantizes to the same allocation as its dequantized BF16 copy
# (mse and fisher, 1 and 2 ranks), the file records F8_E4M3 as the source dtype, and its export
# comes back in BF16 and scores what the file scores. The FP8 runtime reads the same values as
# the BF16 copy: scalebits-eval gives the same line for both.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
gen="$BIN/bench/bench-gen-checkpoint"
text=$DEFAULT_MODEL/heldout.txt
"$gen" --out fp8 --small --layers 3 --fp8 --fp8-block 32x32 --seed 3 > /dev/null
"$gen" --out bf16 --from fp8 --dtype bf16 > /dev/null
check "the copies exist" test -f fp8/model.safetensors -a -f bf16/model.safetensors
ppl() { "$BIN/scalebits-eval" --model "$1" --text "$text" --windows 4 --ctx 128; }
check "scalebits-eval: the FP8 model and its BF16 copy score the same" [ "$(ppl fp8)" = "$(ppl bf16)" ]
sha() { sed -n 's/.*allocation sha256 \([0-9a-f]*\).*/\1/p' "$1"; }
# The objects under /tensors that differ between two files, except their source_dtype attributes.
only_source_dtype_differs() {
  local others
  # h5diff exits 1 when it finds differences (expected here): pipefail must not see that
  others=$({ h5diff -r "$1" "$2" /tensors /tensors || true; } | awk '
    /^(attribute|dataset|group):/ { object = $0 }
    /^[1-9][0-9]* differences? found/ { print object }' | grep -v "source_dtype of" || true)
  [ -z "$others" ] || { echo "$others"; return 1; }
  # and the source_dtype attributes do differ: the FP8 file says F8_E4M3
  { h5diff -r "$1" "$2" /tensors /tensors || true; } | grep -q "source_dtype of"
}
common="--budget 3.0 --tile 32x32 --group 32"
calib="--calib-text $text --calib-ctx 64 --calib-windows 4"
for sens in mse fisher; do
  args="$common"
  [ "$sens" = mse ] || args="$args --sensitivity fisher $calib"
  for model in fp8 bf16; do
    "$BIN/scalebits-mpi" --model "$model" $args --out "$sens-$model.h5" > "$sens-$model.log" 2>&1
    check "$sens $model: exit 0" [ $? -eq 0 ]
  done
  mkdir -p np2 && (cd np2 && run_mpi 2 "$BIN/scalebits-mpi" --model "$WORK/fp8" $args --out "$sens.h5" > "$sens.log" 2>&1)
  a=$(sha "$sens-fp8.log"); b=$(sha "$sens-bf16.log"); c=$(sha "np2/$sens.log")
  echo "$sens: allocation $a (FP8), $b (BF16 copy), $c (FP8, 2 ranks)"
  check "$sens: the FP8 copy gets the allocation of its BF16 copy" [ -n "$a" -a "$a" = "$b" ]
  check "$sens: 2 ranks give the one-process allocation" [ "$a" = "$c" ]
  check "$sens: the same quantized tensors (only source_dtype differs)" only_source_dtype_differs "$sens-fp8.h5" "$sens-bf16.h5"
done
check "the file records the FP8 source dtype" \
  sh -c "h5dump -a /tensors/model.layers.0.self_attn.q_proj.weight/source_dtype mse-fp8.h5 | grep -q F8_E4M3"
"$BIN/scalebits-export" mse-fp8.h5 --out exported > /dev/null
check "export: exit 0" [ $? -eq 0 ]
check "export writes an FP8 source back in BF16" \
  sh -c "head -c 20000 exported/model.safetensors | grep -a -o '\"model.layers.0.self_attn.q_proj.weight\":{\"dtype\":\"BF16\"' > /dev/null"
q=$("$BIN/scalebits-eval" --quantized mse-fp8.h5 --text "$text" --windows 4 --ctx 128)
e=$(ppl exported)
echo "file: $q; export: $e"
# the export rounds the decoded weights to BF16: equal to within that rounding
qp=${q#perplexity=}; qp=${qp%% *}; ep=${e#perplexity=}; ep=${ep%% *}
check "the export scores what the file scores (BF16 rounding)" awk -v a="$qp" -v b="$ep" 'BEGIN { d = a / b - 1; exit !(d < 0.0005 && -d < 0.0005) }'
finish
