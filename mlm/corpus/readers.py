"""Readers: turn one input file into (text, source) documents, by format.

Files are streamed (never read whole unless a document is the whole file) and decompressed on
the fly by extension (.gz, .bz2, .xz, .zst). A reader yields `(text, "file:line")` pairs, or a
`Skip` for something left out and counted (a binary file, an undecodable file with
`errors: skip`, a malformed record with `on_error: skip`). User mistakes raise UserError naming
the file and, where there is one, the line.
"""
from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import io
import json
import lzma
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlm.config import SourceConfig
from mlm.errors import UserError

FORMATS_BY_SUFFIX = {
    ".txt": "txt", ".text": "txt", "": "txt", ".md": "md", ".markdown": "md", ".rst": "rst",
    ".html": "html", ".htm": "html", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
}
COMPRESSIONS = {".gz": "gz", ".bz2": "bz2", ".xz": "xz", ".zst": "zst"}
TEXT_FORMATS = ("txt", "md", "rst", "html")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long text cells are the point of a corpus


@dataclass
class Skip:
    """Something left out of the corpus, counted under `reason` (and warned about if `warn`)."""

    reason: str
    where: str
    warn: bool = False


def split_suffix(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression) of a file name: notes.jsonl.zst -> (".jsonl", "zst")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compression


def detect_format(path: Path) -> str | None:
    """Format from the file extension (None when the extension is not one we read)."""
    suffix, _ = split_suffix(path)
    if suffix not in FORMATS_BY_SUFFIX and len(suffix) > 6:
        suffix = ""  # "report.2004" or "notes.v2": a dot in the name, not an extension
    return FORMATS_BY_SUFFIX.get(suffix)


def open_binary(path: Path) -> BinaryIO:
    """Open a file for reading bytes, decompressing by extension."""
    _, compression = split_suffix(path)
    if compression == "gz":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    if compression == "zst":
        import zstandard

        return zstandard.open(path, "rb")
    return path.open("rb")


def _fields(source: SourceConfig) -> list[str]:
    if source.text_field is None:
        return ["text"]
    return [source.text_field] if isinstance(source.text_field, str) else list(source.text_field)


def read_documents(path: Path, source: SourceConfig, fmt: str) -> Iterator[tuple[str, str] | Skip]:
    """Yield (text, "file:line") documents of one file, or Skip records."""
    try:
        if fmt == "parquet":
            yield from _read_parquet(path, source)
            return
        with open_binary(path) as raw:
            head = raw.read(8192)
            if not head:
                yield Skip("empty_file", str(path), warn=True)
                return
            if b"\x00" in head and not source.encoding.lower().replace("-", "").startswith(
                    ("utf16", "utf32")):
                yield Skip("binary_file", str(path), warn=True)
                return
            stream = _Rewound(head, raw)
            if fmt in TEXT_FORMATS:
                yield from _read_text(path, source, stream)
            elif fmt == "jsonl":
                yield from _read_jsonl(path, source, stream)
            elif fmt in ("csv", "tsv"):
                yield from _read_csv(path, source, stream, "\t" if fmt == "tsv" else ",")
            elif fmt == "conll":
                yield from _read_conll(path, source, stream)
            else:
                raise UserError(f"{path}: unknown format '{fmt}'")
    except _Undecodable as exc:
        if source.errors == "skip":
            yield Skip("encoding_error", f"{path}:{exc.line}", warn=True)
            return
        raise UserError(f"{path}:{exc.line}: not valid {source.encoding} ({exc.reason}); "
                        "set `encoding`, or `errors: replace` or `skip`") from None
    except Exception as exc:  # zstandard.ZstdError and friends: a corrupt compressed file too
        if not isinstance(exc, (OSError, EOFError, lzma.LZMAError, zlib.error)) \
                and not type(exc).__module__.startswith("zstandard"):
            raise
        yield _unreadable(path, source, exc)


def _unreadable(path: Path, source: SourceConfig, exc: Exception) -> Skip:
    """A file that cannot be read to its end (corrupt or truncated compressed data, an I/O
    error): one line naming it, or with `on_error: skip` a counted skip (documents read from it
    before the damage are kept)."""
    if source.on_error == "skip":
        return Skip("unreadable_file", str(path), warn=True)
    reason = str(exc) or type(exc).__name__
    raise UserError(f"{path}: cannot read ({reason}); a corrupt or truncated file? Set "
                    "`on_error: skip` to skip such files") from None


class _Rewound(io.RawIOBase):
    """A binary stream that first returns the bytes already sniffed, then the rest."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _Undecodable(Exception):
    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line, self.reason = line, reason


def _lines(stream: BinaryIO, source: SourceConfig) -> Iterator[tuple[int, str]]:
    """Decoded lines (with their line endings) and their 1-based numbers."""
    errors = "replace" if source.errors == "replace" else "strict"
    try:
        decoder = codecs.getincrementaldecoder(source.encoding)(errors=errors)
    except LookupError:
        raise UserError(f"unknown encoding '{source.encoding}'") from None
    pending, lineno = "", 0
    for raw in io.BufferedReader(stream, 1 << 20):
        try:
            text = pending + decoder.decode(raw)
        except UnicodeDecodeError as exc:
            raise _Undecodable(lineno + 1 + pending.count("\n"), exc.reason) from None
        *complete, pending = text.split("\n")
        for line in complete:
            lineno += 1
            yield lineno, line + "\n"
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise _Undecodable(lineno + 1, exc.reason) from None
    if pending:
        yield lineno + 1, pending


def _read_text(path: Path, source: SourceConfig, stream) -> Iterator[tuple[str, str]]:
    lines = _lines(stream, source)
    if source.document == "file":
        text = "".join(line for _, line in lines)
        yield text.lstrip("\ufeff"), f"{path}:1"
        return
    if source.document == "line":
        for i, line in lines:
            yield line, f"{path}:{i}"
        return
    para: list[str] = []
    start = 1
    for i, line in lines:
        if line.strip():
            if not para:
                start = i
            para.append(line)
        elif para:
            yield "".join(para), f"{path}:{start}"
            para = []
    if para:
        yield "".join(para), f"{path}:{start}"


def _read_conll(path: Path, source: SourceConfig, stream) -> Iterator[tuple[str, str]]:
    """Sentences of a CoNLL file (token in the first column; blank lines between sentences;
    `-DOCSTART-` skipped) as space-joined text, `file:line` of the sentence's first token."""
    words: list[str] = []
    start = 0
    for i, line in _lines(stream, source):
        first = line.split(None, 1)[0] if line.strip() else ""
        if not first or first == "-DOCSTART-":
            if words:
                yield " ".join(words), f"{path}:{start}"
            words = []
            continue
        if not words:
            start = i
        words.append(first)
    if words:
        yield " ".join(words), f"{path}:{start}"


