"""mlm.corpus: shared fixtures and helpers of the corpus tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlm.corpus.build import build_corpus, corpus_stats
from mlm.corpus.cli import main
from mlm.recipe import load_recipe


@pytest.fixture(scope="module")
def articles(bbc_dir) -> list[str]:
    """80 real, distinct BBC articles (business and tech)."""
    texts = [p.read_text(encoding="utf-8", errors="replace")
             for folder in ("business", "tech") for p in sorted((bbc_dir / folder).glob("*.txt"))[:45]]
    seen, out = set(), []
    for t in texts:
        if t[:200] not in seen:
            seen.add(t[:200])
            out.append(t)
    return out[:80]


def write_recipe(tmp_path: Path, sources: list[dict], **sections) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "sources": sources, **sections}))
    return path


def build(tmp_path: Path, sources: list[dict], **sections):
    recipe = load_recipe(write_recipe(tmp_path, sources, **sections))
    ds = build_corpus(recipe, tmp_path / "cache")
    return ds, corpus_stats(recipe, tmp_path / "cache")


def all_texts(ds) -> list[str]:
    return list(ds["train"]["text"]) + list(ds["validation"]["text"])


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
