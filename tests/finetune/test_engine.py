"""The fine-tuning engine: model loading (heads, pooling), the choice of the best epoch and early
stopping, on a scripted score sequence and on real training."""
from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorWithPadding

from mlm.finetune import DataConfig, TrainConfig, classification
from mlm.finetune.data import load_task
from mlm.finetune.engine import FitResult, load_model, predict_logits
from mlm.finetune.metrics import classification_scores


def run_epochs(scores: list[tuple[float, float]], patience: int) -> tuple[FitResult, list[bool], list[bool]]:
    """Feed (metric, loss) per epoch to a FitResult; per epoch: new best? stop now?"""
    res, best, stop = FitResult(), [], []
    for metric, loss in scores:
        best.append(res.end_epoch({"f1": metric, "loss": loss}, "f1"))
        stop.append(res.should_stop(patience))
    return res, best, stop


SCORES = [(0.2, 1.0), (0.2, 0.9), (0.1, 0.95), (0.1, 0.85), (0.15, 0.9), (0.1, 1.0), (0.3, 1.1)]


def test_best_epoch_is_the_highest_metric_then_the_lowest_loss():
    res, best, _ = run_epochs(SCORES, patience=0)
    # epoch 2 ties epoch 1's metric with a lower loss; epoch 4's lower loss has a worse metric
    assert best == [True, True, False, False, False, False, True]
    assert res.best_epoch == 7 and res.validation == {"f1": 0.3, "loss": 1.1}
    res, _, _ = run_epochs(SCORES[:6], patience=0)
    assert res.best_epoch == 2 and res.validation == {"f1": 0.2, "loss": 0.9}
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("patience, stops_after", [(1, 3), (2, 6), (3, None), (0, None)])
def test_early_stopping_waits_for_patience_epochs_without_metric_or_loss_gain(patience, stops_after):
    """Epoch 4 improves only the loss, which restarts the count; 0 never stops."""
    _, _, stop = run_epochs(SCORES, patience)
    assert (stop.index(True) + 1 if True in stop else None) == stops_after


def test_fit_stops_early_and_keeps_the_best_epochs_weights(tiny_model, bbc_csv, capsys):
    """Real training on BBC articles: the run stops `patience` bad epochs after its last gain,
    and the model it returns scores on validation exactly what its best epoch scored."""
    data = load_task(DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                                test_file=str(bbc_csv["test"])))
    cfg = TrainConfig(num_train_epochs=40, early_stopping_patience=2, max_length=48, learning_rate=3e-3,
                      mixed_precision="no")
    out = classification.run(str(tiny_model), tiny_model, data.train, data, 0, cfg, "macro_f1",
                             progress="tiny n=all seed=0")
    res, history = out["fit"], out["fit"].history
    bar = capsys.readouterr().err  # the run's progress bar: steps, epoch, validation score
    assert "tiny n=all seed=0" in bar and "step" in bar and f"epoch={res.epochs}" in bar
    assert 2 < res.epochs < 40 and res.best_epoch < res.epochs
    last_gain = max(i for i, h in enumerate(history, 1)
                    if i == 1 or h["val_loss"] < min(x["val_loss"] for x in history[: i - 1])
                    or h["val_macro_f1"] > max(x["val_macro_f1"] for x in history[: i - 1]))
    assert res.epochs == last_gain + 2
    best = history[res.best_epoch - 1]
    assert best["val_macro_f1"] == max(h["val_macro_f1"] for h in history)
    # the returned model is the best epoch's: scoring validation again gives its loss and score
    feats = classification.encode(out["tokenizer"], data.validation, data.label_names, False, 48)
    logits = torch.stack(predict_logits(out["model"], feats, 64, DataCollatorWithPadding(out["tokenizer"])))
    refs = [f["labels"] for f in feats]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(refs)).item()
    assert loss == pytest.approx(best["val_loss"], rel=1e-5)
    assert classification_scores(logits.argmax(-1).tolist(), refs)["macro_f1"] == best["val_macro_f1"]


def test_pooling_follows_checkpoint_or_flag(tmp_path, tokenizer, tiny_model):
    """A ModernBERT pretrained here saves mean pooling for its classifier; --pooling overrides it,
    and the choice changes what the head reads. BERT heads read [CLS] whatever the flag."""
    from mlm.config import ModelConfig
    from mlm.modeling import build_model

    folder = tmp_path / "modernbert"
    build_model(ModelConfig(model_family="modernbert", model_size="tiny"), tokenizer, 64) \
        .save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    batch = tokenizer(["Shares rose in London.", "The match ended in a draw after extra time."],
                      padding=True, return_tensors="pt")
    outputs = {}
    for pooling in ("checkpoint", "cls", "mean"):
        model, _ = load_model(str(folder), folder, "classification", ["a", "b"], 0,
                              TrainConfig(pooling=pooling))
        expected = "mean" if pooling == "checkpoint" else pooling
        assert model.config.classifier_pooling == expected
        model.eval()
        with torch.no_grad():
            outputs[pooling] = model(**batch.to(model.device)).logits.cpu()
    assert torch.allclose(outputs["checkpoint"], outputs["mean"])
    assert not torch.allclose(outputs["cls"], outputs["mean"])
    bert, _ = load_model(str(tiny_model), tiny_model, "classification", ["a", "b"], 0,
                         TrainConfig(pooling="mean"))
    assert not hasattr(bert.config, "classifier_pooling")
