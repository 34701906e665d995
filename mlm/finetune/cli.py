"""`finetune.py` / `mlm-finetune`: flags generated from mlm.finetune.config, plus --model and --suite.

With no data flags and no --suite it runs the demo suite (data_recipes/benchmarks/demo.yaml).
A user mistake prints one line on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mlm.config import add_dataclass_arguments, apply_overrides, from_dict, load_yaml
from mlm.errors import ArgumentParser, UserError, command
from mlm.finetune.config import DataConfig, FinetuneArgs, FinetuneConfig, TaskConfig

DEMO_SUITE = Path(__file__).resolve().parent.parent.parent / "data_recipes" / "benchmarks" / "demo.yaml"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="finetune.py",
        description="Fine-tune encoders on labeled classification or NER data over several train sizes "
                    "and seeds, and compare them (mean ± std, 95 % intervals, learning curves). "
                    "With no arguments: the demo suite (BBC News topics + WNUT-16) with runs/demo, "
                    "random-init and tfidf-logreg.",
    )
    p.add_argument("--model", action="append", default=None, metavar="PATH|random-init|tfidf-logreg",
                   help="A model to compare (repeat the flag for several): a local save_pretrained folder, "
                        "random-init (the first folder's architecture, untrained) or tfidf-logreg "
                        "(default: runs/demo, random-init, tfidf-logreg)")
    p.add_argument("--suite", default=None, metavar="YAML",
                   help="Benchmark suite: a YAML file with a list of tasks (see data_recipes/benchmarks/demo.yaml)")
    p.add_argument("--task_name", default=None, help="Name of the task given by the data flags (default: "
                                                     "the training file's name)")
    add_dataclass_arguments(p, FinetuneArgs)
    return p


def load_suite(path: str | Path) -> FinetuneConfig:
    """A suite YAML file -> FinetuneConfig (train_sizes may be a list there)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"suite not found: {path}")
    data = load_yaml(path)
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise UserError(f"{path}: a suite needs a non-empty list 'tasks'")
    for i, task in enumerate(tasks):
        proto = task.get("protocol") if isinstance(task, dict) else None
        if isinstance(proto, dict) and isinstance(proto.get("train_sizes"), list):
            proto["train_sizes"] = ",".join(str(s) for s in proto["train_sizes"])
        if isinstance(task, dict) and "name" not in task:
            task["name"] = f"task{i + 1}"
    try:  # as load_recipe does: "suite.yaml: unknown key 'tasks[0].trainng'"
        cfg = from_dict(FinetuneConfig, data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    cfg.path = str(path)
    return cfg


def build_config(args: dict) -> FinetuneConfig:
    """Turn parsed flags into a FinetuneConfig: suite or data flags or the demo, then overrides."""
    models, suite, task_name = args.pop("model"), args.pop("suite"), args.pop("task_name")
    data_flags = [f.name for f in dataclasses.fields(DataConfig) if f.name in args and f.name != "task"]
    if suite and data_flags:
        raise UserError(f"--{data_flags[0]} cannot be combined with --suite (the suite names its data)")
    if suite:
        cfg = load_suite(suite)
    elif data_flags:
        if "train_file" not in args:
            raise UserError("give --train_file (or --suite)")
        name = task_name or Path(str(args["train_file"]).rstrip("/")).stem or "task"
        cfg = FinetuneConfig(tasks=[TaskConfig(name=name)], name=name)
    else:
        cfg = load_suite(DEMO_SUITE)
    if models:
        cfg.models = models
    for task in cfg.tasks:
        sections = FinetuneArgs(data=task.data, training=task.training, protocol=task.protocol,
                                run=cfg.run, hub=cfg.hub)
        apply_overrides(sections, dict(args))
    if cfg.hub.push_to_hub:
        if not cfg.hub.hub_model_id:
            raise UserError("--push_to_hub needs --hub_model_id")
        if cfg.run.save_models == "none":
            raise UserError("--push_to_hub needs a saved model: drop --save_models none")
        if cfg.models and all(m == "tfidf-logreg" for m in cfg.models):
            raise UserError("--push_to_hub: tfidf-logreg alone leaves no model folder to push")
    return cfg


def push_finetuned(cfg: FinetuneConfig, results: dict) -> list[str]:
    """Push the kept fine-tuned folder of the first neural model, one repository per task
    (`hub_model_id`, suffixed with the task name when the suite has several)."""
    from mlm.finetune.engine import TFIDF
    from mlm.finetune.protocol import _slug
    from mlm.hub import push_to_hub

    neural = [m for m in cfg.models if m != TFIDF]
    if not neural:
        raise UserError("--push_to_hub: tfidf-logreg alone leaves no model folder to push")
    urls = []
    for task in results["tasks"]:
        folder = Path(results["output_dir"]) / "models" / _slug(task["name"]) / _slug(neural[0])
        if not folder.is_dir():
            raise UserError(f"--push_to_hub: no saved model in {folder}")
        repo = cfg.hub.hub_model_id
        if len(results["tasks"]) > 1:
            repo = f"{repo}-{_slug(task['name'])}"
        urls.append(push_to_hub(folder, repo, private=cfg.hub.hub_private_repo, revision=cfg.hub.hub_revision))
    return urls


@command
def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    cfg = build_config(args)
    from mlm.finetune.protocol import finetune
    from mlm.report import finetune_tables, recommendation_lines, winners

    results = finetune(cfg)
    from mlm.finetune.engine import run_state

    if not run_state().is_main_process:  # under `accelerate launch`: one process reports
        return 0
    urls = push_finetuned(cfg, results) if cfg.hub.push_to_hub else []
    for t in results["tasks"]:
        print(f"\n{t['name']} ({t['task']}; test {t['splits']['sizes']['test']}; "
              f"{len(t['seeds'])} seeds; mean ± std [95 % interval])")
        print(finetune_tables(t, markdown=False))
        for line in winners(t):
            print("  " + line.replace("**", ""))
        for line in recommendation_lines(t, results["kinds"]):
            print("  recommendation, " + line.replace("**", ""))
    if len(results["tasks"]) > 1:
        print("\naverage of main metrics: " + ", ".join(f"{m} {v:.3f}" for m, v in results["average"].items()))
    for url in urls:
        print(f"pushed to {url}")
    out = results["output_dir"]
    print(f"\nreport: {out}/report.md  results: {out}/results.json  ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
