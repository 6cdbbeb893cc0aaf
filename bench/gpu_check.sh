#!/bin/bash
# The GPU check: the multi-GPU path's correctness, then the throughput table, on one offline GPU within 8 minutes
# (install included), so that the first GPU minutes we get decide what no CPU can.
#
#   PREPARE=1 bash bench/gpu_check.sh   # here, with the registry: wheels in .whl/ (/work/shared/GPU.md), shards of
#                                       # gensim's Wikipedia dump at seq 128 and 512 with the BERT uncased tokenizer
#                                       # and Rotten Tomatoes in .gpu/check.tar.xz; checks they fit one transfer
#   bash bench/gpu_check.sh             # on the GPU machine, carrying .whl and .gpu (no network needed)
#   CPU=1 bash bench/gpu_check.sh       # the same steps here: tiny models, a few steps, gloo, fp32
#
# In this order, each result printed and appended to $OUT/gpu_check.md (else $WORK/gpu_check.md) as soon as it
# exists, so a kill at the time limit keeps what finished; the console goes to gpu_check.log beside it and every
# run's metrics to metrics.jsonl:
#   (a) correctness: varlen attention equals the SDPA block mask (free and fixed shapes); 20 pretraining steps and
#       20 finetuning steps under torchrun with NCCL and strict collectives (BERTRUN_STRICT_COLLECTIVES=1: every
#       collective of a multi-GPU run, at world size 1); packed + compiled gives one graph; the export loads.
#   (b) the table, bert-base s128: the previous step (engine.lean_step=false), the lean step, lean + packing +
#       varlen; the last at ZeRO 0, 1 and 2 and with micro-batch 256; bert-large s128; bert-base s512. Real tokens/s
#       and MFU on real tokens (each pair's attention on its own length, the peak from the exact device name).
# A step that would not finish inside BUDGET seconds (from the start, install included) is skipped and says so.
# Exit status: 1 if any check or row failed, else 0.
set -uo pipefail
CPU=${CPU:-0}
WORK=${WORK:-/tmp/bertrun-check}
RESULTS=${OUT:-$WORK}
ARCHIVE=.gpu/check.tar.xz
NEEDED_WHEELS="deepspeed-0.19.8 hydra_core-1.3 omegaconf-2.3 antlr4_python3_runtime-4.9 webdataset braceexpand pydantic hjson"

if [ "${PREPARE:-0}" = 1 ]; then
  set -e
  PY=${PYTHON:-.venv/bin/python}
  $PY bench/gpu_tools.py wheels .whl
  stage=$(mktemp -d)
  dump=$($PY -c "import gensim, pathlib; print(pathlib.Path(gensim.__file__).parent / 'test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2')")
  tok=$($PY -c "import sys; sys.path.insert(0, 'bench'); from pretrain_throughput import bert_tokenizer_dir; print(bert_tokenizer_dir())")
  for seq in 128 512; do  # ~11,500 and ~3,700 training pairs: several epochs of the table's runs
    $PY -m data_prep input="$dump" output="$stage/check/data-$seq" tokenizer.path="$tok" seq_len=$seq dupe_factor=2 \
      shard_mb=1 val_fraction=0.02 workers=2 progress=false > "$stage/prep-$seq.log" 2>&1 \
      || { tail -20 "$stage/prep-$seq.log"; echo "FAILED: data_prep at seq $seq"; exit 1; }
  done
  $PY -m data_prep.fetch rotten_tomatoes out="$stage/check/real" > "$stage/fetch.log" 2>&1 \
    || { tail -20 "$stage/fetch.log"; echo "FAILED: data_prep.fetch rotten_tomatoes"; exit 1; }
  mkdir -p .gpu
  tar -C "$stage" -cJf "$ARCHIVE" check
  rm -rf "$stage"
  echo "$ARCHIVE: $(du -h "$ARCHIVE" | cut -f1) (shards at seq 128 and 512, their tokenizer, Rotten Tomatoes)"
  $PY bench/gpu_tools.py fits .whl .gpu
  echo "ready: run 'bash bench/gpu_check.sh' on the GPU machine, carrying .whl and .gpu"
  exit 0
