#!/bin/bash
# The GPU fast path on one GPU, in one script that fits ~10 minutes on an H200: bert-base at seq 128 and 512,
# bert-large at seq 128; for each, the previous step, the lean step, and lean + packing + varlen attention (and,
# with COMPILE=1, + torch.compile on fixed shapes). Real tokens/s and MFU on real tokens only (padding never
# counted), the real-token fraction, and a GEMM-only ceiling for the same shapes; one table (bench/gpu_tools.py).
# Every variant uses attention dropout 0 (varlen has none), global batch 256, bf16, loader workers 4.
#
#   bash bench/gpu_pretrain.sh                  # on the GPU machine (wheels in .whl/, corpus + tokenizer in .gpu/)
#   CPU=1 bash bench/gpu_pretrain.sh            # a tiny end-to-end rehearsal on a CPU (bert-tiny, fp32)
#
# It fails loudly (non-zero, FAILED: ...) rather than print a number it cannot vouch for: the varlen kernel is
# checked against the SDPA block mask first, and every row's tokens/s, MFU, real fraction and loss are checked.
set -euo pipefail
STEPS=${STEPS:-30}
WORK=${WORK:-/tmp/bertrun-gpu}
RESULTS=${OUT:-$WORK}/fastpath
CPU=${CPU:-0}
mkdir -p "$WORK" "$RESULTS"
rm -f "$RESULTS"/*.metrics.jsonl "$RESULTS"/*.meta.json "$RESULTS"/gemm.jsonl
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ] && [ "$CPU" = 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
PY=${PYTHON:-python3}
export TOKENIZERS_PARALLELISM=false
if [ "$CPU" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  ENGINE="engine=gpu engine.precision=bf16 engine.loader_workers=4"
  CASES="bert-base:128:128 bert-base:512:32 bert-large:128:128"   # model:seq:micro-batch
  DUMP=${DUMP:-.gpu/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2}
  TOK=${TOK:-.gpu/tokenizer}
  DUPE=${DUPE:-5}; GB=256; PEAK=""
else
  ENGINE="engine=cpu engine.loader_workers=1"
  CASES=${CPU_CASES:-"bert-tiny:128:8"}  # one case runs every variant and check; CPU_CASES for more
  DUMP=$($PY -c "import gensim, pathlib; print(pathlib.Path(gensim.__file__).parent / 'test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2')")
  TOK=$($PY -c "import sys; sys.path.insert(0, 'bench'); from pretrain_throughput import bert_tokenizer_dir; print(bert_tokenizer_dir())")
  DUPE=1; GB=16; STEPS=${CPU_STEPS:-6}
  PEAK="logger.peak_tflops=1.0"  # a nominal peak, only so that the MFU path is exercised end to end
fi
$PY -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1

# 1. The varlen kernel against the SDPA block mask (same weights, same packed batch): refuse to go on if it differs.
$PY bench/gpu_tools.py check

# 2. Data: gensim's Wikipedia dump at each sequence length (BERT uncased vocabulary).
prep() {
  local seq=$1 out="$WORK/data-$1"
  if [ ! -f "$out/manifest.json" ]; then
    local t0=$SECONDS
    $PY -m data_prep input="$DUMP" output="$out" tokenizer.path="$TOK" seq_len="$seq" dupe_factor=$DUPE \
      shard_mb=0.25 val_fraction=0.02 workers=${PREP_WORKERS:-16} progress=false > "$RESULTS/data_prep-$seq.log" 2>&1 \
      || { tail -30 "$RESULTS/data_prep-$seq.log"; echo "FAILED: data_prep at seq $seq"; exit 1; }
    echo "data_prep seq $seq: $((SECONDS - t0)) s"
  fi
}
for c in $CASES; do IFS=: read -r m s mb <<< "$c"; prep "$s"; done

# 3. Runs. A failed run is reported and counted; the table then refuses to pass.
FAILED=0
run() {  # name model seq micro variant [overrides...]
  local name=$1 model=$2 seq=$3 micro=$4 variant=$5; shift 5
  local t0=$SECONDS
  if $PY -m pipeline.pretrain data.path="$WORK/data-$seq" model="$model" $ENGINE engine.micro_batch_size="$micro" \
      global_batch_size=$GB max_steps="$STEPS" logger.every_steps=$(( STEPS / 6 > 0 ? STEPS / 6 : 1 )) \
      logger.progress=false eval.every_steps=1000000 eval.at_end=false checkpoint.every_steps=1000000 \
      checkpoint.at_end=false model.attention_dropout=0 $PEAK run_dir="$WORK/$name" "$@" \
      > "$RESULTS/$name.log" 2>&1; then
    cp "$WORK/$name/metrics.jsonl" "$RESULTS/$name.metrics.jsonl"
    printf '{"model": "%s", "seq": %s, "variant": "%s"}\n' "$model" "$seq" "$variant" > "$RESULTS/$name.meta.json"
    echo "$name: done in $((SECONDS - t0)) s"
  else
    tail -20 "$RESULTS/$name.log"; echo "FAILED: $name"; FAILED=1
  fi
}
for c in $CASES; do
  IFS=: read -r model seq micro <<< "$c"
  tag="${model}-s${seq}"
  $PY bench/gpu_tools.py gemm "$model" "$seq" "$micro" >> "$RESULTS/gemm.jsonl"
  run "$tag-previous" "$model" "$seq" "$micro" "previous step" engine.lean_step=false
  run "$tag-lean" "$model" "$seq" "$micro" "lean step"
  run "$tag-packed" "$model" "$seq" "$micro" "lean + packing + varlen" data.packing=true model.attention=varlen
  if [ "$c" = "${CASES%% *}" ]; then  # the first case only: ZeRO-2's per-micro-step hooks buy nothing on one GPU
    run "$tag-packed-zero0" "$model" "$seq" "$micro" "lean + packing + varlen, ZeRO-0" data.packing=true \
      model.attention=varlen engine.zero_stage=0
  fi
  if [ "${COMPILE:-0}" = 1 ] && [ "$seq" = 128 ] && [[ "$model" != *large* ]]; then
    run "$tag-packed-compile" "$model" "$seq" "$micro" "lean + packing + varlen + compile" data.packing=true \
      model.attention=varlen data.fixed_shapes=true engine.compile=true
  fi
done

# 4. One table (refuses implausible rows: non-zero exit).
$PY bench/gpu_tools.py table "$RESULTS" | tee "$RESULTS/table.md"
[ "$FAILED" = 0 ] || { echo "FAILED: at least one run failed (logs in $RESULTS)"; exit 1; }
