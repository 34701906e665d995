"""Pretraining stage: recipe → corpus → tokenizer → blocks → masked batches → trained encoder.

`pretrain()` reads on one screen: it sets up a `Run` and calls, per batch, the `Engine`'s step
(forward, backward, and at each update the learning rate, clipping and the non-finite skip)
and the run's after-update hook (logging, validation, checkpoints, stopping). Accelerate
handles devices, processes and mixed precision; each stage before this one owns its cache.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    broadcast_object_list,
    send_to_device,
    set_seed,
)
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mlm.cache import cached
from mlm.config import Recipe, check_ranges, to_dict
from mlm.corpus import build_corpus
from mlm.corpus.build import corpus_stats, format_stats
from mlm.cpus import resolve_precision, set_torch_threads, tell_deepspeed_cpu
from mlm.errors import Stopped, UserError, create_folder, one_line
from mlm.masking import MaskingCollator
from mlm.modeling import (
    WEIGHT_FILES,
    check_embedding_rows,
    check_model_settings,
    count_parameters,
    param_groups,
    quiet_transformers,
)
from mlm.objective import build_objective, uses_varlen
from mlm.packing import load_blocks, prepare_blocks
from mlm.recipe import (
    check_output_outside_sources,
    corpus_fingerprint,
    fingerprint,
    resolve_path,
)
from mlm.report import CARD_MARKER, plot_loss_curve
from mlm.tokenizer import check_tokenizer_settings, prepare_tokenizer

BLOCK_COLUMNS = ["input_ids", "attention_mask", "word_start", "special_tokens_mask"]
__all__ = ["pretrain", "prepare_data", "load_blocks"]


def pretrain(recipe: Recipe) -> Path:
    """Run the recipe end to end; returns the output folder (a save_pretrained model)."""
    model, tokenizer = recipe.model, recipe.tokenizer
    if model.model_name_or_path and not tokenizer.tokenizer_name_or_path:
        # the checkpoint's own tokenizer: a new one would give its embedding rows other words
        tokenizer.tokenizer_name_or_path = model.model_name_or_path
    out = Path(recipe.training.output_dir)
    for flag, source in (("model_name_or_path", recipe.model.model_name_or_path),
                         ("tokenizer_name_or_path", recipe.tokenizer.tokenizer_name_or_path)):
        if source and out.exists() and resolve_path(source).resolve() == out.resolve():
            raise UserError(f"--{flag} {source} is the --output_dir: a run replaces the model "
                            "in its output folder, so continue pretraining into another folder")
    check_ranges(recipe)  # every setting, before any work
    config = check_model_settings(model, recipe.packing.max_seq_length)
    size = check_tokenizer_settings(tokenizer, recipe.packing.max_seq_length)
    if config is not None and size is not None and not tokenizer.extend_vocab_words:
        own = resolve_path(tokenizer.tokenizer_name_or_path).resolve() == \
            resolve_path(model.model_name_or_path).resolve()
        check_embedding_rows(config, model.model_name_or_path, size, own)
    check_output_outside_sources(recipe, out, "--output_dir")
    resume_from = _resume_point(recipe)  # checked before anything is written
    if resume_from is None and _first_process():
        guard_output_dir(recipe, out)
    create_folder(out)
    with output_lock(out):
        with Run(recipe, resume_from) as run, _StopSignal() as stop:
            batches = iter(run.loader)
            while not run.done:
                if run.engine.step(next(batches), run.progress.fraction(recipe)):
                    run.after_update(stop.received)
            run.finish()
    return out


def block_columns(recipe: Recipe) -> list[str]:
    """The block columns the collator reads (document_ids only for document-aware attention)."""
    return BLOCK_COLUMNS + (["document_ids"] if recipe.packing.document_attention else [])


def prepare_data(recipe: Recipe, accelerator: Accelerator | None = None):
    """Tokenizer, train and validation blocks and corpus stats for `recipe`: each stage builds
    its part once into `output_dir/cache` (the main process of a launch; the others wait)."""
    import datasets

    datasets.disable_progress_bars()
    cache = Path(recipe.training.output_dir) / "cache"
    corpus = build_corpus(recipe, cache / "corpus", accelerator)
    stats = corpus_stats(recipe, cache / "corpus")
    if accelerator is None or accelerator.is_main_process:
        print(format_stats(stats), flush=True)
    key = corpus_fingerprint(recipe)
    tokenizer = prepare_tokenizer(recipe.tokenizer, corpus["train"], key, cache / "tokenizer",
                                  accelerator)
    train, val = prepare_blocks(corpus, tokenizer, recipe.packing, key, cache / "blocks",
                                accelerator)
    return tokenizer, train, val, stats


def masking_collator(recipe: Recipe, tokenizer, seed: int, mlm_probability: float,
                     replace: tuple[float, float] = (0.8, 0.1),
                     varlen: bool = False) -> MaskingCollator:
    """The recipe's masking collator (`varlen`: batches described for flash-attention's varlen
    kernel). The step set on it is the global batch index, already distinct across ranks and
    workers; leaving them out of the seed keeps the masks independent of the number of
    processes."""
    m = recipe.masking
    return MaskingCollator(
        tokenizer, strategy=m.masking_strategy, mlm_probability=mlm_probability,
        mask_replace_prob=replace[0], random_replace_prob=replace[1], seed=seed,
        return_masked_positions=recipe.model.sparse_prediction,
        replacement_uniforms=recipe.model.objective == "rtd",
        span_geometric_p=m.span_geometric_p, span_max_words=m.span_max_words,
        document_attention=recipe.packing.document_attention, rank=0, worker=0, varlen=varlen)


# ---------------------------------------------------------------------------------------------
# The run: its parts, the after-update hook and the end.


class Run:
    """One pretraining run, set up from the recipe (resumed from `resume_from` if given).
    As a context manager it closes what it opened (metrics file, progress bar, trackers and
    the process group) however the loop ends."""

    def __init__(self, recipe: Recipe, resume_from: Path | None):
        t = self.training = recipe.training
        self.recipe, self.out = recipe, Path(t.output_dir)
        set_torch_threads(t.torch_threads)
        device_type = "cuda" if torch.cuda.is_available() else \
            "mps" if torch.backends.mps.is_available() else "cpu"
        self.precision = _agreed_precision(t.mixed_precision, device_type)  # "auto" decided
        # Accelerate keeps its settings in a process-wide singleton; a second pretrain() in the
        # same process (tests, notebooks) with another precision would be refused. Reset the
        # settings but keep the process group (PartialState).
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = a = make_accelerator(
            mixed_precision=self.precision,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            log_with="tensorboard", project_dir=str(self.out),
            # Without a GPU, Accelerate only joins the launcher's process group (MULTI_CPU,
            # gloo) when told it runs on CPU; otherwise each process would train alone.
            cpu=device_type == "cpu")
        _check_launch_settings(a, t)
        attention = recipe.model.attention_for(a.device.type, recipe.packing.max_seq_length,
                                               self.precision)  # refused here, before any work
        set_seed(t.seed)
        self.tokenizer, train_blocks, val_blocks, self.stats = prepare_data(recipe, a)
        objective = build_objective(recipe, self.tokenizer, attention)
        varlen = uses_varlen(objective)  # flash-attn: unpadded batches (before any wrapping)
        self.engine = Engine(recipe, a, objective)
        self.validate = Validator(recipe, self.tokenizer, val_blocks, a, varlen)
        self.stream = TrainStream(recipe, self.tokenizer, train_blocks, a, varlen)
        self.checkpoints = Checkpointer(recipe, a, self.engine, self.tokenizer)
        self.progress, initial = self.checkpoints.restore(resume_from)
        self.engine.skipped += self.progress.nonfinite_total  # counted over the whole run
        self.loader = self.stream.loader(self.progress)
        first = self.validate(self.engine.objective)
        if resume_from is None and a.is_main_process:
            remove_stale(self.out)  # the run is set up: the old model's results go now
        self.log = RunLog(a, self.out, self.progress.step if resume_from else None)  # opened last
        if resume_from is None:
            self.log.validation(self.progress, first)
        self.first_val = first["loss"] if initial is None else initial  # the run's step-0 loss
        self.last_val = self.first_val
        self.clock = time.perf_counter() - self.progress.seconds
        self.done = self.progress.fraction(recipe) >= 1

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.log.close()
        self.accelerator.end_training()  # closes trackers (and the process group): last

    def after_update(self, signal_received: int | None) -> None:
        """After each optimizer update: count it, check for divergence, agree with the other
        processes on the end, then log, validate, checkpoint and stop as due."""
        t, a, p = self.training, self.accelerator, self.progress
        p.advance(self.stream, time.perf_counter() - self.clock)
        checking = p.step % self.engine.check_every == 0
        if checking:
            streak, p.nonfinite_total = self.engine.nonfinite_counts()
            if streak >= t.max_nonfinite_steps:
                raise Stopped(_divergence_message(self.recipe, self.precision, streak, p.step), 1)
        frac, stopping = p.fraction(self.recipe), signal_received is not None
        due = self.checkpoints.due(p.step)
        if a.num_processes > 1 and checking:  # ranks agree on the end at check points only
            frac, stopping, due = _agreed(frac, stopping, due, a)
        elif a.num_processes > 1:  # a clock differs between ranks: time budgets end at a check
            stopping = False
            frac = min(frac, 1 - 1e-9) if t.max_minutes else frac
            due = self.checkpoints.due(p.step, by_time=False)  # a save is collective
        self.stream.set_fraction(frac)
        if p.step % t.logging_steps == 0 or frac >= 1:
            self.log.training(p, self.engine.mean_loss(), self.engine.lr, frac)
        pause = time.perf_counter()
        if p.step % t.eval_steps == 0 or frac >= 1:
            parts = self.validate(self.engine.objective)
            self.log.validation(p, parts)
            self.last_val = parts["loss"]
        # Never while non-finite updates are going on: the weights may already be poisoned.
        if (due and not self.engine.in_a_streak()) or stopping:
            p.nonfinite_total = self.engine.nonfinite_counts()[1]
            self.checkpoints.save(p, self.first_val)
        self.clock += time.perf_counter() - pause  # validation and saving are not training
        if stopping:
            signum = signal_received or signal.SIGTERM
            raise Stopped(f"{signal.Signals(signum).name} at step {p.step}; checkpoint saved, "
                          "continue with --resume", 128 + int(signum))
        self.done = frac >= 1

    def finish(self) -> None:
        """Save the model (gathered from every process), the loss curve and the run summary."""
        a = self.accelerator
        save_model(a, self.engine.objective, self.tokenizer, self.out)
        if a.is_main_process:
            plot_loss_curve(self.out / "metrics.jsonl", self.out / "loss_curve.png",
                            title=self.recipe.name)
            _write_summary(self, a.unwrap_model(self.engine.objective))
        a.wait_for_everyone()


class Engine:
    """The mechanics of one optimizer update (cramming's `engine.step`): forward under autocast
    and backward on every batch; at the end of an accumulation the learning rate, clipping, the
    non-finite skip and the update. Non-finite updates are counted on the device, so a step
    never waits for the host; the run reads the counts every `check_every` updates."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator, objective: torch.nn.Module):
        t = self.training = recipe.training
        self.accelerator = accelerator
        if t.torch_compile:  # in place: parameter names (checkpoints) are unchanged
            objective.compile()
        # Fused AdamW skips an update on the device when `found_inf` is set: no host sync.
        self.fused = accelerator.device.type in ("cuda", "cpu") and accelerator.scaler is None \
            and not _sharded(accelerator)
        optimizer = torch.optim.AdamW(
            param_groups(objective, t.weight_decay), lr=t.learning_rate,
            betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, fused=self.fused or None)
        # DeepSpeed steps inside `backward` and clips itself: it takes the batch size, the
        # accumulation and the clipping from the recipe (its config file's values are replaced)
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        if self.deepspeed:
            accelerator.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=t.per_device_train_batch_size,
                gradient_accumulation_steps=t.gradient_accumulation_steps,
                train_batch_size=t.per_device_train_batch_size * t.gradient_accumulation_steps
                * accelerator.num_processes,
                gradient_clipping=t.max_grad_norm)
        self.objective, self.optimizer = accelerator.prepare(objective, optimizer)
        # head warm-up: the encoder's gradients are dropped (not frozen: DDP and FSDP keep their
        # gradient hooks), so AdamW leaves those parameters alone, weight decay included
        self.encoder = list(accelerator.unwrap_model(self.objective).model.base_model.parameters())
        device = accelerator.device
        self.in_a_row = torch.zeros((), device=device)  # non-finite updates in a row
        self.skipped = torch.zeros((), device=device)  # the run's non-finite updates
        self.check_every = max(1, min(t.logging_steps, t.max_nonfinite_steps))
        self.losses: list[torch.Tensor] = []
        self.lr = 0.0

    def step(self, batch: dict, fraction: float) -> bool:
        """Forward and backward on one batch, and the update when an accumulation is complete
        (the learning rate laid over `fraction` of the budget). Returns whether it updated."""
        a = self.accelerator
        batch = send_to_device(batch, a.device, non_blocking=True)
        with a.accumulate(self.objective):
            if a.sync_gradients:
                self._set_lr(fraction)  # before backward: DeepSpeed's update happens there
            with a.autocast():
                loss = self.objective(**batch)["loss"]
            a.backward(loss)  # every rank, so DDP's all-reduce never waits
            if a.sync_gradients:
                self._update(fraction, loss.detach())
            self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss.detach().float())
        return a.sync_gradients

    def _set_lr(self, fraction: float) -> None:
        t = self.training
        self.lr = t.learning_rate * lr_factor(fraction, t.warmup_ratio, t.lr_scheduler_type)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def _update(self, fraction: float, loss: torch.Tensor) -> None:
        t, a = self.training, self.accelerator
        if self.deepspeed:
            # updated (and clipped) inside backward; ZeRO skips nothing in bf16/float32, so a
            # non-finite loss on any rank is counted, and a streak stops the run as diverged
            bad = a.reduce((~torch.isfinite(loss)).float(), reduction="sum").clamp(max=1)
            self.in_a_row = (self.in_a_row + 1) * bad
            self.skipped += bad
            return
        if fraction < t.head_warmup_ratio:
            for p in self.encoder:
                p.grad = None
        norm = a.clip_grad_norm_(self.objective.parameters(), t.max_grad_norm)
        bad = (~torch.isfinite(norm)).float()  # the same on every rank after the all-reduce
        if a.scaler is not None:
            bad = self._scaler_gave_up(bad, loss)
        self.in_a_row = (self.in_a_row + 1) * bad
        self.skipped += bad
        if a.scaler is not None:
            self.optimizer.step()  # the scaler's step and update
        elif self.fused:
            self.optimizer.optimizer.found_inf = bad  # the fused step skips, on the device
            self.optimizer.step()
        elif not bad.item():
            self.optimizer.step()

    def _scaler_gave_up(self, overflow: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """fp16 (GPU): the grad scaler skips an overflowing update itself and lowers its scale,
        which must happen for training to go on, and early overflows are routine, not
        divergence. An update counts as non-finite only for a non-finite loss on any rank (so
        every rank counts the same streak) or an overflow once the scale is below 1."""
        a = self.accelerator
        bad = a.reduce((~torch.isfinite(loss)).float(), reduction="sum").clamp(max=1)
        scale = getattr(a.scaler, "_scale", None)  # torch's tensor: no host sync
        if scale is None:
            return bad
        return torch.maximum(bad, overflow * (scale.reshape(()) < 1).float())

    def nonfinite_counts(self) -> tuple[int, int]:
        """(non-finite updates in a row now, non-finite updates in all): one host sync."""
        streak, total = (int(x) for x in torch.stack([self.in_a_row, self.skipped]).tolist())
        return streak, total

    def in_a_streak(self) -> bool:
        return bool(self.in_a_row.item())

    def mean_loss(self) -> float:
        """Mean finite training loss since the last call, averaged over processes."""
        finite = [x for x in self.losses if torch.isfinite(x)]
        mean = torch.stack(finite).mean() if finite else torch.tensor(float("nan"))
        self.losses = []
        return self.accelerator.reduce(mean.to(self.accelerator.device), "mean").item()


class TrainStream:
    """The training batches: a seeded order resumable by index, masked as they are loaded,
    with the masking rate following its schedule (`mlm_probability` → `mlm_probability_end`)."""

    def __init__(self, recipe: Recipe, tokenizer, blocks: Dataset, accelerator: Accelerator,
                 varlen: bool = False):
        t, m = recipe.training, recipe.masking
        self.training, self.masking, self.accelerator = t, m, accelerator
        self.rows = IndexedBlocks(blocks.with_format("torch", columns=block_columns(recipe)))
        self.batch_size = t.train_batch_size(accelerator.device.type)
        self.per_update = accelerator.num_processes * t.gradient_accumulation_steps
        # Global batches of an epoch, rounded down to whole updates.
        self.usable = (len(self.rows) // self.batch_size) // self.per_update * self.per_update
        if self.usable == 0:
            raise UserError(f"the corpus yields {len(self.rows)} training blocks, fewer than "
                            f"one update needs ({self.batch_size} x {self.per_update}); lower "
                            "--per_device_train_batch_size")
        self.tokens_per_update = self.batch_size * recipe.packing.max_seq_length * self.per_update
        replace = (m.mask_replace_prob, m.random_replace_prob)
        self.collate = SeededCollate(masking_collator(recipe, tokenizer, t.seed,
                                                      m.mlm_probability, replace, varlen))

    def loader(self, progress: Progress) -> DataLoader:
        """One DataLoader for the rest of the run, from where `progress` stands."""
        a, t = self.accelerator, self.training
        sampler = RunBatches(len(self.rows), self.batch_size, t.seed, progress.epoch,
                             progress.batch_in_epoch, a.process_index, a.num_processes,
                             self.usable)
        workers = t.loader_workers(a.device.type)
        return DataLoader(self.rows, batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=workers, pin_memory=a.device.type == "cuda",
                          prefetch_factor=4 if workers else None)

    def set_fraction(self, fraction: float) -> None:
        """Move the masking rate along its schedule (reaches loader workers a few batches late)."""
        m = self.masking
        if m.mlm_probability_end is not None:
            self.collate.rate[0] = m.mlm_probability + \
                (m.mlm_probability_end - m.mlm_probability) * fraction


class Validator:
    """The objective's loss (and its parts) on fixed validation batches: the same masks at every
    evaluation, on every process, at `eval_mlm_probability`. Sums weighted by the selected tokens
    are accumulated, never logits, so memory stays flat. The perplexity is that of the
    objective's masked-LM part (the generator's, for replaced-token detection)."""

    def __init__(self, recipe: Recipe, tokenizer, blocks: Dataset, accelerator: Accelerator,
                 varlen: bool = False):
        t = recipe.training
        self.accelerator = accelerator
        collator = masking_collator(recipe, tokenizer, 12345, recipe.masking.eval_mlm_probability,
                                    varlen=varlen)
        rows = blocks.select(range(min(len(blocks), t.max_eval_blocks)))
        rows = rows.with_format("torch", columns=block_columns(recipe))
        self.batches = []
        for b, i in enumerate(range(0, len(rows), t.per_device_eval_batch_size)):
            chunk = rows[i: i + t.per_device_eval_batch_size]
            collator.set_step(b)
            self.batches.append(collator([{k: v[j] for k, v in chunk.items()}
                                          for j in range(len(chunk["input_ids"]))]))

    @torch.no_grad()
    def __call__(self, objective: torch.nn.Module) -> dict[str, float]:
        a = self.accelerator
        # DDP: the unwrapped module (DDP's forward syncs buffers, and ranks may hold unequal
        # counts of batches), each rank a share (rank r takes batches r, r+W, ...). Sharded
        # (FSDP, DeepSpeed): every forward is a collective that gathers the parameters, so
        # every rank runs the wrapped module on every batch.
        sharded = _sharded(a)
        objective = objective if sharded else a.unwrap_model(objective)
        objective.eval()
        names = a.unwrap_model(objective).parts
        total = torch.zeros(len(names) + 1, device=a.device)
        mine = self.batches if sharded else self.batches[a.process_index::a.num_processes]
        for batch in mine:
            batch = send_to_device(batch, a.device, non_blocking=True)
            with a.autocast():
                parts = objective(**batch)
            n = (batch["labels"] != -100).sum().float()
            total += torch.stack([parts[k].float() * n for k in names] + [n])
        if not sharded:
            total = a.reduce(total, reduction="sum")
        objective.train()
        parts = dict(zip(names, (total[:-1] / total[-1].clamp(min=1)).tolist()))
        perplexity = math.exp(min(parts[a.unwrap_model(objective).perplexity_of], 50))
        return {**parts, "perplexity": perplexity}


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl row; infinity for a row to drop (cut short by a crash)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class RunLog:
    """metrics.jsonl (one JSON row per log line; non-finite values as null), TensorBoard and
    the progress bar, written by the main process. A resumed run drops the rows logged after
    its checkpoint and appends."""

    def __init__(self, accelerator: Accelerator, out: Path, resumed_at: int | None):
        self.accelerator = accelerator
        accelerator.init_trackers("tensorboard")
        self.fh = None
        if accelerator.is_main_process:
            path = out / "metrics.jsonl"
            if resumed_at is not None and path.is_file():
                rows = [line for line in path.read_text(errors="replace").splitlines()
                        if _logged_step(line) <= resumed_at]
                tmp = path.with_name(".metrics.jsonl.tmp")
                tmp.write_text("".join(r + "\n" for r in rows))
                os.replace(tmp, path)  # a crash here leaves the old file whole
            self.fh = path.open("a" if resumed_at is not None else "w")
        self.bar = tqdm(total=100, unit="%", disable=not accelerator.is_local_main_process,
                        desc="pretrain", mininterval=1.0,
                        bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]{postfix}")

    def write(self, row: dict) -> None:
        if self.fh is None:
            return
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in row.items()}
        self.fh.write(json.dumps(row, allow_nan=False) + "\n")
        self.fh.flush()
        self.accelerator.log({k: v for k, v in row.items() if k not in ("step", "tokens")},
                             step=row["step"])

    def training(self, p: Progress, loss: float, lr: float, fraction: float) -> None:
        self.write({"step": p.step, "tokens": p.tokens, "train_loss": loss, "lr": lr,
                    "elapsed_s": round(p.seconds, 2)})
        tps = p.tokens / max(p.seconds, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.bar.n = min(100.0, 100 * fraction)
        self.bar.refresh()

    def validation(self, p: Progress, parts: dict[str, float]) -> None:
        """The objective's validation loss, its parts and the perplexity (Validator)."""
        self.write({"step": p.step, "tokens": p.tokens, **{f"val_{k}": v for k, v in parts.items()}})

    def close(self) -> None:
        self.bar.close()
        if self.fh is not None:
            self.fh.close()


# ---------------------------------------------------------------------------------------------
# Data order: seeded, resumable by index, independent of the number of processes.

class EpochBatches(Sampler):
    """This rank's batches of one epoch, as lists of (global batch index, row index).

    Global batch b of epoch e holds rows perm_e[b*B:(b+1)*B] of a seeded permutation; rank r
    of W takes b = start + r, start + r + W, ... Starting anywhere costs nothing (resume is by
    index), and since masks are seeded by the global batch index, W processes see exactly the
    batches and masks that one process with W-fold gradient accumulation would.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0,
                 rank: int = 0, world: int = 1, usable: int | None = None):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.rank, self.world = start, rank, world
        self.usable = usable if usable is not None else n // batch_size

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        for b in range(self.start + self.rank, self.usable, self.world):
            yield [(b, i) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.usable, self.world))


class RunBatches(Sampler):
    """EpochBatches epoch after epoch from (`epoch`, `start`), each row keyed (epoch, global batch
    index, row): one DataLoader, and its worker processes, serve the whole run."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int, rank: int,
                 world: int, usable: int):
        self.args = (n, batch_size, seed)
        self.epoch, self.start, self.rank, self.world, self.usable = epoch, start, rank, world, usable

    def __iter__(self):
        epoch, start = self.epoch, self.start
        while True:
            for batch in EpochBatches(*self.args, epoch, start, self.rank, self.world, self.usable):
                yield [(epoch, b, i) for b, i in batch]
            epoch, start = epoch + 1, 0


class IndexedBlocks(torch.utils.data.Dataset):
    """Packed blocks fetched a batch at a time (keys are (epoch, global batch index, row), as
    RunBatches yields them); a batch comes with its epoch and global batch index."""

    def __init__(self, rows: Dataset):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> tuple[int, int, list[dict]]:
        batch = self.rows[[i for _, _, i in keys]]
        examples = [{k: v[j] for k, v in batch.items()} for j in range(len(keys))]
        return keys[0][0], keys[0][1], examples


class SeededCollate:
    """Calls the masking collator with its epoch and step set from the batch's keys, and its
    masking rate read from `rate`, a shared-memory tensor the loop updates (so the schedule
    reaches DataLoader worker processes too, a few prefetched batches late)."""

    def __init__(self, collator: MaskingCollator):
        self.collator = collator
        self.rate = torch.tensor([collator.mlm_probability], dtype=torch.float64).share_memory_()

    def __call__(self, batch: tuple[int, int, list[dict]]) -> dict:
        epoch, batch_index, examples = batch
        self.collator.set_epoch(epoch)
        self.collator.set_step(batch_index)
        self.collator.set_mlm_probability(float(self.rate[0]))
        return self.collator(examples)


def lr_factor(progress: float, warmup: float, kind: str) -> float:
    """Multiplier of the peak learning rate at `progress` ∈ [0, 1] of the budget."""
    if progress < warmup:
        return progress / warmup
    rest = min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    return 1.0 - rest


@dataclass
class Progress:
    """Where training stands; `fraction` lays the schedule over the budget."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    epoch: int = 0
    batch_in_epoch: int = 0
    nonfinite_total: int = 0

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

    def advance(self, stream: TrainStream, seconds: float) -> None:
        """Count one optimizer update of `stream`, rolling over to the next epoch at its end."""
        self.step += 1
        self.batch_in_epoch += stream.per_update
        self.tokens += stream.tokens_per_update
        self.seconds = seconds
        if self.batch_in_epoch >= stream.usable:
            self.epoch += 1
            self.batch_in_epoch = 0


# ---------------------------------------------------------------------------------------------
# Checkpoints: written through `cached`, so a crash never leaves half of one.

# Settings that do not define the model: a checkpoint resumes, and a folder is retrained without
# --overwrite_output_dir, when only these differ (autocast precision: a resume on another machine,
# or the default's change from bf16 to auto, changes how fast it trains, not what).
RESUME_IGNORED = {("training", k) for k in (
    "output_dir", "resume", "max_steps", "max_tokens", "max_minutes", "eval_steps",
    "logging_steps", "save_steps", "save_minutes", "save_total_limit", "torch_threads",
    "dataloader_num_workers", "resume_from_checkpoint", "overwrite_output_dir", "torch_compile",
    "mixed_precision")}


MODEL_STATE_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model_fsdp_0",
                     "pytorch_model")
"""What Accelerate's save_state writes for the model: safetensors or torch (one process, DDP),
a sharded folder (FSDP), DeepSpeed's folder."""
MODEL_FILES = ("config.json", *WEIGHT_FILES, "pytorch_model.bin")
"""A model's files: an output folder holding them without our recipe is someone else's model."""


def _checkpoint_root(recipe: Recipe) -> Path:
    return Path(recipe.training.output_dir) / "checkpoints"


def latest_checkpoint(recipe: Recipe) -> Path | None:
    """The newest complete checkpoint folder, if any."""
    done = sorted(p for p in _checkpoint_root(recipe).glob("step-*")
                  if (p / "training_state" / "progress.json").is_file())
    return done[-1] if done else None


class Checkpointer:
    """output_dir/checkpoints/step-N: the model folder, plus training_state/ (optimizer, RNG,
    data position, recipe) for an exact resume; the newest `save_total_limit` are kept."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator, engine: Engine, tokenizer):
        self.recipe, self.accelerator, self.engine, self.tokenizer = \
            recipe, accelerator, engine, tokenizer
        self.root = _checkpoint_root(recipe)
        self.last_save = time.perf_counter()

    def due(self, step: int, by_time: bool = True) -> bool:
        """A checkpoint is due by save_steps or (`by_time`) save_minutes. Each process reads
        its own clock, so under a launch the time-based answer is agreed on at check points."""
        t = self.recipe.training
        return bool((t.save_steps and step % t.save_steps == 0) or (
            by_time and t.save_minutes and
            time.perf_counter() - self.last_save > 60 * t.save_minutes))

    def restore(self, resume_from: Path | None) -> tuple[Progress, float | None]:
        """Load a checkpoint's training state; returns its progress and step-0 validation loss."""
        if resume_from is None:
            return Progress(), None
        try:
            self.accelerator.load_state(str(resume_from / "training_state"))
        except (OSError, RuntimeError, ValueError, KeyError) as exc:  # a damaged state file
            raise UserError(f"{resume_from}: its training state cannot be loaded ({one_line(exc)}); "
                            "resume from another checkpoint") from None
        state = json.loads((resume_from / "training_state" / "progress.json").read_text())
        step = state["progress"]["step"]
        self.accelerator.print(f"resumed from {resume_from} (step {step})")
        if self.accelerator.is_main_process:  # later checkpoints belong to the abandoned path:
            for later in self.root.glob("step-*"):  # `--resume` must never go back to them
                if later.name[5:].isdigit() and int(later.name[5:]) > step:
                    shutil.rmtree(later)
                    self.accelerator.print(f"removed {later}: it lies after the resumed step")
        return Progress(**state["progress"]), state.get("initial_val_loss")

    def save(self, progress: Progress, initial_val_loss: float) -> None:
        a, objective = self.accelerator, self.engine.objective

        def build(tmp: Path) -> None:  # on every process: saving state is a collective
            with quiet_transformers():
                a.save_state(str(tmp / "training_state"))
            save_model(a, objective, self.tokenizer, tmp)
            if a.is_main_process:
                (tmp / "training_state" / "recipe.json").write_text(
                    json.dumps(to_dict(self.recipe), indent=1))
                (tmp / "training_state" / "progress.json").write_text(json.dumps(
                    {"progress": asdict(progress), "initial_val_loss": initial_val_loss},
                    indent=1))

        cached(self.root, f"step-{progress.step:08d}", build, processes=a, collective=True,
               rebuild=True)
        if a.is_main_process:
            kept = sorted(self.root.glob("step-*"))
            for old in kept[: max(0, len(kept) - self.recipe.training.save_total_limit)]:
                shutil.rmtree(old, ignore_errors=True)
        self.last_save = time.perf_counter()


def recipe_differences(saved: dict, current: dict) -> list[str]:
    """Settings that differ between a checkpoint's recipe and the current one (budgets, hub
    settings and the like aside)."""
    diffs = []
    for section, values in current.items():
        old = saved.get(section)
        if section in ("hub", "path"):
            continue
        if isinstance(values, dict) and isinstance(old, dict):
            diffs += [f"{section}.{key}: {old.get(key)!r} -> {value!r}"
                      for key, value in values.items()
                      if (section, key) not in RESUME_IGNORED and old.get(key) != value]
        elif old != values:
            diffs.append(f"{section} changed")
    return diffs


# ---------------------------------------------------------------------------------------------
# Around the loop: one run per folder, resume point, stop signals.


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each update (then checkpoints)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _first_process() -> bool:
    """Rank 0 of a launch (or a lone process), known before Accelerate is set up."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def output_lock(out: Path):
    """One run per output folder: a second one (another process, or another launch) is refused
    with one line. Held by the launch's first process for the whole run; the OS drops it when
    the process ends, however it ends."""
    import fcntl

    if not _first_process():  # the other processes of a launch share rank 0's
        yield
        return
    fh = (out / ".lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        fh.close()
        raise UserError(f"{out} is in use by another run ({owner}); wait for it to end or choose "
                        "another --output_dir") from None
    fh.truncate(0)
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fh.close()


def _resume_point(recipe: Recipe) -> Path | None:
    """The checkpoint to resume from (--resume_from_checkpoint, or the newest with --resume),
    refused when the recipe differs from the checkpoint's."""
    t = recipe.training
    if t.resume_from_checkpoint:
        resume_from = Path(t.resume_from_checkpoint)
        if not (resume_from / "training_state" / "progress.json").is_file():
            raise UserError(f"--resume_from_checkpoint {resume_from}: not a complete checkpoint "
                            "(no training_state/progress.json)")
    elif t.resume:
        resume_from = latest_checkpoint(recipe)
        if resume_from is None:
            raise UserError(f"--resume: no checkpoint in {_checkpoint_root(recipe)}")
    else:
        return None
    state = resume_from / "training_state"
    saved, progress = _read_json(state / "recipe.json"), _read_json(state / "progress.json")
    if not isinstance(progress, dict) or not isinstance(progress.get("progress"), dict):
        raise UserError(f"{state / 'progress.json'} is not a progress record of mlm; resume "
                        "from another checkpoint or start afresh")
    if not any((state / name).exists() for name in MODEL_STATE_NAMES):
        raise UserError(f"{state} holds no model state ({' or '.join(MODEL_STATE_NAMES)}): "
                        "not a complete checkpoint; resume from another one")
    if not isinstance(saved, dict):
        raise UserError(f"{state / 'recipe.json'} is not a recipe; resume from another checkpoint")
    diffs = recipe_differences(saved, to_dict(recipe))
    if diffs:
        raise UserError(f"--resume refused, the recipe differs from the checkpoint's: "
                        f"{'; '.join(diffs)}")
    step = progress["progress"].get("step")
    if t.max_steps is not None and isinstance(step, int) and step > t.max_steps:
        raise UserError(f"--resume: {resume_from} is at step {step}, past --max_steps "
                        f"{t.max_steps}; raise --max_steps (or leave the finished run as it is)")
    return resume_from


def guard_output_dir(recipe: Recipe, out: Path) -> None:
    """A fresh run refuses a folder holding a model trained with other settings, unless
    --overwrite_output_dir (checked before any work; what the new model makes stale goes only
    once the run is set up: `remove_stale`)."""
    t = recipe.training
    saved = out / "recipe.resolved.yaml"
    if t.overwrite_output_dir or not out.is_dir():
        return
    if not saved.is_file():
        foreign = sorted(f for f in MODEL_FILES if (out / f).exists())
        if foreign:
            raise UserError(f"{out} holds a model that this toolkit did not train ({', '.join(foreign)}, "
                            "no recipe.resolved.yaml); pass --overwrite_output_dir to replace "
                            "it, or choose another --output_dir")
        return
    import yaml

    try:
        previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{saved} is not a readable recipe ({type(exc).__name__}); pass "
                        "--overwrite_output_dir to replace the folder's model, or choose "
                        "another --output_dir") from None
    if isinstance(previous, dict):
        diffs = recipe_differences(previous, to_dict(recipe))
        if diffs:
            raise UserError(f"{out} holds a model trained with other settings "
                            f"({'; '.join(diffs[:3])}); pass --overwrite_output_dir to replace "
                            "it (its fine-tuning results and model card go too), or choose "
                            "another --output_dir")


