"""Data recipes: load and validate a YAML recipe, resolve its sources, fingerprint it.

The fingerprint keys every on-disk cache: it hashes the settings that shape the corpus and
the size and modification time of every input file, so an unchanged recipe re-runs for free
and any edit (or a touched input file) rebuilds what depends on it.
"""
from __future__ import annotations

import glob
import importlib.util
from pathlib import Path

from mlm.cache import bytes_digest, digest
from mlm.config import Recipe, SourceConfig, from_dict, load_yaml, read_utf8, to_dict
from mlm.errors import UserError

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "data_recipes" / "demo.yaml"
CORPUS_VERSION = 3
"""Bumped when the corpus pipeline changes what it writes, so old caches are not reused."""


def load_recipe(path: str | Path) -> Recipe:
    """Load a recipe file; unknown keys, wrong types and missing sources are user errors."""
    data = load_yaml(path)
    try:
        recipe = from_dict(Recipe, data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    recipe.path = str(path)
    if not recipe.sources:
        raise UserError(f"{path}: 'sources' must list at least one file, folder or glob")
    return recipe


def resolve_path(spec: str, base: Path | None = None) -> Path:
    """Turn `pkg://package/sub/path` or a path relative to the working directory into a Path."""
    if spec.startswith("pkg://"):
        package, _, sub = spec[len("pkg://"):].partition("/")
        # found, not imported: a data package's __init__ may need what is not installed
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        if found is None or not (found.submodule_search_locations or found.origin):
            raise UserError(f"'{spec}': Python package '{package}' is not installed")
        root = Path(next(iter(found.submodule_search_locations))) if found.submodule_search_locations \
            else Path(found.origin).parent
        return root / sub if sub else root
    path = Path(spec).expanduser()
    if not path.is_absolute() and base is not None and not path.exists():
        candidate = base / path
        if candidate.exists():
            return candidate
    return path


def source_files(source: SourceConfig, base: Path | None = None) -> list[Path]:
    """Every file a source names (recursively for folders), sorted; an error if none."""
    spec = source.path
    if any(ch in spec for ch in "*?[") and not spec.startswith("pkg://"):
        files = [Path(p) for p in glob.glob(spec, recursive=True)]
        if not files and base is not None and not Path(spec).is_absolute():
            files = [Path(p) for p in glob.glob(str(base / spec), recursive=True)]
    else:
        root = resolve_path(spec, base)
        if root.is_dir():
            files = [p for p in root.rglob("*") if p.is_file()]
        elif root.is_file():
            files = [root]
        else:
            raise UserError(f"source path does not exist: {spec}")
        if source.exclude_from:
            excluded = excluded_paths(source, base)
            files = [p for p in files if _relative(p, root) not in excluded]
    files = sorted(p for p in files if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"source '{spec}' matches no file")
    return files


def check_output_outside_sources(recipe: Recipe, output: str | Path, flag: str) -> None:
    """Refuse an output folder inside a source folder (before any work): the run would read its
    own caches and models back as corpus text on the next run."""
    base = Path(recipe.path).parent if recipe.path else None
    out = Path(output).expanduser().resolve()
    for source in recipe.sources:
        if source.path.startswith("pkg://") or any(ch in source.path for ch in "*?["):
            continue
        root = resolve_path(source.path, base)
        if root.is_dir() and out.is_relative_to(root.resolve()):
            raise UserError(f"{flag} {output} lies inside the source folder {source.path}: the "
                            "run would read its own output as text; choose a folder outside it")


def read_listing(listing: Path, missing: str) -> list[str]:
    """The entries of a list file (an `exclude_from` or a `test_list`): one per line, blank
    lines and `#` comments skipped; `missing`: the error when there is no such file."""
    if not listing.is_file():
        raise UserError(missing)
    return [line.strip() for line in read_utf8(listing).splitlines()
            if line.strip() and not line.startswith("#")]


def document_entries(entries: list[str], root: Path) -> dict[str, str]:
    """The `relative/file:LINE` entries of a list, keyed by the `file:line` the readers name a
    document with (`root`: the folder, or the single file, the entries are relative to)."""
    out = {}
    for entry in entries:
        rel, sep, line = entry.rpartition(":")
        if sep and line.isdigit():
            path = root if root.is_file() and rel == root.name else root / rel
            out[f"{path}:{int(line)}"] = entry
    return out


def excluded_paths(source: SourceConfig, base: Path | None = None) -> set[str]:
    """The relative paths listed in a source's `exclude_from` file."""
    return set(read_listing(resolve_path(source.exclude_from, base),
                            f"exclude_from file not found: {source.exclude_from}"))


def excluded_documents(source: SourceConfig, base: Path | None = None) -> set[str]:
    """The documents a source's `exclude_from` file names as `relative/path:LINE` (a line of a
    `document: line` text file, a JSONL/CSV record, a CoNLL sentence's first line, a parquet
    row), in the `file:line` form the readers give each document."""
    if not source.exclude_from:
        return set()
    return set(document_entries(sorted(excluded_paths(source, base)), resolve_path(source.path, base)))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def corpus_fingerprint(recipe: Recipe) -> str:
    """Hash of the corpus-shaping settings, of every input file's size and mtime, and of the
    contents of every `exclude_from` list (an edited list must rebuild the corpus: otherwise
    newly listed test documents would stay in pretraining)."""
    base = Path(recipe.path).parent if recipe.path else None
    stats = []
    for source in recipe.sources:
        for p in source_files(source, base):
            st = p.stat()
            stats.append((str(p), st.st_size, st.st_mtime_ns))
        if source.exclude_from:
            listing = resolve_path(source.exclude_from, base)
            if not listing.is_file():
                raise UserError(f"exclude_from file not found: {source.exclude_from}")
            stats.append(("exclude_from", str(listing), bytes_digest(listing)))
    clean = to_dict(recipe.clean)
    clean.pop("corpus_num_proc")  # the corpus is the same whatever the number of workers
    settings = {
        "sources": [to_dict(s) for s in recipe.sources],
        "clean": clean,
        "split": to_dict(recipe.split),
        "privacy": to_dict(recipe.privacy),
        "dedup": to_dict(recipe.dedup),
    }
    return digest({"settings": settings, "files": stats, "version": CORPUS_VERSION})


def fingerprint(recipe: Recipe) -> str:
    """Fingerprint of the whole recipe (corpus inputs plus tokenizer, packing, model, training)."""
    parts = {k: to_dict(getattr(recipe, k)) for k in ("tokenizer", "packing", "masking", "model")}
    training = to_dict(recipe.training)
    training.pop("output_dir", None)
    return digest({"corpus": corpus_fingerprint(recipe), "parts": parts, "training": training})
