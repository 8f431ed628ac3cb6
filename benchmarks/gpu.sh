#!/usr/bin/env bash
# The GPU figures on a CUDA machine that has nothing but this repository (issue 17): install, then
# benchmarks/gpu.py (sd14-random is built from its config; nothing is downloaded but the packages).
# Reuses a Python that already has torch with CUDA (OSTAF_PYTHON=/path/to/python), else makes .venv-gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${OSTAF_PYTHON:-}"
if [ -z "$python" ]; then
  if ! [ -x .venv-gpu/bin/python ]; then
    echo "installing into .venv-gpu (ostaf with its [gpu] extra: bitsandbytes for 8-bit AdamW)"
    python3 -m venv .venv-gpu
    .venv-gpu/bin/python -m pip install -q --upgrade pip
    .venv-gpu/bin/python -m pip install -q -e '.[gpu]'
  fi
  python=.venv-gpu/bin/python
fi
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU: install a CUDA build of torch')"
exec "$python" benchmarks/gpu.py "$@"
