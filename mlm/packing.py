"""Packing stage: tokenize documents and pack them into blocks of exactly max_seq_length.

Each block is `[CLS] doc … [SEP] doc … [SEP]`, documents separated by [SEP] and running across
block boundaries, so the training stream holds no padding; only the last block (the remainder,
or a corpus smaller than one block) is padded, so no token of the corpus is dropped. With
`respect_document_boundaries` a document that does not fit in the current block starts a new
one (`[CLS] doc [SEP] doc [SEP] [PAD] …`) and a document longer than a block is cut into pieces
of max_seq_length - 2 tokens, each closed by [SEP] and starting its own block.

Alongside `input_ids` every token carries `word_start` (it begins a word: whole-word and span
masking need it), `special_tokens_mask` (1 on [CLS], [SEP] and [PAD]: never masked),
`attention_mask` (0 on padding) and `document_ids` (the document's index inside its block,
counted from 0 at the block's first token; -1 on padding), for document-aware attention.

Speed and memory: documents are encoded a batch (~4 MB of text) at a time by the Rust
tokenizer on all its threads (`num_proc` 1), or in `num_proc` worker processes. Word starts
are read off the ids (`mlm.tokenizer.word_start_tables`: "##" for WordPiece, a leading space
for byte-level BPE and Metaspace), so encoding skips offsets and word ids
(`encode_batch_fast`); other tokenizers are read through `word_ids`. Everything after
encoding is numpy on whole arrays; blocks go to Arrow without a Python list per token and,
given a path, straight to disk, so a corpus larger than memory packs in the memory of one
batch.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import generate_random_fingerprint
from tokenizers import Tokenizer
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from mlm.cache import Processes, digest, load_cached
from mlm.config import PackingConfig
from mlm.errors import UserError
from mlm.tokenizer import check_sequence_length, raw_backend, word_start_tables

TYPES = {"input_ids": np.int32, "word_start": np.int8, "special_tokens_mask": np.int8,
         "attention_mask": np.int8, "document_ids": np.int32}
FEATURES = Features({name: List(Value(np.dtype(t).name)) for name, t in TYPES.items()})
PARALLELISM = "TOKENIZERS_PARALLELISM"
BATCH_BYTES = 4 * 2**20
"""Text encoded per batch (UTF-8 bytes): enough documents for the tokenizer's threads, while
the encodings of one batch stay small (measured: 234 MB above the process on BBC x20)."""


def _start_tables(backend: Tokenizer) -> tuple[np.ndarray, np.ndarray] | None:
    """`word_start_tables` where the tokenizer can encode without word ids: then word starts
    come from the ids and `_encode` uses `encode_batch_fast`, which skips offsets and word ids.
    None otherwise (`word_ids` are read)."""
    if not hasattr(backend, "encode_batch_fast"):
        return None
    return word_start_tables(backend)


def _encode(texts: list[str], backend: Tokenizer,
            tables: tuple[np.ndarray, np.ndarray] | None = None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, word-start flags and per-document lengths of `texts`, as flat arrays.
    With `tables` (see `_start_tables`) word starts come from the ids."""
    fast = tables is not None
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    encodings = encode(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int32,
                      count=total)
    doc_first = np.cumsum(lengths) - lengths
    if fast:
        begins, ends = tables
        starts = begins[ids]
        starts[1:] |= ends[ids[:-1]]
        starts[doc_first[lengths > 0]] = True
        return ids, starts, lengths
    # None (a token outside any word) becomes NaN, which differs from everything.
    words = np.array(list(itertools.chain.from_iterable(e.word_ids for e in encodings)),
                     dtype=np.float64).reshape(-1)
    starts = np.ones(total, dtype=bool)
    starts[1:] = words[1:] != words[:-1]
    starts[doc_first[lengths > 0]] = True
    starts &= ~np.isnan(words)
    return ids, starts, lengths


def _encode_map(batch: dict, tokenizer_json: str) -> dict:
    backend = Tokenizer.from_str(tokenizer_json)
    ids, starts, lengths = _encode(batch["text"], backend, _start_tables(backend))
    bounds = np.cumsum(lengths)[:-1]
    return {"ids": np.split(ids, bounds), "starts": np.split(starts, bounds)}


