"""Sequence classification: long texts as windows, multi-label and sentence-pair tasks, on real
BBC News articles."""
from __future__ import annotations

import json

import pytest
import torch

from mlm.finetune import DataConfig, FinetuneConfig, ProtocolConfig, TaskConfig, TrainConfig, finetune
from mlm.finetune.classification import encode, per_document, window_sampler
from mlm.finetune.classification import run as run_classification
from mlm.finetune.data import TextExample, load_task
from tests.finetune.conftest import SPLITS, run_config, save_tiny_bert, write_csv


def test_long_texts_are_cut_into_windows_and_averaged(tokenizer, bbc_dir):
    """A long article becomes consecutive windows that together hold its first tokens in order;
    a text's prediction is the mean of its windows' logits."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(bbc_dir.rglob("*.txt"))[:5]]
    examples = [TextExample(text=t, pair=None, labels=["x"], where=f"doc{i}") for i, t in enumerate(texts)]
    examples.append(TextExample(text="", pair=None, labels=["x"], where="empty"))
    feats = encode(tokenizer, examples, ["x"], False, 64, max_windows=3)
    plain = encode(tokenizer, examples, ["x"], False, 64)
    assert [f["doc"] for f in plain] == list(range(6))
    for i, text in enumerate(texts):
        ws = [f["input_ids"] for f in feats if f["doc"] == i]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ws) == min(3, -(-len(ids) // 62)) and all(len(w) <= 64 for w in ws)
        assert [t for w in ws for t in w[1:-1]] == ids[: 62 * len(ws)]
        assert ws[0] == plain[i]["input_ids"]
    assert [f["input_ids"] for f in feats if f["doc"] == 5] == [[tokenizer.cls_token_id,
                                                                 tokenizer.sep_token_id]]
    logits = [torch.tensor([float(k), 1.0]) for k in range(len(feats))]
    merged, firsts = per_document(logits, feats)
    assert len(merged) == 6 and [f["doc"] for f in firsts] == list(range(6))
    n0 = sum(f["doc"] == 0 for f in feats)
    assert torch.allclose(merged[0], torch.tensor([(n0 - 1) / 2, 1.0]))


def test_windows_per_epoch_draws_a_fresh_sample_of_each_texts_windows(tokenizer, bbc_dir):
    """windows_per_epoch=k: every epoch trains on exactly min(k, windows) windows of each text,
    none twice, drawn anew each epoch (so over epochs every window is used), the same for the same
    seed; a run then takes that many fewer steps, and still predicts from all the windows."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(bbc_dir.rglob("*.txt"))[:12]]
    examples = [TextExample(text=t, pair=None, labels=["x"], where=f"d{i}") for i, t in enumerate(texts)]
    examples.append(TextExample(text="short", pair=None, labels=["x"], where="short"))
    feats = encode(tokenizer, examples, ["x"], False, 32, max_windows=4)
    windows = {d: sum(f["doc"] == d for f in feats) for d in range(len(examples))}
    assert windows[12] == 1 and sum(n == 4 for n in windows.values()) >= 10
    assert window_sampler(feats, None) is None and window_sampler(feats, 4) is None
    draw = window_sampler(feats, 2)
    gen = torch.Generator().manual_seed(0)
    epochs = [draw(gen) for _ in range(8)]
    for chosen in epochs:
        assert len(chosen) == len(set(chosen)) == sum(min(2, n) for n in windows.values())
        assert all(sum(feats[i]["doc"] == d for i in chosen) == min(2, n) for d, n in windows.items())
    assert len({tuple(c) for c in epochs}) > 1 and set().union(*epochs) == set(range(len(feats)))
    assert draw(torch.Generator().manual_seed(0)) == epochs[0]


