#!/usr/bin/env bash
# Set up llmkit: a virtual environment in .venv with PyTorch and llmkit installed (editable).
#
#   ./setup.sh            safe to run again: it keeps what is already right
#
# PyTorch: with an NVIDIA GPU (nvidia-smi works) a CUDA build; otherwise a CPU build, taken from a
# local wheel when pip can see one (no download) or from PyTorch's CPU index (about 200 MB instead
# of the several-GB CUDA build a plain `pip install torch` pulls on Linux).
# Settings: PYTHON=python3.11  LLMKIT_VENV=.venv  LLMKIT_TORCH=auto|cpu|cuda
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TORCH_VERSION=2.13.0
VENV=${LLMKIT_VENV:-.venv}
PYTHON=${PYTHON:-python3}
say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# 1. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON=/path/to/python3.10+"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "llmkit needs Python 3.10 or newer"
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a venv (on Debian/Ubuntu: apt install python3-venv)"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

# 2. PyTorch, the right build for this machine.
want=${LLMKIT_TORCH:-auto}
if [ "$want" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then want=cuda; else want=cpu; fi
fi
# "cpu 2.13.0+cpu" or "cuda 2.13.0+cu128"; empty when torch is missing or older than llmkit needs.
have=$("$PY" -c 'import torch, sys
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
sys.exit((major, minor) < (2, 4) or print(("cuda" if torch.version.cuda else "cpu"), torch.__version__))' 2>/dev/null || true)
if [[ "$have" == "$want "* ]]; then
  say "PyTorch already installed: $have"
  want=kept
elif [ -n "$have" ]; then
  say "replacing PyTorch ($have) with a $want build"
  "$PY" -m pip uninstall --yes --quiet torch
fi
if [ "$want" = kept ]; then
  :
elif [ "$want" = cuda ]; then
  say "NVIDIA GPU found: installing PyTorch $TORCH_VERSION with CUDA"
  # PyPI's Linux wheels are CUDA builds; ignore local CPU-only wheels that pip config may point at.
  PIP_FIND_LINKS="" pip_install "torch==$TORCH_VERSION"
elif [ "$want" = cpu ]; then
  if [ "$(uname -s)" = Darwin ]; then
    say "installing PyTorch $TORCH_VERSION (macOS: CPU and MPS)"
    pip_install "torch==$TORCH_VERSION"
  elif pip_install --quiet --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null \
       && "$PY" -c 'import importlib.metadata as m, sys; sys.exit(not m.version("torch").endswith("+cpu"))'; then
    # A CPU wheel pip can see without the network (a wheelhouse in pip's config): take it, then
    # its dependencies from the index. Checked by version label: torch cannot import before them.
    say "installed PyTorch $TORCH_VERSION (CPU) from a local wheel; adding its dependencies"
    pip_install --quiet "torch==$TORCH_VERSION"
  else
    "$PY" -m pip uninstall --yes --quiet torch 2>/dev/null || true  # a local non-CPU wheel, if any
    say "no NVIDIA GPU: installing PyTorch $TORCH_VERSION, CPU build, from download.pytorch.org"
    pip_install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
  fi
else
  die "LLMKIT_TORCH must be auto, cpu or cuda, got '$want'"
fi

# 3. llmkit itself (editable: the code you read is the code that runs) and its test tools.
say "installing llmkit and its dependencies"
pip_install --quiet -e ".[test]"

"$VENV/bin/llmkit" --version >/dev/null || die "llmkit did not install"
"$PY" -c 'import torch; print("setup: torch", torch.__version__, "| CUDA available:", torch.cuda.is_available())'
say "done. Try: $VENV/bin/llmkit train recipes/shakespeare_char.yaml"
