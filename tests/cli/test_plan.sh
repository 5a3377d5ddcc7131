#!/usr/bin/env bash
# --plan on a Llama-3.1-405B-shaped checkpoint: headers only (sparse files, no data, no disk),
# 191 shards of the real shapes, planned for 64 ranks from config.json and headers alone.
source "$(dirname "$0")/lib.sh"
"$BIN/bench/bench-gen-checkpoint" --out "$WORK/l405" --config "$SB_TEST_DATA/configs/llama-3.1-405b.config.json" \
  --headers-only --shard-gb 5 > /dev/null 2>&1
check "405B headers generated (191 shards)" [ "$(ls "$WORK/l405" | grep -c safetensors$)" = 191 ]
check "sparse: under 50 MB on disk" [ "$(du -sm "$WORK/l405" | cut -f1)" -lt 50 ]
start=$(date +%s)
cd "$WORK"
"$BIN/scalebits-mpi" --model "$WORK/l405" --plan --plan-ranks 64 --budget 2.75 > plan.txt 2>&1
check "plan exits 0" [ $? -eq 0 ]
cat plan.txt
check "plan took under 30 s" [ $(( $(date +%s) - start )) -lt 30 ]
check "plan: 64 ranks" grep -q "on 64 rank(s)" plan.txt
check "plan: 882 quantized tensors, 401,646,551,040 weights" grep -q "882 quantized, 401646551040 weights" plan.txt
check "plan: 24,514,560 tiles" grep -q "tiles: 24514560 of 128x128" plan.txt
check "plan: every rank listed or elided" grep -q "^  63 " plan.txt
balance=$(sed -n 's/.*busiest rank has \([0-9.]*\)x.*/\1/p' plan.txt)
check "plan: balanced within 5% ($balance)" le "$balance" 1.05
memory=$(sed -n 's/.*peak memory per rank about \([0-9.]*\) MiB.*/\1/p' plan.txt)
check "plan: peak memory per rank under 1 GiB ($memory MiB)" le "${memory:-99999}" 1024
check "plan: predicts a wall time" grep -q "predicted wall time on 64 rank(s)" plan.txt
# a calibrated run holds its pipeline stage: the taylor search at 64 ranks holds two layers of
# 405B (6.4G weights) with their statistics and search copies, and the plan says so
"$BIN/scalebits-mpi" --model "$WORK/l405" --plan --plan-ranks 64 --budget 2.75 --sensitivity taylor --gptq \
  --calib-text "$SB_TEST_DATA/tiny-austen-kjv/heldout.txt" > taylor.txt 2>&1
check "taylor plan exits 0" [ $? -eq 0 ]
grep -E "peak memory|holds|stage:|predicted" taylor.txt
check "taylor plan: counts layers, statistics, search and activations" \
  grep -qE "holds: layers .*statistics .*gptq .*search .*activations" taylor.txt
tmem=$(sed -n 's/.*peak memory per rank about \([0-9.]*\) GiB.*/\1/p' taylor.txt)
check "taylor plan: a 405B stage is tens of GiB ($tmem GiB), not the data-free figure" le 30 "${tmem:-0}"
# the same plan from 2 real ranks: printed once, same figures
run_mpi 2 "$BIN/scalebits-mpi" --model "$WORK/l405" --plan --plan-ranks 64 --budget 2.75 > plan2.txt 2>&1
check "plan under mpirun -n 2 prints the same plan" diff <(grep -v '^\[' plan.txt) <(grep -v '^\[' plan2.txt)
finish
