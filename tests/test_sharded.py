"""FSDP (version 2) and DeepSpeed ZeRO-2 on 2 CPU processes: really sharded (not DDP), the
same losses as one process, a complete saved model, and an exact resume from a sharded
checkpoint."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_resume import _free_port, _val_losses

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
       "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
COMMON = dict(mixed_precision="no", max_steps=10, eval_steps=5, logging_steps=5, save_steps=5,
              per_device_train_batch_size=8)


CONFIGS = {"FSDP": "fsdp_cpu.yaml", "DEEPSPEED": "deepspeed_zero2_cpu.yaml"}


def _launch(kind, recipe):
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / CONFIGS[kind]), "--main_process_ip", "127.0.0.1",
         "--main_process_port", str(_free_port()), str(REPO / "train_mlm.py"), "--recipe",
         str(recipe)], env=ENV, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_sharded_two_cpu_processes_match_one_save_and_resume(kind, tiny_recipe, tmp_path):
    one = tiny_recipe(**COMMON, gradient_accumulation_steps=2, output_dir=str(tmp_path / "one"))
    subprocess.run([sys.executable, str(REPO / "train_mlm.py"), "--recipe", str(one)], env=ENV,
                   check=True, capture_output=True, timeout=240)
    two = tiny_recipe(**COMMON, output_dir=str(tmp_path / "fsdp"))
    shutil.copytree(tmp_path / "one" / "cache", tmp_path / "fsdp" / "cache")
    res = _launch(kind, two)
    assert res.returncode == 0, res.stderr[-3000:]
    # Accelerate itself runs FSDP and DeepSpeed only on accelerators (plain DDP on a CPU):
    # the run must really have been sharded
    summary = json.loads((tmp_path / "fsdp" / "run_summary.json").read_text())
    assert summary["distributed_type"] == kind
    state = tmp_path / "fsdp" / "checkpoints" / "step-00000010" / "training_state"
    assert (state / "pytorch_model").is_dir() if kind == "DEEPSPEED" else \
        (state / "pytorch_model_fsdp_0").is_dir()
    a, b = _val_losses(tmp_path / "one"), _val_losses(tmp_path / "fsdp")
    assert [s for s, _ in b] == [0, 5, 10]
    # Sharded evaluation and training see the same batches and masks as one process.
    assert [v for _, v in b] == pytest.approx([v for _, v in a], abs=2e-3)

    from transformers import AutoModelForMaskedLM, pipeline

    # The saved folder is the full model (gathered from the shards), not one rank's half.
    full = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "one"))
    sharded = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "fsdp"))
    assert sum(p.numel() for p in sharded.parameters()) == sum(p.numel() for p in full.parameters())
    # the same tensors on disk: the decoder tied to the embeddings is not written twice
    from safetensors import safe_open

    def keys(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return set(f.keys())

    assert keys(tmp_path / "fsdp") == keys(tmp_path / "one")
    fill = pipeline("fill-mask", model=str(tmp_path / "fsdp"))
    assert len(fill(f"the company said {fill.tokenizer.mask_token} on monday")) == 5

    # Resume from the sharded checkpoint of step 5: the end matches the uninterrupted run.
    final = summary["final_val_loss"]
    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / "step-00000010")
    resumed = tiny_recipe(**COMMON, output_dir=str(tmp_path / "fsdp"), resume=True)
    res = _launch(kind, resumed)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    again = json.loads((tmp_path / "fsdp" / "run_summary.json").read_text())["final_val_loss"]
    assert again == pytest.approx(final, abs=1e-5)


def test_settings_a_sharded_launch_cannot_honour_are_refused_before_any_work(tiny_recipe, tmp_path):
    # DeepSpeed reduces gradients into its partitions during backward: no head-only warm-up
    recipe = tiny_recipe(**COMMON, head_warmup_ratio=0.1, output_dir=str(tmp_path / "ds"))
    res = _launch("DEEPSPEED", recipe)
    assert res.returncode != 0
    assert "error: head_warmup_ratio=0.1 does not work under DeepSpeed" in res.stderr
    assert "(exitcode: 2)" in res.stderr  # each process exits 2; the launcher adds its own report
    assert not (tmp_path / "ds" / "cache").exists()
    # A launch config's accumulation would silently replace the recipe's: refused (exit 2)
    recipe = tiny_recipe(**COMMON, gradient_accumulation_steps=2, output_dir=str(tmp_path / "acc"))
    res = subprocess.run([sys.executable, str(REPO / "train_mlm.py"), "--recipe", str(recipe)],
                         env={**ENV, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"},
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip() == ("error: the accelerate config sets gradient_accumulation_steps=1 "
                                  "but the recipe 2: leave it out of the accelerate config")
