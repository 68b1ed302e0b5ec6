#!/usr/bin/env bash
# Create or reuse .venv and install headvec with the extras asked for ($1, e.g. "test" or "test,bench").
# A torch already importable in the venv (a CUDA build, say) is kept; otherwise the CPU 2.13.0 build
# is installed first, so that the open torch range in pyproject never pulls a multi-GB CUDA wheel.
set -euo pipefail
extras="${1:-}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "$venv/bin/pip" install -q "torch==2.13.0"
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
"$venv/bin/pip" install -q -e "$target"
