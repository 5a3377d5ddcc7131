#!/usr/bin/env bash
# The file tools end to end: scalebits-mpi writes, scalebits-inspect reads (text, --json, --svg),
# scalebits-export writes a Hugging Face checkpoint back (atomic, --force, shards, --dtype), and
# the runtime evaluates an all-8-bit export at the FP perplexity of reference.md within 0.1%.
# Both scale encodings: the default affine-q8 throughout, and affine-f16 (--scales f16) for the
# accounting, the pictures, the export and the 8-bit perplexity. Broken files give one error
# line and exit 1. The thorough numeric checks (bit-exact decoding, 8-bit error bounds of the
# exported weights, broken tile_scales) are in tests/unit/test_h5_roundtrip.c.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

# "name dtype shape" of every tensor in a safetensors file, sorted (header JSON is compact).
st_entries() {
  local length
  length=$(od -An -t u8 -N 8 "$1" | tr -d ' ')
  tail -c +9 "$1" | head -c "$length" |
    grep -o '"[^"]*":{"dtype":"[A-Z0-9]*","shape":\[[0-9,]*\]' | sed 's/:{"dtype":/ /; s/,"shape":/ /' | sort
}
# A top-level number of the inspect JSON (JSON_INDENT(2): top-level keys are indented by two).
json_number() { sed -n "s/^  \"$2\": \([-0-9.e+]*\),\{0,1\}$/\1/p" "$1"; }
# Well-formed XML: xmllint when installed (libxml2-utils), else the outer element at least.
well_formed_svg() {
  if command -v xmllint > /dev/null; then xmllint --noout "$1"; else grep -q '<svg' "$1" && grep -q '</svg>' "$1"; fi
}
one_line_error() { [ "$(wc -l < "$1")" -eq 1 ] && grep -q "$2" "$1"; }
# Within 0.1% of the FP perplexity of reference.md (3.3824).
near_fp() { awk -v p="$1" 'BEGIN { exit !(p != "" && p / 3.3824 - 1 < 0.001 && 1 - p / 3.3824 < 0.001) }'; }

# The accounting of a file as inspect shows it, for its encoding ($2: affine-q8 or affine-f16):
# the encoding is named; the sizes line adds up to the datasets under /tensors (tile scales in
# q8 only); every tensor's stored bits are docs/FORMAT.md's formula from its extents and sum to
# the recount, which is h5ls's.
check_accounting() {
  local file=$1 encoding=$2 text=$1.txt json=$1.json
  "$BIN/scalebits-inspect" "$file" > "$text"
  check "$file: inspect exits 0" [ $? -eq 0 ]
  "$BIN/scalebits-inspect" "$file" --json > "$json"
  check "$file: inspect --json exits 0" [ $? -eq 0 ]
  check "$file: recount matches stored_bits" grep -q 'recounted .* matches stored_bits' "$text"
  check "$file: text names the encoding $encoding" grep -q "^encoding *$encoding: " "$text"
  check "$file: json names the encoding $encoding" grep -q "^  \"encoding\": \"$encoding\"," "$json"
  if [ "$encoding" = affine-q8 ]; then
    check "$file: sizes count the tile scales" grep -q '^sizes .*zeros .*, tile scales [0-9.]* [KMG]*i*B, bit maps' "$text"
  else
    check "$file: sizes have no tile scales" sh -c "grep '^sizes ' '$text' | grep -vq 'tile scales'"
  fi
  check "$file: json recount equals h5ls's storage sizes" \
    [ "$(json_number "$json" recounted_stored_bits)" = "$(stored_bits "$file")" ]
  check "$file: no problems" grep -q '^  "problems": \[\]' "$json"
  if command -v jq > /dev/null; then
    check "$file: every tensor is $encoding" jq -e --arg e "$encoding" '[.tensors[].encoding == $e] | all' "$json"
    check "$file: sizes add up to the storage under /tensors" jq -e '.sizes | .codes_bytes + .scales_bytes +
      .zeros_bytes + .tile_scales_bytes + .bitmap_bytes == .tensors_storage_bytes' "$json"
    check "$file: storage under /tensors is the recount" \
      jq -e '.sizes.tensors_storage_bytes * 8 == .recounted_stored_bits' "$json"
    check "$file: tile scales are 2 bytes a tile in q8, none in f16" jq -e --arg e "$encoding" \
      '.sizes.tile_scales_bytes == (if $e == "affine-q8" then 2 * .tiles else 0 end)' "$json"
    # FORMAT.md: 8 x code_bytes + 8 x ceil(T / 2) + 16 x rows x groups + 16 x T (q8) or
    # 32 x rows x groups (f16)
    check "$file: every tensor's stored bits are FORMAT.md's formula" jq -e '[.tensors[] |
      (.shape[0] * ((.shape[1] + .group - 1) / .group | floor)) as $groups |
      (8 * .code_bytes + 8 * ((.tiles + 1) / 2 | floor) +
       (if .encoding == "affine-q8" then 16 * $groups + 16 * .tiles else 32 * $groups end)) == .stored_bits] | all' \
      "$json"
    check "$file: stored bpw per tensor = stored bits / weights" \
      jq -e '[.tensors[] | (.stored_bpw - .stored_bits / (.shape[0] * .shape[1])) | fabs < 1e-12] | all' "$json"
    check "$file: the tensors' stored bits sum to the recount" \
      jq -e '([.tensors[].stored_bits] | add) == .recounted_stored_bits' "$json"
  else
    echo "note: jq not installed; per-tensor accounting checks skipped"
  fi
}

