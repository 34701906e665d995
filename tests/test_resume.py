"""Checkpoints and exact resume: a run killed with SIGKILL and resumed ends where an
uninterrupted one does; a changed recipe is refused."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlm.errors import UserError
from mlm.recipe import load_recipe
from tests.conftest import REPO

FP32 = dict(mixed_precision="no", max_steps=24, eval_steps=8, logging_steps=4, save_steps=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _val_losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]


@pytest.mark.parametrize("objective", ["mlm", "rtd"])
def test_sigkill_then_resume_matches_uninterrupted(tiny_recipe, tmp_path, objective):
    from mlm.pretrain import pretrain

    model = {"objective": objective}
    path = tiny_recipe(model, **FP32, output_dir=str(tmp_path / "straight"))
    straight = pretrain(load_recipe(path))
    expected = _val_losses(straight)

    path = tiny_recipe(model, **FP32, output_dir=str(tmp_path / "killed"))
    # Same data: share the cached corpus, tokenizer and blocks (tokenizer training is not
    # bit-reproducible across processes: the trainer breaks frequency ties arbitrarily).
    shutil.copytree(straight / "cache", tmp_path / "killed" / "cache")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "train_mlm.py"), "--recipe", str(path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpts.glob("step-*/training_state/progress.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # (a no-op if it already ended)
    proc.wait()
    done = sorted(ckpts.glob("step-*"))
    assert done, "no checkpoint was written before the kill"
    killed_at = json.loads((done[-1] / "training_state" / "progress.json").read_text())
    assert killed_at["progress"]["step"] < 24
    recipe = load_recipe(path)
    recipe.training.resume = True
    resumed = pretrain(recipe)
    got = _val_losses(resumed)
    assert [s for s, _ in got] == [s for s, _ in expected] == [0, 8, 16, 24]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], abs=1e-6)


def test_resume_refuses_changed_recipe(tiny_recipe, tmp_path):
    from mlm.pretrain import pretrain

    path = tiny_recipe(mixed_precision="no", max_steps=4, save_steps=4, eval_steps=4)
    pretrain(load_recipe(path))
    recipe = load_recipe(path)
    recipe.training.resume = True
    recipe.training.learning_rate = 1e-4
    with pytest.raises(UserError, match="training.learning_rate"):
        pretrain(recipe)
    # a budget below the checkpoint's step is refused, and the finished run is left as it was
    out = Path(recipe.training.output_dir)
    summary = (out / "run_summary.json").read_bytes()
    recipe = load_recipe(path)
    recipe.training.resume, recipe.training.max_steps = True, 2
    with pytest.raises(UserError, match="at step 4, past --max_steps 2"):
        pretrain(recipe)
    assert (out / "run_summary.json").read_bytes() == summary


def test_resume_from_an_earlier_checkpoint_drops_the_later_ones(tiny_recipe, tmp_path, capsys):
    """Going back to step 4 abandons step 8: a later `--resume` must not return to it; a
    metrics row cut short by a crash does not stop the resume."""
    from mlm.pretrain import pretrain

    path = tiny_recipe(**{**FP32, "max_steps": 8})
    out = pretrain(load_recipe(path))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004", "step-00000008"]
    abandoned = (ckpts / "step-00000008" / "training_state" / "progress.json").stat().st_mtime_ns
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 9, "loss"')  # the power went off mid-row
    recipe = load_recipe(path)
    recipe.training.resume_from_checkpoint = str(ckpts / "step-00000004")
    capsys.readouterr()
    pretrain(recipe)
    assert "step-00000008: it lies after the resumed step" in capsys.readouterr().out
    again = (ckpts / "step-00000008" / "training_state" / "progress.json").stat().st_mtime_ns
    assert again > abandoned  # written anew by the resumed run
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 8


@pytest.mark.parametrize("objective", ["mlm", "rtd"])
def test_two_processes_match_one_with_double_accumulation(tiny_recipe, tmp_path, objective):
    """DDP on 2 CPU processes vs 1 process with gradient_accumulation_steps=2.

    (`accelerate launch --cpu --num_processes 2` starts one process unless mpirun is set up;
    `--multi_gpu`, as in configs/accelerate/ddp_cpu.yaml, on a machine without GPUs starts 2
    gloo processes, Accelerate's MULTI_CPU.)"""
    common = dict(mixed_precision="no", max_steps=10, eval_steps=5, logging_steps=5,
                  per_device_train_batch_size=8)
    # Loopback only: gloo otherwise binds to whatever the hostname resolves to, which on some
    # sandboxes is an address no peer can reach, and the rendezvous waits forever.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    model = {"objective": objective}
    one = tiny_recipe(model, **common, gradient_accumulation_steps=2, output_dir=str(tmp_path / "one"))
    subprocess.run([sys.executable, str(REPO / "train_mlm.py"), "--recipe", str(one)],
                   env=env, check=True, capture_output=True, timeout=240)
    # save_minutes that is always due: each rank's clock says so at other steps, and a save is
    # collective, so the ranks must agree on when (a rank saving alone would wait forever).
    two = tiny_recipe(model, **common, gradient_accumulation_steps=1, save_minutes=1e-6,
                      output_dir=str(tmp_path / "two"))
    shutil.copytree(tmp_path / "one" / "cache", tmp_path / "two" / "cache")
    # the config the README lists for this (configs/accelerate/ddp_cpu.yaml)
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(REPO / "configs" / "accelerate" / "ddp_cpu.yaml"),
                          "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
                          str(REPO / "train_mlm.py"), "--recipe", str(two)],
                         env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "run_summary.json").read_text())
    assert summary["hardware"].startswith("2 process"), summary["hardware"]
    assert summary["distributed_type"] == "MULTI_CPU"
    assert (tmp_path / "two" / "checkpoints" / "step-00000010").is_dir()  # time-based saves ran
    a, b = _val_losses(tmp_path / "one"), _val_losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [0, 5, 10]
    # Same batches, same masks, gradients averaged the same way: equal up to float reduction order.
    assert [v for _, v in b] == pytest.approx([v for _, v in a], abs=2e-3)