fi

# Every input first, named when missing: the GPU minutes are not the place to find out.
missing=""
[ -f "$ARCHIVE" ] || missing="$missing $ARCHIVE"
for w in $NEEDED_WHEELS; do ls .whl/"$w"*.whl > /dev/null 2>&1 || missing="$missing .whl/$w*.whl"; done
if [ -n "$missing" ]; then
  echo "FAILED: missing input(s):$missing (run PREPARE=1 bash bench/gpu_check.sh where the registry is)"
  exit 1
fi

mkdir -p "$WORK/logs" "$RESULTS"
RES=$RESULTS/gpu_check.md
exec > >(tee -a "$RESULTS/gpu_check.log") 2>&1
if [ "$CPU" = 0 ]; then
  BUDGET=${BUDGET:-470}
  PY=${PYTHON:-python3}
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "FAILED: installing the wheels of .whl/"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  DEVICE=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
  ENGINE="engine=gpu"  # bf16, ZeRO-2, 4 loader workers (conf/engine/gpu.yaml)
  COMPILE="engine.compile_backend=inductor"
  PEAK=""
  GB=256; SMALL=bert-small; TINY=bert-tiny; BASE=bert-base; LARGE=bert-large; MB=128; MB2=256; MB512=32
  STEPS=40; STEPS_BIG=30; CHECK_GB=64; CHECK_MB=32
  ROW_S=45; CAP=150  # a row's expected seconds (start-up dominates), and the most any one run may take (a hang)
else
  BUDGET=${BUDGET:-1800}
  PY=${PYTHON:-.venv/bin/python}
  export PYTHONPATH=$PWD
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process on 2 cores (loader workers are others)
  DEVICE="CPU rehearsal (CPU=1): $(nproc --all) cores, gloo, fp32, tiny models"
  ENGINE="engine=cpu engine.loader_workers=1"  # fp32, ZeRO-2, gloo
  COMPILE="engine.compile_backend=aot_eager"   # dynamo's graphs and guards without inductor's C++ build
  PEAK="logger.peak_tflops=1"  # a nominal peak, only so that the MFU path runs end to end
  GB=16; SMALL=bert-tiny; TINY=bert-tiny; BASE=bert-tiny; LARGE=bert-mini; MB=8; MB2=16; MB512=8
  STEPS=10; STEPS_BIG=10; CHECK_GB=16; CHECK_MB=8
  ROW_S=120; CAP=600
fi
export BERTRUN_STRICT_COLLECTIVES=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 WANDB_MODE=disabled
TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node 1"
VERSIONS=$($PY -c "import sys, torch, transformers, deepspeed; print(f'Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, deepspeed {deepspeed.__version__}')" 2>/dev/null | tail -1)
[ -n "$VERSIONS" ] || { echo "FAILED: torch, transformers or deepspeed does not import"; exit 1; }
if [ ! -f "$WORK/check/.unpacked" ]; then
  $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$ARCHIVE" "$WORK" \
    && touch "$WORK/check/.unpacked" || { echo "FAILED: unpacking $ARCHIVE"; exit 1; }
fi
for f in data-128/manifest.json data-512/manifest.json real/rotten_tomatoes/train.csv; do
  [ -f "$WORK/check/$f" ] || { echo "FAILED: $ARCHIVE lacks check/$f (PREPARE=1 again)"; exit 1; }
done
DATA=$WORK/check
export BERTRUN_REAL_DATA=$DATA/real
FAILED=0
{ echo; echo "## bench/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ): $DEVICE; $VERSIONS"; echo
  echo "| check | result | detail | s |"; echo "|---|---|---|---|"; } >> "$RES"