"$BIN/scalebits-mpi" --budget 2.75 --out d.h5 --quiet
check "scalebits-mpi on the embedded model" [ -f d.h5 ]

# ---- inspect, text
"$BIN/scalebits-inspect" d.h5 > inspect.txt
check "inspect exits 0" [ $? -eq 0 ]
check "inspect: recount matches stored_bits" grep -q 'recounted .* matches stored_bits' inspect.txt
check "inspect: allocation hash recomputed" grep -q 'recomputed from the bit maps, matches' inspect.txt
check "inspect: budget" grep -q '^budget *2.75' inspect.txt
check "inspect: a row per layer" [ "$(grep -cE '^[0-3] +184320 ' inspect.txt)" -eq 4 ]
check "inspect: a row per quantized tensor" [ "$(grep -cE '^model\.layers\.[0-9]+\.(self_attn|mlp)\.[a-z_]+\.weight +[0-9]+x[0-9]+ ' inspect.txt)" -eq 28 ]
check "inspect: sizes" grep -q 'codes .* scales .* zeros .* tile scales .* bit maps' inspect.txt
check "inspect: the default encoding is affine-q8" grep -q '^encoding *affine-q8' inspect.txt
check "inspect: pass-through listed" grep -q '^model.norm.weight .* BF16' inspect.txt
check "inspect: provenance" grep -q 'source headers model.safetensors sha256:' inspect.txt
check "inspect: config summary" grep -q 'config_json .*num_hidden_layers 4' inspect.txt
echo "--- inspect sample"; sed -n '1,10p' inspect.txt

# ---- inspect --json
"$BIN/scalebits-inspect" d.h5 --json > inspect.json
check "inspect --json exits 0" [ $? -eq 0 ]
if command -v jq > /dev/null; then check "inspect --json is valid JSON" jq -e . inspect.json > /dev/null; fi
achieved=$(json_number inspect.json achieved_bpw)
budget=$(json_number inspect.json budget_bpw)
recounted=$(json_number inspect.json recounted_bpw)
echo "json: achieved $achieved, recounted $recounted, budget $budget"
check "json: achieved_bpw present" [ -n "$achieved" ]
check "json: achieved_bpw $achieved <= budget_bpw $budget" le "$achieved" "$budget"
check "json: recounted_bpw $recounted <= budget_bpw $budget" le "$recounted" "$budget"
check "json: stored bits recount equals the attribute" \
  [ "$(json_number inspect.json stored_bits)" = "$(json_number inspect.json recounted_stored_bits)" ]
