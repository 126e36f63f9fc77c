#!/usr/bin/env bash
# Rehearse the device run on this CPU, in an environment built like the lent GPU image ('cuda':
# ../.library/device/KINDS.md): Python 3.12, torch 2.11.0+cu130 (its CPU kernels run here), numpy 2.5.2 and
# the image's transformers, peft, tokenizers, hub and accelerate, plus the other packages the image holds that
# tinyrm imports; none that it lacks (fastapi, uvicorn, ...: run.sh puts src/ on PYTHONPATH, tinyrm is not
# installed there). Then run.sh itself with --smoke, its pip step included (the carried wheels into /tmp/site,
# as there), then the GPU path's CPU tests in it. What it cannot show: the CUDA kernels (run.sh's -k cuda tests
# skip). Builds the environment once (~4.6 GB: torch's CUDA wheels; ~2 min), rebuilds it when the list below
# changes; then about 1.5 minutes.
#   bash benchmarks/device/prepare.sh && bash benchmarks/device/rehearse.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# The image's transformers, peft, tokenizers and hub: the pins of requirements/device-image.txt (one list for
# both checks; its hashes are left out here, as the rest of this list has none).
PINNED=$(grep -oE '^[A-Za-z0-9_.-]+==[^ ]+' requirements/device-image.txt | tr '\n' ' ')
IMAGE="torch==2.11.0 numpy==2.5.2 $PINNED
accelerate==1.15.0 safetensors==0.8.0 pyarrow pandas xxhash pyyaml requests rich tqdm httpx matplotlib scikit-learn
scipy psutil prometheus-client pytest hypothesis fsspec<=2026.9.0"
ENV=${REHEARSE_ENV:-/tmp/tinyrm-device-image}
for candidate in ${PY312:-} python3.12 /root/.pyenv/versions/3.12*/bin/python; do  # the image's Python is 3.12
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$candidate; break; fi
done
[ -n "${PY312:-}" ] || { echo "rehearse.sh: no Python 3.12 found (set PY312)" >&2; exit 2; }
[ -d .devcarry/whl ] || { echo "rehearse.sh: run benchmarks/device/prepare.sh first (.devcarry/ is missing)" >&2; exit 2; }
if [ "$(cat "$ENV/image.txt" 2>/dev/null)" != "$IMAGE" ]; then
    rm -rf "$ENV" "$ENV-testdeps" && "$PY312" -m venv "$ENV"
    # shellcheck disable=SC2086  # the list is word-split on purpose
    "$ENV/bin/pip" install -q $IMAGE
    echo "$IMAGE" > "$ENV/image.txt"
fi
out=$(mktemp -d)
rm -rf /tmp/site  # run.sh's pip step installs the carried wheels there, as on the device
PATH="$ENV/bin:$PATH" OUT="$out" GPU_EXTRA=--smoke bash benchmarks/device/run.sh
# The GPU path's tests on the image's versions too (Python 3.12, torch 2.11, numpy 2.5): run.sh runs only the
# CUDA ones. Their CLI test imports the server, which the image lacks: fastapi and uvicorn beside it, not in it.
[ -d "$ENV-testdeps" ] || "$ENV/bin/pip" install -q --target "$ENV-testdeps" fastapi uvicorn
PYTHONPATH="/tmp/site:$PWD/.devcarry/gt:$ENV-testdeps:$PWD/src" "$ENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_packed.py tests/test_packed_train.py tests/test_device_sync.py tests/test_gpu_path.py tests/test_varlen.py tests/test_dora.py
echo "rehearse.sh: run.sh and the GPU path's tests passed in the image-like environment; run.sh's files are in $out"
