"""Scores through `evaluate`, from the metric scripts shipped in `mlm/metrics/` (loaded by path:
`evaluate.load("seqeval")` would fetch its script from the hub, which fails offline)."""
from __future__ import annotations

import importlib.resources
from functools import cache

import evaluate


@cache
def load_metric(name: str, config_name: str | None = None):
    """One of the shipped metrics (accuracy, f1, seqeval), loaded from its local folder."""
    path = importlib.resources.files("mlm") / "metrics" / name
    return evaluate.load(str(path), config_name)


def classification_scores(predictions, references, multi_label: bool = False) -> dict:
    """accuracy (subset accuracy when multi-label), macro_f1 and micro_f1."""
    cfg = "multilabel" if multi_label else None
    f1 = load_metric("f1", cfg)
    return {
        "accuracy": load_metric("accuracy", cfg).compute(predictions=predictions, references=references)["accuracy"],
        "macro_f1": f1.compute(predictions=predictions, references=references, average="macro")["f1"],
        "micro_f1": f1.compute(predictions=predictions, references=references, average="micro")["f1"],
    }


def ner_scores(predictions: list[list[str]], references: list[list[str]], strict: bool = False) -> dict:
    """Entity-level precision / recall / F1 (seqeval) and word accuracy."""
    kwargs = {"mode": "strict", "scheme": "IOB2"} if strict else {}
    out = load_metric("seqeval").compute(predictions=predictions, references=references, **kwargs)
    return {"precision": out["overall_precision"], "recall": out["overall_recall"],
            "f1": out["overall_f1"], "accuracy": out["overall_accuracy"]}


CLASSIFICATION_METRICS = ["accuracy", "macro_f1", "micro_f1"]
NER_METRICS = ["f1", "precision", "recall", "accuracy"]
