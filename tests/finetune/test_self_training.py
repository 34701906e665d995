"""Self-training: a fine-tuned teacher labels the unlabeled texts, a fresh student learns from the
labeled and the most confident pseudo-labeled texts together; on real BBC articles."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import Counter

import pytest

from mlm.errors import UserError
from mlm.finetune import DataConfig, FinetuneConfig, ProtocolConfig, TaskConfig, TrainConfig, finetune
from mlm.finetune.classification import pseudo_labels, train
from mlm.finetune.classification import run as run_classification
from mlm.finetune.data import load_task
from tests.finetune.conftest import run_config


def _config(**kw) -> TrainConfig:
    settings = dict(num_train_epochs=2, max_length=48, learning_rate=1e-3, mixed_precision="no",
                    early_stopping_patience=0)
    return TrainConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def bbc(bbc_csv):
    return load_task(DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                                test_file=str(bbc_csv["test"])))


def test_the_student_learns_from_the_teachers_most_confident_labels(tiny_model, bbc):
    """9 labeled articles, 39 unlabeled: the teacher is exactly the model a run without
    self-training gives (same scores), the pseudo-labels are the same number per class and the
    most confident of each, and the student (returned, and scored) trained on labeled +
    pseudo-labeled texts for STUDENT_UPDATES times the teacher's budget, at least one pass."""
    from mlm.finetune.classification import STUDENT_UPDATES

    order = sorted(range(len(bbc.train)), key=lambda i: (i % 16, i))  # 3 of each topic first
    labeled = [bbc.train[i] for i in order[:9]]
    unlabeled = [dataclasses.replace(bbc.train[i], labels=[]) for i in order[9:]]
    alone = run_classification(str(tiny_model), tiny_model, labeled, bbc, 0, _config(self_training=False),
                               "macro_f1", unlabeled=unlabeled)
    assert "self_training" not in alone
    cfg = _config(pseudo_label_share=0.5, self_training_keep="student")
    out = run_classification(str(tiny_model), tiny_model, labeled, bbc, 0, cfg, "macro_f1",
                             unlabeled=unlabeled, tfidf_cache={})
    st = out["self_training"]
    assert st["teacher"]["test"] == alone["test"] and st["teacher"]["validation"] == alone["validation"]
    per_class = int(0.5 * 39 / 3)
    assert st["unlabeled"] == st["scored"] == 39
    assert st["pseudo_labels"] == sum(st["pseudo_label_counts"].values())
    assert all(n <= per_class for n in st["pseudo_label_counts"].values()) and st["pseudo_labels"] >= per_class
    assert len(st["pseudo_label_counts"]) >= 2  # not one class alone
    n_train = 9 + st["pseudo_labels"]
    epochs = max(1.0, STUDENT_UPDATES * 2 * 9 / n_train)
    assert st["student_epochs"] == pytest.approx(epochs, abs=1e-3)
    assert out["fit"].steps == math.ceil(epochs * math.ceil(n_train / 16))  # a pass over all of them
    assert len(out["predictions"]) == len(bbc.test)


def test_a_second_round_starts_from_the_first_rounds_student(tiny_model, bbc):
    """self_training_rounds 2: the first round is the one-round run (same student, same
    scores), the second trains another student, which is the one returned; the teacher's
    scores stay those of the model without self-training."""
    order = sorted(range(len(bbc.train)), key=lambda i: (i % 16, i))
    labeled = [bbc.train[i] for i in order[:9]]
    unlabeled = [dataclasses.replace(bbc.train[i], labels=[]) for i in order[9:]]
    runs = [run_classification(str(tiny_model), tiny_model, labeled, bbc, 0,
                               _config(self_training_rounds=n, self_training_keep="student"), "macro_f1",
                               unlabeled=unlabeled,
                               tfidf_cache={}) for n in (1, 2)]
    one, two = (r["self_training"] for r in runs)
    assert len(one["rounds"]) == 1 and len(two["rounds"]) == 2
    assert two["teacher"]["test"] == one["teacher"]["test"] and two["rounds"][0] == one["rounds"][0]
    assert runs[0]["test"] == one["rounds"][0]["test"]
    assert runs[1]["test"] == two["rounds"][1]["test"]
    assert runs[1]["fit"].steps > 0 and len(runs[1]["predictions"]) == len(bbc.test)