def test_a_run_with_one_window_per_epoch_takes_fewer_steps(tiny_model, bbc_csv):
    """Real fine-tuning with max_windows 3: one sampled window per text and epoch means one step
    per batch of texts, and the test set is still scored per text."""
    data = load_task(DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                                test_file=str(bbc_csv["test"])))
    steps = {}
    for k in (None, 1):
        cfg = TrainConfig(num_train_epochs=2, max_length=32, max_windows=3, windows_per_epoch=k,
                          per_device_train_batch_size=8, early_stopping_patience=0, mixed_precision="no")
        out = run_classification(str(tiny_model), tiny_model, data.train, data, 0, cfg, "macro_f1")
        steps[k] = out["fit"].steps
        assert out["fit"].epochs == 2 and len(out["predictions"]) == len(data.test)
    n_feats = len(encode(out["tokenizer"], data.train, data.label_names, False, 32, max_windows=3))
    assert steps[1] == 2 * -(-len(data.train) // 8) < steps[None] == 2 * -(-n_feats // 8)


@pytest.fixture(scope="module")
def bbc_multi_and_pairs(tmp_path_factory, bbc_dir) -> dict:
    """Multi-label (topic + whether the title mentions a number) and sentence-pair (title, body)
    CSV files of real BBC articles."""
    folder = tmp_path_factory.mktemp("bbc_multi")
    files = {}
    for split, (lo, hi) in SPLITS.items():
        for kind in ("multi", "pair"):
            rows = []
            for topic in ("business", "sports", "tech"):
                for doc in sorted((bbc_dir / topic).glob("*.txt"))[lo:hi]:
                    title, _, body = doc.read_text(errors="replace").partition("\n")
                    tags = [topic] + (["number"] if any(c.isdigit() for c in title) else [])
                    rows.append([title, body[:300], "|".join(tags) if kind == "multi" else topic])
            files[f"{kind}_{split}"] = write_csv(folder / f"{kind}_{split}.csv", ["title", "body", "label"], rows)
    return files


@pytest.mark.parametrize("kind", ["multi", "pair"])
def test_multi_label_and_sentence_pair_runs(tmp_path, tiny_model, tokenizer, bbc_multi_and_pairs, kind):
    """Multi-label: multi-hot targets, subset accuracy and micro-F1, list predictions, a saved
    model whose config says multi-label; sentence pairs: both texts reach the model (token type
    ids, which the MiniLM tokenizer gives) and TF-IDF reads both. Both run through the same
    protocol as single-label tasks."""
    f = bbc_multi_and_pairs
    model = tiny_model if kind == "multi" else save_tiny_bert(tmp_path / "minilm_bert", tokenizer)
    data = DataConfig(train_file=str(f[f"{kind}_train"]), validation_file=str(f[f"{kind}_validation"]),
                      test_file=str(f[f"{kind}_test"]), multi_label=kind == "multi",
                      label_delimiter="|" if kind == "multi" else None,
                      text_column="title" if kind == "pair" else "body",
                      text_pair_column="body" if kind == "pair" else None)
    train = TrainConfig(num_train_epochs=2, max_length=48, learning_rate=1e-3, mixed_precision="no")
    task = TaskConfig(name=kind, data=data, training=train, protocol=ProtocolConfig(seeds=1))
    loaded = load_task(data)
    if kind == "multi":
        assert set(loaded.label_names) == {"business", "sports", "tech", "number"}
        assert any(len(ex.labels) == 2 for ex in loaded.train)
    else:
        feats = encode(tokenizer, loaded.train[:2], loaded.label_names, False, 48)
        assert all(1 in ft["token_type_ids"] for ft in feats)  # the second text is there
    out = tmp_path / "out"
    res = finetune(FinetuneConfig(models=[str(model), "tfidf-logreg"], tasks=[task], run=run_config(out)))
    summary = res["tasks"][0]["summary"]
    for name in (str(model), "tfidf-logreg"):
        assert next(iter(summary[name].values()))["accuracy"]["n"] == 1
    assert summary["tfidf-logreg"][next(iter(summary["tfidf-logreg"]))]["micro_f1"]["mean"] > 0.4
    [folder] = [p for p in (out / "models" / kind).iterdir() if model.name in p.name]
    preds = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 18 and all(isinstance(p["prediction"], list) for p in preds)
    # The reported micro-F1 is the one the saved predictions give (scikit-learn, label sets).
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    binarize = MultiLabelBinarizer(classes=loaded.label_names).fit([])
    truth, guess = (binarize.transform([p[k] for p in preds]) for k in ("label", "prediction"))
    [run] = [r for r in res["tasks"][0]["runs"] if r["model"] == str(model)]
    assert f1_score(truth, guess, average="micro") == pytest.approx(run["test"]["micro_f1"])
    if kind == "multi":
        from transformers import AutoConfig

        assert AutoConfig.from_pretrained(str(folder)).problem_type == "multi_label_classification"
