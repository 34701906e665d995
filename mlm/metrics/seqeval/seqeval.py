"""Entity-level precision / recall / F1 with seqeval, shipped with mlm so
`evaluate.load(<this folder>)` works offline (the hub's "seqeval" script is fetched at load time).

Same outputs as the hub metric: overall_precision, overall_recall, overall_f1, overall_accuracy
and one {precision, recall, f1, number} entry per entity type. One `import` per line:
evaluate's dependency scanner reads this file.
"""
import importlib

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report

_DESCRIPTION = "seqeval: entity-level evaluation of sequence labelling (CoNLL-style)."
_CITATION = """@misc{seqeval, title={seqeval: A Python framework for sequence labeling evaluation},
author={Hiroki Nakayama}, year={2018}, url={https://github.com/chakki-works/seqeval}}"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of tag sequences (one per sentence), e.g. [["O", "B-PER", "I-PER"]].
    references: list of gold tag sequences, same lengths.
    suffix: True if the entity type precedes the tag (PER-B).
    scheme: "IOB1" | "IOB2" | "IOE1" | "IOE2" | "IOBES" | "BILOU" (used in strict mode).
    mode: None (default, CoNLL evaluation) or "strict".
    sample_weight: optional weights per sentence.
    zero_division: value when a division by zero happens (0 or 1).
Returns:
    overall_precision, overall_recall, overall_f1, overall_accuracy, and per-type scores.
"""


class Seqeval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            homepage="https://github.com/chakki-works/seqeval",
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("string", id="label"), id="sequence"),
                "references": datasets.Sequence(datasets.Value("string", id="label"), id="sequence"),
            }),
            codebase_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(self, predictions, references, suffix=False, scheme=None, mode=None,
                 sample_weight=None, zero_division=0):
        if scheme is not None:
            scheme = getattr(importlib.import_module("seqeval.scheme"), scheme)
        report = classification_report(
            y_true=references, y_pred=predictions, suffix=suffix, output_dict=True, scheme=scheme,
            mode=mode, sample_weight=sample_weight, zero_division=zero_division,
        )
        report.pop("macro avg")
        report.pop("weighted avg")
        overall = report.pop("micro avg")
        scores = {
            name: {"precision": float(s["precision"]), "recall": float(s["recall"]),
                   "f1": float(s["f1-score"]), "number": int(s["support"])}
            for name, s in report.items()
        }
        scores["overall_precision"] = float(overall["precision"])
        scores["overall_recall"] = float(overall["recall"])
        scores["overall_f1"] = float(overall["f1-score"])
        scores["overall_accuracy"] = float(accuracy_score(y_true=references, y_pred=predictions))
        return scores
