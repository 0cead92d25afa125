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
# torch's CUDA build and its libraries take about 6.6 GB: say so before pip fails half-way with
# "No space left on device" (it happened on a machine whose /tmp held old clones).
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  free_kb=$(df -Pk "$VENV" | awk 'NR==2 {print $4}')
  if [ "${free_kb:-0}" -lt $((7 * 1024 * 1024)) ]; then
    echo "error: $(df -Ph "$VENV" | awk 'NR==2 {print $4}') free where $VENV lives; installing torch needs about 7 GB." >&2
    exit 1
  fi
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: a build of torchvision that matches it (the CPU-only torch 2.13.0 wheel some
# machines carry breaks torchvision's operators). On a GPU machine this is the CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[testing]"
# napari needs an X server for OpenGL on a machine without a display (Xvfb, with Mesa's software
# OpenGL), and Qt 6's xcb platform needs a few X libraries a bare machine lacks.
APT_PACKAGES="xvfb xauth libgl1-mesa-dri libegl1 libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1
  libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libxcb-xkb1 libxcb-randr0 libdbus-1-3"
missing=$(dpkg-query -W -f='${Status} ${Package}\n' $APT_PACKAGES 2>&1 | grep -v "^install ok installed" || true)
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $APT_PACKAGES >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $APT_PACKAGES >/dev/null; }
  else
    echo "note: install these packages for GUI tests and headless screenshots: $APT_PACKAGES" >&2
  fi
fi
