"""Pretraining stage: recipe → corpus → tokenizer → blocks → masked batches → trained encoder.

The loop itself is short; Accelerate handles devices, processes and mixed precision, and
small helpers below own the schedule, validation, logging and checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import Dataset, load_from_disk
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mlm.config import Recipe, to_dict
from mlm.corpus import build_corpus
from mlm.corpus.build import corpus_stats
from mlm.errors import UserError
from mlm.masking import MaskingCollator
from mlm.modeling import build_model, count_parameters, flops_per_token
from mlm.packing import pack
from mlm.recipe import _hash, corpus_fingerprint, fingerprint
from mlm.report import plot_loss_curve
from mlm.tokenizer import load_tokenizer, train_tokenizer

BLOCK_COLUMNS = ["input_ids", "word_start", "special_tokens_mask"]


# ---------------------------------------------------------------------------------------------
# Data preparation (cached on disk, keyed by fingerprints).


def prepare_data(recipe: Recipe, accelerator: Accelerator | None = None):
    """Corpus, tokenizer and packed blocks for `recipe`, each built once and cached."""
    import datasets

    datasets.disable_progress_bars()
    out = Path(recipe.training.output_dir)
    cache = out / "cache"
    main = accelerator is None or accelerator.is_main_process
    if main:
        corpus = build_corpus(recipe, cache / "corpus")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    corpus = build_corpus(recipe, cache / "corpus")  # cached: a load for every rank
    tcfg = recipe.tokenizer
    if tcfg.tokenizer_name_or_path:
        tok_dir = Path(tcfg.tokenizer_name_or_path)
    else:
        tok_key = _hash({"corpus": corpus_fingerprint(recipe), "tok": to_dict(tcfg)})
        tok_dir = cache / "tokenizer" / tok_key
        if main and not (tok_dir / "tokenizer.json").is_file():
            tok = train_tokenizer(iter(corpus["train"]["text"]), tcfg)
            tmp = tok_dir.with_name(tok_dir.name + ".tmp")
            tok.save_pretrained(str(tmp))
            tmp.rename(tok_dir)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    tokenizer = load_tokenizer(tok_dir)
    tok_hash = _hash(json.loads((tok_dir / "tokenizer.json").read_text()))
    block_key = _hash({"corpus": corpus_fingerprint(recipe), "tok": tok_hash,
                       "len": recipe.packing.max_seq_length})
    block_dir = cache / "blocks" / block_key
    if main and not (block_dir / "done").is_file():
        tmp = block_dir.with_name(block_key + ".tmp")
        for split in ("train", "validation"):
            blocks = pack(corpus[split], tokenizer, recipe.packing.max_seq_length,
                          recipe.packing.num_proc)
            blocks.save_to_disk(str(tmp / split))
        (tmp / "done").write_text("ok")
        tmp.rename(block_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    train = load_from_disk(str(block_dir / "train"))
    val = load_from_disk(str(block_dir / "validation"))
    return tokenizer, train, val, corpus_stats(recipe, cache / "corpus")


# ---------------------------------------------------------------------------------------------
# Small helpers: sampler, schedule, parameter groups, validation, peak FLOPs.


class EpochSampler(Sampler):
    """A fresh seeded permutation per epoch, started at any position (for constant-time resume)."""

    def __init__(self, n: int, seed: int, epoch: int = 0, start: int = 0):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=gen)
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return self.n - self.start


def lr_factor(progress: float, warmup: float, kind: str) -> float:
    """Multiplier of the peak learning rate at `progress` ∈ [0, 1] of the budget."""
    if progress < warmup:
        return progress / warmup
    rest = min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    return 1.0 - rest


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay for biases, norms and embeddings' norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model, batches: list[dict], accelerator: Accelerator) -> float:
    """Mean masked-LM loss over fixed validation batches; sums, never logits, are kept."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device)
    for batch in batches:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = model(**batch).loss
        n = (batch["labels"] != -100).sum()
        total += torch.stack([loss.float() * n, n.float()])
    total = accelerator.reduce(total, reduction="sum")
    model.train()
    return (total[0] / total[1].clamp(min=1)).item()


