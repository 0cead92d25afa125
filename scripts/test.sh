#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export QT_QPA_PLATFORM=offscreen
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
