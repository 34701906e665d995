"""Fine-tuning runs where Accelerate places it: model, batches and autocast on one device, and
runs shared out over processes under `accelerate launch`."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import DataCollatorWithPadding

from mlm.finetune import TrainConfig
from mlm.finetune.engine import fit, load_model, predict_logits, run_device
from tests.conftest import REPO

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_model_batches_and_autocast_share_the_device(tiny_model, device):
    """Every forward pass of fit and predict_logits sees its inputs on the model's device and
    bf16 autocast on for that device type (the old code autocast for CUDA while the model sat
    on the CPU)."""
    cfg = TrainConfig(num_train_epochs=1, per_device_train_batch_size=4, mixed_precision="bf16")
    model, tok = load_model(str(tiny_model), tiny_model, "classification", ["a", "b"], 0, cfg,
                            device=torch.device(device))
    seen = []

    def check(module, args, kwargs):
        dev = next(module.parameters()).device
        seen.append((dev.type, {v.device.type for v in kwargs.values() if torch.is_tensor(v)},
                     torch.is_autocast_enabled(dev.type)))

    model.register_forward_pre_hook(check, with_kwargs=True)
    feats = [{"input_ids": tok(t)["input_ids"], "labels": i % 2}
             for i, t in enumerate(["Shares rose.", "The match ended.", "Rates fell.", "A goal."])]
    collator = DataCollatorWithPadding(tok)
    fit(model, feats, lambda: {"macro_f1": 0.0, "loss": 1.0}, "macro_f1", cfg, 0, collator)
    predict_logits(model, feats, 2, collator, "bf16")
    assert len(seen) == 1 + 2  # one training step, two prediction batches
    assert all(s == (device, {device}, True) for s in seen), seen


def test_auto_precision_autocasts_as_resolved_on_this_cpu():
    """Fine-tuning's default `auto` turns bf16 autocast on exactly where `resolve_precision`
    chooses bf16 for the device (on this CPU: by its measured bf16 speed)."""
    from mlm.cpus import resolve_precision
    from mlm.finetune.engine import autocast

    assert TrainConfig().mixed_precision == "auto"
    with autocast("auto", torch.device("cpu")):
        out = torch.ones(4, 4) @ torch.ones(4, 4)
    assert (out.dtype == torch.bfloat16) == (resolve_precision("auto", "cpu") == "bf16")
    with autocast("no", torch.device("cpu")):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32


def test_default_device_is_accelerates(tiny_model):
    model, _ = load_model(str(tiny_model), tiny_model, "classification", ["a", "b"], 0,
                          TrainConfig())
    assert next(model.parameters()).device == run_device()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert run_device().type == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_runs(tmp_path, tiny_model, bbc_csv):
    """`accelerate launch` with 2 processes: each takes half of the runs, results.json holds
    all of them in order, one report, and the best model of each spec ends up in place."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--main_process_ip", "127.0.0.1",
         "--main_process_port", str(_free_port()), "--dynamo_backend", "no",
         str(REPO / "finetune.py"), "--model", str(tiny_model), "--model", "random-init",
         "--train_file", str(bbc_csv["train"]), "--validation_file", str(bbc_csv["validation"]),
         "--test_file", str(bbc_csv["test"]), "--train_sizes", "12", "--seeds", "2",
         "--num_train_epochs", "1", "--max_length", "32", "--mixed_precision", "no",
         "--output_dir", str(out)],
        env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[process 0]" in res.stderr and "[process 1]" in res.stderr
    assert res.stdout.count("report:") == 1  # one process reports
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2
    runs = results["tasks"][0]["runs"]
    assert [(r["seed"], r["model"]) for r in runs] == [
        (42, str(tiny_model)), (42, "random-init"), (43, str(tiny_model)), (43, "random-init")]
    models = out / "models" / "train"  # the task is named after the train file
    assert not list(models.glob(".rank*"))  # staging folders merged and removed
    kept = sorted(p for p in models.iterdir())
    assert len(kept) == 2 and all((p / "config.json").is_file() for p in kept)
    best = max((r for r in runs if r["model"] == "random-init"),
               key=lambda r: r["validation"]["macro_f1"])
    saved = json.loads((models / "random-init" / "finetune_run.json").read_text())
    assert saved["seed"] == best["seed"]  # the better seed's model, whichever process ran it
    from transformers import pipeline

    for folder in kept:  # saved by whichever process ran the run: complete, stock-loadable
        clf = pipeline("text-classification", model=str(folder))
        assert clf("Shares rose after the results.")[0]["label"] in {"business", "sports", "tech"}


def test_a_half_precision_checkpoint_trains_in_float32(tiny_model, tmp_path):
    """transformers loads a checkpoint in the dtype it was saved in; fine-tuning must not update
    bf16 weights (autocast sets the compute precision, the weights stay float32)."""
    import shutil

    from transformers import AutoModel

    half = tmp_path / "bf16"
    shutil.copytree(tiny_model, half)
    AutoModel.from_pretrained(str(tiny_model), dtype=torch.bfloat16).save_pretrained(str(half))
    assert '"bfloat16"' in (half / "config.json").read_text()
    model, _ = load_model(str(half), half, "classification", ["a", "b"], 0, TrainConfig())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_folder_that_is_not_a_transformers_model_is_refused(tmp_path):
    from mlm.errors import UserError
    from mlm.finetune.engine import check_model_folder

    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(UserError, match="is not a transformers configuration"):
        check_model_folder(str(tmp_path))
