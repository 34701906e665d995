"""The fine-tuning results record, read back typed from the `results.json` that protocol.finetune writes.

One format, the one this package writes: {"name", "models", "tasks": [{"name", "task", "metric",
"models", "sizes", "summary": {model: {size: {metric: {"mean", "std", "ci95", "n", ...}}}}}]}.
A reader (the model card) needs each task's main metric per model and train size.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from mlm.errors import UserError


@dataclass(frozen=True)
class Score:
    """A task's main test metric for one model at one train size, over seeds."""

    task: str
    kind: str
    """classification or ner."""
    model: str
    size: int
    metric: str
    mean: float
    std: float
    ci95: tuple[float, float] | None
    """Student-t 95 % interval of the mean; None for a single seed."""
    n: int
    """Seeds."""


@dataclass(frozen=True)
class FinetuneResults:
    name: str
    models: list[str]
    scores: list[Score]
    recommendations: list[str] = ()
    """Per task and train size: does a pretraining route beat the best baseline, and what
    self-training added to each model (report.py)."""

    @classmethod
    def from_json(cls, path: str | Path) -> FinetuneResults:
        """Read `path`; a file in another format is a UserError naming it."""
        try:
            data = json.loads(Path(path).read_text())
            scores = [Score(t["name"], t["task"], model, size, t["metric"], s["mean"], s["std"],
                            tuple(s["ci95"]) if all(map(math.isfinite, s["ci95"])) else None, s["n"])
                      for t in data["tasks"] for model in t["models"] for size in t["sizes"]
                      for s in [t["summary"][model][str(size)][t["metric"]]]]
            from mlm.report import recommendation_lines, self_training_lines

            kinds = data.get("kinds", {})
            recs = [f"{t['name']}, {line}" for t in data["tasks"]
                    for line in recommendation_lines(t, kinds) + self_training_lines(t)]
            return cls(data["name"], data["models"], scores, recs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a results.json written by mlm.finetune ({exc!r})") from None