def encoded_batches(dataset: Dataset, tokenizer: PreTrainedTokenizerFast,
                    num_proc: int | None = None, batch_bytes: int = BATCH_BYTES,
                    scratch: str | Path | None = None):
    """Yield (ids, word_start, lengths) flat arrays for consecutive runs of documents of
    `dataset["text"]`, about `batch_bytes` of text each, in corpus order.

    One process: the Rust tokenizer encodes a batch on all its threads. `num_proc` > 1: a
    `datasets.map` over worker processes writes the encodings to a temporary Arrow file in
    `scratch` (default: the system's temporary folder), read back here a batch at a time and
    deleted at the end, so nothing is left next to the corpus. Either way memory holds one
    batch, never the corpus.
    """
    backend = raw_backend(tokenizer)
    text = dataset.select_columns(["text"])
    if num_proc and num_proc > 1:
        with tempfile.TemporaryDirectory(dir=scratch, prefix="mlm-tokens-",
                                         ignore_cleanup_errors=True) as tmp:
            with tokenizer_threads_kept():
                mapped = text.map(
                    _encode_map, batched=True, batch_size=1024, num_proc=num_proc,
                    remove_columns=["text"], fn_kwargs={"tokenizer_json": backend.to_str()},
                    cache_file_name=str(Path(tmp) / "tokens.arrow"), desc="tokenize",
                )
            for table in _byte_batches(mapped.with_format("arrow"), batch_bytes, "ids", 4):
                ids_col, starts_col = table.column("ids").combine_chunks(), \
                    table.column("starts").combine_chunks()
                yield (ids_col.flatten().to_numpy().astype(np.int32),
                       starts_col.flatten().to_numpy(zero_copy_only=False).astype(bool),
                       np.diff(ids_col.offsets.to_numpy()).astype(np.int64))
        return
    tables = _start_tables(backend)
    for table in _byte_batches(text.with_format("arrow"), batch_bytes, "text", 1):
        yield _encode(table.column("text").to_pylist(), backend, tables)


@contextmanager
def tokenizer_threads_kept():
    """Undo what `Dataset.map(num_proc=...)` leaves behind in the process environment.

    map sets TOKENIZERS_PARALLELISM=false for its workers, then restores only Python's
    `os.environ` mapping, not the process environment that the Rust tokenizer reads: every
    later encode in this process (and its subprocesses) would run on one thread. Measured here:
    BBC News encodes in 0.72 s before a map, 1.50 s after.
    """
    before = os.environ.get(PARALLELISM)
    try:
        yield
    finally:
        if before is None:
            # map replaced os.environ by a copy that lacks the key, so popping it may not
            # reach the process environment: unset it there too.
            os.environ.pop(PARALLELISM, None)
            os.unsetenv(PARALLELISM)
        else:
            os.environ[PARALLELISM] = before


def _byte_batches(dataset: Dataset, batch_bytes: int, column: str, item_bytes: int):
    """Arrow tables of consecutive rows of `dataset`, each about `batch_bytes` of `column`
    (UTF-8 bytes of text, or list items times `item_bytes`): cut at the row that fills the
    batch, so long documents do not make batches larger (one document larger than a batch is a
    batch of its own)."""
    size, pending = 0, []
    for table in dataset.iter(batch_size=256):
        col = table.column(column)
        lengths = pc.list_value_length(col) if pa.types.is_list(col.type) else \
            pc.binary_length(col)
        start = 0
        for row, n in enumerate(lengths.fill_null(0).to_numpy(zero_copy_only=False)):
            size += int(n) * item_bytes
            if size >= batch_bytes:
                pending.append(table.slice(start, row + 1 - start))
                yield pa.concat_tables(pending)
                size, pending, start = 0, [], row + 1
        if start < table.num_rows:
            pending.append(table.slice(start))
    if pending:
        yield pa.concat_tables(pending)


