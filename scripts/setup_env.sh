#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install napari-instance-tuner with its test extras.
# Usage: source-free; prints nothing but pip's errors. VENV defaults to .venv in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: a build of torchvision that matches it (the CPU-only torch 2.13.0 wheel some
# machines carry breaks torchvision's operators). On a GPU machine this is the CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[testing]"
# napari needs an X server for OpenGL on a machine without a display: install Xvfb when we can.
if ! command -v Xvfb >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q xvfb >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q xvfb >/dev/null))
  else
    echo "note: Xvfb is not installed; GUI tests and headless screenshots need it (apt-get install xvfb)" >&2
  fi
fi