def _read_json(path: Path):
    """A JSON file of a checkpoint, or a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: not a complete checkpoint; resume from another "
                        "one") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({type(exc).__name__}): resume from another "
                        "checkpoint") from None


STALE = ("finetune", "checkpoints", "metrics.jsonl", "run_summary.json", "recipe.resolved.yaml",
         "loss_curve.png", "tensorboard", "generator", *MODEL_FILES, "generation_config.json",
         "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
         "vocab.txt", "vocab.json", "merges.txt")
"""What a new run in an output folder replaces: the old model (weights, config, tokenizer, RTD
generator), its record (recipe, summary, metrics, curves, TensorBoard events) and what was
measured on it (fine-tuning results, checkpoints). Files of other names are the user's."""


def remove_stale(out: Path) -> None:
    """Remove the old model of `out` and everything about it (`STALE`, and mlm's model card; a
    README the user wrote stays), so that a new run stopped half-way never leaves the old
    weights beside the new run's metrics, nor an old model without its summary (which
    fine-tuning would take for a general checkpoint). Called once the new run's data, model
    and first validation are ready, so a run that fails to start (a missing source, a bad
    model path) leaves the old model's folder as it was."""
    card = out / "README.md"
    if card.is_file() and CARD_MARKER in card.read_text(errors="replace"):
        card.unlink()
    for stale in STALE:
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()



