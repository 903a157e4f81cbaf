#!/usr/bin/env bash
# Build the peer tools' virtual environments for the benchmarks, outside the repository.
#
#   bash benchmarks/peers.sh [PEERS_DIR]        (default: /tmp/imageclf-peers)
#
# Two environments, because img2dataset slows down by about a third when torch is importable
# beside it (issue 4):
#   PEERS_DIR/img2dataset   img2dataset alone
#   PEERS_DIR/torch         fastai (download_images) and imagededup (PHash, DHash), with torch
# torch/torchvision are pinned to the project's pair so uv reuses its cached wheels.
# Idempotent: an environment that already imports its tools is left as it is.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
UV="${UV:-$HERE/.tools/bin/uv}"
PEERS_DIR="${1:-${PEERS_DIR:-/tmp/imageclf-peers}}"
PY="${PEERS_PYTHON:-python3.11}"
mkdir -p "$PEERS_DIR"

if ! "$PEERS_DIR/img2dataset/bin/python" -c "import img2dataset" 2>/dev/null; then
  "$UV" venv --quiet --python "$PY" "$PEERS_DIR/img2dataset"
  "$UV" pip install --quiet --python "$PEERS_DIR/img2dataset/bin/python" img2dataset
fi
if ! "$PEERS_DIR/torch/bin/python" -c "import fastai.vision.all, imagededup.methods" 2>/dev/null; then
  "$UV" venv --quiet --python "$PY" "$PEERS_DIR/torch"
  "$UV" pip install --quiet --python "$PEERS_DIR/torch/bin/python" \
    "torch==2.15.0" "torchvision==0.29.2" fastai imagededup
fi
# Bytecode compiled ahead, as pip does when it installs and as our Makefile does for .venv/, so
# no tool compiles its imports at start-up (idempotent: compileall skips up-to-date files).
for env in img2dataset torch; do
  "$PEERS_DIR/$env/bin/python" -m compileall -q -j 0 "$PEERS_DIR/$env/lib" >/dev/null || true
done
"$PEERS_DIR/img2dataset/bin/python" -c "import img2dataset, importlib.metadata as m; print('img2dataset', m.version('img2dataset'))"
"$PEERS_DIR/torch/bin/python" -c "import importlib.metadata as m; print('fastai', m.version('fastai'), 'imagededup', m.version('imagededup'), 'torch', m.version('torch'))"