check "json: recount equals h5ls's storage sizes" [ "$(json_number inspect.json stored_bits)" = "$(stored_bits d.h5)" ]
check "json: no problems" grep -q '^  "problems": \[\]' inspect.json
check "json: 28 tensors with histograms" [ "$(grep -c '"tiles_per_bitwidth"' inspect.json)" -eq $((1 + 4 + 28)) ]

# ---- inspect --svg
"$BIN/scalebits-inspect" d.h5 --svg svg > /dev/null
check "inspect --svg exits 0" [ $? -eq 0 ]
for f in layer-00 layer-01 layer-02 layer-03 overview; do
  check "svg/$f.svg is well-formed SVG" well_formed_svg "svg/$f.svg"
done
check "no other SVG files" [ "$(ls svg | wc -l)" -eq 5 ]
for kind in q_proj k_proj v_proj o_proj gate_proj up_proj down_proj; do
  check "layer-02.svg draws $kind with its mean bits" grep -q ">$kind<" svg/layer-02.svg
done
check "layer-02.svg has a legend" grep -q 'bits per weight in the tile' svg/layer-02.svg
check "layer-02.svg: every tile has a tooltip" [ "$(grep -c '<title>[0-9] bits: rows' svg/layer-02.svg)" -ge 7 ]
check "overview.svg: a row per layer" [ "$(grep -c '>layer [0-9]*</text>' svg/overview.svg)" -eq 4 ]

# ---- both encodings: the accounting, and the pictures of an affine-f16 file
check_accounting d.h5 affine-q8
"$BIN/scalebits-mpi" --budget 2.75 --scales f16 --out f16.h5 --quiet
check "scalebits-mpi --scales f16" [ -f f16.h5 ]
check_accounting f16.h5 affine-f16
"$BIN/scalebits-inspect" f16.h5 --svg svg-f16 > /dev/null
check "inspect --svg of the affine-f16 file exits 0" [ $? -eq 0 ]
for f in layer-00 layer-03 overview; do
  check "svg-f16/$f.svg is well-formed SVG" well_formed_svg "svg-f16/$f.svg"
done

# quantized embedding and lm_head: both outside the layers, at the two ends of the canonical
# order (a bug once drew the wrong tensor for lm_head)
"$BIN/scalebits-mpi" --budget 3 --quantize-embeddings --quantize-lm-head --out emb.h5 --quiet
"$BIN/scalebits-inspect" emb.h5 --svg svg-emb > /dev/null
check "outside-layers.svg for a quantized embedding and lm_head" well_formed_svg svg-emb/outside-layers.svg
check "outside-layers.svg draws embed_tokens and lm_head" \
  sh -c "grep -q '>embed_tokens<' svg-emb/outside-layers.svg && grep -q '>lm_head<' svg-emb/outside-layers.svg"
check "overview.svg lists both by name" \
  sh -c "grep -q '>model.embed_tokens.weight: ' svg-emb/overview.svg && grep -q '>lm_head.weight: ' svg-emb/overview.svg"

# ---- export
"$BIN/scalebits-export" d.h5 --out exp > export.txt
check "export exits 0" [ $? -eq 0 ]
check "export: config.json verbatim" cmp -s exp/config.json "$DEFAULT_MODEL/config.json"
check "export: model.safetensors" [ -f exp/model.safetensors ]
check "export: every source tensor with its dtype and shape" \
  diff <(st_entries "$DEFAULT_MODEL/model.safetensors") <(st_entries exp/model.safetensors)
