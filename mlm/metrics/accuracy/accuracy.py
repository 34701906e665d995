"""Accuracy, shipped with mlm so `evaluate.load(<this folder>)` works offline.

Single-label: share of exact matches. Multi-label (config "multilabel"): subset accuracy, the
share of examples whose whole label set is right. One `import` per line: evaluate's dependency
scanner reads this file.
"""
import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Accuracy: the proportion of correct predictions among all predictions."
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (ints; lists of 0/1 per label in the multilabel config).
    references: gold labels, same form.
    normalize: if False, return the number of correct predictions instead of the share.
    sample_weight: optional weights per example.
Returns:
    accuracy: float.
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        if self.config_name == "multilabel":
            feats = {"predictions": datasets.Sequence(datasets.Value("int32")),
                     "references": datasets.Sequence(datasets.Value("int32"))}
        else:
            feats = {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(feats),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        score = accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
        return {"accuracy": float(score)}
