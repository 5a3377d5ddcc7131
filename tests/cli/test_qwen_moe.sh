#!/usr/bin/env bash
# Qwen3-MoE through the whole pipeline (issue 12): qwen3-moe-tiny (../shared) quantized by
#   mpirun -n 1, 2, 3 scalebits-mpi --budget 3.0 --sensitivity taylor --gptq --reorder --calib-text calib.txt
# gives the same file for every rank count, within the budget, with the experts stored as one
# group per (layer, role) whose accounting inspect recounts; its perplexity at 3.0 bpw is below
# reference.md's uniform min-max 3-bit with groups of 64 (3.6724, which stores 3.5 bpw); the
# report and inspect (text, JSON, SVG) agree on the token-slots calibration routed to each expert
# (each MoE layer's sum is windows x ctx x top-k); the export loads back as a Hugging Face
# Qwen3-MoE checkpoint and scores what the file scores. The run is kept short (4 windows of 128
# calibration tokens, bits {2,3,4}, at most 8 taylor rounds, one thread per rank); the
# full-quality curve is bench/quality.sh qwen3-moe.
source "$(dirname "$0")/lib.sh"
MOE=$SB_SHARED_DIR/models/qwen3-moe-tiny
if [ ! -f "$MOE/model.safetensors" ]; then
  echo "SKIP: $MOE not present (fetched or trained test material stays in ../shared)"
  exit 77
fi
cd "$WORK"
jqok() { jq -e "$@" > /dev/null; }
args="--model $MOE --budget 3.0 --sensitivity taylor --gptq --reorder --calib-text $MOE/calib.txt
      --calib-windows 4 --calib-ctx 128 --group 64 --bits 2,3,4 --refine-rounds 8 --threads 1"
for np in 1 2 3; do
  mkdir -p "np$np"
  (cd "np$np" && run_mpi "$np" "$BIN/scalebits-mpi" $args --out moe.h5 --report run.json > log.txt 2>&1)
  check "mpirun -n $np: exit 0" [ $? -eq 0 ]
done
for np in 2 3; do
  check "mpirun -n $np gives the one-process allocation" \
    [ "$(h5attr np1/moe.h5 allocation_sha256)" = "$(h5attr "np$np/moe.h5" allocation_sha256)" ]
  for group in /tensors /passthrough /calibration; do
    check "mpirun -n $np: $group identical (h5diff)" h5diff np1/moe.h5 "np$np/moe.h5" "$group" "$group"
  done
done
f=np1/moe.h5
achieved=$(h5attr "$f" achieved_bpw)
check "achieved $achieved <= 3.0 bpw" le "$achieved" 3.0
check "experts stored as one group per (layer, role)" sh -c "h5ls '$f/tensors' | grep -c 'experts\\.' | grep -qx 9"
check "recounted storage equals stored_bits" [ "$(stored_bits "$f")" = "$(h5attr "$f" stored_bits)" ]

line=$("$BIN/scalebits-eval" --quantized "$f" --text "$MOE/heldout.txt" --windows 200)
ppl=${line#perplexity=}; ppl=${ppl%% *}
echo "quantized at $achieved bpw: $line (uniform min-max 3-bit g64: 3.6724 at 3.5 bpw; FP 3.5559)"
check "perplexity $ppl < 3.6724" awk -v p="$ppl" 'BEGIN { exit !(p < 3.6724) }'

"$BIN/scalebits-inspect" "$f" > inspect.txt && "$BIN/scalebits-inspect" "$f" --json > inspect.json
check "inspect exits 0 and finds no problem" grep -q '^  "problems": \[\]' inspect.json
check "inspect lists the experts with their token-slots" grep -q '^experts (mean code bits of each expert' inspect.txt
"$BIN/scalebits-inspect" "$f" --svg svg > /dev/null
check "inspect draws experts.svg" test -s svg/experts.svg
if command -v jq > /dev/null; then
  check "report: each MoE layer's token-slots sum to 4 x 128 x top-2" \
    jqok '[.experts.layers[] | (.tokens | add) == 1024] | all and length == 3' np1/run.json
  check "report and inspect agree on every expert's tokens" \
    [ "$(jq -c '[.experts.layers[].tokens]' np1/run.json)" = "$(jq -c '[.experts.layers[].tokens]' inspect.json)" ]
  check "report and inspect agree on every expert's bits" \
    [ "$(jq -c '[.experts.layers[].mean_bits[] | . * 1000 | round]' np1/run.json)" = \
      "$(jq -c '[.experts.layers[].mean_bits[] | . * 1000 | round]' inspect.json)" ]
  check "experts under the threshold are marked pooled" jqok --argjson m "$(h5attr "$f" expert_min_tokens)" \
    '[.experts.layers[] | [.tokens, .pooled] | transpose[] | (.[0] < $m) == .[1]] | all' np1/run.json
fi
"$BIN/scalebits-export" "$f" --out exported > /dev/null
check "export: exit 0" [ $? -eq 0 ]
e=$("$BIN/scalebits-eval" --model exported --text "$MOE/heldout.txt" --windows 200)
ep=${e#perplexity=}; ep=${ep%% *}
echo "export: $e"
check "the export scores what the file scores (BF16 rounding)" awk -v a="$ppl" -v b="$ep" \
  'BEGIN { d = a / b - 1; exit !(d < 0.0005 && -d < 0.0005) }'
finish
