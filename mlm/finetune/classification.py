"""Sequence classification (multi-class or multi-label) with `AutoModelForSequenceClassification`.

The stock head (the [CLS] position through the model's pooler/classifier, or ModernBERT's mean
pooling) is kept on purpose: the saved folder then loads in `pipeline("text-classification")`
with no custom code.

Long texts: with `max_windows` > 1, a text longer than `max_length` is cut into consecutive
windows of `max_length` tokens (at most `max_windows`); each window is a training example with
the text's label (`windows_per_epoch`: only a fresh sample of a text's windows in each epoch,
which makes an epoch up to max_windows times cheaper), and a text's prediction averages all its
windows' logits. The model itself is
unchanged (a pipeline on a long text reads its first window only), but it is trained and scored
on all of the text that fits the windows, as a bag-of-words baseline would be.
"""
from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

import mlm.finetune.baselines as baselines
from mlm.finetune.config import TrainConfig
from mlm.finetune.data import TaskData, TextExample
from mlm.finetune.engine import device_of, fit, load_model, once, predict_logits
from mlm.finetune.metrics import classification_scores


def encode(tokenizer, examples: list[TextExample], label_names: list[str], multi_label: bool,
           max_length: int, max_windows: int = 1) -> list[dict]:
    """Token ids (truncated to max_length, or cut into up to `max_windows` consecutive windows:
    the fast tokenizer's overflow windows, without overlap) plus the label id, or a multi-hot
    float vector, and `doc`: the index of the example a feature comes from."""
    index = {n: i for i, n in enumerate(label_names)}
    pairs = [ex.pair for ex in examples] if any(ex.pair is not None for ex in examples) else None
    overflow = max_windows > 1 and not pairs  # sentence pairs are always truncated
    enc = tokenizer([ex.text for ex in examples], [p or "" for p in pairs] if pairs else None,
                    truncation=True, max_length=max_length, return_overflowing_tokens=overflow)
    docs = enc["overflow_to_sample_mapping"] if overflow else range(len(examples))
    columns = ["input_ids"] + (["token_type_ids"] if pairs and "token_type_ids" in enc else [])
    feats, windows = [], Counter()
    for k, i in enumerate(docs):
        windows[i] += 1
        if windows[i] > max_windows:
            continue
        f = {c: enc[c][k] for c in columns}
        ex = examples[i]
        if multi_label:
            f["labels"] = [1.0 if n in ex.labels else 0.0 for n in label_names]
        elif ex.labels:  # unlabeled texts (self-training) have none
            f["labels"] = index[ex.labels[0]]
        f["doc"] = i
        feats.append(f)
    return feats


def per_document(logits: list[torch.Tensor], feats: list[dict]) -> tuple[list[torch.Tensor], list[dict]]:
    """Average the logits of each document's windows; one feature (the first window) per document."""
    sums: dict[int, list[torch.Tensor]] = {}
    first: dict[int, dict] = {}
    for lg, f in zip(logits, feats):
        sums.setdefault(f["doc"], []).append(lg)
        first.setdefault(f["doc"], f)
    docs = sorted(sums)
    return [torch.stack(sums[d]).mean(0) for d in docs], [first[d] for d in docs]


def window_sampler(feats: list[dict], k: int | None) -> Callable[[torch.Generator], list[int]] | None:
    """What one epoch trains on when texts have more than `k` windows: up to `k` of each text's
    windows, drawn uniformly afresh every epoch (None when every text fits, or `k` is None)."""
    by_doc: dict[int, list[int]] = {}
    for i, f in enumerate(feats):
        by_doc.setdefault(f["doc"], []).append(i)
    if k is None or all(len(idx) <= k for idx in by_doc.values()):
        return None

    def draw(gen: torch.Generator) -> list[int]:
        return [idx[j] for idx in by_doc.values()
                for j in (torch.randperm(len(idx), generator=gen)[:k].tolist() if len(idx) > k
                          else range(len(idx)))]

    return draw


def decide(logits: list[torch.Tensor], multi_label: bool):
    if multi_label:
        return [(lg > 0).int().tolist() for lg in logits]
    return [int(lg.argmax()) for lg in logits]


