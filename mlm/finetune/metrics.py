"""Scores through `evaluate`, from the metric scripts shipped in `mlm/metrics/` (loaded by path:
`evaluate.load("seqeval")` would fetch its script from the hub, which fails offline)."""
from __future__ import annotations

import importlib.resources
import math
import statistics
from functools import cache

import evaluate


@cache
def load_metric(name: str, config_name: str | None = None):
    """One of the shipped metrics (classification, seqeval), loaded from its local folder."""
    path = importlib.resources.files("mlm") / "metrics" / name
    return evaluate.load(str(path), config_name)


def classification_scores(predictions, references, multi_label: bool = False) -> dict:
    """accuracy (subset accuracy when multi-label), macro_f1 and micro_f1."""
    metric = load_metric("classification", "multilabel" if multi_label else None)
    return metric.compute(predictions=predictions, references=references)


def ner_scores(predictions: list[list[str]], references: list[list[str]], strict: bool = False) -> dict:
    """Entity-level precision / recall / F1 (seqeval) and word accuracy."""
    kwargs = {"mode": "strict", "scheme": "IOB2"} if strict else {}
    out = load_metric("seqeval").compute(predictions=predictions, references=references, **kwargs)
    return {"precision": out["overall_precision"], "recall": out["overall_recall"],
            "f1": out["overall_f1"], "accuracy": out["overall_accuracy"]}


CLASSIFICATION_METRICS = ["accuracy", "macro_f1", "micro_f1"]
NER_METRICS = ["f1", "precision", "recall", "accuracy"]


def interval(values: list[float]) -> dict:
    """Mean, sample std and the Student-t 95 % interval of the mean."""
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    if n > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
    else:
        lo = hi = float("nan")
    return {"mean": mean, "std": std, "ci95": [lo, hi], "n": n, "values": values}
