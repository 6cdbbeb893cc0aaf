#!/usr/bin/env bash
# Every CPU benchmark, one after the other (about 6 minutes on 2 cores). Numbers and ratios only; nothing asserted.
# The GPU ones (bench/gpu_check.sh, bench/gpu_demo.sh) need a GPU and are not run here (CPU=1 rehearses them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
echo "# $(date -u +%FT%TZ) on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo; echo "## data_prep"; "$PY" bench/data_prep.py
echo; echo "## pretraining throughput"; "$PY" bench/pretrain_throughput.py
echo; echo "## packing and the lean step"; "$PY" bench/packing.py
echo; echo "## the loader with weighted sources"; "$PY" bench/blend_loader.py
