#!/bin/bash
# The GPU profile of the main job (`python -m launch.demo profile=gpu`: bert-small on the real corpus, then the
# six-task suite, pretrained vs random init, and its PASS/FAIL self-check) on an offline GPU machine, in one call.
#
#   PREPARE=1 bash bench/gpu_demo.sh   # here, with the registry: wheels in .whl/ (bench/gpu_tools.py's list),
#                                      # the real sets in .gpu/real.tar.xz, and a check that both fit the transfer
#   bash bench/gpu_demo.sh             # on the GPU machine: install the wheels, unpack the sets, run the profile,
#                                      # copy the headline, results and logs to $OUT/gpu_demo
#   CPU=1 bash bench/gpu_demo.sh       # the same steps here, through rehearse=true (tiny sizes, a few minutes)
#
# The profile promises at most 12 minutes; a device call may run 10, so the run stops itself at LIMIT seconds
# (default 570: timeout's SIGTERM, which launch.demo passes on; pretraining saves a checkpoint at that step) and says
# so; the same command on the same machine resumes. The wall-time check then covers the last call only.
set -euo pipefail
WORK=${WORK:-/tmp/bertrun-demo}
RESULTS=${OUT:-$WORK}/gpu_demo
CPU=${CPU:-0}
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-570}
SETS="wikitext2 news wiki_leads mr rotten_tomatoes trec sms_spam disaster_tweets wnut16"

if [ "${PREPARE:-0}" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  mkdir -p .gpu
  $PY bench/gpu_tools.py wheels .whl mwparserfromhell blingfire zstandard  # data_prep runs there
  # The sets as the main job reads them (data_prep.fetch reuses converted sets there, with no registry).
  $PY -m data_prep.fetch $SETS out="$WORK/real"
  tar -C "$WORK" -cJf .gpu/real.tar.xz real
  $PY bench/gpu_tools.py fits .whl .gpu
  echo "ready: run 'bash bench/gpu_demo.sh' on the GPU machine, carrying .whl and .gpu"
  exit 0
fi

mkdir -p "$WORK" "$RESULTS"
if [ "$CPU" = 0 ]; then
  [ -d .whl ] || { echo "FAILED: no .whl/ here: run PREPARE=1 bash bench/gpu_demo.sh where the registry is"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  MODE=""
else
  PY=${PYTHON:-.venv/bin/python}
  export PYTHONPATH=$PWD
  MODE="rehearse=true"
fi
$PY -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1

# The real sets: unpacked from what PREPARE made; without it (CPU=1 here) the main job fetches them itself.
if [ ! -d "$WORK/real" ] && [ -f .gpu/real.tar.xz ]; then
  $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" .gpu/real.tar.xz "$WORK"
fi
for s in $SETS; do
  [ -f "$WORK/real/$s/record.json" ] || [ "$CPU" = 1 ] || { echo "FAILED: $WORK/real/$s is missing (PREPARE=1)"; exit 1; }
done

rc=0
timeout "$LIMIT" $PY -m launch.demo profile=gpu out="$WORK" $MODE "$@" || rc=$?
for f in demo_summary.md demo_results.json pretrain/metrics.jsonl pretrain/summary.json; do
  [ -f "$WORK/$f" ] && cp "$WORK/$f" "$RESULTS/${f//\//_}"
done
[ -d "$WORK/logs" ] && cp -r "$WORK/logs" "$RESULTS/"
case $rc in
  0) if [ "$CPU" = 1 ]; then echo "REHEARSED: every stage ran (tiny sizes: the self-check is not expected to pass)"
     else echo "PASSED: every stage ran and every self-check passed (results in $RESULTS)"; fi ;;
  1) echo "FAILED: the self-check (above; $RESULTS/demo_summary.md)"; exit 1 ;;
  124) echo "STOPPED at ${LIMIT}s: run the same command again on this machine to resume"; exit 124 ;;
  *) echo "FAILED: launch.demo exited $rc (logs in $RESULTS/logs)"; exit "$rc" ;;
esac
