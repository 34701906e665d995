"""CPU threads that respect the CPUs this process may use, and share them when others run; and
the autocast precision that is fastest on this device.

torch sizes its intra-op pool from the machine's cores, not from the CPU affinity mask or the
cgroup quota a container or a scheduler gives the process; and its OpenMP threads spin while
they wait. Two runs on one 2-core machine then fight for the cores and both collapse (pretraining
was measured at 1/50 of its speed alone). Here the pool is sized from what the process may use,
and idle threads sleep after a short spin (GOMP_SPINCOUNT, set in `mlm/__init__.py` before torch
loads its OpenMP runtime).

bf16 autocast is not always faster on a CPU: where bf16 matrix products run natively (AVX-512
BF16 on the AMD EPYC, AMX) they are about twice float32's speed, but on a Xeon whose bf16
products are not (AVX-512 BF16 listed, no AMX) they ran at half, and pretraining with autocast
at 0.46-0.74x float32's tokens/s (bench/RESULTS.md, "bf16 or float32 on a CPU"). So the default
precision, `auto`, times both on this CPU once per process and picks the faster.
"""
from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path

BF16_MIN_SPEEDUP = 1.1
"""`auto` precision on a CPU: bf16 autocast only where bf16 matrix products run at least this
many times float32's speed (measured: about 2 with native bf16, 0.5 without)."""


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), if any."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return cpus


def default_threads() -> int:
    """Intra-op threads for this process: its CPUs, shared among the processes that an
    `accelerate launch` on CPU started on this machine (LOCAL_WORLD_SIZE)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cpus() // max(1, local))


def set_torch_threads(requested: int | None) -> int:
    """Set torch's intra-op threads: `requested`, or else `default_threads()` unless
    OMP_NUM_THREADS is set (torch already follows it); returns the number in use."""
    import torch

    if requested:
        torch.set_num_threads(requested)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()


@functools.cache
def cpu_bf16_speedup(size: int = 512, seconds: float = 0.05) -> float:
    """Throughput of bf16 over float32 `size`-square matrix products on this CPU, with torch's
    threads as set when first called (best of three short rounds each; cached per process).
    Its random matrices come from a generator of its own: drawn from torch's global one, they
    shifted the dropout masks of whichever run first asked for `auto` precision after seeding,
    so a fine-tuning run's score depended on whether it was the first in its process."""
    import torch

    rates = []
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        a, b = (torch.randn(size, size, generator=gen).to(dtype) for _ in range(2))
        a @ b  # warm-up: kernel selection, first-touch memory
        best = 0.0
        for _ in range(3):
            start, n = time.perf_counter(), 0
            while (elapsed := time.perf_counter() - start) < seconds:
                a @ b
                n += 1
            best = max(best, n / elapsed)
        rates.append(best)
    return rates[1] / rates[0]


def resolve_precision(setting: str, device_type: str) -> str:
    """The autocast precision a run uses on `device_type`: the setting as given, and for `auto`
    bf16 on a GPU with native bf16 and on a CPU where `cpu_bf16_speedup()` reaches
    BF16_MIN_SPEEDUP, else "no" (float32)."""
    if setting != "auto":
        return setting
    import torch

    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
    if device_type == "cpu":
        return "bf16" if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "no"
    return "no"


def tell_deepspeed_cpu() -> None:
    """For a run on the CPU: DeepSpeed, which Accelerate imports whenever it unwraps a model
    (when installed), looks for a GPU at import and prints a warning to stdout when it finds
    none. Naming its CPU accelerator up front (its own DS_ACCELERATOR setting) is silent and
    picks what it would have fallen back to; a value the user set is kept."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
