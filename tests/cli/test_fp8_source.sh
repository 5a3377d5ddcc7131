#!/usr/bin/env bash
# FP8 sources end to end: an FP8 copy of a model (F8_E4M3 weights with 32x32 block scales,
# bench-gen-checkpoint --fp8) quantizes to the same allocation as its dequantized BF16 copy
# (mse and fisher, 1 and 2 ranks), the file records F8_E4M3 as the source dtype, and its export
# comes back in BF16 and scores what the file scores. The FP8 runtime reads the same values as
# the BF16 copy: scalebits-eval gives the same line for both. The same for an FP8 copy of
# qwen3-moe-tiny (../shared; experts FP8, router BF16): mse, fisher and taylor with GPTQ and
# reordering, 1 and 2 ranks. With fisher the BF16 copy's experts are held as bfloat16 in the
# pipeline and the FP8 copy's as float32 (src/sb_linear.h): the same allocation shows that the
# two storages compute the same statistics.
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

# Qwen3-MoE: an FP8 copy of qwen3-moe-tiny and its dequantized BF16 copy
MOE=$SB_SHARED_DIR/models/qwen3-moe-tiny
if [ ! -f "$MOE/model.safetensors" ]; then
  echo "SKIP: $MOE not present (the MoE part)"
  finish_status=77
else
  "$gen" --out moe-fp8 --from "$MOE" --fp8 --fp8-block 128x128 > /dev/null
  "$gen" --out moe-bf16 --from moe-fp8 --dtype bf16 > /dev/null
  check "MoE: the copies exist" test -f moe-fp8/model.safetensors -a -f moe-bf16/model.safetensors
  check "MoE: experts are FP8, the router is not" sh -c "head -c 40000 moe-fp8/model.safetensors | grep -a -o \
    '\"model.layers.2.mlp.experts.5.down_proj.weight\":{\"dtype\":\"F8_E4M3\"' > /dev/null && head -c 40000 \
    moe-fp8/model.safetensors | grep -a -o '\"model.layers.2.mlp.gate.weight\":{\"dtype\":\"BF16\"' > /dev/null"
  moe_text=$MOE/heldout.txt
  check "MoE: scalebits-eval scores the FP8 copy as its BF16 copy" \
    [ "$("$BIN/scalebits-eval" --model moe-fp8 --text "$moe_text" --windows 4)" = "$("$BIN/scalebits-eval" --model moe-bf16 --text "$moe_text" --windows 4)" ]
  moe_calib="--calib-text $MOE/calib.txt --calib-ctx 128 --calib-windows 2"
  for sens in mse fisher taylor; do
    args="--budget 3.0 --group 64"
    [ "$sens" = fisher ] && args="$args --sensitivity fisher --gptq --reorder $moe_calib"
    [ "$sens" = taylor ] && args="$args --bits 2,3,4 --refine-rounds 4 --sensitivity taylor --gptq --reorder $moe_calib"
    for model in moe-fp8 moe-bf16; do
      "$BIN/scalebits-mpi" --model "$model" $args --out "$sens-$model.h5" > "$sens-$model.log" 2>&1
      check "MoE $sens $model: exit 0" [ $? -eq 0 ]
    done
    mkdir -p moe-np2 && (cd moe-np2 && run_mpi 2 "$BIN/scalebits-mpi" --model "$WORK/moe-fp8" $args --out "$sens.h5" > "$sens.log" 2>&1)
    a=$(sha "$sens-moe-fp8.log"); b=$(sha "$sens-moe-bf16.log"); c=$(sha "moe-np2/$sens.log")
    echo "MoE $sens: allocation $a (FP8), $b (BF16 copy), $c (FP8, 2 ranks)"
    check "MoE $sens: the FP8 copy gets the allocation of its BF16 copy" [ -n "$a" -a "$a" = "$b" ]
    check "MoE $sens: 2 ranks give the one-process allocation" [ "$a" = "$c" ]
    check "MoE $sens: the same quantized tensors (only source_dtype differs)" only_source_dtype_differs "$sens-moe-fp8.h5" "$sens-moe-bf16.h5"
  done
  check "MoE: an expert stack records the FP8 source dtype" \
    sh -c "h5dump -a /tensors/model.layers.1.mlp.experts.gate_proj.weight/source_dtype mse-moe-fp8.h5 | grep -q F8_E4M3"
fi
[ "$failures" -eq 0 ] && [ "${finish_status:-0}" -eq 77 ] && { echo "all checks run passed; the MoE part skipped"; exit 77; }
finish