def test_sigterm_saves_exits_143_and_resume_keeps_step0_loss(tiny_recipe, tmp_path):
    """SIGTERM: a checkpoint, exit code 143 (128 + 15, not 2: no user mistake), one line; after
    --resume the summary's initial validation loss is the run's step-0 loss."""
    path = tiny_recipe(**{**FP32, "max_steps": 2000}, output_dir=str(tmp_path / "run"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "train_mlm.py"), "--recipe", str(path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or
                                      "train_loss" not in metrics.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped: SIGTERM at step" in err and "Traceback" not in err
    assert "Writing model shards" not in err and "Removed shared tensor" not in err  # quiet saves
    assert list((tmp_path / "run" / "checkpoints").glob("step-*/training_state/progress.json"))
    step0 = _val_losses(tmp_path / "run")[0]
    from mlm.pretrain import pretrain

    recipe = load_recipe(path)
    recipe.training.resume = True
    recipe.training.max_steps = 40
    out = pretrain(recipe)
    summary = json.loads((out / "run_summary.json").read_text())
    assert step0[0] == 0 and summary["initial_val_loss"] == pytest.approx(step0[1], abs=1e-9)


def test_processes_of_a_launch_share_the_main_process_precision(tmp_path):
    """`auto` on a CPU is decided by timing matrix products; under `accelerate launch` only the
    main process times them and the others take its answer, so no two processes autocast
    differently (each timing its own could land on both sides of the threshold)."""
    script = tmp_path / "agree.py"
    script.write_text(
        "import json, sys\n"
        "from accelerate import PartialState\n"
        "from mlm.cpus import cpu_bf16_speedup\n"
        "from mlm.pretrain import _agreed_precision\n"
        "precision = _agreed_precision('auto', 'cpu')\n"
        "state = PartialState()\n"
        "out = {'precision': precision, 'probes': cpu_bf16_speedup.cache_info().misses,\n"
        "       'processes': state.num_processes}\n"
        "(__import__('pathlib').Path(sys.argv[1]) / f'{state.process_index}.json')"
        ".write_text(json.dumps(out))\n"
        # leave the group together, as a run does: a process that exits while gloo's threads
        # still talk to the other may abort ("terminate called without an active exception")
        "state.wait_for_everyone()\n"
        "state.destroy_process_group()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                          "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                          "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
                          "--dynamo_backend", "no", str(script), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    main, other = (json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1))
    assert main["processes"] == other["processes"] == 2
    assert main["probes"] == 1 and other["probes"] == 0  # only the main process measured
    assert other["precision"] == main["precision"] in ("no", "bf16")
