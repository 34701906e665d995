"""Two pretraining runs at once on one machine: each one's tokens/s as a ratio of running alone.

The demo recipe (ModernBERT mini, batch 8, bf16) for a fixed number of steps, each run a separate
`train_mlm.py` process on the same cached corpus, tokenizer and blocks: first alone, then two
started together. The target is >= 0.4x alone for each (a fair share of the cores is 0.5x).
`--wait_policy active|passive` overrides mlm's default (a short spin, GOMP_SPINCOUNT, then sleep)
with OpenMP threads that spin while idle, or that sleep at once.

    python bench/bench_shared.py [--steps 300] [--wait_policy default|passive|active]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from demo_recipe import demo_recipe  # imports mlm, which sets GOMP_SPINCOUNT (mlm/__init__.py)

ROOT = Path(__file__).resolve().parent.parent


def start(recipe: Path, policy: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    return subprocess.Popen([sys.executable, str(ROOT / "train_mlm.py"), "--recipe", str(recipe)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rate(proc: subprocess.Popen, out: Path) -> float:
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"run {out} failed:\n{err[-2000:]}")
    return json.loads((out / "run_summary.json").read_text())["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--wait_policy", choices=["default", "passive", "active"],
                        default="default")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        prep = demo_recipe(tmp, "prep", 1)
        rate(start(prep, args.wait_policy), tmp / "prep")  # builds the cached data once
        cache = tmp / "prep" / "cache"
        recipes = [demo_recipe(tmp, name, args.steps, cache) for name in ("alone", "a", "b")]
        alone = rate(start(recipes[0], args.wait_policy), tmp / "alone")
        procs = [start(r, args.wait_policy) for r in recipes[1:]]
        both = [rate(p, tmp / name) for p, name in zip(procs, ("a", "b"))]
    policy = args.wait_policy if args.wait_policy != "default" else \
        f"unset, GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
    print(f"\n{os.cpu_count()} CPUs, OMP_WAIT_POLICY {policy}, demo recipe, "
          f"{args.steps} steps")
    print(f"  alone:           {alone:10,.0f} tokens/s")
    for name, value in zip(("a", "b"), both):
        print(f"  concurrent run {name}: {value:10,.0f} tokens/s  ({value / alone:.2f}x alone; "
              "target >= 0.40x)")


if __name__ == "__main__":
    main()
