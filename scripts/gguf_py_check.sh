#!/usr/bin/env bash
# Checks our GGUF export with llama.cpp's gguf-py (pip package `gguf`). Not run by CI.
# Usage: scripts/gguf_py_check.sh [venv-dir]   (default /work/venv-interop)
set -euo pipefail
VENV=${1:-/work/venv-interop}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q gguf numpy
fi
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
GGUF_FIXTURE_DIR="$DIR" cargo test --all-features --test io_gguf_interop -- --ignored write_fixture_for_gguf_py
"$VENV/bin/python" "$(dirname "$0")/gguf_py_check.py" "$DIR"
