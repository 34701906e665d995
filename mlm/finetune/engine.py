"""Model loading and the fine-tuning loop shared by classification and NER.

Why a small torch loop rather than `transformers.Trainer`: the runs here are tiny (a hundred
examples, a few dozen updates) and many (models × sizes × seeds). Trainer's per-run setup,
checkpoint-to-disk for "load best model at end" and logging machinery cost more than the
training itself; this loop keeps the best weights in memory, evaluates once per epoch, and reads
top to bottom in one screen. The result is still a stock `*For{Sequence,Token}Classification`
saved with `save_pretrained`, so pipelines and Trainer users load it unchanged.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)

from mlm.errors import UserError
from mlm.finetune.config import DEMO_MODEL, TrainConfig
from mlm.modeling import param_groups, quiet_transformers

RANDOM_INIT = "random-init"
TFIDF = "tfidf-logreg"
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout",
                 "mlp_dropout", "embedding_dropout")


def check_model_folder(spec: str) -> Path:
    """The local folder of a model spec, with a clear error when it is not one."""
    if spec.startswith("pkg://"):  # a checkpoint shipped in an installed package
        from mlm.recipe import resolve_path

        path = resolve_path(spec)
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        if spec.rstrip("/") == DEMO_MODEL:
            raise UserError(f"{spec} not found: run `python train_mlm.py` first to pretrain the demo model")
        raise UserError(f"model '{spec}' not found: give a local save_pretrained folder, "
                        f"{RANDOM_INIT} or {TFIDF}")
    if not (path / "config.json").is_file():
        raise UserError(f"model '{spec}': not a model folder (no config.json)")
    return path


def load_tokenizer(path: Path):
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load its tokenizer ({exc})") from None


def run_state():
    """Accelerate's view of this process: its device (`cuda:<local rank>` under `accelerate
    launch` on GPUs, the GPU or MPS when there is one, else the CPU), rank and process count.
    Without an accelerator it joins the launcher's gloo group (MULTI_CPU) as pretraining does."""
    from accelerate import PartialState

    return PartialState(cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()))


def run_device() -> torch.device:
    """The device this process fine-tunes on."""
    return run_state().device


def load_model(spec: str, first_folder: Path, task: str, label_names: list[str], seed: int,
               cfg: TrainConfig, multi_label: bool = False, device: torch.device | None = None):
    """A classification model with a fresh head: from `spec`'s weights, or (random-init) from the
    configuration of `first_folder` with every weight initialised from `seed`; placed on
    `device` (default: `run_device()`), where fit and predict_logits then run."""
    folder = first_folder if spec == RANDOM_INIT else check_model_folder(spec)
    auto = AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
    extra = {"problem_type": "multi_label_classification"} if multi_label else {}
    config = AutoConfig.from_pretrained(
        str(folder), num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)}, **extra)
    if cfg.dropout is not None:
        for key in _DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, cfg.dropout)
    if cfg.pooling != "checkpoint" and hasattr(config, "classifier_pooling"):
        config.classifier_pooling = cfg.pooling
    torch.manual_seed(seed)  # the new head (and, for random-init, everything) depends on the seed
    # quiet: "newly initialized head" warnings are expected here, and a "Loading weights" bar
    # per run is noise
    try:
        with quiet_transformers():
            if spec == RANDOM_INIT:
                model = auto.from_config(config)
            else:
                model = auto.from_pretrained(str(folder), config=config,
                                             ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"model '{spec}': cannot be loaded for {task} ({exc})") from None
    return model.to(device if device is not None else run_device()), load_tokenizer(folder)


def pad_batch(features: list[dict], pad_id: int) -> dict:
    """Right-pad `input_ids` (and `labels` when they are per token) into tensors."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, : len(f["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in features[0]:
        tt = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            tt[i, : len(f["token_type_ids"])] = torch.tensor(f["token_type_ids"])
        batch["token_type_ids"] = tt
    if "labels" in features[0]:
        first = features[0]["labels"]
        if isinstance(first, list) and first and isinstance(first[0], int):  # per token (NER)
            labels = torch.full((len(features), width), -100, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, : len(f["labels"])] = torch.tensor(f["labels"])
        elif isinstance(first, list):  # multi-hot floats (multi-label classification)
            labels = torch.tensor([f["labels"] for f in features], dtype=torch.float)
        else:
            labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        batch["labels"] = labels
    return batch


def autocast(precision: str, device: torch.device):
    """bf16 autocast on the device the model and its batches are on (none for "no")."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_logits(model, features: list[dict], batch_size: int, pad_id: int,
                   precision: str = "no") -> list[torch.Tensor]:
    """Logits per feature (unpadded: [num_labels] or [tokens, num_labels]), as float32 on CPU."""
    model.eval()
    dev = device_of(model)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[torch.Tensor | None] = [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        batch = pad_batch([{k: v for k, v in features[i].items() if k != "labels"} for i in idx], pad_id)
        with autocast(precision, dev):
            logits = model(**{k: v.to(dev, non_blocking=True) for k, v in batch.items()})
        logits = logits.logits.float().cpu()
        for j, i in enumerate(idx):
            out[i] = logits[j, : len(features[i]["input_ids"])] if logits.dim() == 3 else logits[j]
    return out


@dataclass
class FitResult:
    best_score: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    epochs: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def fit(model, features: list[dict], evaluate: Callable[[], dict], metric: str, cfg: TrainConfig,
        seed: int, pad_id: int, loss_fn: Callable | None = None) -> FitResult:
    """Train with AdamW + linear warmup/decay; score on validation after every epoch (`evaluate`
    returns the metrics and "loss"); stop after `early_stopping_patience` epochs in which neither
    the metric nor the loss improved (a tiny model often sits on a plateau of constant predictions
    for a few epochs before it starts learning); leave the best-metric epoch's weights loaded."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(seed)
    bs = cfg.per_device_train_batch_size
    steps_per_epoch = math.ceil(len(features) / bs)
    total = max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    res, best_state, bad_epochs, step = FitResult(), None, 0, 0
    dev = device_of(model)
    while step < total:
        model.train()
        perm = torch.randperm(len(features), generator=gen).tolist()
        losses = []
        for start in range(0, len(perm), bs):
            if step >= total:
                break
            batch = pad_batch([features[i] for i in perm[start: start + bs]], pad_id)
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            with autocast(cfg.mixed_precision, dev):
                if loss_fn is None:
                    loss = model(**batch).loss
                else:
                    labels = batch.pop("labels")
                    loss = loss_fn(model(**batch).logits.float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())  # read once per epoch: no host sync per step
            step += 1
        res.epochs += 1
        scores = evaluate()
        train_loss = torch.stack(losses).float().mean().item() if losses else 0.0
        res.history.append({"epoch": res.epochs, "train_loss": train_loss,
                            **{f"val_{k}": v for k, v in scores.items()}})
        better = scores[metric] > res.best_score or (
            scores[metric] == res.best_score and scores["loss"] < res.best_loss)
        if better:
            res.best_score, res.best_epoch = scores[metric], res.epochs
            best_state = copy.deepcopy(model.state_dict())
        if better or scores["loss"] < res.best_loss:
            bad_epochs = 0
        else:
            bad_epochs += 1
        res.best_loss = min(res.best_loss, scores["loss"])
        if cfg.early_stopping_patience and bad_epochs >= cfg.early_stopping_patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    res.seconds = time.time() - t0
    return res
