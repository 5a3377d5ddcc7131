#!/usr/bin/env bash
# scalebits-generate as a user runs it: text from the embedded model's packed file and from its
# float checkpoint; the same seed gives the same text (for any thread count), another seed
# another; stories260K through its llama2.c tokenizer, and as token ids without one; clear
# one-line errors for a prompt longer than the context, a text prompt without a tokenizer,
# bad options.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
gen() { "$BIN/scalebits-generate" "$@" 2> gen.err; }
"$BIN/scalebits-mpi" --budget 3.5 --tile 32x32 --group 32 --out q.h5 --quiet

a=$(gen --quantized q.h5 --prompt "It is a truth universally acknowledged" --max-tokens 60 --seed 7)
check "packed: exit 0" [ $? -eq 0 ]
echo "packed, seed 7: $a"
check "packed: the output starts with the prompt" [ "${a:0:38}" = "It is a truth universally acknowledged" ]
check "packed: 60 bytes follow the prompt" [ "${#a}" -eq $((38 + 60)) ]
check "packed: tokens/s and peak RSS on stderr" grep -q 'generated 60 tokens in .* tokens/s.*weights packed.*peak RSS' gen.err
b=$(gen --quantized q.h5 --prompt "It is a truth universally acknowledged" --max-tokens 60 --seed 7 --threads 2)
check "the same seed gives the same text (1 and 2 threads)" [ "$a" = "$b" ]
c=$(gen --quantized q.h5 --prompt "It is a truth universally acknowledged" --max-tokens 60 --seed 8)
check "another seed gives another text" [ "$a" != "$c" ]
g=$(gen --quantized q.h5 --prompt "And God said" --max-tokens 40 --temperature 0)
check "greedy decoding: exit 0" [ $? -eq 0 ]
g2=$(gen --quantized q.h5 --prompt "And God said" --max-tokens 40 --temperature 0 --top-p 0.5 --seed 99)
check "greedy decoding ignores the seed" [ "$g" = "$g2" ]
f=$(gen --prompt "And God said" --max-tokens 40 --temperature 0)
check "the float checkpoint (default model) generates" sh -c "[ ${#f} -eq 52 ] && grep -q 'weights float32' gen.err"
echo "float, greedy: $f"

# the context: the embedded model has 256 positions
long=$(printf 'x%.0s' $(seq 1 300))
gen --quantized q.h5 --prompt "$long" --max-tokens 5 > /dev/null
check "a prompt longer than the context: exit 1" [ $? -eq 1 ]
check "... with one line saying so" sh -c "[ \$(wc -l < gen.err) -eq 1 ] && grep -q 'longer than the context of 256' gen.err"
gen --quantized q.h5 --prompt "abcdefghij" --ctx 8 --max-tokens 5 > /dev/null
check "--ctx 8 with a 10-token prompt: exit 1, names --ctx" sh -c "[ $? -eq 1 ] && grep -q -- '--ctx' gen.err"
out=$(gen --quantized q.h5 --prompt "abcdefgh" --ctx 12 --max-tokens 50)
# 12 positions hold 12 tokens; the logits at the last one still give a 13th, which is printed
check "generation stops when the context is full" sh -c "[ ${#out} -eq 13 ] && grep -q 'context is full' gen.err"
gen --quantized q.h5 --prompt "a" --top-p 0 > /dev/null
check "--top-p 0: exit 2" [ $? -eq 2 ]
gen --quantized q.h5 > /dev/null
check "no prompt: exit 2" [ $? -eq 2 ]
gen --quantized missing.h5 --prompt "a" > /dev/null
check "a missing file: exit 1, one line naming it" sh -c "[ $? -eq 1 ] && grep -q 'missing.h5' gen.err && [ \$(wc -l < gen.err) -eq 1 ]"

if have_stories; then
  tokenizer=$SB_SHARED_DIR/models/stories260K/tok512.bin
  "$BIN/scalebits-mpi" --model "$STORIES" --budget 4.5 --tile 32x32 --group 32 --search minmax --out stories.h5 --quiet
  s=$(gen --quantized stories.h5 --tokenizer "$tokenizer" --prompt "Once upon a time" --max-tokens 60 --seed 1)
  check "stories260K: exit 0" [ $? -eq 0 ]
  echo "stories260K packed: $s"
  check "stories260K: the text starts with the prompt" [ "${s:0:16}" = "Once upon a time" ]
  check "stories260K: words follow" sh -c "[ \$(printf '%s' '$s' | wc -w) -ge 10 ]"
  gen --quantized stories.h5 --prompt "Once upon a time" > /dev/null
  check "stories260K without a tokenizer: --prompt refused, exit 2" sh -c "[ $? -eq 2 ] && grep -q -- '--tokenizer' gen.err"
  head -c 40 "$SB_SHARED_DIR/data/tinystories_val.tok512.u32" > prompt.u32
  ids=$(gen --quantized stories.h5 --prompt-tokens prompt.u32 --max-tokens 5 --seed 1)
  check "stories260K with --prompt-tokens: 15 token ids out" sh -c "[ \$(echo '$ids' | wc -w) -eq 15 ] && echo '$ids' | grep -qE '^[0-9 ]+$'"
  gen --quantized stories.h5 --tokenizer "$SB_SHARED_DIR/models/stories260K/stories260K.bin" --prompt "a" > /dev/null
  check "a file that is not a tokenizer: exit 1, one line" sh -c "[ $? -eq 1 ] && [ \$(wc -l < gen.err) -eq 1 ]"
else
  echo "SKIP: stories260K not present"
fi
finish
