"""Pretraining stage: recipe → corpus → tokenizer → blocks → masked batches → trained encoder.

The loop itself is short; Accelerate handles devices, processes and mixed precision, and
small helpers below own the schedule, validation, logging and checkpoints.
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
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mlm.config import Recipe, check_ranges, to_dict
from mlm.corpus import build_corpus
from mlm.corpus.build import corpus_stats, format_stats
from mlm.cpus import set_torch_threads
from mlm.errors import Stopped, UserError
from mlm.masking import MaskingCollator
from mlm.modeling import (
    MaskedLMObjective,
    build_model,
    count_parameters,
    flops_per_token,
    param_groups,
    quiet_transformers,
    resize_and_init_new_embeddings,
)
from mlm.packing import pack
from mlm.recipe import _hash, corpus_fingerprint, fingerprint, resolve_path
from mlm.report import plot_loss_curve
from mlm.tokenizer import load_tokenizer, train_tokenizer

BLOCK_COLUMNS = ["input_ids", "attention_mask", "word_start", "special_tokens_mask"]


def block_columns(recipe: Recipe) -> list[str]:
    """The block columns the collator reads (document_ids only for document-aware attention)."""
    return BLOCK_COLUMNS + (["document_ids"] if recipe.packing.document_attention else [])


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
        build_corpus(recipe, cache / "corpus")
        print(format_stats(corpus_stats(recipe, cache / "corpus")), flush=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    corpus = build_corpus(recipe, cache / "corpus")  # cached: a load for every rank
    tcfg = recipe.tokenizer
    if tcfg.extend_vocab_words and not tcfg.tokenizer_name_or_path:
        raise UserError("extend_vocab_words needs tokenizer_name_or_path (the tokenizer to extend)")
    if tcfg.tokenizer_name_or_path:
        tok_dir = resolve_path(tcfg.tokenizer_name_or_path)
        if tcfg.extend_vocab_words:  # the base plus frequent domain words it fragments
            from mlm.tokenizer import extend_tokenizer, sample_texts

            base = load_tokenizer(tok_dir)
            ext_key = _hash({"corpus": corpus_fingerprint(recipe), "tok": to_dict(tcfg),
                             "base": _hash(json.loads((tok_dir / "tokenizer.json").read_text()))})
            tok_dir = cache / "tokenizer" / f"extended-{ext_key}"
            if main and not (tok_dir / "tokenizer.json").is_file():
                texts = sample_texts(corpus["train"], tcfg.max_train_documents,
                                     tcfg.max_train_bytes)
                tmp = tok_dir.with_name(tok_dir.name + ".tmp")
                extend_tokenizer(base, texts, tcfg.extend_vocab_words).save_pretrained(str(tmp))
                tmp.rename(tok_dir)
            if accelerator is not None:
                accelerator.wait_for_everyone()
    else:
        tok_key = _hash({"corpus": corpus_fingerprint(recipe), "tok": to_dict(tcfg)})
        tok_dir = cache / "tokenizer" / tok_key
        if main and not (tok_dir / "tokenizer.json").is_file():
            tok = train_tokenizer(corpus["train"], tcfg, progress=True)  # streamed, sampled
            tmp = tok_dir.with_name(tok_dir.name + ".tmp")
            tok.save_pretrained(str(tmp))
            tmp.rename(tok_dir)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    tokenizer = load_tokenizer(tok_dir)
    tok_hash = _hash(json.loads((tok_dir / "tokenizer.json").read_text()))
    block_key = _hash({"corpus": corpus_fingerprint(recipe), "tok": tok_hash,
                       "len": recipe.packing.max_seq_length, "packing": "v3",
                       "respect": recipe.packing.respect_document_boundaries})
    block_dir = cache / "blocks" / block_key
    if main and not (block_dir / "done").is_file():
        tmp = block_dir.with_name(block_key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
        tmp.mkdir(parents=True)
        for split in ("train", "validation"):  # written as packed: memory holds one batch
            pack(corpus[split], tokenizer, recipe.packing.max_seq_length,
                 recipe.packing.num_proc,
                 respect_document_boundaries=recipe.packing.respect_document_boundaries,
                 path=tmp / f"{split}.arrow", progress=f"pack {split}")
        (tmp / "done").write_text("ok")
        tmp.rename(block_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    train = load_blocks(block_dir / "train.arrow")
    val = load_blocks(block_dir / "validation.arrow")
    return tokenizer, train, val, corpus_stats(recipe, cache / "corpus")


# ---------------------------------------------------------------------------------------------
# Small helpers: sampler, schedule, parameter groups, validation, peak FLOPs.


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
    """Packed blocks fetched a batch at a time; each example carries its epoch and global batch
    index (keys are (epoch, batch, row), as RunBatches yields them)."""

    def __init__(self, rows: Dataset):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> list[dict]:
        batch = self.rows[[i for _, _, i in keys]]
        return [{**{k: v[j] for k, v in batch.items()}, "epoch": keys[0][0],
                 "batch_index": keys[0][1]} for j in range(len(keys))]

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        return self.__getitems__([key])[0]


class SeededCollate:
    """Calls the masking collator with its epoch and step set from the batch's keys, and its
    masking rate read from `rate`, a shared-memory tensor the loop updates (so the schedule
    reaches DataLoader worker processes too, a few prefetched batches late)."""

    def __init__(self, collator: MaskingCollator):
        self.collator = collator
        self.rate = torch.tensor([collator.mlm_probability], dtype=torch.float64).share_memory_()

    def __call__(self, examples: list[dict]) -> dict:
        self.collator.set_epoch(examples[0]["epoch"])
        self.collator.set_step(examples[0]["batch_index"])
        self.collator.set_mlm_probability(float(self.rate[0]))
        return self.collator([{k: v for k, v in e.items() if k not in ("epoch", "batch_index")}
                              for e in examples])


def lr_factor(progress: float, warmup: float, kind: str) -> float:
    """Multiplier of the peak learning rate at `progress` ∈ [0, 1] of the budget."""
    if progress < warmup:
        return progress / warmup
    rest = min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    return 1.0 - rest


@torch.no_grad()
def evaluate(objective, batches: list[dict], accelerator: Accelerator) -> float:
    """Mean masked-LM loss over fixed validation batches (rank r takes batches r, r+W, ...).

    Loss sums and token counts are accumulated, never logits, so memory stays flat.
    """
    # DDP: the unwrapped module (DDP's forward syncs buffers, and ranks may hold unequal counts
    # of validation batches), each rank a share. Sharded (FSDP, DeepSpeed): every forward is a
    # collective that gathers the parameters, so every rank runs the wrapped module on every batch.
    sharded = _sharded(accelerator)
    objective = objective if sharded else accelerator.unwrap_model(objective)
    objective.eval()
    total = torch.zeros(2, device=accelerator.device)
    mine = batches if sharded else batches[accelerator.process_index::accelerator.num_processes]
    for batch in mine:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = objective(**batch)
        n = (batch["labels"] != -100).sum()
        total += torch.stack([loss.float() * n, n.float()])
    if not sharded:
        total = accelerator.reduce(total, reduction="sum")
    objective.train()
    return (total[0] / total[1].clamp(min=1)).item()


def _sharded(accelerator: Accelerator) -> bool:
    """Parameters sharded across processes (FSDP, DeepSpeed): forwards and state dicts are
    collectives."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def model_state_dict(accelerator: Accelerator, objective) -> dict:
    """The full state dict of the inner `*ForMaskedLM`, through Accelerate (gathered from the
    shards under FSDP/DeepSpeed). Every process must call it; only the main one gets tensors."""
    state = accelerator.get_state_dict(objective)
    return {k[len("model."):]: v for k, v in (state or {}).items() if k.startswith("model.")}


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


