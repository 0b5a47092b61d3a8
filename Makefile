# Two commands do all the set-up on a fresh machine (README):
#   make demo   creates .venv if absent, installs, runs the quickstart (DEMO_OUTPUT=dir chooses where)
#   make test   creates/updates .venv, installs with the dev extra, runs the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first: on a machine without a GPU this pin resolves to the CPU wheel; an unpinned torch
# would pull several GB of CUDA wheels. A torch already in the venv is kept as it is.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUTPUT ?= demo-output
PYTEST_ARGS ?=

.PHONY: venv install install-dev browser demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

install: venv
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .

install-dev: venv
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"

# The web page test drives Debian's Chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

demo: install
	$(VENV)/bin/deblurdiff demo --output "$(DEMO_OUTPUT)"

test: install-dev browser
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
