"""Packing stage: tokenize documents and pack them into blocks of exactly max_seq_length.

Each block is `[CLS] doc … [SEP] doc … [SEP]`, documents separated by [SEP] and running across
block boundaries, so the training stream holds no padding. Alongside `input_ids` every token
carries `word_start` (it begins a word: whole-word and span masking need it),
`special_tokens_mask` and `document_ids` (for document-aware attention).
"""
from __future__ import annotations

import numpy as np
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from mlm.errors import UserError


def _tokenize(batch: dict, tokenizer: PreTrainedTokenizerFast) -> dict:
    # The Rust tokenizer directly: no per-call Python wrapping, no length warnings.
    encodings = tokenizer.backend_tokenizer.encode_batch(batch["text"], add_special_tokens=False)
    starts = []
    for enc in encodings:
        words = enc.word_ids
        starts.append([w is not None and (j == 0 or words[j - 1] != w) for j, w in enumerate(words)])
    return {"ids": [enc.ids for enc in encodings], "starts": starts}


def pack(dataset: Dataset, tokenizer: PreTrainedTokenizerFast, max_seq_length: int,
         num_proc: int | None = None) -> Dataset:
    """Tokenize `dataset["text"]` and pack it into fixed-length blocks (see module docstring)."""
    limit = getattr(tokenizer, "model_max_length", None) or 10**9
    if max_seq_length < 8 or max_seq_length > max(limit, 8):
        raise UserError(f"max_seq_length {max_seq_length} is outside [8, {limit}]")
    tokenized = dataset.map(
        _tokenize, batched=True, batch_size=1000, num_proc=num_proc if num_proc and num_proc > 1
        else None, remove_columns=dataset.column_names, fn_kwargs={"tokenizer": tokenizer},
        desc="tokenize",
    )
    ids_col = tokenized.data.column("ids").combine_chunks()
    starts_col = tokenized.data.column("starts").combine_chunks()
    lengths = np.diff(ids_col.offsets.to_numpy())
    ids = ids_col.flatten().to_numpy().astype(np.int64)
    starts = starts_col.flatten().to_numpy(zero_copy_only=False).astype(bool)
    n_docs = len(lengths)
    sep, cls = tokenizer.sep_token_id, tokenizer.cls_token_id
    # Stream = doc0 SEP doc1 SEP ...; each block = CLS + (L-2) stream tokens + SEP.
    doc_of_token = np.repeat(np.arange(n_docs), lengths)
    is_sep = np.zeros(len(ids) + n_docs, dtype=bool)
    sep_pos = np.cumsum(lengths + 1) - 1
    is_sep[sep_pos] = True
    stream = np.empty(len(is_sep), dtype=np.int64)
    stream[~is_sep] = ids
    stream[is_sep] = sep
    stream_start = np.zeros(len(is_sep), dtype=bool)
    stream_start[~is_sep] = starts
    stream_doc = np.empty(len(is_sep), dtype=np.int64)
    stream_doc[~is_sep] = doc_of_token
    stream_doc[is_sep] = np.arange(n_docs)
    body = max_seq_length - 2
    n_blocks = max(1, len(stream) // body)
    used = min(len(stream), n_blocks * body)
    if used < n_blocks * body:  # corpus smaller than one block: one shorter block
        body = used
    shape = (n_blocks, body)
    block_ids = stream[: n_blocks * body].reshape(shape)
    block_start = stream_start[: n_blocks * body].reshape(shape)
    block_doc = stream_doc[: n_blocks * body].reshape(shape)
    cls_col = np.full((n_blocks, 1), cls)
    sep_col = np.full((n_blocks, 1), sep)
    input_ids = np.concatenate([cls_col, block_ids, sep_col], axis=1)
    word_start = np.concatenate(
        [np.zeros((n_blocks, 1), bool), block_start, np.zeros((n_blocks, 1), bool)], axis=1)
    special = np.concatenate(
        [np.ones((n_blocks, 1), bool), block_ids == sep, np.ones((n_blocks, 1), bool)], axis=1)
    docs = np.concatenate([block_doc[:, :1], block_doc, block_doc[:, -1:]], axis=1)
    docs = docs - docs[:, :1]
    return Dataset.from_dict({
        "input_ids": input_ids.astype(np.int32).tolist(),
        "word_start": word_start.astype(np.int8).tolist(),
        "special_tokens_mask": special.astype(np.int8).tolist(),
        "document_ids": docs.astype(np.int32).tolist(),
    })