# ---------------------------------------------------------------------------------------------
# Small helpers: process agreement, divergence advice, state dicts, peak FLOPs, the summary.


def _agreed(frac: float, flag: bool, due: bool,
            accelerator: Accelerator) -> tuple[float, bool, bool]:
    """One collective: the largest progress of all ranks (every process must stop at the same
    step), whether any process received a stop signal, and whether a checkpoint is due on any
    (saving is collective: a process that saves alone waits for the others forever)."""
    value = torch.tensor([frac, float(flag), float(due)], device=accelerator.device)
    top = accelerator.gather(value.unsqueeze(0)).max(dim=0).values.tolist()
    return top[0], top[1] > 0, top[2] > 0


def _agreed_precision(setting: str, device_type: str) -> str:
    """The autocast precision of this run, the same in every process of a launch: `auto` is
    decided by the main process (on a CPU each process would otherwise time its own matrix
    products, and processes near the threshold could disagree) and broadcast to the others."""
    state = PartialState(cpu=device_type == "cpu")  # joins the launcher's process group
    if setting != "auto" or state.num_processes == 1:
        return resolve_precision(setting, device_type)
    decided = [resolve_precision(setting, device_type) if state.is_main_process else None]
    return broadcast_object_list(decided)[0]


def _divergence_message(recipe: Recipe, precision: str, count: int, step: int) -> str:
    """Why the run stopped, which checkpoint is kept, and advice that fits its settings."""
    t = recipe.training
    kept = latest_checkpoint(recipe)
    where = f"the last checkpoint before them, {kept}, is kept" if kept else \
        "no checkpoint was written (none is saved while updates are non-finite)"
    advice = f"lower --learning_rate (now {t.learning_rate:g})"
    if precision != "no":
        advice += f" or use --mixed_precision no (now {t.mixed_precision}: {precision})"
    if t.warmup_ratio < 0.05:
        advice += f", or a longer --warmup_ratio (now {t.warmup_ratio:g})"
    return f"{count} non-finite losses in a row at step {step}; {where}. Try: {advice}"