check "export: 39 tensors" [ "$(st_entries exp/model.safetensors | wc -l)" -eq 39 ]
check "export: no temporary directory left" [ -z "$(ls -A | grep -E '\.tmp' || true)" ]
"$BIN/scalebits-export" d.h5 --out exp > again.txt 2>&1
rc=$?
check "export refuses a non-empty directory (exit 1)" [ "$rc" -eq 1 ]
check "export says why, in one line" one_line_error again.txt 'refusing to overwrite'
"$BIN/scalebits-export" d.h5 --out exp --force > /dev/null
check "export --force replaces a previous export" [ $? -eq 0 ] && [ -f exp/model.safetensors ]
mkdir keep && echo precious > keep/notes.txt
"$BIN/scalebits-export" d.h5 --out keep --force > keep.txt 2>&1
rc=$?
check "export --force never replaces a directory of other files" [ "$rc" -eq 1 ] && [ -f keep/notes.txt ]
check "... and names the foreign file" grep -q "notes.txt" keep.txt
"$BIN/scalebits-export" d.h5 --out exp32 --dtype F32 > /dev/null
check "export --dtype F32: every tensor F32" [ "$(st_entries exp32/model.safetensors | grep -vc ' "F32" ')" -eq 0 ]
"$BIN/scalebits-export" f16.h5 --out exp-f16 > /dev/null
check "export of the affine-f16 file exits 0" [ $? -eq 0 ]
check "export of the affine-f16 file: every source tensor with its dtype and shape" \
  diff <(st_entries "$DEFAULT_MODEL/model.safetensors") <(st_entries exp-f16/model.safetensors)
check "the two encodings export different weights (the encoding is honoured)" \
  sh -c "! cmp -s exp/model.safetensors exp-f16/model.safetensors"

