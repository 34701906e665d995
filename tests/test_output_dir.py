"""The output folder: one run at a time, no stale results under a new model, resume from a
named checkpoint."""
import os
import signal
import subprocess
import sys
import time

import pytest

from mlm.errors import UserError
from mlm.recipe import load_recipe
from mlm.report import CARD_MARKER
from tests.conftest import REPO


def test_second_run_on_the_same_folder_is_refused(tiny_recipe, tmp_path):
    path = tiny_recipe(max_steps=5000, save_minutes=None, output_dir=str(tmp_path / "run"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, str(REPO / "train_mlm.py"), "--recipe", str(path)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "run" / ".lock"
        deadline = time.time() + 60
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        second = subprocess.run([sys.executable, str(REPO / "train_mlm.py"), "--recipe", str(path)],
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"is in use by another run (pid {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_other_model_needs_overwrite_which_clears_stale_results(tiny_recipe, tmp_path):
    from mlm.pretrain import pretrain

    out = tmp_path / "run"
    pretrain(load_recipe(tiny_recipe(max_steps=4, eval_steps=4, output_dir=str(out))))
    (out / "finetune").mkdir()
    (out / "finetune" / "results.json").write_text("{}")  # scores of this first model
    (out / "README.md").write_text(f"{CARD_MARKER}\ncard of the first model")
    (out / "notes.txt").write_text("the user's own file")
    other = load_recipe(tiny_recipe(max_steps=4, eval_steps=4, output_dir=str(out)))
    other.model.model_family = "bert"
    with pytest.raises(UserError, match="model.model_family: 'modernbert' -> 'bert'.*--overwrite_output_dir"):
        pretrain(other)
    assert (out / "finetune" / "results.json").exists()  # refused before touching anything
    other.training.overwrite_output_dir = True
    source = other.sources[0].path
    other.sources[0].path = str(tmp_path / "missing")  # a run that cannot start ...
    with pytest.raises(UserError, match="missing"):
        pretrain(other)
    assert (out / "finetune" / "results.json").exists()  # ... leaves the old model's results
    assert (out / "README.md").exists() and (out / "metrics.jsonl").exists()
    other.sources[0].path = source
    pretrain(other)
    assert not (out / "finetune").exists() and not (out / "README.md").exists()
    assert (out / "notes.txt").exists()  # not ours: kept
    assert '"model_family": "bert"' in (out / "run_summary.json").read_text().replace("'", '"')


def test_another_precision_is_not_another_model(tiny_recipe, tmp_path):
    """A folder trained in bf16 (the old default) is retrained under `auto` without
    --overwrite_output_dir: autocast precision changes the speed, not the model."""
    from mlm.pretrain import pretrain

    out = tmp_path / "run"
    pretrain(load_recipe(tiny_recipe(max_steps=2, eval_steps=2, output_dir=str(out),
                                     mixed_precision="bf16")))
    pretrain(load_recipe(tiny_recipe(max_steps=2, eval_steps=2, output_dir=str(out))))
    assert "mixed_precision: auto" in (out / "recipe.resolved.yaml").read_text()


def test_resume_from_a_named_checkpoint(tiny_recipe, tmp_path):
    from mlm.pretrain import pretrain

    out = tmp_path / "run"
    pretrain(load_recipe(tiny_recipe(max_steps=8, eval_steps=4, save_steps=4,
                                     output_dir=str(out))))
    recipe = load_recipe(tiny_recipe(max_steps=8, eval_steps=4, save_steps=4,
                                     output_dir=str(out)))
    recipe.training.resume_from_checkpoint = str(out / "checkpoints" / "step-00000004")
    pretrain(recipe)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert sum('"val_loss"' in r and '"step": 8' in r for r in rows) == 1  # not logged twice
    recipe.training.resume_from_checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a complete checkpoint"):
        pretrain(recipe)
