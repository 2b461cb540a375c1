# Set-up and common tasks. Every target sets up what it needs (system packages, venv, pip packages).
#   make quickstart   # set up, then SimCLR alone vs DoGo on Fashion-MNIST (CPU, offline, minutes)
#   make test         # set up, then the whole test suite (what CI runs)
#   make docs         # set up, then site/: the executed notebooks, README and STUDY.md as HTML
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# g++ and python3-dev: torch.compile on the CPU (inductor) builds C++ kernels (tests/test_compile.py)
APT_PACKAGES := dataset-fashion-mnist chromium g++ python3-dev

.PHONY: setup system-packages venv quickstart test test-fast notebooks notebooks-full docs lint bench clean

setup: system-packages venv

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	  ( $(SUDO) apt-get update -q >/dev/null && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null ); \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp is redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[notebooks,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

quickstart: setup
	$(BIN)/dogo quickstart

test: setup
	$(BIN)/ruff check dogo tests benchmarks notebooks
	$(BIN)/python -m pytest -q -ra --durations=15

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not browser"

notebooks: venv
	$(BIN)/dogo notebooks --smoke

notebooks-full: venv
	$(BIN)/dogo notebooks

# Smoke-executes the notebooks that have no executed copy in notebooks/executed yet, then renders the site.
docs: venv
	$(BIN)/python -m dogo.site --executed notebooks/executed --site site

lint: venv
	$(BIN)/ruff check dogo tests benchmarks notebooks

bench: venv
	$(BIN)/python benchmarks/bench_train.py --case cpu
	$(BIN)/python benchmarks/bench_losses.py

clean:
	rm -rf runs notebooks/executed test-artifacts site .pytest_cache
