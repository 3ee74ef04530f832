#!/usr/bin/env bash
# GPU benchmark, meant to run in one call on the lent H100/H200 (no Rust there: carry the binary
# built by `make build-cuda` and the model directories). NOT YET RUN ON A GPU.
#
# usage: benches/gpu/bench.sh WHISPERD_BIN SHARED_DIR MODEL_DIR [MODEL_DIR…]
# Prints a Markdown table: model, jfk end to end (warm, from the log), speed over the English eval
# set (whisperd batch), and the same files through Hugging Face transformers fp16 (the peer).
set -euo pipefail
BIN=$1; SHARED=$2; shift 2
SP=$(ls -d /opt/torch/.venv/lib/python3.*/site-packages 2>/dev/null | head -1 || true)
if [ -n "$SP" ]; then
  LD_LIBRARY_PATH="$(ls -d "$SP"/nvidia/*/lib | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
fi
PY=${PYTHON:-/opt/torch/.venv/bin/python}
FILES=$(python3 -c "import json,sys; [print('$SHARED/eval/'+r['path']) for r in map(json.loads, open('$SHARED/eval/manifest.jsonl')) if r['lang']=='en' and r['category'] in ('jfk','librispeech','longform')]")
AUDIO=$(python3 -c "import json; print(sum(r['duration_s'] for r in map(json.loads, open('$SHARED/eval/manifest.jsonl')) if r['lang']=='en' and r['category'] in ('jfk','librispeech','longform')))")
echo "| model | jfk warm (s) | eval set x real time | transformers fp16 x real time | GPU memory (MiB) |"
echo "|---|---|---|---|---|"
for MODEL in "$@"; do
  # jfk twice in one process: the second file's time is the warm figure.
  JFK=$(RUST_LOG=info "$BIN" transcribe --device cuda --model "$MODEL" --output-dir /tmp/gpu-jfk "$SHARED/eval/jfk.wav" "$SHARED/eval/formats/jfk.flac" 2>&1 \
        | grep -o 'seconds=[0-9.]*' | tail -1 | cut -d= -f2)
  T0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$BIN" batch --device cuda --model "$MODEL" --format json --overwrite --output-dir /tmp/gpu-batch $FILES >/dev/null 2>&1
  T1=$(date +%s.%N)
  OURS=$(python3 -c "print(round($AUDIO / ($T1 - $T0), 1))")
  # shellcheck disable=SC2086
  PEER=$("$PY" "$(dirname "$0")/hf_peer.py" "$MODEL" $FILES 2>/dev/null || echo "n/a")
  MEM=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 || echo "n/a")
  echo "| $(basename "$MODEL") | $JFK | $OURS | $PEER | $MEM |"
done
