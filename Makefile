# Two commands for readers and CI:
#   make book   build the book into _build/html (creates the environment the first time)
#   make test   unit tests, the notebooks (nbval), the book build and the browser checks
# Everything runs in ./.venv; the first `make` takes minutes (torch), later ones seconds.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV   := .venv
PY     := $(VENV)/bin/python
# Tools run from the environment (jupyter-book, the kernel that nbval and the build start).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# OpenMP threads that spin while they wait make every torch process several times slower when
# processes share the 2 cores (measured in benchmarks/RESULTS.md: ~5x per training step).
export OMP_WAIT_POLICY := PASSIVE

# The environment is rebuilt when requirements.txt or pyproject.toml change: the stamp's
# name carries a hash of both, so `make install` is a no-op (seconds) while they are unchanged.
REQ_HASH := $(shell cat requirements.txt pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
STAMP    := $(VENV)/.stamp-$(REQ_HASH)

# torch/torchvision are installed first and on their own: they are the big download (or, on our
# machines, the big local install), and an environment that already has them keeps them.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

# Headless browser for tests/test_browser.py: Debian's chromium (never `playwright install`, which
# downloads a browser build) and a Korean font, without which Korean text renders as boxes.
CHROMIUM   := /usr/bin/chromium
NANUM_DIR  := /usr/share/fonts/truetype/nanum
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

HTML_DIR    := _build/html
SCREENSHOTS := test-artifacts/screenshots
PYTEST      := $(PY) -m pytest -p no:cacheprovider
NOTEBOOKS    = $(wildcard book/en/*.ipynb book/ko/*.ipynb)
# Folders nbval executes. Both by default; `NBVAL_DIRS=book/en` halves the time and still covers
# Korean, because tests/test_notebook_files.py requires identical code cells and identical checked
# outputs in both editions.
NBVAL_DIRS  ?= book/en book/ko

.PHONY: help venv install system-deps book book-build execute shipped-model test test-unit test-notebooks test-book clean

help:
	@echo "make book    build the book into $(HTML_DIR) (open $(HTML_DIR)/index.html)"
	@echo "make test    unit tests, notebooks (nbval), book build, browser checks"
	@echo "make install create/update .venv and the system packages the tests need"
	@echo "make execute run the chapter notebooks and store their outputs (NB=path for one)"
	@echo "make shipped-model  retrain the shipped model (recipe shapes-shipped, ~12 CPU minutes)"
	@echo "make clean   remove build outputs and test artifacts (keeps .venv)"

venv install: $(STAMP) system-deps

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || { echo ">> creating $(VENV)"; python3 -m venv $(VENV); }
	@$(PY) -c "import torch, torchvision" 2>/dev/null \
	  || { echo ">> installing $(TORCH_PINS) (takes minutes)"; $(PY) -m pip install $(TORCH_PINS); }
	$(PY) -m pip install -r requirements.txt -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (detr-tutorial)"
	@rm -f $(VENV)/.stamp-*
	@touch $@

system-deps:
	@if [ ! -x $(CHROMIUM) ] || [ ! -d $(NANUM_DIR) ]; then \
	  echo ">> installing chromium and fonts-nanum (Debian packages)"; \
	  $(SUDO) apt-get update; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium fonts-nanum; \
	fi

# --all: Sphinx does not repeat the warnings of pages it skips as unchanged, so an incremental
# build could pass -W with a broken page; a full build of stored outputs takes seconds.
book-build:
	$(VENV)/bin/jupyter-book build -W -n --keep-going --all .

book: install book-build
	@echo
	@echo "The book is in $(HTML_DIR). Open $(CURDIR)/$(HTML_DIR)/index.html in a browser,"
	@echo "or serve it: $(PY) -m http.server --bind 127.0.0.1 --directory $(HTML_DIR) 8000"

# Chapters are stored executed (the book renders stored outputs). This runs them top to bottom in
# the project's kernel and saves the outputs, widget state included: `make execute` for all,
# `make execute NB=book/en/01_backbone.ipynb` for one.
# The shipped model, detr_tutorial/checkpoints/shapes_detr.pth: the shapes-shipped recipe (about 12
# minutes on 2 idle CPU cores), its final weights exported as float16 with their config, and its
# training log beside it. A new run folder each time: an old one's checkpoint would be resumed.
SHIPPED_RUN := runs/shapes-shipped
SHIPPED_DIR := detr_tutorial/checkpoints
shipped-model: install
	rm -rf $(SHIPPED_RUN)
	@# 2 torch threads, whatever the machine: the recipe's budget is set on 2 cores, and the
	@# thread count changes the bfloat16 arithmetic, so it is part of what makes the run repeatable
	OMP_NUM_THREADS=2 $(PY) -m detr_tutorial train --recipe shapes-shipped --output-dir $(SHIPPED_RUN) --no-progress
	$(PY) -m detr_tutorial export --checkpoint $(SHIPPED_RUN)/model_final.pth --format checkpoint \
	  --out $(SHIPPED_DIR)/shapes_detr.pth
	cp $(SHIPPED_RUN)/log.jsonl $(SHIPPED_DIR)/shapes_detr_log.jsonl

execute: install
	@for nb in $(or $(NB),$(NOTEBOOKS)); do \
	  echo ">> executing $$nb"; \
	  $(VENV)/bin/jupyter execute --inplace --kernel_name=python3 "$$nb"; \
	done

test-unit:
	$(PYTEST) tests -m "not book"

# Notebooks are executed top to bottom; cells marked `# NBVAL_CHECK_OUTPUT` must reproduce their
# stored output. No notebook yet is not an error; a notebook that collects nothing is (pytest exit 5).
test-notebooks:
	@if [ -z "$(NOTEBOOKS)" ]; then echo ">> nbval: no notebooks in book/en or book/ko yet"; else \
	  $(PYTEST) --nbval-lax --nbval-current-env --durations=10 \
	    -o norecursedirs=".* _build build dist .venv node_modules" $(NBVAL_DIRS); fi

test-book:
	@mkdir -p $(SCREENSHOTS)
	$(PYTEST) tests -m book

# Each step is a recipe line of its own: make stops at the first one that fails.
test: install
	@$(MAKE) --no-print-directory test-unit;      echo ">> unit tests passed ($$SECONDS s)"
	@$(MAKE) --no-print-directory test-notebooks; echo ">> notebooks passed ($$SECONDS s)"
	@$(MAKE) --no-print-directory book-build;     echo ">> book built ($$SECONDS s)"
	@$(MAKE) --no-print-directory test-book;      echo ">> book pages passed ($$SECONDS s)"
	@echo ">> all tests passed; screenshots in $(SCREENSHOTS)/"

clean:
	rm -rf _build test-artifacts .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print -exec rm -rf {} +