def validation_loss(logits: torch.Tensor, refs, multi_label: bool) -> float:
    if multi_label:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(refs).float()).item()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(refs)).item()


def references(feats: list[dict], multi_label: bool):
    return [[int(v) for v in f["labels"]] if multi_label else f["labels"] for f in feats]


STUDENT_UPDATES = 1
"""The self-training student's update budget, as a multiple of the teacher's (at least one pass
over the labeled and pseudo-labeled texts). 1 and 3 tie on English sentiment at 500 labels (1
was +0.010 macro-F1 on 4 paired seeds) at half the cost (bench/RESULTS.md, "Self-training")."""
SCORED_PER_PSEUDO_LABEL = 20
"""At most this many unlabeled texts per pseudo-label allowed (max_pseudo_labels) are scored by
the teacher: a seeded sample of a larger pool, so a huge unlabeled file costs no more."""


def run(spec: str, first_folder: Path | None, subset: list[TextExample], data: TaskData, seed: int,
        cfg: TrainConfig, metric: str, progress: str | None = None, cache: dict | None = None,
        unlabeled: list[TextExample] | None = None, tfidf_cache: dict | None = None) -> dict:
    """Fine-tune `spec` on `subset`, pick the best epoch on validation, score the test set; with
    `cfg.self_training` and `unlabeled` texts (single-label tasks), that model is the teacher of
    a student trained on `subset` and the teacher's most confident pseudo-labels; the student is
    returned (under self_training_keep "better" only if its validation score is at least the
    teacher's, else the teacher), with the teacher's scores and which was kept under
    "self_training".
    `cache`: one per task, to encode its validation and test sets once per tokenizer;
    `tfidf_cache`: the TF-IDF baseline's, for the model+tfidf teacher."""
    out = train(spec, first_folder, subset, data, seed, cfg, metric, progress, cache)
    if not (cfg.self_training and unlabeled) or data.multi_label:
        return out
    available = len(unlabeled)
    if available > SCORED_PER_PSEUDO_LABEL * cfg.max_pseudo_labels:  # a seeded sample of a huge pool
        unlabeled = random.Random(seed).sample(unlabeled, SCORED_PER_PSEUDO_LABEL * cfg.max_pseudo_labels)
    teacher = {"validation": out["validation"], "test": out["test"], "best_epoch": out["fit"].best_epoch,
               "steps": out["fit"].steps, "seconds": round(out["fit"].seconds, 2)}
    info: dict = {"teacher": teacher, "pseudo_label_teacher": cfg.pseudo_label_teacher,
                  "unlabeled": available, "scored": len(unlabeled), "rounds": [], "kept": "teacher"}
    for r in range(cfg.self_training_rounds):
        pseudo = pseudo_labels(out, subset, unlabeled, data, seed, cfg, metric, tfidf_cache)
        info.update(pseudo_labels=len(pseudo),
                    pseudo_label_counts=dict(Counter(ex.labels[0] for ex in pseudo)))
        if not pseudo:
            break
        # The teacher's weights wait on the CPU (the student takes its place on the device) in
        # case the student scores below it on validation.
        previous = {k: v.detach().to("cpu", copy=True) for k, v in out["model"].state_dict().items()} \
            if cfg.self_training_keep == "better" else None
        teacher_out = {k: v for k, v in out.items() if k != "model"}
        out.clear()
        epochs = max(1.0, STUDENT_UPDATES * cfg.num_train_epochs * len(subset) / (len(subset) + len(pseudo)))
        student = train(spec, first_folder, subset + pseudo, data, seed,
                        dataclasses.replace(cfg, num_train_epochs=epochs), metric,
                        progress and f"{progress} student" + (f" {r + 1}" if r else ""), cache)
        info["student_epochs"] = round(epochs, 3)
        info["rounds"].append({"pseudo_labels": len(pseudo), "validation": student["validation"],
                               "test": student["test"]})
        if previous is not None and student["validation"][metric] < teacher_out["validation"][metric]:
            student["model"].load_state_dict(previous)  # same architecture and labels
            out = {**teacher_out, "model": student["model"]}
            break
        out = student
        info["kept"] = "student" if r == 0 else f"student {r + 1}"
    return {**out, "self_training": info}