echo "$DEVICE; $VERSIONS; budget ${BUDGET}s, ${SECONDS}s of it to install and unpack"

fits_in() {  # est_seconds what: true when the step can finish inside the budget, else a SKIPPED line
  if [ $((BUDGET - SECONDS)) -lt "$1" ]; then
    echo "SKIPPED: $2 (needs ~$1 s, $((BUDGET - SECONDS)) s left)" | tee -a "$RES"
    return 1
  fi
}

run() {  # name command...: its output to logs/name.log, inside what is left of the budget and at most CAP seconds
  local name=$1 left=$((BUDGET - SECONDS)); shift
  left=$((left < CAP ? left : CAP))
  timeout --kill-after=10 $((left > 1 ? left : 1)) "$@" > "$WORK/logs/$name.log" 2>&1 \
    || { echo "--- $name failed (exit $?), the end of $WORK/logs/$name.log:"; tail -25 "$WORK/logs/$name.log"; return 1; }
}

check() {  # name est description command...: one row of the checks table, PASS with what it verified or FAIL
  local name=$1 est=$2 what=$3; shift 3
  fits_in "$est" "$what" || return 1
  local t0=$SECONDS out="$WORK/logs/$name.check"
  if "$@" > "$out" 2>&1; then
    echo "| $what | PASS | $(tail -1 "$out") | $((SECONDS - t0)) |" | tee -a "$RES"
  else
    cat "$out"
    echo "| $what | FAIL | $(tail -1 "$out" | tr '|' '/') | $((SECONDS - t0)) |" | tee -a "$RES"
    FAILED=1
    return 1
  fi
}

needs() {  # file what: a check that builds on an earlier one is skipped, saying so, when that one left nothing
  [ -f "$1" ] && return 0
  echo "| $2 | SKIPPED | $1 is missing (an earlier check failed) | 0 |" | tee -a "$RES"
  FAILED=1
  return 1
}

pretrain() {  # name model seq global micro steps [overrides...]
  local name=$1 model=$2 seq=$3 gb=$4 micro=$5 steps=$6; shift 6
  rm -rf "${WORK:?}/$name"
  run "$name" $TORCHRUN -m pipeline.pretrain data.path="$DATA/data-$seq" model="$model" $ENGINE \
    global_batch_size="$gb" engine.micro_batch_size="$micro" max_steps="$steps" logger.progress=false \
    model.attention_dropout=0 $PEAK run_dir="$WORK/$name" "$@"
}

# (a) Correctness.
check varlen 60 "varlen attention = SDPA block mask" $PY bench/gpu_tools.py check
pre() {
  pretrain pre "$SMALL" 128 "$CHECK_GB" "$CHECK_MB" 20 logger.every_steps=5 eval.every_steps=10 eval.max_batches=4 \
    checkpoint.every_steps=10 && $PY bench/gpu_tools.py pretrained "$WORK/pre" 20
}
check pretrain 90 "20 pretraining steps, torchrun, strict collectives ($SMALL, 2 micro-batches a step)" pre
ft() {
  rm -rf "$WORK/ft"
  run ft $TORCHRUN -m pipeline.finetune task=rotten_tomatoes model.path="$WORK/pre" $ENGINE max_steps=20 \
    global_batch_size=32 eval.every_steps=10 max_train_samples=2048 max_eval_samples=512 logger.every_steps=5 \
    logger.progress=false run_dir="$WORK/ft" && $PY bench/gpu_tools.py finetuned "$WORK/ft" 20
}
what="20 finetuning steps from it (Rotten Tomatoes), torchrun, strict collectives"
needs "$WORK/pre/checkpoints/latest.json" "$what" && check finetune 90 "$what" ft
comp() {
  pretrain compiled "$TINY" 128 "$CHECK_GB" "$CHECK_MB" 12 logger.every_steps=1 eval.at_end=false \
    checkpoint.at_end=false data.packing=true data.fixed_shapes=true model.attention=varlen engine.compile=true \
    $COMPILE && $PY bench/gpu_tools.py graphs "$WORK/compiled"
}
check compile 120 "packed + fixed shapes + compiled: one graph ($TINY, ${COMPILE#*=})" comp
exp() {
  rm -rf "$WORK/hf"
  run export $PY -m pipeline.export run_dir="$WORK/pre" output="$WORK/hf" && $PY bench/gpu_tools.py loads "$WORK/hf"
}
needs "$WORK/pre/checkpoints/latest.json" "the export loads" && check export 40 "the export loads" exp

