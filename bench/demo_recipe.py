"""The demo recipe (data_recipes/demo.yaml) rewritten for a benchmark run: a fixed number of
steps instead of minutes, no periodic saves or evaluations, and any other section overrides;
optionally reusing another run's cached corpus, tokenizer and packed blocks."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from mlm.recipe import DEFAULT_RECIPE


def demo_recipe(tmp: Path, name: str, steps: int, cache: Path | None = None,
                **sections: dict) -> Path:
    """Write `tmp/<name>.yaml` (output in `tmp/<name>`) and return its path."""
    data = yaml.safe_load(DEFAULT_RECIPE.read_text())
    data["sources"][0]["exclude_from"] = str(DEFAULT_RECIPE.parent / "splits" / "bbc_test.txt")
    data["training"].update(output_dir=str(tmp / name), max_minutes=None, max_steps=steps,
                            eval_steps=10**6, save_minutes=None)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    if cache is not None and cache.exists() and not (tmp / name / "cache").exists():
        (tmp / name).mkdir(parents=True, exist_ok=True)
        os.symlink(cache, tmp / name / "cache")
    return path
