"""MLM against replaced-token detection (ELECTRA) at equal wall-clock, from scratch (issue #15).

For each task of the development suite: the task's from-scratch recipe is pretrained twice
through the real `train_mlm.py`, once per objective, for the same minutes (`--minutes`, the
demo's 15 by default; no step budget), one run at a time. Both encoders are then fine-tuned
through the same protocol (data_recipes/benchmarks/suite.yaml: sizes, seeds, settings) beside
TF-IDF + LR, and one table prints, per task and size, each objective's mean with its 95 %
interval and RTD - MLM paired over seeds; then the pretraining speed of each objective
(tokens/s, MFU) and the mean over tasks.

    python bench/bench_objectives.py                          # all four suite tasks
    python bench/bench_objectives.py --tasks bbc-topics --seeds 3 --sizes 100
    python bench/bench_objectives.py --rtd_args "--mlm_probability 0.15"   # an RTD variant

Pretrained models: runs/objectives/<recipe>-<objective>[-<tag>], named for the task's
from-scratch recipe (WNUT-16 reuses the BBC demo's); a folder that already holds a finished run
(run_summary.json) is reused. Results: runs/objectives/finetune/<task>/ and
runs/objectives/objectives.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from suite import ROUTES, task_config  # noqa: E402

from mlm.finetune.protocol import finetune  # noqa: E402
from mlm.report import paired_difference  # noqa: E402

OUT = ROOT / "runs" / "objectives"


def scratch_recipe(task: str) -> str:
    return next(r for name, r in ROUTES[task].items() if name.startswith("scratch"))


def pretrain(task: str, objective: str, minutes: float, extra: str, tag: str) -> Path:
    recipe = scratch_recipe(task)  # WNUT-16 shares the BBC demo's, so its runs are reused
    name = f"{Path(recipe).stem}-{objective}" + (f"-{tag}" if tag else "")
    out = OUT / name
    if (out / "run_summary.json").is_file():
        print(f"[objectives] reusing {out}", flush=True)
        return out
    cmd = [sys.executable, str(ROOT / "train_mlm.py"), "--recipe", str(ROOT / recipe),
           "--objective", objective, "--output_dir", str(out), "--max_minutes", str(minutes),
           "--max_steps", "none", "--max_tokens", "none", "--save_minutes", "none",
           "--overwrite_output_dir", *shlex.split(extra)]
    print(f"[objectives] {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"[objectives] {out.name}: {time.time() - t0:.0f} s", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(ROUTES), help="comma-separated suite tasks")
    p.add_argument("--minutes", type=float, default=15.0, help="pretraining minutes per objective")
    p.add_argument("--seeds", type=int, default=None, help="seeds per size (default: the suite's, 5)")
    p.add_argument("--sizes", default=None, help="train sizes (default: the suite's)")
    p.add_argument("--mlm_args", default="", help="extra train_mlm.py flags of the MLM runs")
    p.add_argument("--rtd_args", default="", help="extra train_mlm.py flags of the RTD runs")
    p.add_argument("--tag", default="", help="suffix of the RTD output folders (for variants)")
    args = p.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    lines = ["| task | labels | MLM | RTD | RTD - MLM [95 %] | TF-IDF |", "|---|---|---|---|---|---|"]
    speed, gaps = [], []
    for task in tasks:
        mlm = pretrain(task, "mlm", args.minutes, args.mlm_args, "")
        rtd = pretrain(task, "rtd", args.minutes, args.rtd_args, args.tag)
        for name, folder in (("MLM", mlm), ("RTD", rtd)):
            s = json.loads((folder / "run_summary.json").read_text())
            speed.append(f"| {task} | {name} | {s['steps']:,} | {s['tokens_per_s']:,.0f} | "
                         f"{100 * (s['mfu'] or 0):.1f} % | {s['final_val_loss']:.3f} |")
        models = [str(mlm.relative_to(ROOT)), str(rtd.relative_to(ROOT)), "tfidf-logreg"]
        folder = OUT / "finetune" / (task + (f"-{args.tag}" if args.tag else ""))
        section = finetune(task_config(task, models, folder, args.seeds, args.sizes))["tasks"][0]
        metric = section["metric"]
        for size in section["sizes"]:
            stats = {m: section["summary"][m][str(size)][metric] for m in section["models"]}
            a, b, tfidf = (stats[m] for m in section["models"])
            diff = paired_difference(b["values"], a["values"])
            gaps.append(diff["mean"])
            lo, hi = diff["ci95"]
            lines.append(f"| {task} ({metric}) | {size} | {a['mean']:.3f} ± {a['std']:.3f} | "
                         f"{b['mean']:.3f} ± {b['std']:.3f} | {diff['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                         f"{tfidf['mean']:.3f} |")
    table = "\n".join(lines + ["", f"mean RTD - MLM over {len(gaps)} task x size cells: "
                                   f"{sum(gaps) / max(1, len(gaps)):+.4f}", "",
                               "| task | objective | steps | tokens/s | MFU | final val loss |",
                               "|---|---|---:|---:|---:|---:|", *speed])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("objectives" + (f"-{args.tag}" if args.tag else "") + ".md")).write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
