"""Accuracy and F1 of a classifier in one pass, shipped with mlm so `evaluate.load(<this folder>)`
works offline.

accuracy: share of exact matches (multi-label, config "multilabel": subset accuracy, the share of
examples whose whole label set is right); macro_f1 / micro_f1: F1 averaged over classes / over
decisions. One `import` per line: evaluate's dependency scanner reads this file.
"""
import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score

_DESCRIPTION = "Accuracy, macro F1 and micro F1 of single- or multi-label predictions."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (ints; lists of 0/1 per label in the multilabel config).
    references: gold labels, same form.
Returns:
    accuracy, macro_f1, micro_f1: floats (F1 of a class with no prediction and no reference: 0).
"""


class Classification(evaluate.Metric):
    def _info(self):
        value = datasets.Value("int32")
        kind = datasets.Sequence(value) if self.config_name == "multilabel" else value
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": kind, "references": kind}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(self, predictions, references):
        def f1(average):
            return float(f1_score(references, predictions, average=average, zero_division=0))

        return {"accuracy": float(accuracy_score(references, predictions)),
                "macro_f1": f1("macro"), "micro_f1": f1("micro")}