def test_a_student_below_its_teacher_on_validation_is_not_kept(tiny_model, bbc):
    """self_training_keep "better": an unlabeled pool of one junk text repeated
    gets one class from the teacher, the student learns to predict it and scores below the
    teacher on validation, so the teacher is returned: its scores, its predictions and exactly
    its weights (those of a run without self-training), with "kept": "teacher". With real
    articles as the pool the run returns whichever the rule picks, and "student" keeps the
    student whatever it scores."""
    import torch

    order = sorted(range(len(bbc.train)), key=lambda i: (i % 16, i))
    labeled = [bbc.train[i] for i in order[:9]]
    cfg = _config(num_train_epochs=8, pseudo_label_share=1.0, pseudo_label_teacher="model",
                  self_training_keep="better")
    alone = run_classification(str(tiny_model), tiny_model, labeled, bbc, 0,
                               dataclasses.replace(cfg, self_training=False), "macro_f1")
    junk = [dataclasses.replace(bbc.train[0], text="zq " * 30, labels=[], where=f"junk:{i}") for i in range(90)]
    out = run_classification(str(tiny_model), tiny_model, labeled, bbc, 0, cfg, "macro_f1", unlabeled=junk)
    st = out["self_training"]
    assert len(st["pseudo_label_counts"]) == 1 and st["pseudo_labels"] == 30
    assert st["rounds"][0]["validation"]["macro_f1"] < st["teacher"]["validation"]["macro_f1"]
    assert st["kept"] == "teacher"
    assert out["test"] == alone["test"] == st["teacher"]["test"] and out["validation"] == alone["validation"]
    assert out["predictions"] == alone["predictions"] and out["fit"].steps == alone["fit"].steps
    theirs = alone["model"].state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in out["model"].state_dict().items())

    unlabeled = [dataclasses.replace(bbc.train[i], labels=[]) for i in order[9:]]
    runs = {keep: run_classification(str(tiny_model), tiny_model, labeled, bbc, 0,
                                     dataclasses.replace(cfg, self_training_keep=keep), "macro_f1",
                                     unlabeled=unlabeled) for keep in ("better", "student")}
    better, student = runs["better"]["self_training"], runs["student"]["self_training"]
    assert better["rounds"] == student["rounds"] and student["kept"] == "student"
    wins = better["rounds"][0]["validation"]["macro_f1"] >= better["teacher"]["validation"]["macro_f1"]
    assert better["kept"] == ("student" if wins else "teacher")
    assert runs["better"]["test"] == (student["rounds"][0] if wins else better["teacher"])["test"]


def test_pseudo_labels_are_balanced_and_the_most_confident_of_each_class(tiny_model, bbc):
    """The model+tfidf teacher on 9 labeled articles: per predicted class at most share x N / C
    texts, taken in order of confidence; their agreement with the hidden true topics is far above
    chance (1/3); the cap max_pseudo_labels holds; labels come only from the teacher."""
    order = sorted(range(len(bbc.train)), key=lambda i: (i % 16, i))
    labeled = [bbc.train[i] for i in order[:9]]
    hidden = [bbc.train[i] for i in order[9:]]
    unlabeled = [dataclasses.replace(ex, labels=[]) for ex in hidden]
    cfg = _config(num_train_epochs=4)
    teacher = train(str(tiny_model), tiny_model, labeled, bbc, 0, cfg, "macro_f1")
    chosen = pseudo_labels(teacher, labeled, unlabeled, bbc, 0, dataclasses.replace(cfg, pseudo_label_share=1.0),
                           "macro_f1", {})
    truth = {ex.where: ex.labels for ex in hidden}
    assert all(ex.labels and ex.where in truth for ex in chosen)
    # the texts' own labels are never read: wrong ones planted in them change nothing
    names = bbc.label_names
    planted = [dataclasses.replace(ex, labels=[names[(names.index(ex.labels[0]) + 1) % 3]]) for ex in hidden]
    again = pseudo_labels(teacher, labeled, planted, bbc, 0, dataclasses.replace(cfg, pseudo_label_share=1.0),
                          "macro_f1", {})
    assert [(ex.where, ex.labels) for ex in again] == [(ex.where, ex.labels) for ex in chosen]
    agree = sum(truth[ex.where] == ex.labels for ex in chosen) / len(chosen)
    assert len(chosen) >= 20 and agree > 0.6, (len(chosen), agree)
    half = pseudo_labels(teacher, labeled, unlabeled, bbc, 0, dataclasses.replace(cfg, pseudo_label_share=0.5),
                         "macro_f1", {})
    counts = Counter(ex.labels[0] for ex in half)
    assert max(counts.values()) <= int(0.5 * 39 / 3)
    # the kept texts of a class are its most confident: a smaller share keeps a subset of them
    assert {ex.where for ex in half} <= {ex.where for ex in chosen}
    capped = pseudo_labels(teacher, labeled, unlabeled, bbc, 0,
                           dataclasses.replace(cfg, pseudo_label_share=1.0, max_pseudo_labels=6), "macro_f1", {})
    assert len(capped) <= 6 and max(Counter(ex.labels[0] for ex in capped).values()) <= 2


