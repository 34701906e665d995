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

Speed: documents are encoded a batch at a time by the Rust tokenizer on all its threads
(`num_proc` 1), or in `num_proc` worker processes; everything after encoding is numpy on whole
arrays, and blocks go to Arrow without a Python list per token.
"""
from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
from datasets import Dataset
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from mlm.errors import UserError
from mlm.tokenizer import raw_backend

COLUMNS = ["input_ids", "word_start", "special_tokens_mask", "attention_mask", "document_ids"]


def _encode(texts: list[str], backend: Tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, word-start flags and per-document lengths of `texts`, as flat arrays."""
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int32,
                      count=total)
    # None (a token outside any word) becomes NaN, which differs from everything.
    words = np.array(list(itertools.chain.from_iterable(e.word_ids for e in encodings)),
                     dtype=np.float64).reshape(-1)
    starts = np.ones(total, dtype=bool)
    starts[1:] = words[1:] != words[:-1]
    doc_first = np.cumsum(lengths) - lengths
    starts[doc_first[lengths > 0]] = True
    starts &= ~np.isnan(words)
    return ids, starts, lengths


def _encode_map(batch: dict, tokenizer_json: str) -> dict:
    backend = Tokenizer.from_str(tokenizer_json)
    ids, starts, lengths = _encode(batch["text"], backend)
    bounds = np.cumsum(lengths)[:-1]
    return {"ids": np.split(ids, bounds), "starts": np.split(starts, bounds)}


def tokenize_corpus(dataset: Dataset, tokenizer: PreTrainedTokenizerFast,
                    num_proc: int | None = None, batch_size: int = 4096):
    """All documents of `dataset["text"]` encoded: (ids, word_start, lengths) flat arrays."""
    backend = raw_backend(tokenizer)
    if num_proc and num_proc > 1:
        mapped = dataset.select_columns(["text"]).map(
            _encode_map, batched=True, batch_size=batch_size, num_proc=num_proc,
            remove_columns=["text"], fn_kwargs={"tokenizer_json": backend.to_str()},
            desc="tokenize",
        )
        ids_col = mapped.data.column("ids").combine_chunks()
        starts_col = mapped.data.column("starts").combine_chunks()
        lengths = np.diff(ids_col.offsets.to_numpy()).astype(np.int64)
        return (ids_col.flatten().to_numpy().astype(np.int32),
                starts_col.flatten().to_numpy(zero_copy_only=False).astype(bool), lengths)
    parts = [_encode(batch["text"], backend)
             for batch in dataset.select_columns(["text"]).iter(batch_size=batch_size)]
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, np.int64)
    return tuple(np.concatenate(p) for p in zip(*parts))