# ---------------------------------------------------------------------------------------------
# Checkpoints: written to a temporary folder and renamed, so a crash never leaves half of one.

RESUME_IGNORED = {("training", k) for k in (
    "output_dir", "resume", "max_steps", "max_tokens", "max_minutes", "eval_steps",
    "logging_steps", "save_steps", "save_minutes", "save_total_limit", "torch_threads",
    "dataloader_num_workers", "resume_from_checkpoint", "overwrite_output_dir", "torch_compile")} \
    | {("hub", None)}


def _checkpoint_root(recipe: Recipe) -> Path:
    return Path(recipe.training.output_dir) / "checkpoints"


def latest_checkpoint(recipe: Recipe) -> Path | None:
    """The newest complete checkpoint folder, if any."""
    root = _checkpoint_root(recipe)
    done = sorted(p for p in root.glob("step-*") if (p / "training_state" / "progress.json").is_file())
    return done[-1] if done else None


def save_checkpoint(recipe, accelerator, objective, tokenizer, progress: Progress,
                    sampler_state: dict) -> None:
    """Model folder + training state (optimizer, RNG, data position) for an exact resume."""
    root = _checkpoint_root(recipe)
    final = root / f"step-{progress.step:08d}"
    tmp = root / f".tmp-step-{progress.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with quiet_transformers():
        accelerator.save_state(str(tmp / "training_state"))
    state = model_state_dict(accelerator, objective)
    if accelerator.is_main_process:
        with quiet_transformers():
            accelerator.unwrap_model(objective).model.save_pretrained(
                str(tmp), state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        state = {"progress": asdict(progress), **sampler_state}
        (tmp / "training_state" / "recipe.json").write_text(json.dumps(recipe_record(recipe),
                                                                      indent=1))
        # progress.json last: its presence marks the checkpoint complete
        (tmp / "training_state" / "progress.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        kept = sorted(p for p in root.glob("step-*"))
        for old in kept[: max(0, len(kept) - recipe.training.save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def recipe_record(recipe: Recipe) -> dict:
    """The recipe as written next to a model or checkpoint: everything but the hub token."""
    record = to_dict(recipe)
    record["hub"]["hub_token"] = None
    return record


def recipe_differences(saved: dict, current: dict) -> list[str]:
    """Settings that differ between a checkpoint's recipe and the current one (budgets aside)."""
    diffs = []
    for section, values in current.items():
        if ("hub", None) in RESUME_IGNORED and section == "hub":
            continue
        old = saved.get(section)
        if isinstance(values, dict) and isinstance(old, dict):
            for key, value in values.items():
                if (section, key) not in RESUME_IGNORED and old.get(key) != value:
                    diffs.append(f"{section}.{key}: {old.get(key)!r} -> {value!r}")
        elif section not in ("path",) and old != values:
            diffs.append(f"{section} changed")
    return diffs


# ---------------------------------------------------------------------------------------------
# The loop.


@contextmanager
def _closing(*handles):
    """Close the progress bar and the metrics file however the loop ends."""
    try:
        yield
    finally:
        for handle in handles:
            if handle is not None:
                handle.close()


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


def pretrain(recipe: Recipe) -> Path:
    """Run the recipe end to end; returns the output folder (a save_pretrained model)."""
    check_ranges(recipe)  # every number, before any work
    t = recipe.training
    if not (t.max_steps or t.max_tokens or t.max_minutes):
        raise UserError("set a budget: max_steps, max_tokens or max_minutes")
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        return _pretrain(recipe, out)


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
    saved = json.loads((resume_from / "training_state" / "recipe.json").read_text())
    diffs = recipe_differences(saved, recipe_record(recipe))
    if diffs:
        raise UserError(f"--resume refused, the recipe differs from the checkpoint's: "
                        f"{'; '.join(diffs)}")
    return resume_from


def guard_output_dir(recipe: Recipe, out: Path) -> None:
    """A fresh run refuses a folder holding a model trained with other settings, unless
    --overwrite_output_dir; then what the new model makes stale (fine-tuning results, model
    card, the old run's checkpoints and metrics) is removed before any work."""
    t = recipe.training
    saved = out / "recipe.resolved.yaml"
    if saved.is_file() and not t.overwrite_output_dir:
        import yaml

        diffs = recipe_differences(yaml.safe_load(saved.read_text()), recipe_record(recipe))
        if diffs:
            raise UserError(f"{out} holds a model trained with other settings "
                            f"({'; '.join(diffs[:3])}); pass --overwrite_output_dir to replace "
                            "it (its fine-tuning results and model card go too), or choose "
                            "another --output_dir")
    for stale in ("finetune", "README.md", "checkpoints", "metrics.jsonl", "run_summary.json"):
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _pretrain(recipe: Recipe, out: Path) -> Path:
    t = recipe.training
    set_torch_threads(t.torch_threads)
    resume_from = _resume_point(recipe)
    if resume_from is None and _first_process():
        guard_output_dir(recipe, out)
    # Accelerate keeps its settings in a process-wide singleton; a second pretrain() in the same
    # process (tests, notebooks) with another precision would be refused. Reset the settings but
    # keep the process group (PartialState).
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with="tensorboard", project_dir=str(out),
        # Without a GPU, Accelerate only joins the launcher's process group (MULTI_CPU, gloo)
        # when told it runs on CPU; otherwise each process would train alone.
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )
    set_seed(t.seed)
    tokenizer, train_blocks, val_blocks, stats = prepare_data(recipe, accelerator)
    if recipe.model.model_name_or_path and recipe.tokenizer.extend_vocab_words:
        # The checkpoint matches the base tokenizer: load it with that, then grow its embeddings
        # (each new row starts as the mean of the rows of the pieces it used to be split into).
        base = load_tokenizer(resolve_path(recipe.tokenizer.tokenizer_name_or_path))
        model = build_model(recipe.model, base, recipe.packing.max_seq_length)
        resize_and_init_new_embeddings(model, base, tokenizer)
    else:
        model = build_model(recipe.model, tokenizer, recipe.packing.max_seq_length)
    model.set_attn_implementation(
        recipe.model.attention_for(accelerator.device.type, recipe.packing.max_seq_length))
    objective = MaskedLMObjective(model, sparse=recipe.model.sparse_prediction)
    m = recipe.masking
    sparse = recipe.model.sparse_prediction
    collator = MaskingCollator(
        tokenizer, strategy=m.masking_strategy, mlm_probability=m.mlm_probability,
        mask_replace_prob=m.mask_replace_prob, random_replace_prob=m.random_replace_prob,
        seed=t.seed, return_masked_positions=sparse, span_geometric_p=m.span_geometric_p,
        span_max_words=m.span_max_words, document_attention=recipe.packing.document_attention,
        # The step is the global batch index, already distinct across ranks and workers; leaving
        # them out of the seed keeps the masks independent of the number of processes.
        rank=0, worker=0,
    )
    val_batches = fixed_validation_batches(recipe, tokenizer, val_blocks, sparse)
    if t.torch_compile:  # in place: parameter names (checkpoints) are unchanged
        objective.compile()
    # Fused AdamW skips an update on the device when `found_inf` is set: no host sync per step.
    fused = accelerator.device.type in ("cuda", "cpu") and accelerator.scaler is None \
        and not _sharded(accelerator)
    optimizer = torch.optim.AdamW(param_groups(objective, t.weight_decay), lr=t.learning_rate,
                                  betas=(0.9, 0.98), eps=1e-6, fused=fused or None)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    train_rows = IndexedBlocks(train_blocks.with_format("torch", columns=block_columns(recipe)))
    world, accum = accelerator.num_processes, t.gradient_accumulation_steps
    bsz = t.train_batch_size(accelerator.device.type)
    per_update = world * accum  # global batches consumed by one optimizer update
    usable = (len(train_rows) // bsz) // per_update * per_update
    if usable == 0:
        raise UserError(f"the corpus yields {len(train_rows)} training blocks, fewer than one "
                        f"update needs ({bsz} x {per_update}); lower --per_device_train_batch_size")
    tokens_per_update = bsz * recipe.packing.max_seq_length * per_update
    progress, initial_val = Progress(), None
    if resume_from is not None:
        accelerator.load_state(str(resume_from / "training_state"))
        state = json.loads((resume_from / "training_state" / "progress.json").read_text())
        progress = Progress(**state["progress"])
        initial_val = state.get("initial_val_loss")
        accelerator.print(f"resumed from {resume_from} (step {progress.step})")
    accelerator.init_trackers("tensorboard")
    metrics = None
    if accelerator.is_main_process:
        metrics = (out / "metrics.jsonl").open("a" if resume_from else "w")
        if resume_from:  # drop rows logged after the checkpoint we resume from
            metrics.close()
            _truncate_metrics(out / "metrics.jsonl", progress.step)
            metrics = (out / "metrics.jsonl").open("a")
    bar = tqdm(total=100, unit="%", disable=not accelerator.is_local_main_process,
               desc="pretrain", mininterval=1.0,
               bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]{postfix}")
    first_val = evaluate(objective, val_batches, accelerator)
    if resume_from is not None and initial_val is not None:
        first_val = initial_val  # the run's step-0 loss, for the summary
    if resume_from is None:
        _log(accelerator, metrics, {"step": 0, "tokens": 0, "val_loss": first_val,
                                    "val_perplexity": math.exp(min(first_val, 50))})
    last_val, running, lr = first_val, [], 0.0
    # Non-finite updates are counted on the device and read every `check_every` updates.
    in_a_row = torch.zeros((), device=accelerator.device)
    skipped = torch.zeros((), device=accelerator.device)  # this session's, for progress
    check_every = max(1, min(t.logging_steps, t.max_nonfinite_steps))
    nonfinite_before = progress.nonfinite_total
    clock = time.perf_counter() - progress.seconds
    last_save = time.perf_counter()
    done = progress.fraction(recipe) >= 1
    collate = SeededCollate(collator)
    sampler = RunBatches(len(train_rows), bsz, t.seed, progress.epoch, progress.batch_in_epoch,
                         accelerator.process_index, world, usable)
    workers = t.loader_workers(accelerator.device.type)
    loader = DataLoader(train_rows, batch_sampler=sampler, collate_fn=collate,
                        num_workers=workers, pin_memory=accelerator.device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    batches = iter(loader)
    with _StopSignal() as stop, _closing(bar, metrics):
        while not done:
            batch = {k: v.to(accelerator.device, non_blocking=True)
                     for k, v in next(batches).items()}
            with accelerator.accumulate(objective):
                with accelerator.autocast():
                    loss = objective(**batch)
                accelerator.backward(loss)  # every rank, so DDP's all-reduce never waits
                if accelerator.sync_gradients:
                    lr = t.learning_rate * lr_factor(progress.fraction(recipe), t.warmup_ratio,
                                                     t.lr_scheduler_type)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    norm = accelerator.clip_grad_norm_(objective.parameters(), t.max_grad_norm)
                    if norm is None:  # DeepSpeed clips (and skips) inside its own step
                        norm = torch.zeros((), device=accelerator.device)
                    bad = (~torch.isfinite(norm)).float()  # same on every rank after all-reduce
                    in_a_row = (in_a_row + 1) * bad
                    skipped += bad
                    if fused:
                        optimizer.optimizer.found_inf = bad  # the fused step skips, on device
                        optimizer.step()
                    elif not bad.item():
                        optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            progress.batch_in_epoch += per_update
            progress.tokens += tokens_per_update
            progress.seconds = time.perf_counter() - clock
            if progress.batch_in_epoch >= usable:
                progress.epoch += 1
                progress.batch_in_epoch = 0
            checking = progress.step % check_every == 0
            if checking:
                streak, total = (int(x) for x in torch.stack([in_a_row, skipped]).tolist())
                progress.nonfinite_total = nonfinite_before + total
                if streak >= t.max_nonfinite_steps:
                    raise Stopped(_divergence_message(recipe, streak, progress.step), 1)
            # Ranks agree on the end (time budgets) and on a signal at check points only.
            frac, stopping = progress.fraction(recipe), stop.received is not None
            if world > 1 and checking:
                frac, stopping = _agreed(frac, stopping, accelerator)
            elif world > 1:  # a clock differs between ranks: a time budget ends at a check
                stopping = False
                frac = min(frac, 1 - 1e-9) if t.max_minutes else frac
            if m.mlm_probability_end is not None:
                collate.rate[0] = m.mlm_probability + (m.mlm_probability_end - m.mlm_probability) * frac
            if progress.step % t.logging_steps == 0 or frac >= 1:
                finite_losses = [x for x in running if torch.isfinite(x)]
                mean = torch.stack(finite_losses).mean() if finite_losses else torch.tensor(
                    float("nan"))
                train_loss = accelerator.reduce(mean.to(accelerator.device), "mean").item()
                running = []
                tps = progress.tokens / max(progress.seconds, 1e-9)
                _log(accelerator, metrics, {"step": progress.step, "tokens": progress.tokens,
                                            "train_loss": train_loss, "lr": lr,
                                            "elapsed_s": round(progress.seconds, 2)})
                bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                bar.n = min(100.0, 100 * frac)
                bar.refresh()
            pause = time.perf_counter()
            if progress.step % t.eval_steps == 0 or frac >= 1:
                last_val = evaluate(objective, val_batches, accelerator)
                _log(accelerator, metrics, {"step": progress.step, "tokens": progress.tokens,
                                            "val_loss": last_val,
                                            "val_perplexity": math.exp(min(last_val, 50))})
            want_save = (t.save_steps and progress.step % t.save_steps == 0) or (
                t.save_minutes and time.perf_counter() - last_save > 60 * t.save_minutes)
            # Never while non-finite updates are going on: the weights may already be poisoned.
            if (want_save and not in_a_row.item()) or stopping:
                progress.nonfinite_total = nonfinite_before + int(skipped.item())
                save_checkpoint(recipe, accelerator, objective, tokenizer, progress,
                                {"initial_val_loss": first_val})
                last_save = time.perf_counter()
            clock += time.perf_counter() - pause  # validation and saving are not training
            if stopping:
                signum = stop.received or signal.SIGTERM
                raise Stopped(f"{signal.Signals(signum).name} at step {progress.step}; checkpoint "
                              "saved, continue with --resume", 128 + int(signum))
            done = frac >= 1
    state = model_state_dict(accelerator, objective)  # a collective under FSDP/DeepSpeed
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(objective).model
        _finish(recipe, accelerator, model, tokenizer, progress, first_val, last_val, stats, state)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers (and the process group): last
    return out


def fixed_validation_batches(recipe: Recipe, tokenizer, val_blocks: Dataset,
                             sparse: bool) -> list[dict]:
    """The same validation masks at every evaluation, on every process, at a fixed 15 % rate."""
    t, m = recipe.training, recipe.masking
    collator = MaskingCollator(tokenizer, strategy=m.masking_strategy,
                               mlm_probability=m.eval_mlm_probability, seed=12345,
                               return_masked_positions=sparse, rank=0, worker=0,
                               span_geometric_p=m.span_geometric_p,
                               span_max_words=m.span_max_words,
                               document_attention=recipe.packing.document_attention)
    rows = val_blocks.select(range(min(len(val_blocks), t.max_eval_blocks)))
    rows = rows.with_format("torch", columns=block_columns(recipe))
    batches = []
    for b, i in enumerate(range(0, len(rows), t.per_device_eval_batch_size)):
        chunk = rows[i: i + t.per_device_eval_batch_size]
        collator.set_step(b)
        batches.append(collator([{k: v[j] for k, v in chunk.items()}
                                 for j in range(len(chunk["input_ids"]))]))
    return batches


def _agreed(frac: float, flag: bool, accelerator: Accelerator) -> tuple[float, bool]:
    """One collective: the largest progress of all ranks (every process must stop at the same
    step), and whether any process received a stop signal."""
    value = torch.tensor([frac, 1.0 if flag else 0.0], device=accelerator.device)
    top = accelerator.gather(value.unsqueeze(0)).max(dim=0).values.tolist()
    return top[0], top[1] > 0


def _divergence_message(recipe: Recipe, count: int, step: int) -> str:
    """Why the run stopped, which checkpoint is kept, and advice that fits its settings."""
    t = recipe.training
    kept = latest_checkpoint(recipe)
    where = f"the last checkpoint before them, {kept}, is kept" if kept else \
        "no checkpoint was written (none is saved while updates are non-finite)"
    advice = f"lower --learning_rate (now {t.learning_rate:g})"
    if t.mixed_precision != "no":
        advice += f" or use --mixed_precision no (now {t.mixed_precision})"
    if t.warmup_ratio < 0.05:
        advice += f", or a longer --warmup_ratio (now {t.warmup_ratio:g})"
    return f"{count} non-finite losses in a row at step {step}; {where}. Try: {advice}"


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(r + "\n" for r in rows))


def _log(accelerator: Accelerator, fh, row: dict) -> None:
    if fh is None:
        return
    # NaN and infinity are not JSON: a non-finite value is written as null.
    row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    fh.write(json.dumps(row, allow_nan=False) + "\n")
    fh.flush()
    accelerator.log({k: v for k, v in row.items() if k not in ("step", "tokens")},
                    step=row["step"])


def _finish(recipe, accelerator, model, tokenizer, progress, first_val, last_val, stats,
            state: dict) -> None:
    """Save the model folder (from the full state dict), the loss curve and a summary."""
    out = Path(recipe.training.output_dir)
    unwrapped = accelerator.unwrap_model(model)
    with quiet_transformers():
        unwrapped.save_pretrained(str(out), state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png", title=f"{recipe.name}")
    seq = recipe.packing.max_seq_length
    tps = progress.tokens / max(progress.seconds, 1e-9)
    peak = device_peak_flops(accelerator.device, recipe.training.mixed_precision)
    head_fraction = recipe.masking.mlm_probability if recipe.model.sparse_prediction else 1.0
    mfu = flops_per_token(unwrapped.config, seq, head_fraction) * tps / peak if peak else None
    summary = {
        "recipe_name": recipe.name,
        "recipe_fingerprint": fingerprint(recipe),
        "base_model": recipe.model.model_name_or_path,
        "model_family": unwrapped.config.model_type,
        "num_parameters": count_parameters(unwrapped),
        "vocab_size": len(tokenizer),
        "max_seq_length": seq,
        "per_device_train_batch_size": recipe.training.train_batch_size(accelerator.device.type),
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
    train_losses = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    summary["final_train_loss"] = train_losses[-1] if train_losses else None
    summary["first_train_loss"] = train_losses[0] if train_losses else None
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "recipe.resolved.yaml").write_text(_yaml(recipe_record(recipe)))
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
    """Packed blocks written by prepare_data (an Arrow file, memory-mapped)."""
    return Dataset.from_file(str(path))
