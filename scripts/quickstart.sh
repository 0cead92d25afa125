#!/usr/bin/env bash
# Set up the environment and open napari with the plugin docked on a synthetic gland sample
# segmented by the shipped three-branch-glas model. Without a display it runs under Xvfb and writes
# quickstart/screenshot.png and quickstart/labels.tif instead of opening a window.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
BIN="${VENV:-.venv}/bin"
if [ -n "${DISPLAY:-}" ] && [ -z "${CI:-}" ]; then
  exec "$BIN/napari-instance-tuner" demo "$@"
fi
mkdir -p quickstart
exec xvfb-run -a -s "-screen 0 1600x1000x24" "$BIN/napari-instance-tuner" demo \
  --screenshot quickstart/screenshot.png --labels quickstart/labels.tif "$@"
