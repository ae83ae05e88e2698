# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# GPU users: `make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128`
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEEPSPEED_SPEC ?= deepspeed==0.19.8
STAMP := $(VENV)/.cod-train-installed
ARGS ?=

.PHONY: install train test lint bench study clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# deepspeed compiles against the installed torch, so no build isolation (ops are JIT-built on first use).
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation "$(DEEPSPEED_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,slurm]"
	touch $(STAMP)

train: install
	$(VENV)/bin/cod-pretrain $(ARGS)

test: install
	$(PY) -m pytest -q tests $(ARGS)

lint: install
	$(VENV)/bin/ruff check cod_train tests scripts

bench: install
	$(PY) scripts/bench.py $(ARGS)

study: install
	bash scripts/cpu_study.sh

clean-venv:
	rm -rf $(VENV)
