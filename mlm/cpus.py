"""CPU threads that respect the CPUs this process may use, and share them when others run.

torch sizes its intra-op pool from the machine's cores, not from the CPU affinity mask or the
cgroup quota a container or a scheduler gives the process; and its OpenMP threads spin while
they wait. Two runs on one 2-core machine then fight for the cores and both collapse (pretraining
was measured at 1/50 of its speed alone). Here the pool is sized from what the process may use,
and idle threads sleep after a short spin (GOMP_SPINCOUNT, set in `mlm/__init__.py` before torch
loads its OpenMP runtime).
"""
from __future__ import annotations

import math
import os
from pathlib import Path


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
