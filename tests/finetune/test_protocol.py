"""The protocol: every model × size × seed on the same nested subsets, intervals, report, saved
models; and how a winner is declared."""
from __future__ import annotations

import json

from mlm.finetune import DataConfig, FinetuneConfig, ProtocolConfig, TaskConfig, TrainConfig, finetune
from tests.finetune.conftest import run_config


def test_protocol_two_models_two_sizes_two_seeds(tmp_path, tiny_model, bbc_csv):
    data = DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                      test_file=str(bbc_csv["test"]))
    train = TrainConfig(num_train_epochs=2, max_length=48, learning_rate=1e-3, mixed_precision="no")
    task = TaskConfig(name="bbc3", data=data, training=train, protocol=ProtocolConfig(train_sizes="12,all", seeds=2))
    out = tmp_path / "out"
    res = finetune(FinetuneConfig(models=[str(tiny_model), "random-init"], tasks=[task], run=run_config(out)))
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


def test_checkpoint_learning_rate_goes_to_models_from_a_general_checkpoint(tmp_path, tiny_model, bbc_csv):
    """A folder mlm pretrained from scratch (run_summary.json, no base_model) and random-init
    train at learning_rate; a folder without a run summary (a general checkpoint) and one whose
    summary names a base_model (continued pretraining) at checkpoint_learning_rate."""
    import shutil

    import pytest

    from mlm.errors import UserError

    folders = {}
    for name, summary in (("scratch", {"base_model": None}), ("dapt", {"base_model": "some/checkpoint"})):
        folders[name] = shutil.copytree(tiny_model, tmp_path / name)
        (folders[name] / "run_summary.json").write_text(json.dumps(summary))
    data = DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                      test_file=str(bbc_csv["test"]))
    train = TrainConfig(num_train_epochs=1, max_length=32, learning_rate=1e-3, checkpoint_learning_rate=2e-5,
                        mixed_precision="no")
    task = TaskConfig(name="bbc3", data=data, training=train, protocol=ProtocolConfig(train_sizes="12", seeds=1))
    models = [str(folders["scratch"]), "random-init", str(tiny_model), str(folders["dapt"])]
    out = tmp_path / "out"
    out.mkdir()
    (out / "learning_curve_old-task.png").write_bytes(b"a figure of an earlier run")
    res = finetune(FinetuneConfig(models=models, tasks=[task], run=run_config(out, save_models="none")))
    assert not (out / "learning_curve_old-task.png").exists()  # not beside this run's table
    rates = {r["model"]: r["learning_rate"] for r in res["tasks"][0]["runs"]}
    assert rates == {str(folders["scratch"]): 1e-3, "random-init": 1e-3, str(tiny_model): 2e-5,
                     str(folders["dapt"]): 2e-5}
    assert f"{tiny_model} 2e-05" in (out / "report.md").read_text()

    (folders["dapt"] / "run_summary.json").write_text("[1, 2")  # refused before any run
    with pytest.raises(UserError, match="dapt/run_summary.json: not a readable run summary"):
        finetune(FinetuneConfig(models=models, tasks=[task], run=run_config(tmp_path / "out2")))
    assert not (tmp_path / "out2" / "results.json").exists()


def test_learning_rate_defaults_follow_the_model_origin_and_a_set_rate_wins():
    """No rate set: from-scratch encoders (and random-init) at SCRATCH_LEARNING_RATE, models from
    a general checkpoint at CHECKPOINT_LEARNING_RATE. A learning_rate the user sets alone applies
    to every model (as --learning_rate does in transformers); checkpoint_learning_rate, when set,
    wins for the checkpoints only."""
    from mlm.finetune.config import CHECKPOINT_LEARNING_RATE, SCRATCH_LEARNING_RATE

    assert SCRATCH_LEARNING_RATE != CHECKPOINT_LEARNING_RATE
    cases = {(None, None): (SCRATCH_LEARNING_RATE, CHECKPOINT_LEARNING_RATE),
             (3e-3, None): (3e-3, 3e-3),
             (None, 2e-5): (SCRATCH_LEARNING_RATE, 2e-5),
             (3e-3, 2e-5): (3e-3, 2e-5)}
    for (lr, ckpt), expected in cases.items():
        cfg = TrainConfig(learning_rate=lr, checkpoint_learning_rate=ckpt)
        assert (cfg.rate_for(from_checkpoint=False), cfg.rate_for(from_checkpoint=True)) == expected, (lr, ckpt)
