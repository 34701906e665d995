"""F1 (macro, micro, weighted or per class), shipped with mlm so `evaluate.load(<this folder>)`
works offline. One `import` per line: evaluate's dependency scanner reads this file.
"""
import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "F1: the harmonic mean of precision and recall, averaged over classes as asked."
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (ints; lists of 0/1 per label in the multilabel config).
    references: gold labels, same form.
    labels: the classes to average over (default: those present).
    average: "macro" | "micro" | "weighted" | "binary" | None (one score per class).
    pos_label: the positive class when average is "binary".
    sample_weight: optional weights per example.
    zero_division: value when a class has no prediction and no reference (default 0).
Returns:
    f1: float, or a list of floats when average is None.
"""


class F1(evaluate.Metric):
    def _info(self):
        if self.config_name == "multilabel":
            feats = {"predictions": datasets.Sequence(datasets.Value("int32")),
                     "references": datasets.Sequence(datasets.Value("int32"))}
        else:
            feats = {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(feats),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary",
                 sample_weight=None, zero_division=0):
        score = f1_score(references, predictions, labels=labels, pos_label=pos_label, average=average,
                         sample_weight=sample_weight, zero_division=zero_division)
        return {"f1": float(score) if getattr(score, "size", 1) == 1 else [float(s) for s in score]}
