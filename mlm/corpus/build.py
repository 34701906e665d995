"""Build the on-disk corpus dataset (train/validation) from a recipe, cached by fingerprint."""
from __future__ import annotations

import hashlib
import json
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

from mlm.config import CleanConfig, Recipe
from mlm.corpus.readers import read_documents
from mlm.errors import UserError
from mlm.recipe import corpus_fingerprint, source_files


def clean_text(text: str, clean: CleanConfig) -> str:
    """Normalise Unicode, drop control characters, collapse runs of spaces."""
    if clean.normalization != "none":
        text = unicodedata.normalize(clean.normalization, text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(lines).strip()


def _is_validation(text: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha1(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_corpus(recipe: Recipe, output_dir: str | Path) -> DatasetDict:
    """Read, clean, deduplicate and split the recipe's sources; cached in `output_dir`.

    The dataset is written under a temporary name and renamed when complete, so a killed
    run never leaves a half-written cache behind.
    """
    output_dir = Path(output_dir)
    key = corpus_fingerprint(recipe)
    final = output_dir / key
    if (final / "stats.json").is_file():
        return load_from_disk(str(final))
    base = Path(recipe.path).parent if recipe.path else None
    rows = {"train": {"text": [], "source": []}, "validation": {"text": [], "source": []}}
    dropped: Counter = Counter()
    seen: set[bytes] = set()
    for source in recipe.sources:
        for path in source_files(source, base):
            for raw, where in read_documents(path, source):
                text = clean_text(raw, recipe.clean)
                if len(text) < recipe.clean.min_chars:
                    dropped["too_short"] += 1
                    continue
                if recipe.clean.max_chars and len(text) > recipe.clean.max_chars:
                    dropped["too_long"] += 1
                    continue
                h = hashlib.sha1(" ".join(text.lower().split()).encode()).digest()
                if h in seen:
                    dropped["exact_duplicate"] += 1
                    continue
                seen.add(h)
                split = "validation" if _is_validation(
                    text, recipe.split.validation_fraction, recipe.split.split_seed
                ) else "train"
                rows[split]["text"].append(text)
                rows[split]["source"].append(where)
    if not rows["train"]["text"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "no documents read"
        raise UserError(f"corpus is empty after cleaning ({reasons})")
    if not rows["validation"]["text"]:
        # A tiny corpus: hold out one document so validation loss exists.
        for col in ("text", "source"):
            rows["validation"][col].append(rows["train"][col].pop())
    ds = DatasetDict({k: Dataset.from_dict(v) for k, v in rows.items()})
    stats = {
        "fingerprint": key,
        "documents": {k: len(v["text"]) for k, v in rows.items()},
        "characters": {k: sum(map(len, v["text"])) for k, v in rows.items()},
        "dropped": dict(dropped),
    }
    tmp = output_dir / f".{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return load_from_disk(str(final))


def load_corpus(path: str | Path) -> DatasetDict:
    """Load a corpus written by build_corpus."""
    return load_from_disk(str(path))


def corpus_stats(recipe: Recipe, output_dir: str | Path) -> dict:
    """The stats.json of the cached corpus for this recipe."""
    path = Path(output_dir) / corpus_fingerprint(recipe) / "stats.json"
    return json.loads(path.read_text())
