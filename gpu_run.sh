#!/usr/bin/env bash
# The GPU run of record: every CUDA path once (tests/test_cuda.py, then the whole suite with the GPU
# present), then the figures the README quotes for one GPU. From the repo root, on a machine with one
# CUDA GPU, data/shakespeare_char and data/multi30k prepared, the data mirrors in ../shared (for the
# tests, and the encoder recipe's data, prepared on first use):
#     bash gpu_run.sh [seconds]      # default 540: each step, in order, gets at most its cap and what is left
# Output: $OUT/log.txt (everything), the runs' metrics.jsonl, and a summary at the end.
set -u
OUT=${OUT:-gpu-run}
mkdir -p "$OUT"
BUDGET=${1:-540}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TIKTOKEN_CACHE_DIR="$(cd .. && pwd)/shared/tiktoken_cache"
LOG="$OUT/log.txt"

step() {  # step NAME CAP COMMAND...
    local name=$1 cap=$2 left=$((BUDGET - SECONDS)) t0=$SECONDS
    shift 2
    ((left < cap)) && cap=$left
    if ((cap < 15)); then echo "== $name: not run, out of time" | tee -a "$LOG"; return; fi
    echo "== $name (at most ${cap}s): $*" | tee -a "$LOG"
    timeout "$cap" "$@" >>"$LOG" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$LOG"
}

copy_metrics() { [ -f "$1/metrics.jsonl" ] && cp "$1/metrics.jsonl" "$OUT/$2.jsonl"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG"

step cuda_tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
step nanogpt_recipe 240 $PY train.py config/train_shakespeare_char.py
copy_metrics out-shakespeare-char recipe
step fast_recipe 80 $PY train.py config/train_shakespeare_char_fast.py
copy_metrics out-shakespeare-char-fast fast
step bench_gpt2 150 $PY bench.py config/train_gpt2.py --real_data=False --batch_size=16 --gradient_accumulation_steps=1
step whole_suite 200 $PY -m pytest -q -p no:cacheprovider -n 12 --timeout=300
for dtype in float16 bfloat16; do
    step "$dtype" 45 $PY train.py config/train_shakespeare_char.py --dtype=$dtype --compile=False --max_iters=600 \
        --lr_decay_iters=600 --eval_interval=300 --eval_iters=20 --out_dir=out-$dtype
    copy_metrics out-$dtype $dtype
done
step bench_char 90 $PY bench.py config/train_shakespeare_char.py
step bench_gpt2_fsdp 150 $PY -m torch.distributed.run --standalone --nproc_per_node=1 bench.py config/train_gpt2.py \
    --real_data=False --batch_size=16 --gradient_accumulation_steps=1 --fsdp=True --sample_tokens=0
step fast_recipe_eager 80 $PY train.py config/train_shakespeare_char_fast.py --compile=False --out_dir=out-fast-eager
copy_metrics out-fast-eager fast_eager

step multi30k 420 $PY train.py config/train_multi30k.py
step multi30k_bleu 120 $PY sample.py --out_dir=out-multi30k --start=FILE:data/multi30k/test.de.txt \
    --reference=data/multi30k/test.en.txt
copy_metrics out-multi30k multi30k

step encoder_pretrain 420 $PY train.py config/mlm_reviews.py
copy_metrics out-mlm-reviews mlm_reviews
step encoder_finetune 180 $PY train.py config/finetune_sst2.py
copy_metrics out-sst2 sst2
step sst2_accuracy 60 $PY sample.py --out_dir=out-sst2 --start=FILE:data/sst2_phrases/val.txt \
    --reference=data/sst2_phrases/val.labels.txt

echo "== summary"
grep -E "^== |^accuracy |^step [0-9]+:|passed|failed|FAILED|ERROR|Error|tokens/s|ms/iter|MFU|KV cache|full re-run|speedup|one at a time|one batch|peak memory|^gpt:|NVIDIA" "$LOG" | tail -n 160
