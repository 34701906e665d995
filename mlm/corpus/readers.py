"""Readers: turn one input file into (text, source) documents, by format."""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from mlm.config import SourceConfig
from mlm.errors import UserError

TEXT_FORMATS = {".txt": "txt", ".md": "md", ".rst": "rst", ".text": "txt"}


def detect_format(path: Path) -> str:
    """Format from the file extension."""
    suffix = path.suffix.lower()
    if suffix in TEXT_FORMATS:
        return TEXT_FORMATS[suffix]
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix == ".parquet":
        return "parquet"
    return "txt"


def _fields(source: SourceConfig) -> list[str]:
    if source.text_field is None:
        return ["text"]
    return [source.text_field] if isinstance(source.text_field, str) else list(source.text_field)


def read_documents(path: Path, source: SourceConfig) -> Iterator[tuple[str, str]]:
    """Yield (text, "file:line") pairs from one file."""
    fmt = detect_format(path) if source.format == "auto" else source.format
    errors = "strict" if source.errors in ("fail", "skip") else "replace"
    try:
        if fmt in ("txt", "md", "rst"):
            yield from _read_text(path, source, errors)
        elif fmt == "jsonl":
            yield from _read_jsonl(path, source, errors)
        elif fmt in ("csv", "tsv"):
            yield from _read_csv(path, source, errors, "\t" if fmt == "tsv" else ",")
        elif fmt == "parquet":
            yield from _read_parquet(path, source)
        else:
            raise UserError(f"{path}: unknown format '{fmt}'")
    except UnicodeDecodeError as exc:
        if source.errors == "skip":
            return
        raise UserError(f"{path}: not valid {source.encoding} at byte {exc.start}") from None


def _read_text(path: Path, source: SourceConfig, errors: str) -> Iterator[tuple[str, str]]:
    text = path.read_text(encoding=source.encoding, errors=errors)
    if source.document == "file":
        yield text, f"{path}:1"
        return
    lines = text.splitlines()
    if source.document == "line":
        for i, line in enumerate(lines, 1):
            yield line, f"{path}:{i}"
        return
    para: list[str] = []
    start = 1
    for i, line in enumerate(lines + [""], 1):
        if line.strip():
            if not para:
                start = i
            para.append(line)
        elif para:
            yield "\n".join(para), f"{path}:{start}"
            para = []


def _read_jsonl(path: Path, source: SourceConfig, errors: str) -> Iterator[tuple[str, str]]:
    fields = _fields(source)
    with path.open(encoding=source.encoding, errors=errors) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{i}: malformed JSON ({exc.msg})") from None
            missing = [f for f in fields if f not in row]
            if missing:
                raise UserError(
                    f"{path}:{i}: no field '{missing[0]}' (fields: {', '.join(sorted(row))})"
                )
            yield "\n\n".join(str(row[f]) for f in fields if row[f] is not None), f"{path}:{i}"


def _read_csv(path: Path, source: SourceConfig, errors: str, delimiter: str):
    fields = _fields(source)
    with path.open(encoding=source.encoding, errors=errors, newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        missing = [f for f in fields if f not in (reader.fieldnames or [])]
        if missing:
            raise UserError(
                f"{path}: no column '{missing[0]}' (columns: {', '.join(reader.fieldnames or [])})"
            )
        for i, row in enumerate(reader, 2):
            yield "\n\n".join(row[f] for f in fields if row[f]), f"{path}:{i}"


def _read_parquet(path: Path, source: SourceConfig) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    fields = _fields(source)
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    missing = [f for f in fields if f not in names]
    if missing:
        raise UserError(f"{path}: no column '{missing[0]}' (columns: {', '.join(names)})")
    row = 0
    for batch in pf.iter_batches(columns=fields):
        cols = [batch.column(f).to_pylist() for f in fields]
        for values in zip(*cols):
            row += 1
            yield "\n\n".join(str(v) for v in values if v is not None), f"{path}:{row}"