def device_peak_flops(device: torch.device, mixed_precision: str) -> float | None:
    """Peak dense FLOP/s: a table for GPUs, a short matmul measurement on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
        for key, value in table.items():
            if key in name:
                return value if mixed_precision != "no" else value / 2
        return None
    if device.type != "cpu":
        return None
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float32
    a = torch.randn(1024, 1024, dtype=dtype)
    b = torch.randn(1024, 1024, dtype=dtype)
    a @ b
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.3:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - start)


@dataclass
class Progress:
    """Where training stands; `fraction` lays the schedule over the budget."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def fraction(self, recipe: Recipe) -> float:
        t = recipe.training
        parts = []
        if t.max_steps:
            parts.append(self.step / t.max_steps)
        if t.max_tokens:
            parts.append(self.tokens / t.max_tokens)
        if t.max_minutes:
            parts.append(self.seconds / (60 * t.max_minutes))
        return max(parts) if parts else 1.0


# ---------------------------------------------------------------------------------------------
# The loop.


def pretrain(recipe: Recipe) -> Path:
    """Run the recipe end to end; returns the output folder (a save_pretrained model)."""
    t = recipe.training
    if not (t.max_steps or t.max_tokens or t.max_minutes):
        raise UserError("set a budget: max_steps, max_tokens or max_minutes")
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with="tensorboard", project_dir=str(out),
    )
    set_seed(t.seed)
    tokenizer, train_blocks, val_blocks, stats = prepare_data(recipe, accelerator)
    model = build_model(recipe.model, tokenizer, recipe.packing.max_seq_length)
    m = recipe.masking
    collator = MaskingCollator(
        tokenizer, strategy=m.masking_strategy, mlm_probability=m.mlm_probability,
        mask_replace_prob=m.mask_replace_prob, random_replace_prob=m.random_replace_prob,
        seed=t.seed,
    )
    collator.rank = accelerator.process_index
    eval_collator = MaskingCollator(tokenizer, strategy=m.masking_strategy,
                                    mlm_probability=m.eval_mlm_probability, seed=12345)
    val_subset = val_blocks.select(range(min(len(val_blocks), t.max_eval_blocks)))
    val_subset = val_subset.shard(accelerator.num_processes, accelerator.process_index)
    val_rows = val_subset.with_format("torch", columns=BLOCK_COLUMNS)
    val_batches = [
        eval_collator([val_rows[j] for j in range(i, min(i + t.per_device_eval_batch_size,
                                                        len(val_rows)))])
        for i in range(0, len(val_rows), t.per_device_eval_batch_size)
    ]
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.learning_rate,
                                  betas=(0.9, 0.98), eps=1e-6)
    model, optimizer = accelerator.prepare(model, optimizer)
    train_rows = train_blocks.with_format("torch", columns=BLOCK_COLUMNS)
    tokens_per_update = (t.per_device_train_batch_size * recipe.packing.max_seq_length
                         * accelerator.num_processes * t.gradient_accumulation_steps)
    accelerator.init_trackers("tensorboard")
    metrics = (out / "metrics.jsonl").open("w") if accelerator.is_main_process else None
    progress = Progress()
    bar = tqdm(total=100, unit="%", disable=not accelerator.is_local_main_process,
               desc="pretrain", mininterval=1.0, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]{postfix}")
    first_val = evaluate(model, val_batches, accelerator)
    _log(accelerator, metrics, {"step": 0, "tokens": 0, "val_loss": first_val,
                                "val_perplexity": math.exp(min(first_val, 50))})
    epoch, running, nonfinite, train_start = 0, [], 0, time.perf_counter()
    last_val, done = first_val, False
    while not done:
        sampler = EpochSampler(len(train_rows), t.seed, epoch)
        collator.set_epoch(epoch)
        loader = DataLoader(train_rows, batch_size=t.per_device_train_batch_size, sampler=sampler,
                            collate_fn=collator, num_workers=t.dataloader_num_workers,
                            drop_last=True)
        if accelerator.num_processes > 1:
            loader = accelerator.prepare_data_loader(loader, device_placement=True)
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = model(**batch).loss
                if not torch.isfinite(loss):
                    nonfinite += 1
                    optimizer.zero_grad(set_to_none=True)
                    if nonfinite >= 5:
                        raise UserError("training stopped: 5 non-finite losses in a row; "
                                        "lower --learning_rate or use --mixed_precision no")
                    continue
                nonfinite = 0
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    lr = t.learning_rate * lr_factor(progress.fraction(recipe), t.warmup_ratio,
                                                     t.lr_scheduler_type)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            progress.tokens += tokens_per_update
            progress.seconds = time.perf_counter() - train_start
            frac = _agreed_fraction(progress.fraction(recipe), accelerator)
            if m.mlm_probability_end is not None:
                collator.set_mlm_probability(
                    m.mlm_probability + (m.mlm_probability_end - m.mlm_probability) * frac)
            if progress.step % t.logging_steps == 0 or frac >= 1:
                train_loss = accelerator.reduce(torch.stack(running).mean(), "mean").item()
                running = []
                tps = progress.tokens / max(progress.seconds, 1e-9)
                _log(accelerator, metrics, {"step": progress.step, "tokens": progress.tokens,
                                            "train_loss": train_loss, "lr": lr,
                                            "elapsed_s": round(progress.seconds, 2)})
                bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
            bar.n = min(100.0, 100 * frac)
            bar.refresh()
            if progress.step % t.eval_steps == 0 or frac >= 1:
                pause = time.perf_counter()
                last_val = evaluate(model, val_batches, accelerator)
                _log(accelerator, metrics, {"step": progress.step, "tokens": progress.tokens,
                                            "val_loss": last_val,
                                            "val_perplexity": math.exp(min(last_val, 50))})
                train_start += time.perf_counter() - pause  # validation is not training time
            if frac >= 1:
                done = True
                break
        epoch += 1
    bar.close()
    accelerator.end_training()
    if metrics:
        metrics.close()
    if accelerator.is_main_process:
        _finish(recipe, accelerator, model, tokenizer, progress, first_val, last_val, stats)
    accelerator.wait_for_everyone()
    return out