def make_accelerator(cpu: bool, **kwargs) -> Accelerator:
    """An Accelerator as the launcher configured it. Accelerate runs FSDP and DeepSpeed only on
    accelerators: on a CPU (gloo) a launch with an FSDP or DeepSpeed config would silently train
    as plain DDP. There the shared state is switched to the sharded type the launcher asked for,
    with the plugin Accelerate builds from the launcher's environment, and the Accelerator is
    made again on that state, so the sharded code paths (FSDP2's `fully_shard`, DeepSpeed's
    engine and ZeRO optimizer, on DeepSpeed's CPU accelerator) run here as on GPUs."""
    if cpu or not torch.cuda.is_available():
        tell_deepspeed_cpu()
    asked = _launch_sharding()
    if asked == DistributedType.FSDP:
        # Every process builds or loads the whole model itself, so FSDP's rank-0 loading (on by
        # default in `accelerate launch`) saves nothing here; and it re-ties shared weights only
        # through a `tie_weights()` that our objective wrappers lack, which left the MLM decoder
        # untied from the embeddings. Off, also for transformers' loader (the plugin sets its
        # environment variable).
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=False)
    accelerator = Accelerator(cpu=cpu, **kwargs)
    if asked is None or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return accelerator
    state = AcceleratorState()
    if asked == DistributedType.FSDP:
        state.fsdp_plugin = kwargs["fsdp_plugin"]
    else:
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision(state.mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = plugin
    state.distributed_type = asked
    PartialState._shared_state["distributed_type"] = asked  # as Accelerate does on GPUs
    return Accelerator(cpu=cpu, **kwargs)


def _check_launch_settings(accelerator: Accelerator, t) -> None:
    """Settings an `accelerate launch` config can also carry must agree with the recipe, which
    is their one source (the launcher's value would silently win for accumulation)."""
    if accelerator.gradient_accumulation_steps != t.gradient_accumulation_steps:
        raise UserError(
            f"the accelerate config sets gradient_accumulation_steps="
            f"{accelerator.gradient_accumulation_steps} but the recipe "
            f"{t.gradient_accumulation_steps}: leave it out of the accelerate config")
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    clipping = os.environ.get("ACCELERATE_GRADIENT_CLIPPING", "auto")
    if clipping != "auto" and float(clipping) != t.max_grad_norm:
        raise UserError(
            f"the accelerate config sets gradient_clipping={clipping} but the recipe "
            f"max_grad_norm={t.max_grad_norm}: leave it out of the accelerate config")
    if t.head_warmup_ratio:
        raise UserError(  # ZeRO reduces the gradients into its partitions during backward
            f"head_warmup_ratio={t.head_warmup_ratio} does not work under DeepSpeed "
            "(allowed there: 0); use DDP or FSDP for a head-only warm-up")


def _launch_sharding() -> DistributedType | None:
    """The sharded type an `accelerate launch` config asked for (its environment), if any."""
    for variable, kind in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                           ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(variable, "false").lower() == "true":
            return kind
    return None


def _sharded(accelerator: Accelerator) -> bool:
    """Parameters sharded across processes (FSDP, DeepSpeed): forwards and state dicts are
    collectives."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_model(accelerator: Accelerator, objective, tokenizer, folder: Path) -> None:
    """The objective's models (the `*ForMaskedLM`; or RTD's discriminator and generator) and the
    tokenizer as save_pretrained folders. The full state dict comes through Accelerate (gathered
    from the shards under FSDP/DeepSpeed), so every process must call this; the main one writes."""
    state = accelerator.get_state_dict(objective)
    if accelerator.is_main_process:
        accelerator.unwrap_model(objective).save_pretrained(folder, state, tokenizer)


def device_peak_flops(device: torch.device, mixed_precision: str) -> float | None:
    """Peak dense FLOP/s: a table for GPUs, a short matmul measurement on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        # bf16 dense tensor-core peaks; the first key the name contains wins, so the more
        # specific names come first ("H100 PCIe" before "H100", "L40S" and "L40" before "L4")
        table = {"H100 PCIe": 756e12, "H200": 989e12, "H100": 989e12, "A100": 312e12,
                 "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12}
        value = next((v for key, v in table.items() if key in name), None)
        if value is None or mixed_precision != "no":
            return value
        # float32 reaches tensor cores only as TF32 (half the bf16 rate), and only if allowed
        return value / 2 if torch.get_float32_matmul_precision() != "highest" else None
    if device.type != "cpu":
        return None
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float32
    size = 2048
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(3):  # the best of three short rounds: a busy moment lowers one, not all
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 0.25:
            a @ b
            n += 1
        best = max(best, 2 * size**3 * n / (time.perf_counter() - start))
    return best


def _write_summary(run: Run, objective) -> None:
    """run_summary.json, recipe.resolved.yaml and the closing lines on the console."""
    recipe, p, a, out = run.recipe, run.progress, run.accelerator, run.out
    model = objective.model
    seq = recipe.packing.max_seq_length
    tps = p.tokens / max(p.seconds, 1e-9)
    peak = device_peak_flops(a.device, run.precision)
    m = recipe.masking  # a linear masking schedule averages its two ends over the run
    rate = m.mlm_probability if m.mlm_probability_end is None else \
        (m.mlm_probability + m.mlm_probability_end) / 2
    mfu = objective.flops_per_token(seq, rate) * tps / peak if peak else None
    stats = run.stats
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    summary = {
        "recipe_name": recipe.name,
        "recipe_fingerprint": fingerprint(recipe),
        "base_model": recipe.model.model_name_or_path,
        "objective": recipe.model.objective,
        "model_family": model.config.model_type,
        "num_parameters": count_parameters(model),
        "vocab_size": len(run.tokenizer),
        "max_seq_length": seq,
        "per_device_train_batch_size": run.stream.batch_size,
        "tokens_seen": p.tokens,
        "steps": p.step,
        "train_runtime_s": round(p.seconds, 1),
        "tokens_per_s": round(tps, 1),
        "mfu": mfu,
        "hardware": _hardware(a),
        "distributed_type": a.distributed_type.value,  # NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED
        "mixed_precision": run.precision,
        "attn_implementation": model.config._attn_implementation,  # what `auto` chose
        "initial_val_loss": run.first_val,
        "final_val_loss": run.last_val,
        # of the masked-LM part (the generator's, for replaced-token detection): last logged
        "val_perplexity": [r for r in rows if "val_perplexity" in r][-1]["val_perplexity"]
        or float("nan"),
        "mlm_probability": recipe.masking.mlm_probability,
        "masking_strategy": recipe.masking.masking_strategy,
        "tokenizer": {"kind": recipe.tokenizer.tokenizer_kind, "vocab_size": len(run.tokenizer)},
        "corpus": {"documents": sum(stats["documents"].values()),
                   "characters": sum(stats["characters"].values()),
                   "train_documents": stats["documents"]["train"],
                   "validation_documents": stats["documents"]["validation"]},
        "first_train_loss": train_losses[0] if train_losses else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
    }
    summary.update(objective.summary())
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))
    import yaml

    (out / "recipe.resolved.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    mfu_text = f", MFU {100 * mfu:.1f}%" if mfu else ""
    print(
        f"\npretraining done: {p.step} steps, {p.tokens:,} tokens in "
        f"{p.seconds / 60:.1f} min ({tps:,.0f} tokens/s{mfu_text})\n"
        f"  train loss {summary['first_train_loss']:.3f} -> {summary['final_train_loss']:.3f}\n"
        f"  validation loss {run.first_val:.3f} -> {run.last_val:.3f} "
        f"(perplexity {summary['val_perplexity']:.1f})\n"
        f"  model: {out}  (loss curve: {out / 'loss_curve.png'})"
        + (f"\n  generator (fill-mask): {out / 'generator'}" if "generator" in summary else "")
    )


def _hardware(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{accelerator.num_processes} process(es) on CPU ({platform.processor() or 'cpu'}, " \
           f"{os.cpu_count()} cores, {torch.get_num_threads()} threads)"