def pseudo_labels(teacher: dict, subset: list[TextExample], unlabeled: list[TextExample], data: TaskData,
                  seed: int, cfg: TrainConfig, metric: str,
                  tfidf_cache: dict | None = None) -> list[TextExample]:
    """`unlabeled` texts labeled by the teacher (its class probabilities, or their mean with a
    TF-IDF logistic regression's on `subset`): per predicted class the most confident ones, at
    most pseudo_label_share x len(unlabeled) / classes and max_pseudo_labels / classes each (a
    class the teacher predicts less often gives fewer; its quota is not handed to the others).
    The texts' own labels, if any, are never read."""
    model, tok = teacher["model"], teacher["tokenizer"]
    names = data.label_names
    feats = encode(tok, unlabeled, names, False, cfg.max_length, cfg.max_windows)
    logits, _ = per_document(predict_logits(model, feats, cfg.per_device_eval_batch_size,
                                            DataCollatorWithPadding(tok), cfg.mixed_precision), feats)
    probs = torch.stack(logits).softmax(-1)
    if cfg.pseudo_label_teacher == "model+tfidf":
        vec, clf, _, _ = baselines.fit_classifier(subset, data, seed, metric,
                                                  {} if tfidf_cache is None else tfidf_cache)
        probs = (probs + torch.from_numpy(baselines.probabilities(vec, clf, unlabeled, len(names))).float()) / 2
    confidence, predicted = probs.max(-1)
    per_class = int(min(cfg.pseudo_label_share * len(unlabeled), cfg.max_pseudo_labels) / len(names))
    chosen: list[int] = []
    for c in range(len(names)):
        idx = (predicted == c).nonzero().flatten()
        top = confidence[idx].argsort(descending=True, stable=True)[:per_class]
        chosen += idx[top].tolist()
    return [dataclasses.replace(unlabeled[i], labels=[names[int(predicted[i])]]) for i in sorted(chosen)]


def train(spec: str, first_folder: Path | None, subset: list[TextExample], data: TaskData, seed: int,
          cfg: TrainConfig, metric: str, progress: str | None = None, cache: dict | None = None) -> dict:
    """Fine-tune `spec` on `subset` once (no self-training): `run`'s result."""
    model, tok = load_model(spec, first_folder, "classification", data.label_names, seed, cfg, data.multi_label)
    args = (data.label_names, data.multi_label, cfg.max_length, cfg.max_windows)
    train = encode(tok, subset, *args)
    val, test = once(cache, tok.name_or_path,
                       lambda: (encode(tok, data.validation, *args), encode(tok, data.test, *args)))
    collator, bs = DataCollatorWithPadding(tok), cfg.per_device_eval_batch_size

    def score(feats):
        logits, feats = per_document(predict_logits(model, feats, bs, collator, cfg.mixed_precision),
                                     feats)
        refs = references(feats, data.multi_label)
        preds = decide(logits, data.multi_label)
        scores = classification_scores(preds, refs, data.multi_label)
        scores["loss"] = validation_loss(torch.stack(logits), refs, data.multi_label)
        return scores, preds

    loss_fn = None
    if cfg.class_weights and not data.multi_label:
        counts = Counter(f["labels"] for f in train)
        weights = torch.tensor([len(train) / (len(counts) * counts[i]) if counts[i] else 0.0
                                for i in range(len(data.label_names))], device=device_of(model))
        loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    result = fit(model, train, lambda: score(val)[0], metric, cfg, seed, collator, loss_fn, progress=progress,
                 sample=window_sampler(train, cfg.windows_per_epoch))
    test_scores, preds = score(test)
    names = data.label_names
    predictions = [
        {"where": ex.where, "label": ex.labels,
         "prediction": [n for n, v in zip(names, p) if v] if data.multi_label else [names[p]]}
        for ex, p in zip(data.test, preds)
    ]
    return {"model": model, "tokenizer": tok, "fit": result, "validation": result.validation,
            "test": test_scores, "predictions": predictions}