def _segments(lengths: np.ndarray, body: int):
    """Where each document's tokens go: (segment of each document's first piece, segment
    lengths in tokens, block and offset of each segment). A segment is at most `body` tokens
    of one document followed by one [SEP]."""
    pieces = np.maximum(1, -(-lengths // body))
    seg_doc = np.repeat(np.arange(len(lengths)), pieces)
    first = np.cumsum(pieces) - pieces
    k = np.arange(len(seg_doc)) - first[seg_doc]
    seg_len = np.minimum(body, lengths[seg_doc] - k * body)
    # Next fit: a segment (tokens + its [SEP]) that does not fit starts a new block.
    size = (seg_len + 1).tolist()
    cap = body + 1
    block = np.empty(len(size), dtype=np.int64)
    offset = np.empty(len(size), dtype=np.int64)
    b, fill = 0, 0
    for i, s in enumerate(size):
        if fill + s > cap:
            b, fill = b + 1, 0
        block[i], offset[i] = b, fill
        fill += s
    return first, seg_len, block, offset


def pack(dataset: Dataset, tokenizer: PreTrainedTokenizerFast, max_seq_length: int,
         num_proc: int | None = None, respect_document_boundaries: bool = False) -> Dataset:
    """Tokenize `dataset["text"]` and pack it into fixed-length blocks (see module docstring)."""
    limit = getattr(tokenizer, "model_max_length", None) or 10**9
    if max_seq_length < 8 or max_seq_length > max(limit, 8):
        raise UserError(f"max_seq_length {max_seq_length} is outside [8, {limit}] "
                        f"(the tokenizer's model_max_length)")
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls is None or sep is None or pad is None:
        raise UserError("packing needs a tokenizer with cls, sep and pad tokens")
    ids, starts, lengths = tokenize_corpus(dataset, tokenizer, num_proc)
    keep = lengths > 0  # documents that encode to nothing are skipped
    lengths = lengths[keep]
    if not len(lengths):
        raise UserError(f"nothing to pack: the {len(dataset)} documents encode to no token")
    L, body = max_seq_length, max_seq_length - 2
    n_docs = len(lengths)
    doc_of_token = np.repeat(np.arange(n_docs), lengths)
    pos_in_doc = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    if respect_document_boundaries:
        first, seg_len, seg_block, seg_off = _segments(lengths, body)
        seg = first[doc_of_token] + pos_in_doc // body
        tok_pos = seg_block[seg] * L + 1 + seg_off[seg] + pos_in_doc % body
        sep_pos = seg_block * L + 1 + seg_off + seg_len
        sep_doc = np.repeat(np.arange(n_docs), np.diff(np.append(first, len(seg_len))))
        n_blocks = int(seg_block[-1]) + 1
        closing = np.zeros(n_blocks, dtype=bool)  # each block already ends with a doc's [SEP]
    else:
        # Stream = doc0 SEP doc1 SEP ...; block b = CLS + stream[b*body:(b+1)*body] + SEP.
        stream_pos = np.arange(len(ids)) + doc_of_token
        sep_stream = np.cumsum(lengths + 1) - 1
        n_stream = len(ids) + n_docs
        n_blocks = -(-n_stream // body)
        tok_pos = (stream_pos // body) * L + 1 + stream_pos % body
        sep_pos = (sep_stream // body) * L + 1 + sep_stream % body
        sep_doc = np.arange(n_docs)
        # A full block gets a closing [SEP]; the last, partial one already ends with its
        # document's [SEP] and is padded after it.
        closing = np.ones(n_blocks, dtype=bool)
        closing[-1] = n_stream % body == 0
    size = n_blocks * L
    input_ids = np.full(size, pad, dtype=np.int32)
    word_start = np.zeros(size, dtype=np.int8)
    special = np.ones(size, dtype=np.int8)
    document = np.full(size, -1, dtype=np.int64)
    input_ids[tok_pos] = ids
    word_start[tok_pos] = starts
    special[tok_pos] = 0
    document[tok_pos] = doc_of_token
    input_ids[sep_pos] = sep
    document[sep_pos] = sep_doc
    input_ids, document = input_ids.reshape(n_blocks, L), document.reshape(n_blocks, L)
    input_ids[:, 0] = cls
    document[:, 0] = document[:, 1]
    input_ids[closing, -1] = sep
    document[closing, -1] = document[closing, -2]
    attention = document >= 0
    local = np.where(attention, document - document[:, :1], -1)
    return _to_dataset({
        "input_ids": input_ids, "word_start": word_start.reshape(n_blocks, L),
        "special_tokens_mask": special.reshape(n_blocks, L), "attention_mask": attention,
        "document_ids": local,
    }, {"input_ids": np.int32, "word_start": np.int8, "special_tokens_mask": np.int8,
        "attention_mask": np.int8, "document_ids": np.int32})


def _to_dataset(columns: dict[str, np.ndarray], types: dict) -> Dataset:
    """A Dataset of list columns built straight from 2-D numpy arrays (no Python lists)."""
    arrays = []
    for name, grid in columns.items():
        n, L = grid.shape
        values = pa.array(np.ascontiguousarray(grid, dtype=types[name]).reshape(-1))
        offsets = pa.array(np.arange(0, (n + 1) * L, L, dtype=np.int32))
        arrays.append(pa.ListArray.from_arrays(offsets, values))
    return Dataset(pa.table(arrays, names=list(columns)))