class BlockPacker:
    """Lays encoded documents out into blocks, a batch of documents at a time.

    The tokens not yet in a finished block (the open block's content) are carried into the
    next batch, so the blocks are the same whatever the batch size (tests check it) and
    memory holds one batch. `add` returns the blocks that batch finished; `finish` returns
    the last, padded block.
    """

    def __init__(self, max_seq_length: int, cls: int, sep: int, pad: int,
                 respect_document_boundaries: bool = False):
        self.L, self.body = max_seq_length, max_seq_length - 2
        self.cls, self.sep, self.pad = cls, sep, pad
        self.respect = respect_document_boundaries
        self.docs = 0  # documents seen: global document index of the next batch's first
        self.blocks = 0
        # The open block's content after [CLS]: ids, word starts, special flags, documents.
        self.carry = (np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, bool),
                      np.zeros(0, np.int64))

    def add(self, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> dict | None:
        """Take the next documents (flat ids and word starts, per-document lengths)."""
        lengths = lengths[lengths > 0]  # documents that encode to nothing are skipped
        if not len(lengths):
            return None
        docs = self.docs + np.arange(len(lengths))
        self.docs += len(lengths)
        if self.respect:
            return self._add_segments(ids, starts, lengths, docs)
        stream = self._stream(ids, starts, lengths, docs)
        stream = tuple(np.concatenate([c, s]) for c, s in zip(self.carry, stream))
        rows = len(stream[0]) // self.body
        full = rows * self.body
        self.carry = tuple(s[full:].copy() for s in stream)
        if not rows:
            return None
        # Full blocks: [CLS] + `body` tokens of the stream + a closing [SEP].
        s_ids, s_starts, s_special, s_doc = (s[:full].reshape(rows, self.body) for s in stream)
        ids = np.full((rows, self.L), self.sep, np.int32)
        ids[:, 0] = self.cls
        ids[:, 1:-1] = s_ids
        starts = np.zeros((rows, self.L), bool)
        starts[:, 1:-1] = s_starts
        special = np.ones((rows, self.L), bool)
        special[:, 1:-1] = s_special
        document = np.hstack([s_doc[:, :1], s_doc, s_doc[:, -1:]])  # [CLS], [SEP]: neighbours'
        return self._columns(ids, starts, special, document)

    def finish(self) -> dict | None:
        """The last block: [CLS], the carried tokens, padding (None if nothing is carried)."""
        n = len(self.carry[0])
        if not n:
            return None
        grid = self._empty(1)
        for g, c in zip(grid, self.carry):
            g[0, 1:1 + n] = c
        grid[0][0, 0], grid[3][0, 0] = self.cls, self.carry[3][0]
        self.carry = tuple(c[:0] for c in self.carry)
        return self._columns(*grid)

    def _empty(self, rows: int) -> tuple[np.ndarray, ...]:
        """Blocks of padding: ids, word starts, special flags, documents (-1)."""
        shape = (rows, self.L)
        return (np.full(shape, self.pad, np.int32), np.zeros(shape, bool), np.ones(shape, bool),
                np.full(shape, -1, np.int64))

    def _stream(self, ids, starts, pieces, piece_doc):
        """The batch as one stream: each run of `pieces` tokens followed by a [SEP], with
        word starts, special flags and the document (`piece_doc`) of every position."""
        total = len(ids) + len(pieces)
        tok = np.ones(total, bool)
        tok[np.cumsum(pieces + 1) - 1] = False
        s_ids = np.full(total, self.sep, np.int32)
        s_ids[tok] = ids
        s_starts = np.zeros(total, bool)
        s_starts[tok] = starts
        return s_ids, s_starts, ~tok, np.repeat(piece_doc, pieces + 1)

    def _add_segments(self, ids, starts, lengths, docs) -> dict | None:
        """Respect document boundaries: each document as segments of at most `body` tokens
        plus a [SEP]; next fit: a segment that does not fit the open block starts a new one."""
        per_doc = np.maximum(1, -(-lengths // self.body))
        seg_doc = np.repeat(np.arange(len(lengths)), per_doc)
        first = np.cumsum(per_doc) - per_doc
        k = np.arange(len(seg_doc)) - first[seg_doc]
        seg_len = np.minimum(self.body, lengths[seg_doc] - k * self.body)
        stream = self._stream(ids, starts, seg_len, docs[seg_doc])
        size = (seg_len + 1).tolist()
        cap = self.body + 1
        block = np.empty(len(size), dtype=np.int64)
        offset = np.empty(len(size), dtype=np.int64)
        carried = len(self.carry[0])
        b, fill = 0, carried
        for i, s in enumerate(size):
            if fill + s > cap:
                b, fill = b + 1, 0
            block[i], offset[i] = b, fill
            fill += s
        # Every position of the stream: its segment's block and offset plus its rank inside.
        seg_of = np.repeat(np.arange(len(size)), seg_len + 1)
        rank = np.arange(len(seg_of)) - np.repeat(np.cumsum(seg_len + 1) - seg_len - 1,
                                                  seg_len + 1)
        pos = block[seg_of] * self.L + 1 + offset[seg_of] + rank
        grid = self._empty(b + 1)
        for g, c, s in zip(grid, self.carry, stream):
            g[0, 1:1 + carried] = c  # the block left open by the previous batch
            g.reshape(-1)[pos] = s
        # The last block stays open: its content is carried into the next batch.
        self.carry = tuple(g[-1, 1:1 + fill].copy() for g in grid)
        if b == 0:
            return None
        ids, starts, special, document = (g[:-1] for g in grid)
        ids[:, 0], document[:, 0] = self.cls, document[:, 1]
        return self._columns(ids, starts, special, document)

    def _columns(self, ids, starts, special, document) -> dict:
        """Named int columns of finished blocks; document ids counted from 0 in each block."""
        self.blocks += len(ids)
        attention = document >= 0
        local = np.where(attention, document - document[:, :1], -1)
        return {"input_ids": ids, "word_start": starts.astype(np.int8),
                "special_tokens_mask": special.astype(np.int8),
                "attention_mask": attention.astype(np.int8), "document_ids": local}


def pack(dataset: Dataset, tokenizer: PreTrainedTokenizerFast, max_seq_length: int,
         num_proc: int | None = None, respect_document_boundaries: bool = False,
         path: str | Path | None = None, batch_bytes: int = BATCH_BYTES,
         progress: str | None = None) -> Dataset:
    """Tokenize `dataset["text"]` and pack it into fixed-length blocks (see module docstring).

    With `path`, blocks are written to that Arrow file as they are made and the returned
    Dataset is memory-mapped from it, so memory holds one batch of documents at a time;
    without, the blocks are kept in memory. `progress`: the label of a progress bar (documents
    and blocks so far) on stderr; None for none.
    """
    check_sequence_length(tokenizer, max_seq_length)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls is None or sep is None or pad is None:
        raise UserError("packing needs a tokenizer with cls, sep and pad tokens")
    packer = BlockPacker(max_seq_length, cls, sep, pad, respect_document_boundaries)
    writer = ArrowWriter(path=str(path), features=FEATURES) if path is not None else None
    tables = []

    def emit(columns: dict | None) -> None:
        if columns is not None:
            (writer.write_table if writer is not None else tables.append)(_to_table(columns))

    scratch = Path(path).parent if path is not None else None  # for the workers' encodings
    bar = tqdm(total=len(dataset), unit="doc", desc=progress, disable=progress is None)
    try:
        for ids, starts, lengths in encoded_batches(dataset, tokenizer, num_proc, batch_bytes,
                                                    scratch):
            emit(packer.add(ids, starts, lengths))
            bar.update(len(lengths))
            bar.set_postfix(blocks=f"{packer.blocks:,}", refresh=False)
        emit(packer.finish())
    finally:
        bar.close()
        if writer is not None:
            writer.finalize()
    if not packer.blocks:
        raise UserError(f"nothing to pack: the {len(dataset)} documents encode to no token")
    if path is not None:
        return Dataset.from_file(str(path))
    # A random fingerprint: hashing the whole table (the default) costs ~3 % of packing, and
    # the blocks are cached on disk under our own key (prepare_blocks), not by datasets.
    return Dataset(pa.concat_tables(tables), fingerprint=generate_random_fingerprint())


def _to_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """An Arrow table of list columns built straight from 2-D numpy arrays (no Python lists)."""
    arrays = []
    for name, grid in columns.items():
        n, L = grid.shape
        values = pa.array(np.ascontiguousarray(grid, dtype=TYPES[name]).reshape(-1))
        offsets = pa.array(np.arange(0, (n + 1) * L, L, dtype=np.int32))
        arrays.append(pa.ListArray.from_arrays(offsets, values))
    return pa.table(arrays, names=list(columns)).cast(FEATURES.arrow_schema)


PACKING_VERSION = "v4"
"""Bumped when packing changes what it writes, so old block caches are not reused."""


def prepare_blocks(corpus, tokenizer: PreTrainedTokenizerFast, config: PackingConfig,
                   corpus_key: str, cache_dir: str | Path,
                   processes: Processes | None = None) -> tuple[Dataset, Dataset]:
    """Train and validation blocks of the corpus (a DatasetDict), packed once and cached in
    `cache_dir`, keyed by the corpus fingerprint, the tokenizer and the packing settings."""
    tokenizer_key = digest(json.loads(tokenizer.backend_tokenizer.to_str()))
    key = digest({"corpus": corpus_key, "tok": tokenizer_key, "len": config.max_seq_length,
                  "packing": PACKING_VERSION, "respect": config.respect_document_boundaries})

    def build(tmp: Path) -> None:
        for split in ("train", "validation"):  # written as packed: memory holds one batch
            pack(corpus[split], tokenizer, config.max_seq_length, config.num_proc,
                 respect_document_boundaries=config.respect_document_boundaries,
                 path=tmp / f"{split}.arrow", progress=f"pack {split}")

    return load_cached(cache_dir, key, build, lambda folder: (
        load_blocks(folder / "train.arrow"), load_blocks(folder / "validation.arrow")),
        processes=processes)


def load_blocks(path: str | Path) -> Dataset:
    """Packed blocks written by prepare_blocks (an Arrow file, memory-mapped)."""
    return Dataset.from_file(str(path))