# shards: about 0.5 MB each (the model's 1.5 MB of BF16 tensors)
"$BIN/scalebits-export" d.h5 --out shards --shard-gb 0.0005 > /dev/null
check "export --shard-gb exits 0" [ $? -eq 0 ]
nshards=$(ls shards | grep -c '^model-[0-9]*-of-[0-9]*\.safetensors$')
check "export --shard-gb: several shards ($nshards)" [ "$nshards" -ge 3 ]
check "export --shard-gb: no single-file checkpoint beside the shards" [ ! -e shards/model.safetensors ]
check "export --shard-gb: index names every tensor" \
  [ "$(grep -o '"[^"]*\.weight": *"model-[0-9]*-of-[0-9]*\.safetensors"' shards/model.safetensors.index.json | wc -l)" -eq 39 ]
check "export --shard-gb: the shards hold every source tensor" \
  diff <(st_entries "$DEFAULT_MODEL/model.safetensors") <(for f in shards/model-*.safetensors; do st_entries "$f"; done | sort)
check "export --shard-gb: the project's checkpoint reader opens the sharded export" \
  sh -c "'$BIN/scalebits-mpi' --model shards --budget 4 --plan 2>&1 | grep -q 'source: $nshards file(s), .*, 39 tensors'"

# ---- all 8-bit, in each encoding: the exported model evaluates at the FP perplexity (reference.md:
# 3.3824), and so does the file itself through scalebits-eval --quantized
for scales in q8 f16; do
  "$BIN/scalebits-mpi" --bits 8 --budget 16 --group 32 --scales $scales --out all8-$scales.h5 --quiet
  "$BIN/scalebits-export" all8-$scales.h5 --out exp8-$scales > /dev/null
  check "all-8-bit $scales export exits 0" [ $? -eq 0 ]
  if [ -x "$BIN/scalebits-eval" ]; then
    line=$("$BIN/scalebits-eval" --model exp8-$scales --text "$DEFAULT_MODEL/heldout.txt" --windows 200 --ctx 256)
    ppl=$(sed -n 's/^perplexity=\([0-9.]*\) .*/\1/p' <<< "$line")
    echo "all-8-bit $scales export: $line (FP 3.3824)"
    check "all-8-bit $scales export within 0.1% of the FP perplexity ($ppl vs 3.3824)" near_fp "$ppl"
    if "$BIN/scalebits-eval" --help | grep -q -- '--quantized.*not yet supported'; then
      echo "note: scalebits-eval --quantized is pending (tools/eval_main.c); io/sb_h5_source.h is ready for it"
    else
      line=$("$BIN/scalebits-eval" --quantized all8-$scales.h5 --text "$DEFAULT_MODEL/heldout.txt" --windows 200 --ctx 256)
      ppl=$(sed -n 's/^perplexity=\([0-9.]*\) .*/\1/p' <<< "$line")
      echo "scalebits-eval --quantized all8-$scales.h5: $line"
      check "eval --quantized all-8-bit $scales within 0.1% of FP ($ppl vs 3.3824)" near_fp "$ppl"
    fi
  else
    echo "note: scalebits-eval not built; perplexity check skipped"
  fi
done

# ---- broken files: one line naming the file, exit 1, nothing written
echo "not HDF5" > text.h5
head -c 100000 d.h5 > truncated.h5
h5copy -i d.h5 -o plain.h5 -s /passthrough -d /passthrough
for f in text.h5 truncated.h5 plain.h5 missing.h5; do
  "$BIN/scalebits-inspect" "$f" > /dev/null 2> err.txt
  rc=$?
  check "inspect $f exits 1" [ "$rc" -eq 1 ]
  check "inspect $f: one line naming the file" one_line_error err.txt "$f"
  echo "  $(cat err.txt)"
  "$BIN/scalebits-export" "$f" --out "out-$f" > /dev/null 2> err.txt
  rc=$?
  check "export $f exits 1 with one line, writes nothing" \
    [ "$rc" -eq 1 ] && one_line_error err.txt "$f" && [ ! -e "out-$f" ]
done
check "not a scalebits file says so" sh -c "'$BIN/scalebits-inspect' plain.h5 2>&1 | grep -q 'not a scalebits file'"
check "truncated file says so" sh -c "'$BIN/scalebits-inspect' truncated.h5 2>&1 | grep -q 'truncated'"
"$BIN/scalebits-inspect" > /dev/null 2>&1
check "inspect without a file is a usage error (exit 2)" [ $? -eq 2 ]
"$BIN/scalebits-export" d.h5 > /dev/null 2>&1
check "export without --out is a usage error (exit 2)" [ $? -eq 2 ]
"$BIN/scalebits-export" d.h5 --out x --dtype I8 > /dev/null 2>&1
check "export --dtype I8 is a usage error (exit 2)" [ $? -eq 2 ]

# ---- the acceptance run on stories260K (F32, ragged 172-wide FFN), when the shared material is here
if have_stories; then
  "$BIN/scalebits-mpi" --model "$STORIES" --budget 4.0 --tile 32x32 --group 32 --out x.h5 --quiet
  "$BIN/scalebits-inspect" x.h5 --json > x.json
  check "stories260K: inspect exits 0" [ $? -eq 0 ]
  check "stories260K: achieved_bpw <= 4.0" le "$(json_number x.json achieved_bpw)" 4.0
  "$BIN/scalebits-inspect" x.h5 --svg svg-x > /dev/null
  check "stories260K: 5 layer pictures and the overview" [ "$(ls svg-x/*.svg | wc -l)" -eq 6 ]
  check "stories260K: layer-04.svg well-formed" well_formed_svg svg-x/layer-04.svg
  "$BIN/scalebits-export" x.h5 --out exp-x > /dev/null
  check "stories260K: export keeps every tensor, dtype F32 and shape" \
    diff <(st_entries "$STORIES/model.safetensors") <(st_entries exp-x/model.safetensors)
else
  echo "note: stories260K checks skipped ($STORIES not present)"
fi
finish
