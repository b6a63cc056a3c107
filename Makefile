# diffusion_lab — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned to the builds this machine keeps on disk (see README).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: help install train test test-all clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install the package with its dev extra (cheap when nothing changed)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	# k-diffusion's sampling module, the reference of the sampler parity tests, without its own requirements
	# (one of them pins numpy < 2); torchsde and trampoline are all that module needs
	$(PY) -m pip install -q --no-deps k-diffusion torchsde trampoline
	touch $(STAMP)

train: install  ## run the default experiment (8x8 digits, small UNet, VP, eps-MSE) into outputs/
	$(PY) -m diffusion_lab.train $(ARGS)

test: install  ## run the fast test suite
	$(PY) -m pytest -q $(ARGS)

test-all: install  ## run every test, including those marked slow
	$(PY) -m pytest -q -m '' $(ARGS)

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache
