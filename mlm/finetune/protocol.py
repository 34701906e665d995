"""The small-data protocol: every model × every train size × every seed, on the same subsets.

For a seed, the training subsets of growing size are nested prefixes of one seeded (stratified)
order of the training pool, and every model trains on exactly the same subset. Scores go to
results.json (every run), a mean ± std and Student-t 95 % interval per (model, size), a learning
curve per task and a markdown report.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

import mlm.finetune.baselines as baselines
import mlm.finetune.classification as classification
import mlm.finetune.ner as ner
import mlm.finetune.setfit_route as setfit_route
from mlm.config import check_ranges, to_dict
from mlm.cpus import resolve_precision, set_torch_threads
from mlm.errors import Stopped, UserError, create_folder
from mlm.finetune.config import FinetuneConfig, TaskConfig, TrainConfig
from mlm.finetune.data import TaskData, TextExample, load_task, stratified_order
from mlm.finetune.engine import (
    RANDOM_INIT,
    TFIDF,
    check_model_folder,
    device_of,
    is_folder_spec,
    run_state,
    setfit_body,
)
from mlm.finetune.metrics import CLASSIFICATION_METRICS, NER_METRICS, interval
from mlm.modeling import check_positions, quiet_transformers, read_model_config
from mlm.tokenizer import load_tokenizer


def model_label(spec: str) -> str:
    return spec.rstrip("/") or spec


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_") or "model"


def check_models(models: list[str], task: str | None = None) -> Path | None:
    """Validate the model list (for a task of kind `task` when given: SetFit has no NER route);
    returns the folder random-init copies (the first folder; a `setfit:` encoder is not one)."""
    if not models:
        raise UserError("no model: give --model (a save_pretrained folder, random-init or tfidf-logreg)")
    folders = [m for m in models if is_folder_spec(m)]
    for m in folders:
        check_model_folder(m)
    for m in models:
        body = setfit_body(m)
        if body is None:
            continue
        if task == "ner":
            raise UserError(f"model '{m}': SetFit classifies whole texts and has no NER route; "
                            f"drop it for NER tasks")
        check_model_folder(body)
        if run_state().num_processes > 1:  # its transformers Trainer would join the process group
            raise UserError(f"model '{m}': SetFit runs in a single process; run it without accelerate launch")
    if RANDOM_INIT in models and not folders:
        raise UserError("random-init copies the architecture of a model folder: give one with --model")
    if len(set(models)) != len(models):
        raise UserError("a model is listed twice in --model")
    return check_model_folder(folders[0]) if folders else None


def load_checked(task: TaskConfig, models: list[str], cfg: FinetuneConfig) -> TaskData:
    """The task's data, read and checked with its metric and sizes: `finetune` calls it for every
    task of a suite before the first run, so a mistake in the last task stops before any work."""
    base = Path(cfg.path).resolve().parent if cfg.path else None
    data: TaskData = load_task(task.data, base)
    kind = task.data.task
    check_models(models, kind)
    metric = task.protocol.metric or ("macro_f1" if kind == "classification" else "f1")
    names = CLASSIFICATION_METRICS if kind == "classification" else NER_METRICS
    if metric not in names:
        raise UserError(f"--metric {metric} is not one of {', '.join(names)} for {kind}")
    task.protocol.sizes(len(data.train))
    t = task.training
    length, flag = (t.ner_max_length, "ner_max_length") if kind == "ner" else (t.max_length, "max_length")
    for m in [m for m in models if is_folder_spec(m)]:
        name = f"model '{m}'"
        folder = check_model_folder(m)
        check_positions(read_model_config(folder, name), length, flag, name)
        load_tokenizer(folder, masked_lm=False)  # a folder saved without one stops here
    if task.data.unlabeled_file and not t.self_training:
        raise UserError("--unlabeled_file is read only for self-training, which needs "
                        "--self_training and one label per text")
    if kind == "classification" and t.self_training and not data.multi_label \
            and t.max_pseudo_labels < len(data.label_names):
        raise UserError(f"--max_pseudo_labels {t.max_pseudo_labels} is below the "
                        f"{len(data.label_names)} classes: self-training needs at least one per "
                        "class (or --self_training false)")
    if kind == "ner" and t.doc_stride >= t.ner_max_length - 2:  # [CLS] and [SEP] take two
        raise UserError(f"--doc_stride {t.doc_stride} must be smaller than the window, "
                        f"--ner_max_length {t.ner_max_length} less its 2 special tokens")
    return data


def run_task(task: TaskConfig, models: list[str], out_dir: Path, cfg: FinetuneConfig, log,
             data: TaskData) -> dict:
    """Every model × size × seed on one task (`data`: as `load_checked` read it); returns its
    results section."""
    for note in data.notes:
        log(f"  note: {note}")
    kind = task.data.task
    first = check_models(models, kind)
    training = {spec: training_for(spec, task.training) for spec in models}  # before any run
    metric = task.protocol.metric or ("macro_f1" if kind == "classification" else "f1")
    names = CLASSIFICATION_METRICS if kind == "classification" else NER_METRICS
    sizes = task.protocol.sizes(len(data.train))
    seeds = [task.protocol.seed + i for i in range(task.protocol.seeds)]
    strat = kind == "classification" and not data.multi_label
    log(f"[{task.name}] {kind}: train pool {len(data.train)}, validation {len(data.validation)}, "
        f"test {len(data.test)}; sizes {sizes}; seeds {seeds}; models {', '.join(models)}")
    # Under `accelerate launch` the runs are shared out: process r of W takes runs r, r+W, ...
    # (each a whole small run on its own device), and the rows are gathered in order after.
    state = run_state()
    rank, world = state.process_index, state.num_processes
    jobs = [(seed, size, spec) for seed in seeds for size in sizes for spec in models]
    task_dir = out_dir / "models" / _slug(task.name)
    # save_models "best": each process keeps its own best per spec in a staging folder until the
    # gather picks the best of all; "all" folders are one per run, so no two processes share one
    staged = world > 1 and cfg.run.save_models == "best"
    stage_dir = task_dir / f".rank{rank}" if staged else task_dir
    runs, best_val, cache, encoded, orders = [], {}, {}, {}, {}
    for index in range(rank, len(jobs), world):
        seed, size, spec = jobs[index]
        if seed not in orders:
            orders[seed] = stratified_order([ex.labels[0] for ex in data.train], seed) \
                if strat else random.Random(seed).sample(range(len(data.train)), len(data.train))
        subset = [data.train[i] for i in orders[seed][:size]]
        t0 = time.time()
        if spec == TFIDF:
            out = baselines.run_classification(subset, data, seed, metric, cache) if kind == "classification" \
                else baselines.run_ner(subset, data, seed, metric, task.training.seqeval_strict)
            extra = {"hyperparameters": out["hyperparameters"], "device": "cpu"}
        elif setfit_body(spec) is not None:  # classification only: check_models refuses NER
            label = None if cfg.run.quiet else f"{model_label(spec)} n={size} seed={seed}"
            out = setfit_route.run_classification(spec, subset, data, seed, task.training, metric, progress=label)
            extra = {"hyperparameters": out["hyperparameters"], "device": out["device"]}
        else:
            name = f"{model_label(spec)} n={size} seed={seed}"
            label = None if cfg.run.quiet else name
            try:
                if kind == "classification":
                    self_trains = training[spec].self_training and not data.multi_label
                    out = classification.run(spec, first, subset, data, seed, training[spec], metric,
                                             progress=label, cache=encoded,
                                             unlabeled=unlabeled_texts(data, orders[seed][size:])
                                             if self_trains else None, tfidf_cache=cache)
                else:
                    out = ner.run(spec, first, subset, data, seed, training[spec], metric,
                                  progress=label, cache=encoded)
            except Stopped as exc:  # a diverged fit: say which one
                raise Stopped(f"{task.name}, {name}: {exc}", exc.code) from None
            device = device_of(out["model"])
            extra = {"best_epoch": out["fit"].best_epoch, "epochs": out["fit"].epochs,
                     "steps": out["fit"].steps, "learning_rate": training[spec].learning_rate,
                     "history": out["fit"].history, "device": str(device),
                     "mixed_precision": resolve_precision(training[spec].mixed_precision,
                                                          device.type)}
            if "self_training" in out:
                extra["self_training"] = out["self_training"]
        row = {"model": model_label(spec), "train_size": size, "seed": seed,
               "validation": out["validation"], "test": out["test"],
               "seconds": round(time.time() - t0, 2), **extra}
        runs.append((index, row))
        where = f" [process {rank}]" if world > 1 else ""
        st = out.get("self_training")
        teacher = f", teacher {st['teacher']['test'][metric]:.4f} + {st['pseudo_labels']} pseudo-labels, " \
            f"kept {st['kept']}" if st else ""
        log(f"  {model_label(spec):<24} n={size:<5} seed={seed}  test {metric}="
            f"{out['test'][metric]:.4f}  (val {out['validation'][metric]:.4f}{teacher}, "
            f"{row['seconds']:.0f}s){where}")
        _maybe_save(cfg.run.save_models, out, spec, size, sizes[-1], seed, metric, stage_dir, best_val)
        out.clear()
    if world > 1:
        runs, best_val = _gather_runs(runs, best_val, task_dir, state)
    runs = [row for _, row in sorted(runs, key=lambda x: x[0])]
    summary: dict = {}
    for row in runs:
        per = summary.setdefault(row["model"], {}).setdefault(str(row["train_size"]), {})
        for name in names:
            per.setdefault(name, []).append(row["test"][name])
    summary = {m: {s: {k: interval(v) for k, v in per.items()} for s, per in by.items()} for m, by in summary.items()}
    return {"name": task.name, "task": kind, "metric": metric, "metrics": names,
            "models": [model_label(m) for m in models],
            "label_names": data.label_names, "sizes": sizes, "seeds": seeds, "splits": data.splits,
            "notes": data.notes, "config": to_dict(task), "runs": runs, "summary": summary,
            "saved_models": {k: str(v[1]) for k, v in best_val.items()}}


def unlabeled_texts(data: TaskData, outside: list[int]) -> list[TextExample]:
    """The self-training texts of a run: the training pool at indices `outside` (the texts
    outside its labeled subset), labels dropped, then the task's unlabeled_file."""
    return [dataclasses.replace(data.train[i], labels=[]) for i in outside] + data.unlabeled


def _gather_runs(runs: list, best_val: dict, task_dir: Path, state) -> tuple[list, dict]:
    """Every process's rows, on every process; the best saved model of each spec (by validation
    score) is moved from its process's staging folder into `task_dir`, the others removed."""
    from accelerate.utils import gather_object

    runs = gather_object(runs)
    bests = gather_object([best_val])
    merged: dict = {}
    for per_rank in bests:
        for spec, (score, folder) in per_rank.items():
            if spec not in merged or score > merged[spec][0]:
                merged[spec] = (score, folder)
    if state.is_main_process:
        for spec, (score, folder) in merged.items():
            final = task_dir / _slug(spec)
            shutil.rmtree(final, ignore_errors=True)
            Path(folder).rename(final)
            merged[spec] = (score, final)
        for stage in task_dir.glob(".rank*"):
            shutil.rmtree(stage, ignore_errors=True)
    state.wait_for_everyone()
    return runs, merged


def _maybe_save(mode: str, out: dict, spec: str, size: int, largest: int, seed: int, metric: str,
                task_dir: Path, best_val: dict) -> None:
    """Keep the fine-tuned folder (and its test predictions) per the `save_models` setting."""
    if mode == "none" or "model" not in out:
        return
    if mode == "all":
        folder = task_dir / _slug(spec) / f"n{size}-seed{seed}"
    elif size != largest:
        return
    else:
        score = out["validation"][metric]
        if spec in best_val and best_val[spec][0] >= score:
            return
        folder = task_dir / _slug(spec)
        best_val[spec] = (score, folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if "tokenizer" not in out:  # a SetFitModel: encoder, pooling and pickled head, setfit's layout
        setfit_route.save(out["model"], folder)
    else:
        with quiet_transformers():  # no "Writing model shards" bar per save
            if run_state().process_index == 0:
                out["model"].save_pretrained(str(folder))
            else:  # save_pretrained writes no weights on a rank other than 0 once torch.distributed is up
                from safetensors.torch import save_model

                out["model"].config.save_pretrained(str(folder))
                save_model(out["model"], str(folder / "model.safetensors"), metadata={"format": "pt"})
            out["tokenizer"].save_pretrained(str(folder))
    with (folder / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for p in out["predictions"]:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    run = {"train_size": size, "seed": seed, "validation": out["validation"], "test": out["test"]}
    if "self_training" in out:  # this folder is the student; its teacher's scores beside it
        run["self_training"] = out["self_training"]
    (folder / "finetune_run.json").write_text(json.dumps(run, indent=2))


def run_summary(spec: str) -> dict | None:
    """The run_summary.json mlm's pretraining wrote in the model folder `spec`; None when the
    folder has none (a general checkpoint)."""
    path = check_model_folder(spec) / "run_summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict):
        raise UserError(f"{path}: not a readable run summary (JSON object)")
    return summary


def from_checkpoint(spec: str) -> bool:
    """Whether the model folder `spec` descends from a general checkpoint: mlm did not pretrain
    it, or continued pretraining of another model (its run summary names a base_model).
    False for random-init and for mlm's from-scratch runs."""
    if not is_folder_spec(spec):
        return False
    summary = run_summary(spec)
    return summary is None or summary.get("base_model") is not None


def training_for(spec: str, training: TrainConfig) -> TrainConfig:
    """The task's training settings for model `spec`, with the learning rate resolved for its
    origin (TrainConfig.rate_for: from scratch, or from a general checkpoint)."""
    return dataclasses.replace(training, learning_rate=training.rate_for(from_checkpoint(spec)))


def model_kind(spec: str) -> str:
    """"route": pretrained with mlm (its folder has the run_summary.json pretraining writes), or
    SetFit on such a folder; "checkpoint": any other model folder (a general checkpoint);
    "baseline": tfidf-logreg, random-init, SetFit on a general checkpoint. The report's
    recommendation sets the best route against the best of the others."""
    if spec in (RANDOM_INIT, TFIDF):
        return "baseline"
    body = setfit_body(spec)
    try:
        pretrained_here = run_summary(body or spec) is not None
    except UserError:
        return "baseline"
    if pretrained_here:
        return "route"
    return "baseline" if body else "checkpoint"


def default_output_dir(models: list[str]) -> Path:
    folders = [m for m in models if is_folder_spec(m)]
    return Path(folders[0]) / "finetune" if folders else Path("runs/finetune")


def finetune(config: FinetuneConfig) -> dict:
    """Run every task of `config` for every model, size and seed; write results.json, report.md and
    learning curves to the output folder; return the results."""
    from mlm.report import finetune_report, plot_learning_curves

    if not config.tasks:
        raise UserError("no task: give --train_file or --suite")
    check_ranges(config)  # every number, before any work
    set_torch_threads(config.run.torch_threads)
    log = (lambda *_: None) if config.run.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    names = [t.name for t in config.tasks]
    if len(set(names)) != len(names):
        raise UserError("two tasks share a name; give each task of the suite its own name")
    # Every task's data, models, metric and sizes, before any work (SetFit has no NER route).
    data = {t.name: load_checked(t, config.models, config) for t in config.tasks}
    out_dir = Path(config.run.output_dir) if config.run.output_dir else default_output_dir(config.models)
    create_folder(out_dir)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.time()
    results = {"name": config.name, "models": [model_label(m) for m in config.models], "tasks": [],
               "kinds": {model_label(m): model_kind(m) for m in config.models},
               "torch_threads": torch.get_num_threads()}
    state = run_state()
    main = state.is_main_process  # every process has every row; one writes them
    if main:  # a run stopped half-way must not leave the last run's table beside its figures
        for stale in [out_dir / "results.json", out_dir / "report.md",
                      *out_dir.glob("learning_curve_*.png")]:
            stale.unlink(missing_ok=True)
    for task in config.tasks:
        section = run_task(task, config.models, out_dir, config, log, data.pop(task.name))
        png = out_dir / f"learning_curve_{_slug(task.name)}.png"
        if main:
            plot_learning_curves(section, png)
        section["learning_curve"] = png.name
        results["tasks"].append(section)
    results["average"] = average_row(results)
    results["seconds"] = round(time.time() - t0, 1)
    results["processes"] = state.num_processes
    if main:
        (out_dir / "report.md").write_text(finetune_report(results))
        tmp = out_dir / ".results.json.tmp"  # results.json appears whole, and last
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False))
        os.replace(tmp, out_dir / "results.json")
    results["output_dir"] = str(out_dir)
    return results


def average_row(results: dict) -> dict:
    """Per model: the mean over tasks of each task's main metric at its largest train size."""
    out = {}
    for model in results["models"]:
        vals = [t["summary"][model][str(t["sizes"][-1])][t["metric"]]["mean"] for t in results["tasks"]]
        out[model] = statistics.fmean(vals)
    return out
