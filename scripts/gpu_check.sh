#!/usr/bin/env bash
# Check this project on a real CUDA GPU in one command (< 8 minutes on one GPU): the GPU-only tests
# (pytest -m gpu) and the bf16 MoE benchmark, one summary. Without CUDA: one skip line, exit 0.
# PYTHON selects the interpreter (default: the project's .venv, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" scripts/gpu_check.py "$@"
