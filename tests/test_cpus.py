"""Threads sized from the CPUs a process may use (affinity, cgroup quota, launcher's share)."""
import os
import subprocess
import sys

from mlm.cpus import available_cpus, cgroup_cpu_limit, default_threads
from tests.conftest import REPO


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_threads_follow_affinity_and_the_launchers_share(monkeypatch):
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_threads() == max(1, available_cpus() // 2)
    # A process pinned to one CPU (taskset) gets one thread, whatever the machine's core count.
    res = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                          "from mlm.cpus import set_torch_threads; print(set_torch_threads(None))"],
                         capture_output=True, text=True, cwd=REPO,
                         env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"


def test_importing_mlm_first_bounds_openmp_spinning():
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    res = subprocess.run([sys.executable, "-c", "import mlm, os; print(os.environ['GOMP_SPINCOUNT'])"],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert res.stdout.strip() == "10000"


def test_two_launched_processes_split_the_cpus():
    """Under a launcher that started 2 processes here, each takes half of the CPUs (torch alone
    would give each all of them)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["LOCAL_WORLD_SIZE"] = "2"
    res = subprocess.run([sys.executable, "-c",
                          "from mlm.cpus import set_torch_threads; print(set_torch_threads(None))"],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) == max(1, available_cpus() // 2)


def test_auto_precision_follows_the_measured_bf16_speed():
    """`auto` is bf16 on a CPU exactly where bf16 matrix products measure at least
    BF16_MIN_SPEEDUP times float32's; explicit choices pass through on any device."""
    from mlm.cpus import BF16_MIN_SPEEDUP, cpu_bf16_speedup, resolve_precision

    speedup = cpu_bf16_speedup()
    assert speedup == cpu_bf16_speedup()  # measured once per process
    assert resolve_precision("auto", "cpu") == ("bf16" if speedup >= BF16_MIN_SPEEDUP else "no")
    assert [resolve_precision(p, d) for p, d in (("bf16", "cpu"), ("no", "cuda"), ("fp16", "cuda"))] \
        == ["bf16", "no", "fp16"]
    assert resolve_precision("auto", "mps") == "no"


def test_the_precision_probe_leaves_torchs_random_numbers_alone():
    """The bf16 probe runs the first time a run asks for `auto`, after that run was seeded: it
    must not draw from torch's global generator, or the first run of a process gets other
    dropout masks than the same run later in the process (a 0.04 macro-F1 swing on one seed)."""
    import torch

    from mlm.cpus import cpu_bf16_speedup

    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert cpu_bf16_speedup.__wrapped__(size=64, seconds=0.001) > 0  # uncached: really measures
    assert torch.equal(torch.get_rng_state(), state)
