"""Fingerprints and atomic on-disk caches, shared by every stage (corpus, tokenizer, blocks,
checkpoints).

A cache entry is the folder `folder/key`. It is built under a temporary name and renamed into
place when complete, so its existence means it is whole: a killed build leaves only a
temporary folder, which the next build removes. An entry damaged afterwards (a full disk, a
copy cut short, a file edited by hand) fails to load, and `load_cached` builds it again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")


def digest(obj: object) -> str:
    """A short, stable hash of a JSON-able object (the key of a cache entry)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """The digest of a JSON file's content (e.g. a tokenizer.json), independent of formatting."""
    return digest(json.loads(Path(path).read_text()))


def bytes_digest(path: str | Path) -> str:
    """The digest of a file's bytes (a list of paths, any text file)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class Processes(Protocol):
    """What `cached` needs of a launch: Accelerate's `Accelerator` and `PartialState` have it."""

    is_main_process: bool

    def wait_for_everyone(self) -> None: ...


def cached(folder: str | Path, key: str, build: Callable[[Path], object], *,
           processes: Processes | None = None, collective: bool = False,
           rebuild: bool = False) -> Path:
    """The folder `folder/key`, built once by `build(tmp)` into an empty temporary folder.

    processes: the launch this runs in; the main process builds and renames while the others
        wait, and every process gets the finished path. None: a lone process.
    collective: every process calls `build` (it holds collectives, e.g. a sharded save); files
        are still the main process's to write.
    rebuild: replace an existing entry (a checkpoint saved again, a corpus whose inputs changed).
    """
    final = Path(folder) / key
    if final.is_dir() and not rebuild:
        return final
    main = processes is None or processes.is_main_process
    tmp = final.with_name(f".{key}.tmp")

    def barrier() -> None:
        if processes is not None:
            processes.wait_for_everyone()

    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted build
        tmp.mkdir(parents=True)
    barrier()
    if main or collective:
        try:
            build(tmp)
        except BaseException:  # a bad input found while building: leave nothing half-made
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    barrier()
    if main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    barrier()
    return final


def load_cached(folder: str | Path, key: str, build: Callable[[Path], object],
                load: Callable[[Path], T], **kwargs) -> T:
    """`load` of the entry `cached` returns. An existing entry that fails to load was damaged
    after it was made: it is built again, with a note on stderr, and loaded once more (a
    second failure is raised). Under a launch every process reads the same damaged files and
    so takes the same way."""
    path = cached(folder, key, build, **kwargs)
    try:
        return load(path)
    except Exception as exc:  # noqa: BLE001 - whatever the reader raises, the entry is unusable
        processes = kwargs.get("processes")
        if processes is None or processes.is_main_process:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            print(f"note: the cache entry {path} is damaged ({reason}); building it again",
                  file=sys.stderr)
    return load(cached(folder, key, build, **{**kwargs, "rebuild": True}))
