#!/usr/bin/env bash
# Create or reuse .venv and install headvec with the extras asked for ($1, e.g. "test" or "test,bench").
# A torch the user already has is kept: if the base Python imports torch (a CUDA build, say), the venv
# is created with --system-site-packages and uses it. Otherwise the CPU build torch==2.13.0 goes in
# first, so the open torch range in pyproject never pulls a multi-GB CUDA wheel.
set -euo pipefail
extras="${1:-}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c "import torch" 2>/dev/null; then
    echo "install: using the torch of $python ($("$python" -c 'import torch; print(torch.__version__)'))"
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --upgrade pip
fi
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "$venv/bin/pip" install -q "torch==2.13.0"
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
"$venv/bin/pip" install -q -e "$target"