def _field(row: dict, name: str):
    """row[name], or a dotted path into nested objects (`meta.body`); KeyError if absent."""
    if name in row:
        return row[name]
    value = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _join(values) -> str:
    return "\n\n".join(str(v) for v in values if v is not None and str(v).strip())


def _records(path: Path, source: SourceConfig, stream) -> Iterator[tuple[int, object] | Skip]:
    """(line, parsed JSON) of a JSONL file, or of a .json file holding one array."""
    lines = _lines(stream, source)
    first = True
    for i, line in lines:
        if not line.strip():
            continue
        if first and line.lstrip().startswith("[") and split_suffix(path)[0] == ".json":
            text = line + "".join(rest for _, rest in lines)  # one JSON array: read it whole
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{i + exc.lineno - 1}: malformed JSON ({exc.msg})") from None
            for row in rows:
                yield i, row
            return
        first = False
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as exc:
            if source.on_error == "skip":
                yield Skip("malformed_record", f"{path}:{i}")
                continue
            raise UserError(f"{path}:{i}: malformed JSON ({exc.msg}); "
                            "fix the line or set `on_error: skip`") from None


def _record_text(row, fields: list[str]) -> tuple[str | None, str | None]:
    """(the text of a JSON record's fields, None), or (None, what is wrong with the record)."""
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    try:
        values = [_field(row, f) for f in fields]
    except KeyError as exc:
        return None, (f"no field '{exc.args[0]}' (fields: {', '.join(sorted(map(str, row)))}); "
                      "set `text_field`")
    for f, v in zip(fields, values):  # str(5) or str(["a", "b"]) would enter the corpus as text
        if v is not None and not isinstance(v, str):
            return None, (f"field '{f}' holds {type(v).__name__} {v!r:.60}, not text; fix the "
                          "record or set `on_error: skip`")
    return _join(values), None


def _read_jsonl(path: Path, source: SourceConfig, stream) -> Iterator[tuple[str, str] | Skip]:
    fields = _fields(source)
    for item in _records(path, source, stream):
        if isinstance(item, Skip):
            yield item
            continue
        i, row = item
        text, problem = _record_text(row, fields)
        if problem is None:
            yield text, f"{path}:{i}"
        elif source.on_error == "skip":
            yield Skip("malformed_record", f"{path}:{i}")
        else:
            raise UserError(f"{path}:{i}: {problem}")


def _read_csv(path: Path, source: SourceConfig, stream, delimiter: str):
    fields = _fields(source)
    numbered = _lines(stream, source)
    current = [0]

    def lines():
        for i, line in numbered:
            current[0] = i
            yield line

    reader = csv.reader(lines(), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip().lstrip("\ufeff") for h in header]
    missing = [f for f in fields if f not in header]
    if missing:
        raise UserError(f"{path}: no column '{missing[0]}' (columns: {', '.join(header)}); "
                        "set `text_field`")
    cols = [header.index(f) for f in fields]
    end = current[0]
    try:
        for row in reader:
            start, end = end + 1, current[0]  # a record may span lines: named by its first
            if not row:
                continue
            if len(row) < len(header) and source.on_error == "fail" and max(cols) >= len(row):
                raise UserError(f"{path}:{start}: {len(row)} cells, the header has "
                                f"{len(header)}; fix the row or set `on_error: skip`")
            if max(cols) >= len(row):
                yield Skip("malformed_record", f"{path}:{start}")
                continue
            yield _join(row[c] for c in cols), f"{path}:{start}"
    except csv.Error as exc:
        raise UserError(f"{path}:{current[0]}: malformed {delimiter == ',' and 'CSV' or 'TSV'} "
                        f"({exc})") from None


def _read_parquet(path: Path, source: SourceConfig) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = _fields(source)
    with contextlib.ExitStack() as stack:
        if split_suffix(path)[1]:  # an externally compressed file: parquet needs to seek
            tmp = stack.enter_context(tempfile.TemporaryFile())
            with open_binary(path) as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.seek(0)
            target = tmp
        else:
            target = path
        try:
            pf = pq.ParquetFile(target)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path}: not a readable parquet file ({exc})") from None
        names = pf.schema_arrow.names
        missing = [f for f in fields if f not in names]
        if missing:
            raise UserError(f"{path}: no column '{missing[0]}' (columns: {', '.join(names)}); "
                            "set `text_field`")
        row = 0
        for batch in pf.iter_batches(columns=fields, batch_size=1024):
            cols = [batch.column(f).to_pylist() for f in fields]
            for values in zip(*cols):
                row += 1
                yield _join(values), f"{path}:{row}"