def _agreed_fraction(frac: float, accelerator: Accelerator) -> float:
    """Every process must stop at the same step: take the largest progress of all ranks."""
    if accelerator.num_processes == 1:
        return frac
    value = torch.tensor([frac], device=accelerator.device)
    return accelerator.gather(value).max().item()


def _log(accelerator: Accelerator, fh, row: dict) -> None:
    if fh is None:
        return
    fh.write(json.dumps(row) + "\n")
    fh.flush()
    accelerator.log({k: v for k, v in row.items() if k not in ("step", "tokens")},
                    step=row["step"])


def _finish(recipe, accelerator, model, tokenizer, progress, first_val, last_val, stats) -> None:
    """Save the model folder, the loss curve and a summary; print the summary."""
    out = Path(recipe.training.output_dir)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png", title=f"{recipe.name}")
    seq = recipe.packing.max_seq_length
    tps = progress.tokens / max(progress.seconds, 1e-9)
    peak = device_peak_flops(accelerator.device, recipe.training.mixed_precision)
    mfu = flops_per_token(unwrapped.config, seq) * tps / peak if peak else None
    summary = {
        "recipe_name": recipe.name,
        "recipe_fingerprint": fingerprint(recipe),
        "base_model": recipe.model.model_name_or_path,
        "model_family": unwrapped.config.model_type,
        "num_parameters": count_parameters(unwrapped),
        "vocab_size": len(tokenizer),
        "max_seq_length": seq,
        "tokens_seen": progress.tokens,
        "steps": progress.step,
        "train_runtime_s": round(progress.seconds, 1),
        "tokens_per_s": round(tps, 1),
        "mfu": mfu,
        "hardware": _hardware(accelerator),
        "initial_val_loss": first_val,
        "final_val_loss": last_val,
        "val_perplexity": math.exp(min(last_val, 50)),
        "mlm_probability": recipe.masking.mlm_probability,
        "masking_strategy": recipe.masking.masking_strategy,
        "tokenizer": {"kind": recipe.tokenizer.tokenizer_kind, "vocab_size": len(tokenizer)},
        "corpus": {"documents": sum(stats["documents"].values()),
                   "characters": sum(stats["characters"].values()),
                   "train_documents": stats["documents"]["train"],
                   "validation_documents": stats["documents"]["validation"]},
    }
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    summary["final_train_loss"] = train_losses[-1] if train_losses else None
    summary["first_train_loss"] = train_losses[0] if train_losses else None
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "recipe.resolved.yaml").write_text(_yaml(to_dict(recipe)))
    mfu_text = f", MFU {100 * mfu:.1f}%" if mfu else ""
    print(
        f"\npretraining done: {progress.step} steps, {progress.tokens:,} tokens in "
        f"{progress.seconds / 60:.1f} min ({tps:,.0f} tokens/s{mfu_text})\n"
        f"  train loss {summary['first_train_loss']:.3f} -> {summary['final_train_loss']:.3f}\n"
        f"  validation loss {first_val:.3f} -> {last_val:.3f} "
        f"(perplexity {summary['val_perplexity']:.1f})\n"
        f"  model: {out}  (loss curve: {out / 'loss_curve.png'})"
    )


def _hardware(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{accelerator.num_processes} process(es) on CPU ({platform.processor() or 'cpu'}, " \
           f"{os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def load_blocks(path: str | Path) -> Dataset:
    """Load packed blocks written by prepare_data."""
    return load_from_disk(str(path))