def test_the_protocol_self_trains_on_the_pool_outside_the_subset(tmp_path, tiny_model, bbc_csv):
    """Through finetune(): a 12-example subset of a 48-example pool self-trains on the other 36
    plus the unlabeled_file (a line equal to a test text left out), the row records the teacher
    and the pseudo-labels; at `all` there is nothing unlabeled in the pool."""
    rows = [[" ".join(text.split()), label] for text, label in list(csv.reader(bbc_csv["test"].open()))[1:]]
    test = tmp_path / "test.csv"
    with test.open("w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *rows])
    extra = tmp_path / "more.txt"
    extra.write_text(f"A new phone was unveiled at the show.\n\n{rows[0][0]}\nShares fell sharply in Tokyo.\n"
                     f"  {rows[1][0].replace(' ', '  ')}\n")  # a test text with other spacing
    data = DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                      test_file=str(test), unlabeled_file=str(extra))
    loaded = load_task(data)
    texts = [ex.text for ex in loaded.unlabeled]
    assert texts == ["A new phone was unveiled at the show.", "Shares fell sharply in Tokyo."]
    assert [ex.where for ex in loaded.unlabeled] == ["more.txt:1", "more.txt:4"]
    assert all(not ex.labels for ex in loaded.unlabeled)
    task = TaskConfig(name="bbc3", data=data, training=_config(),
                      protocol=ProtocolConfig(train_sizes="12,all", seeds=1))
    res = finetune(FinetuneConfig(models=[str(tiny_model)], tasks=[task], run=run_config(tmp_path / "out")))
    runs = {r["train_size"]: r for r in res["tasks"][0]["runs"]}
    assert runs[12]["self_training"]["unlabeled"] == 36 + len(texts)
    assert runs[12]["self_training"]["pseudo_labels"] > 0
    assert runs[48]["self_training"]["unlabeled"] == len(texts)
    [folder] = (tmp_path / "out" / "models" / "bbc3").iterdir()  # the student of the largest size
    kept = json.loads((folder / "finetune_run.json").read_text())
    assert kept["test"] == runs[48]["test"] and kept["self_training"] == runs[48]["self_training"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["tasks"][0]["runs"][0]["self_training"]["teacher"]["test"].keys() == runs[12]["test"].keys()


def test_a_huge_pool_is_sampled_and_a_model_teacher_alone_works(tiny_model, bbc):
    """More than 20 x max_pseudo_labels unlabeled texts: a seeded sample of that many is scored;
    the `model` teacher (no TF-IDF) labels them too."""
    labeled = bbc.train[:3] + bbc.train[16:19] + bbc.train[32:35]
    unlabeled = [dataclasses.replace(ex, labels=[]) for ex in bbc.train if ex not in labeled] * 3
    cfg = _config(max_pseudo_labels=3, pseudo_label_teacher="model")
    out = run_classification(str(tiny_model), tiny_model, labeled, bbc, 0, cfg, "macro_f1", unlabeled=unlabeled)
    st = out["self_training"]
    assert (st["unlabeled"], st["scored"]) == (117, 60) and 1 <= st["pseudo_labels"] <= 3


def test_unlabeled_file_mistakes_are_refused(tmp_path, bbc_csv):
    base = dict(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                test_file=str(bbc_csv["test"]))
    with pytest.raises(UserError, match="unlabeled data not found"):
        load_task(DataConfig(**base, unlabeled_file=str(tmp_path / "missing.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="empty.txt: no text"):
        load_task(DataConfig(**base, unlabeled_file=str(empty)))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt:2: not UTF-8"):
        load_task(DataConfig(**base, unlabeled_file=str(bad)))
    with pytest.raises(UserError, match="drop it for NER and multi-label tasks"):
        load_task(DataConfig(**base, unlabeled_file=str(empty), multi_label=True, label_delimiter="|"))
    pairs = DataConfig(**base, unlabeled_file=str(empty), text_pair_column="label")
    with pytest.raises(UserError, match="sentence-pair task"):
        load_task(pairs)


def test_settings_self_training_would_ignore_are_refused(tmp_path, tiny_model, bbc_csv):
    """An unlabeled_file with self-training off, or fewer pseudo-labels allowed than classes,
    stop before any run."""
    more = tmp_path / "more.txt"
    more.write_text("Shares fell sharply in Tokyo.\n")
    data = DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                      test_file=str(bbc_csv["test"]), unlabeled_file=str(more))
    for training, match in [(_config(self_training=False), "read only for self-training"),
                            (_config(max_pseudo_labels=2), "below the 3 classes")]:
        task = TaskConfig(name="t", data=data, training=training, protocol=ProtocolConfig(seeds=1))
        with pytest.raises(UserError, match=match):
            finetune(FinetuneConfig(models=[str(tiny_model)], tasks=[task], run=run_config(tmp_path / "o")))
        assert not (tmp_path / "o").exists()