# (b) Throughput. GEMM ceiling: what the model's matmuls alone reach at the table's shapes.
{ echo; echo "| GEMM | TFLOP/s | of peak |"; echo "|---|---|---|"; } >> "$RES"
if fits_in 40 "GEMM ceilings"; then
  $PY bench/gpu_tools.py gemm "$BASE:128:$MB" "$LARGE:128:$MB" "$BASE:512:$MB512" 2>&1 | grep "^|" | tee -a "$RES"
fi
{ echo; echo "| run | model | seq | ZeRO | micro | variant | real tokens/s | MFU (real tokens) | real fraction | peak GB | loss | s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"; } >> "$RES"
row() {  # name model seq zero micro steps variant [overrides...]
  local name=$1 model=$2 seq=$3 zero=$4 micro=$5 steps=$6 variant=$7; shift 7
  fits_in "$ROW_S" "$name" || return 0
  local t0=$SECONDS line
  if pretrain "$name" "$model" "$seq" "$GB" "$micro" "$steps" engine.zero_stage="$zero" \
      logger.every_steps=$((steps / 5)) eval.every_steps=1000000 eval.at_end=false checkpoint.every_steps=1000000 \
      checkpoint.at_end=false "$@" \
      && line=$($PY bench/gpu_tools.py row "$name" "$WORK/$name" "$model" "$seq" "$zero" "$micro" "$variant" \
        $((SECONDS - t0)) 2>&1 | tail -1) && [[ "$line" == "|"* ]]; then
    echo "$line" | tee -a "$RES"
  else
    echo "| $name | $model | $seq | $zero | $micro | $variant | FAILED: ${line:-see gpu_check.log} |" | tee -a "$RES"
    FAILED=1
  fi
  $PY -c "import json, sys; [print(json.dumps({'run': sys.argv[1], **json.loads(l)})) for l in open(sys.argv[2])]" \
    "$name" "$WORK/$name/metrics.jsonl" >> "$RESULTS/metrics.jsonl" 2>/dev/null
}
PACKED="data.packing=true model.attention=varlen"
row base-s128-previous "$BASE" 128 2 "$MB" "$STEPS" "previous step" engine.lean_step=false
row base-s128-lean "$BASE" 128 2 "$MB" "$STEPS" "lean step"
row base-s128-packed "$BASE" 128 2 "$MB" "$STEPS" "lean + packing + varlen" $PACKED
row base-s128-packed-zero0 "$BASE" 128 0 "$MB" "$STEPS" "lean + packing + varlen" $PACKED
row base-s128-packed-zero1 "$BASE" 128 1 "$MB" "$STEPS" "lean + packing + varlen" $PACKED
row base-s128-packed-micro$MB2 "$BASE" 128 2 "$MB2" "$STEPS" "lean + packing + varlen" $PACKED
row large-s128-packed "$LARGE" 128 2 "$MB" "$STEPS_BIG" "lean + packing + varlen" $PACKED
row base-s512-packed "$BASE" 512 2 "$MB512" "$STEPS_BIG" "lean + packing + varlen" $PACKED

echo "done in ${SECONDS}s: $RES"
if [ "$FAILED" = 1 ]; then echo "FAILED: at least one check or row (above; logs in $WORK/logs)"; exit 1; fi
