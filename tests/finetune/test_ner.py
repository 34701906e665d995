"""NER: word-piece alignment, the tokenizer's overflow windows, word-level scoring, and a neural
run on real WNUT-16 tweets that must find entities an all-"O" predictor misses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlm.errors import UserError
from mlm.finetune import DataConfig, FinetuneConfig, ProtocolConfig, TaskConfig, TrainConfig, finetune
from mlm.finetune.data import NerExample
from mlm.finetune.ner import encode, word_predictions
from tests.finetune.conftest import run_config, tiny_bert, write_jsonl


def tag_names(*sentences: NerExample) -> list[str]:
    kinds = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ["O"] + [f"{p}-{k}" for k in kinds for p in "BI"]


def test_label_alignment_first_subtoken_or_all(tokenizer):
    names = ["O", "B-person", "I-person"]
    ex = NerExample(["Unbelievably", "Schwarzenegger", "spoke"], ["O", "B-person", "O"])
    first = encode(tokenizer, [ex], names, 64, 8)[0]
    pieces = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in ex.tokens]
    assert len(pieces[1]) > 1  # the name splits into several sub-tokens
    assert first["input_ids"] == [tokenizer.cls_token_id, *sum(pieces, []), tokenizer.sep_token_id]
    expected = [-100] + [0] + [-100] * (len(pieces[0]) - 1) + [1] + [-100] * (len(pieces[1]) - 1) \
        + [0] + [-100] * (len(pieces[2]) - 1) + [-100]
    assert first["labels"] == expected
    every = encode(tokenizer, [ex], names, 64, 8, label_all_tokens=True)[0]
    assert every["labels"][1 + len(pieces[0]) + 1: 1 + len(pieces[0]) + len(pieces[1])] == \
        [2] * (len(pieces[1]) - 1)  # continuation of B-person trained as I-person


def test_sliding_window_scores_every_word_once(tokenizer, wnut):
    """Every word is scored once, at its first sub-token, from the window where it has the most
    context; a word the tokenizer drops (a zero-width space) is read as [UNK], not lost."""
    long = NerExample(sum((s.tokens for s in wnut[:12]), []), sum((s.tags for s in wnut[:12]), []))
    short = NerExample(["Hello", "\u200b", *wnut[20].tokens], ["O", "O", *wnut[20].tags])
    names = tag_names(long, short)
    feats = encode(tokenizer, [long, short], names, 32, 8)
    assert len(long.tokens) > 100 and len(feats) > 5
    assert all(len(f["input_ids"]) <= 32 for f in feats)
    scored = [(s, w) for f in feats for _, s, w in f["score"]]
    assert sorted(scored) == [(0, w) for w in range(len(long.tokens))] + [(1, w) for w in range(len(short.tokens))]
    for f in feats:  # the scored position holds the word's first sub-token
        for pos, s, w in f["score"]:
            word = (long, short)[s].tokens[w]
            assert f["input_ids"][pos] == (tokenizer(word, add_special_tokens=False)["input_ids"] or
                                           [tokenizer.unk_token_id])[0]
    # the owning window is the one where the word has the most context on both sides
    windows = [f for f in feats if any(s == 0 for _, s, _ in f["score"])]
    middles = [min(pos - 1, len(f["input_ids"]) - 2 - pos) for f in windows for pos, _, _ in f["score"]]
    assert max(middles) >= 8  # the overlap lets a word near one edge be scored from the next window
    # logits that put the gold tag at every labeled position -> a perfect word-level round trip
    logits = []
    for f in feats:
        lg = torch.zeros(len(f["input_ids"]), len(names))
        for pos, lab in enumerate(f["labels"]):
            if lab >= 0:
                lg[pos, lab] = 1.0
        logits.append(lg)
    assert word_predictions(logits, feats, [long, short], names) == [long.tags, short.tags]


def test_window_settings_that_leave_no_room_are_user_errors(tokenizer):
    ex = NerExample(["a", "b"], ["O", "O"])
    with pytest.raises(UserError, match=r"doc_stride \(6\) must be smaller than the window \(6 sub-tokens\)"):
        encode(tokenizer, [ex], ["O"], 8, 6)
    with pytest.raises(UserError, match="ner_max_length 3 leaves no room for words"):
        encode(tokenizer, [ex], ["O"], 3, 0)


@pytest.fixture(scope="module")
def wnut_files(tmp_path_factory, wnut) -> dict:
    """800 training, 100 validation and 300 test tweets as JSONL files."""
    folder = tmp_path_factory.mktemp("wnut")
    parts = {"train": wnut[:800], "validation": wnut[800:900], "test": wnut[900:1200]}
    return {split: write_jsonl(folder / f"{split}.jsonl", part) for split, part in parts.items()}


def test_neural_ner_and_baseline_beat_all_o(tmp_path, wnut, wnut_files):
    """A tiny BERT (its cased tokenizer learned the training tweets) fine-tuned on 800 real
    tweets, and the TF-IDF baseline, both find entities on 300 test tweets: entity F1 above 0.1,
    where all-"O" scores 0 (the baseline also beats all-"O"'s word accuracy). The reported
    scores are the ones the saved predictions give, and the saved model loads in a pipeline."""
    from seqeval.metrics import accuracy_score, f1_score
    from transformers import pipeline

    model = str(tiny_bert(tmp_path / "tiny_cased", [" ".join(s.tokens) for s in wnut[:800]], lowercase=False))
    data = DataConfig(task="ner", train_file=str(wnut_files["train"]), test_file=str(wnut_files["test"]),
                      validation_file=str(wnut_files["validation"]))
    train = TrainConfig(num_train_epochs=8, learning_rate=3e-3, ner_max_length=48, doc_stride=8,
                        mixed_precision="no")
    task = TaskConfig(name="wnut", data=data, training=train, protocol=ProtocolConfig(seeds=1))
    res = finetune(FinetuneConfig(models=[model, "tfidf-logreg"], tasks=[task], run=run_config(tmp_path / "out")))
    runs = {r["model"]: r for r in res["tasks"][0]["runs"]}
    tags = [s.tags for s in wnut[900:1200]]
    all_o = accuracy_score(tags, [["O"] * len(t) for t in tags])
    assert runs[model]["test"]["f1"] > 0.1, runs[model]["test"]
    assert runs["tfidf-logreg"]["test"]["f1"] > 0.1 and runs["tfidf-logreg"]["test"]["accuracy"] > all_o

    folder = Path(res["tasks"][0]["saved_models"][model])
    assert folder.parent == tmp_path / "out" / "models" / "wnut"
    preds = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 300 and all(len(p["prediction"]) == len(p["tokens"]) for p in preds)
    gold, guess = [p["tags"] for p in preds], [p["prediction"] for p in preds]
    assert f1_score(gold, guess) == pytest.approx(runs[model]["test"]["f1"])  # seqeval, CoNLL way
    assert accuracy_score(gold, guess) == pytest.approx(runs[model]["test"]["accuracy"])
    ner = pipeline("token-classification", model=str(folder), aggregation_strategy="simple")
    found = ner("Justin Bieber flew to New York with his new iPhone")
    assert all(e["entity_group"] in {n[2:] for n in tag_names(*wnut[:800]) if n != "O"} for e in found)
