#!/bin/bash
# bert-base at seq 128 on one GPU, bf16, ZeRO-2: tokens/s and MFU from metrics.jsonl (median of logging windows,
# the first dropped as warm-up). Run from the repo root on a GPU machine with the project's Python dependencies;
# on this workplace's lent H200 they travel as wheels in .whl/ and the raw corpus in .gpu/ (bench/README.md).
#
#   bash bench/gpu_pretrain.sh [STEPS]
set -euo pipefail
STEPS=${1:-120}
WORK=${WORK:-/tmp/bertrun-gpu}
RESULTS=${OUT:-$WORK}
mkdir -p "$WORK" "$RESULTS"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1

# Data: gensim's Wikipedia dump, BERT uncased vocabulary, dupe_factor 10 (about 57k instances: epochs of ~220 steps).
DUMP=${DUMP:-.gpu/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2}
TOK=${TOK:-.gpu/tokenizer}
if [ ! -f "$WORK/data/manifest.json" ]; then
  t0=$SECONDS
  python3 -m data_prep input="$DUMP" output="$WORK/data" tokenizer.path="$TOK" dupe_factor=10 shard_mb=0.25 \
    val_fraction=0.02 workers=${PREP_WORKERS:-16} progress=false > "$RESULTS/data_prep.log" 2>&1 \
    || { tail -30 "$RESULTS/data_prep.log"; exit 1; }
  echo "data_prep: $((SECONDS - t0)) s"; tail -4 "$RESULTS/data_prep.log"
fi

run() {
  local name=$1; shift
  local t0=$SECONDS
  python3 -m pipeline.pretrain data.path="$WORK/data" model=${MODEL:-bert-base} engine=gpu engine.zero_stage=2 \
    engine.precision=bf16 global_batch_size=256 max_steps="$STEPS" logger.every_steps=10 logger.progress=false \
    eval.every_steps=1000000 eval.at_end=false checkpoint.every_steps=1000000 checkpoint.at_end=false \
    run_dir="$WORK/$name" "$@" ${EXTRA:-} > "$RESULTS/$name.log" 2>&1 || { tail -30 "$RESULTS/$name.log"; return 1; }
  cp "$WORK/$name/metrics.jsonl" "$RESULTS/$name.metrics.jsonl"
  python3 - "$WORK/$name/metrics.jsonl" "$name" "$((SECONDS - t0))" "$*" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l][1:]
med = lambda k: statistics.median(r[k] for r in recs if r.get(k) is not None)
print(f"{sys.argv[2]:>10}: {med('tokens_per_s'):>10,.0f} tokens/s  {med('samples_per_s'):>7,.0f} samples/s  "
      f"MFU {med('mfu'):.1%}  data wait {med('data_wait_frac'):.1%}  peak mem {max(r['mem_gb'] for r in recs):.1f} GB  "
      f"loss {recs[-1]['loss']:.3f}  wall {sys.argv[3]} s  [{sys.argv[4]}]")
PY
}
run eager                                             # micro-batch 128 (engine=gpu), 2 accumulation steps
run micro256 engine.micro_batch_size=256             # the whole global batch in one micro-batch
run compile engine.compile=true                      # torch.compile: ~3.5 min of compilation first
