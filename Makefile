# One command each: `make demo` (set up + main job) and `make test` (set up + test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
# Exact versions, with hashes, of everything setup installs (CPU torch included); `make lock` rewrites it.
LOCK := requirements/lock.txt
PIP_TOOLS := pip-tools==7.6.2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-device-image lint bench lock stress-test clean

$(VENV)/.installed: $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tinyrm demo --output runs/demo

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

# The GPU path's tests and gpu_path.py's smoke on the lent GPU machines' transformers/peft (requirements/device-image.txt
# says why); .ci/run runs it after `make test`.
DEVICE_IMAGE_SITE := .venv-device-image
$(DEVICE_IMAGE_SITE)/.installed: requirements/device-image.txt $(VENV)/.installed
	rm -rf $(DEVICE_IMAGE_SITE)
	$(PY) -m pip install -q --require-hashes --no-deps --only-binary :all: --target $(DEVICE_IMAGE_SITE) \
	    -r requirements/device-image.txt
	touch $@

test-device-image: $(DEVICE_IMAGE_SITE)/.installed
	PYTHONPATH=$(DEVICE_IMAGE_SITE) $(PY) -c "import transformers as t, peft as p, tokenizers as k, huggingface_hub as h; \
	    print('device image: transformers', t.__version__, 'peft', p.__version__, 'tokenizers', k.__version__, 'hub', h.__version__)"
	PYTHONPATH=$(DEVICE_IMAGE_SITE) $(PY) -m pytest -q -p no:cacheprovider tests/test_packed.py \
	    tests/test_packed_train.py tests/test_packed_steps.py tests/test_device_sync.py tests/test_gpu_path.py \
	    tests/test_varlen.py tests/test_dora.py
	mkdir -p runs
	PYTHONPATH=$(DEVICE_IMAGE_SITE) $(PY) benchmarks/gpu_path.py --smoke --output runs/bench/gpu_path-device-image.json \
	    > runs/gpu_path-device-image.log 2>&1 || { tail -40 runs/gpu_path-device-image.log; exit 1; }

# Roofline (MFU against the matmul peaks of the same run), then the method comparison; docs/speed.md, docs/inference.md.
bench: setup
	$(PY) benchmarks/roofline.py
	$(PY) benchmarks/inference.py

# Run after changing dependencies in pyproject.toml or requirements/lock.in, or to take new releases.
lock:
	test -x .venv-lock/bin/python || python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q "$(PIP_TOOLS)"
	.venv-lock/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --extra dev \
	    --no-emit-index-url --find-links /opt/wheels -o $(LOCK) pyproject.toml requirements/lock.in

# The whole suite 5 times while two busy loops hold both cores (not in CI: it takes a while).
stress-test: setup
	scripts/stress-test

clean:
	rm -rf $(VENV) .venv-lock $(DEVICE_IMAGE_SITE) runs .pytest_cache
