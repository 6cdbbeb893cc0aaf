#!/usr/bin/env bash
# Install and run every test on a fresh machine: a virtual environment in .venv, torch (CPU build) first, the project
# with its test extras, a real Slurm cluster (tests/cluster/slurm_up.sh: needs root and apt), then pytest.
# Extra arguments go to pytest (bash scripts/test.sh -k resume). BERTRUN_SKIP_SLURM=1 skips the cluster and its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
marker=()
if [ "${BERTRUN_SKIP_SLURM:-0}" = 1 ]; then
  marker=(-m "not slurm")
else
  trap 'bash tests/cluster/slurm_down.sh >/dev/null 2>&1 || true' EXIT
  bash tests/cluster/slurm_up.sh
fi
.venv/bin/python -m ruff check .
# Four workers on 2 cores (BERTRUN_TEST_WORKERS=0 runs serially): the Slurm tests mostly wait on the cluster and most
# others spend part of their time in one process (starting Python, torch, transformers and DeepSpeed), so extra
# workers fill the idle core: with three, the cores were busy 1.7 of 2 on average (README.md has the timings);
# conftest.py keeps each module, and the Slurm tests, on one worker.
.venv/bin/python -m pytest -n "${BERTRUN_TEST_WORKERS:-4}" --dist loadgroup --no-loadscope-reorder "${marker[@]}" "$@"
