# One command each: `make demo` (set up + main job) and `make test` (set up + test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
# Exact versions, with hashes, of everything setup installs (CPU torch included); `make lock` rewrites it.
LOCK := requirements/lock.txt
PIP_TOOLS := pip-tools==7.6.2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint bench lock stress-test clean

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
	rm -rf $(VENV) .venv-lock runs .pytest_cache
