"""FSDP (version 2) on 2 CPU processes: same losses as one process, a complete saved model,
and an exact resume from a sharded checkpoint."""
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


def _fsdp(recipe):
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / "fsdp_cpu.yaml"), "--main_process_ip", "127.0.0.1",
         "--main_process_port", str(_free_port()), str(REPO / "train_mlm.py"), "--recipe",
         str(recipe)], env=ENV, capture_output=True, text=True, timeout=240)


def test_fsdp_two_cpu_processes_match_one_save_and_resume(tiny_recipe, tmp_path):
    one = tiny_recipe(**COMMON, gradient_accumulation_steps=2, output_dir=str(tmp_path / "one"))
    subprocess.run([sys.executable, str(REPO / "train_mlm.py"), "--recipe", str(one)], env=ENV,
                   check=True, capture_output=True, timeout=240)
    two = tiny_recipe(**COMMON, output_dir=str(tmp_path / "fsdp"))
    shutil.copytree(tmp_path / "one" / "cache", tmp_path / "fsdp" / "cache")
    res = _fsdp(two)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _val_losses(tmp_path / "one"), _val_losses(tmp_path / "fsdp")
    assert [s for s, _ in b] == [0, 5, 10]
    # Sharded evaluation and training see the same batches and masks as one process.
    assert [v for _, v in b] == pytest.approx([v for _, v in a], abs=2e-3)

    from transformers import AutoModelForMaskedLM, pipeline

    # The saved folder is the full model (gathered from the shards), not one rank's half.
    full = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "one"))
    sharded = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "fsdp"))
    assert sum(p.numel() for p in sharded.parameters()) == sum(p.numel() for p in full.parameters())
    fill = pipeline("fill-mask", model=str(tmp_path / "fsdp"))
    assert len(fill(f"the company said {fill.tokenizer.mask_token} on monday")) == 5

    # Resume from the sharded checkpoint of step 5: the end matches the uninterrupted run.
    final = json.loads((tmp_path / "fsdp" / "run_summary.json").read_text())["final_val_loss"]
    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / "step-00000010")
    resumed = tiny_recipe(**COMMON, output_dir=str(tmp_path / "fsdp"), resume=True)
    res = _fsdp(resumed)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    again = json.loads((tmp_path / "fsdp" / "run_summary.json").read_text())["final_val_loss"]
    assert again == pytest.approx(final, abs=1e-5)
