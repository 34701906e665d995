"""Build the on-disk corpus dataset (train/validation) from a recipe, cached by fingerprint.

Three passes, none of which holds the texts in memory:
1. read + clean + scrub + sign: worker processes (`corpus_num_proc`) stream the files and write
   one Arrow row per document (kept or dropped, with its exact hash and MinHash signature);
2. decide: one sequential pass over the small columns makes the dedup, split and sampling
   decisions, keeping only the exact hashes, the LSH index and one small integer per row;
3. write: the kept rows are selected (train upsampled by weight) and saved with `save_to_disk`.
Everything is written through `mlm.cache.cached`: under a temporary name, renamed when complete,
so a killed run never leaves a half-written cache behind.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value, load_from_disk

from mlm.cache import Processes, cached, load_cached
from mlm.config import Recipe
from mlm.corpus.clean import clean_text, drop_reason
from mlm.corpus.dedup import Deduper, Signer, exact_hash, unit_interval
from mlm.corpus.privacy import scrub
from mlm.corpus.readers import Skip, detect_format, read_documents
from mlm.errors import UserError
from mlm.recipe import corpus_fingerprint, excluded_documents, source_files

log = logging.getLogger("mlm.corpus")

STAGED = Features({
    "text": Value("string"), "source": Value("string"), "origin": Value("int32"),
    "drop": Value("string"), "pii": Sequence(Value("string")), "hash": Value("binary"),
    "minhash": Value("binary"), "chars": Value("int64"),
})
FILE_SKIPS = ("empty_file", "binary_file", "encoding_error", "unsupported_file", "unreadable_file")
MAX_WARNINGS = 20


def _read_files(tasks: list[tuple[int, str, str]], recipe: Recipe):
    """Pass 1 (runs in worker processes): one row per document read, kept or dropped."""
    signer = (Signer(recipe.dedup.minhash_num_perm, recipe.dedup.minhash_ngram)
              if recipe.dedup.dedup_near else None)
    empty = {"text": "", "pii": [], "hash": b"", "minhash": b"", "chars": 0}
    base = Path(recipe.path).parent if recipe.path else None
    excluded: dict[int, set[str]] = {}
    for origin, path, fmt in tasks:
        source = recipe.sources[origin]
        if origin not in excluded:
            excluded[origin] = excluded_documents(source, base)
        for item in read_documents(Path(path), source, fmt):
            if isinstance(item, Skip):
                yield {**empty, "source": item.where, "origin": origin, "drop": item.reason}
                continue
            raw, where = item
            if where in excluded[origin]:  # e.g. a labeled task's test example
                yield {**empty, "source": where, "origin": origin, "drop": "excluded"}
                continue
            text = clean_text(raw, recipe.clean, fmt)
            pii: Counter = Counter()
            if recipe.privacy.scrub_pii:
                text, pii = scrub(text, recipe.privacy.pii_types)
            reason = drop_reason(text, recipe.clean)
            if reason:
                yield {**empty, "source": where, "origin": origin, "drop": reason}
                continue
            yield {"text": text, "source": where, "origin": origin, "drop": "",
                   "pii": sorted(pii.elements()), "hash": exact_hash(text),
                   "minhash": signer(text) if signer else b"", "chars": len(text)}


def _tasks(recipe: Recipe) -> tuple[list[tuple[int, str, str]], Counter, list[str], dict]:
    """(origin, path, format) of every input file; unsupported files are skipped and counted."""
    base = Path(recipe.path).parent if recipe.path else None
    tasks, skipped, warnings, files = [], Counter(), [], {}
    for origin, source in enumerate(recipe.sources):
        paths = source_files(source, base)
        files[origin] = len(paths)
        for path in paths:
            fmt = detect_format(path) if source.format == "auto" else source.format
            if fmt is None:
                if len(paths) == 1:
                    raise UserError(f"{path}: cannot tell the format from the extension; set "
                                    "`format` (txt, md, rst, html, jsonl, csv, tsv, parquet)")
                skipped["unsupported_file"] += 1
                warnings.append(f"skipped {path}: unsupported file type")
                continue
            tasks.append((origin, str(path), fmt))
    return tasks, skipped, warnings, files


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError behind an exception re-raised by `datasets` from a worker, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _source_labels(recipe: Recipe) -> list[str]:
    labels, counts = [], Counter()
    for source in recipe.sources:
        counts[source.path] += 1
        labels.append(source.path if counts[source.path] == 1 else f"{source.path}#{counts[source.path]}")
    return labels


def _build(recipe: Recipe, dest: Path, key: str) -> dict:
    """Run the three passes into the empty folder `dest`; return the stats."""
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # our own summary instead; an error stays one line
    try:
        return _passes(recipe, dest, key)
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _passes(recipe: Recipe, dest: Path, key: str) -> dict:
    started = time.perf_counter()
    staging = dest / "staging"  # pass 1's rows; removed once the corpus is written
    tasks, dropped, warnings, files = _tasks(recipe)
    in_bytes = sum(Path(p).stat().st_size for _, p, _ in tasks)
    try:
        if tasks:
            num_proc = min(recipe.clean.corpus_num_proc, len(tasks))
            staged = Dataset.from_generator(
                _read_files, features=STAGED, cache_dir=str(staging),
                gen_kwargs={"tasks": tasks, "recipe": recipe},
                num_proc=num_proc if num_proc > 1 else None,
            )
        else:
            staged = Dataset.from_dict({k: [] for k in STAGED}, features=STAGED)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        error = _user_error(exc)
        if error is not None:
            raise UserError(str(error)) from None
        raise
    read_seconds = time.perf_counter() - started

    # Pass 2: decisions. side[i] > 0: copies in train; -1: validation; 0: left out.
    n = len(staged)
    side = np.zeros(n, dtype=np.int16)
    validation = np.zeros(n, dtype=bool)
    signatures = staged.select_columns(["minhash"])
    deduper = Deduper(recipe.dedup, lambda i: signatures[int(i)]["minhash"])
    labels = _source_labels(recipe)
    per_source = {label: {"files": files.get(o, 0), "documents": 0, "characters": 0}
                  for o, label in enumerate(labels)}
    duplicates, pii, sampling = Counter(), Counter(), Counter()
    docs = {"train": 0, "validation": 0}
    chars = {"train": 0, "validation": 0}
    split = recipe.split
    columns = staged.select_columns(["origin", "drop", "source", "hash", "minhash", "chars", "pii"])
    i = 0
    for batch in columns.iter(batch_size=4096):
        for origin, drop, where, key_, sig, n_chars, found in zip(
                batch["origin"], batch["drop"], batch["source"], batch["hash"], batch["minhash"],
                batch["chars"], batch["pii"]):
            if drop:
                dropped[drop] += 1
                if drop in FILE_SKIPS:
                    warnings.append(f"skipped {where}: {drop.replace('_', ' ')}")
            else:
                reason, original = deduper.check(i, key_, sig)
                if reason:
                    duplicates[reason] += 1
                if reason and not recipe.dedup.keep_duplicates:
                    dropped[reason] += 1
                else:
                    if reason:
                        validation[i] = validation[original]
                    else:
                        validation[i] = (unit_interval(key_, f"split{split.split_seed}")
                                         < split.validation_fraction)
                    weight = recipe.sources[origin].weight
                    extra = unit_interval(key_, "weight") < weight - int(weight)
                    copies = 1 if validation[i] and weight >= 1 else int(weight) + extra
                    sampling["downsampled"] += copies == 0
                    sampling["upsampled"] += max(copies - 1, 0)
                    if copies:
                        name = "validation" if validation[i] else "train"
                        side[i] = -1 if validation[i] else copies
                        docs[name] += copies
                        chars[name] += copies * n_chars
                        per_source[labels[origin]]["documents"] += copies
                        per_source[labels[origin]]["characters"] += copies * n_chars
                        pii.update(found)
            i += 1

    if docs["train"] + docs["validation"] < 2:
        shutil.rmtree(staging, ignore_errors=True)
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
        kept = docs["train"] + docs["validation"]
        raise UserError(f"corpus has {kept} document{'s' * (kept != 1)} after cleaning "
                        f"({f'dropped {reasons}' if reasons else 'nothing was dropped'}); "
                        "at least 2 are needed")
    if docs["validation"] == 0 or docs["train"] == 0:
        # A tiny corpus: move one document across so both train and validation exist.
        want = -1 if docs["validation"] == 0 else 1
        j = int(np.flatnonzero(side != 0)[-1])
        moved, c = int(max(side[j], 1)), int(staged[j]["chars"])
        frm, to = ("train", "validation") if want == -1 else ("validation", "train")
        side[j] = want
        docs[frm] -= moved
        chars[frm] -= moved * c
        docs[to] += 1
        chars[to] += c

    # Pass 3: write the kept rows.
    out = staged.select_columns(["text", "source"])
    train_rows = np.repeat(np.arange(n, dtype=np.int64), np.maximum(side, 0))
    dataset = DatasetDict({
        "train": out.select(train_rows),
        "validation": out.select(np.flatnonzero(side == -1)),
    })
    dataset.save_to_disk(str(dest))
    shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    for line in warnings[:MAX_WARNINGS]:
        log.warning(line)
    if len(warnings) > MAX_WARNINGS:
        log.warning("... and %d more skipped files (see stats.json)", len(warnings) - MAX_WARNINGS)
    stats = {
        "fingerprint": key,
        "documents": docs,
        "characters": chars,
        "dropped": dict(sorted(dropped.items())),
        "duplicates": {"exact": duplicates["exact_duplicate"], "near": duplicates["near_duplicate"],
                       "kept": recipe.dedup.keep_duplicates},
        "pii": dict(sorted(pii.items())),
        "sources": per_source,
        "sampling": dict(sampling),
        "input": {"files": len(tasks), "bytes": in_bytes, "documents_read": n},
        "seconds": round(seconds, 3),
        "throughput": {"mb_per_s": round(in_bytes / 1e6 / max(read_seconds, 1e-9), 2),
                       "documents_per_s": round(n / max(seconds, 1e-9), 1)},
        "warnings": warnings[:1000],
    }
    (dest / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def build_corpus(recipe: Recipe, output_dir: str | Path,
                 processes: Processes | None = None) -> DatasetDict:
    """Read, clean, scrub, deduplicate and split the recipe's sources; cached in `output_dir`.

    The corpus lives in `output_dir/<corpus fingerprint>`; an unchanged recipe over unchanged
    files loads it without doing any work. Under a launch (`processes`) the main process builds.
    """
    key = corpus_fingerprint(recipe)
    return load_cached(output_dir, key, lambda tmp: _build(recipe, tmp, key),
                       lambda path: load_from_disk(str(path)), processes=processes)


def write_corpus(recipe: Recipe, dest: str | Path) -> tuple[DatasetDict, dict, bool]:
    """Build the corpus into the folder `dest` itself (the `mlm-corpus` command).

    Returns the dataset, its stats and whether it was built (False: `dest` was up to date).
    A folder that exists and is not a corpus is never overwritten.
    """
    dest = Path(dest).absolute()
    key = corpus_fingerprint(recipe)
    stats_file = dest / "stats.json"
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        if stats.get("fingerprint") == key:
            return load_from_disk(str(dest)), stats, False
    elif dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"--output {dest} exists and is not a corpus folder; choose another")
    built = {}
    cached(dest.parent, dest.name, lambda tmp: built.update(_build(recipe, tmp, key)),
           rebuild=True)
    return load_from_disk(str(dest)), built, True


def load_corpus(path: str | Path) -> DatasetDict:
    """Load a corpus written by build_corpus."""
    return load_from_disk(str(path))


def corpus_stats(recipe: Recipe, output_dir: str | Path) -> dict:
    """The stats.json of the cached corpus for this recipe."""
    path = Path(output_dir) / corpus_fingerprint(recipe) / "stats.json"
    return json.loads(path.read_text())


def format_stats(stats: dict) -> str:
    """A plain-text table of a corpus's stats: sources, drops, duplicates, PII."""
    rows = [("source", "documents", "characters")]
    rows += [(name, f"{s['documents']:,}", f"{s['characters']:,}")
             for name, s in stats.get("sources", {}).items()]
    for split in ("train", "validation"):
        rows.append((f"[{split}]", f"{stats['documents'][split]:,}",
                     f"{stats['characters'][split]:,}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>12}  {c:>15}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))

    def section(title: str, counts: dict) -> None:
        items = [(k, v) for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)]
        if items:
            lines.append("")
            lines.append(title)
            lines.extend(f"  {k.replace('_', ' '):<{width}}{v:>14,}" for k, v in items)

    section("dropped", stats.get("dropped", {}))
    dup = stats.get("duplicates", {})
    section("duplicates" + (" (kept)" if dup.get("kept") else " removed"), dup)
    section("PII scrubbed", stats.get("pii", {}))
    section("sampling", stats.get("sampling", {}))
    if "seconds" in stats:
        inp = stats.get("input", {})
        lines.append("")
        lines.append(f"{inp.get('files', 0):,} files, {inp.get('bytes', 0) / 1e6:,.1f} MB in "
                     f"{stats['seconds']:.1f} s ({stats['throughput']['mb_per_s']} MB/s read, "
                     f"{stats['throughput']['documents_per_s']:,} documents/s)")
    return "\n".join(lines)
