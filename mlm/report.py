"""Reports: loss-curve pictures and small markdown tables."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mlm.finetune.metrics import interval  # noqa: E402


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl file (empty when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _save(fig, ax, png_path: str | Path) -> Path:
    """Grid, legend, tight layout; write the PNG and free the figure."""
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Training and validation MLM loss against tokens seen, as a PNG."""
    rows = read_metrics(metrics_path)
    train = [(r["tokens"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss (fixed 15% masks)", lw=1.8)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("masked-LM cross-entropy")
    ax.set_title(title or "pretraining loss")
    return _save(fig, ax, png_path)


# ---------------------------------------------------------------------------------------------
# Fine-tuning: learning curves, tables of mean ± std [95 % interval], the markdown report.


def _fmt(stat: dict) -> str:
    lo, hi = stat["ci95"]
    if stat["n"] < 2 or lo != lo:  # NaN: a single seed has no interval
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f} [{lo:.3f}, {hi:.3f}]"


def plot_learning_curves(section: dict, png_path: str | Path) -> Path:
    """Main test metric against labeled examples, one line per model, shaded ± std."""
    metric = section["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for model in section["models"]:
        by = section["summary"][model]
        sizes = sorted(int(s) for s in by)
        mean = [by[str(s)][metric]["mean"] for s in sizes]
        std = [by[str(s)][metric]["std"] for s in sizes]
        ax.plot(sizes, mean, "o-", label=model, lw=1.8)
        ax.fill_between(sizes, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        alpha=0.2)
    if len(section["sizes"]) > 1 and section["sizes"][-1] / section["sizes"][0] >= 8:
        ax.set_xscale("log")
    ax.set_xlabel("labeled training examples")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{section['name']}: learning curves ({len(section['seeds'])} seeds, mean ± std)")
    return _save(fig, ax, png_path)


def _overlaps(a: dict, b: dict) -> bool:
    (alo, ahi), (blo, bhi) = a["ci95"], b["ci95"]
    if alo != alo or blo != blo:
        return True
    return alo <= bhi and blo <= ahi


def winners(section: dict) -> list[str]:
    """One sentence per train size: the best model by mean, and who it is not separated from.
    None with a single model: there is nothing to win against."""
    metric, lines = section["metric"], []
    if len(section["models"]) < 2:
        return lines
    for size in section["sizes"]:
        stats = {m: section["summary"][m][str(size)][metric] for m in section["models"]}
        best = max(stats, key=lambda m: stats[m]["mean"])
        tied = [m for m in stats if m != best and _overlaps(stats[best], stats[m])]
        line = f"n={size}: **{best}** wins ({metric} {stats[best]['mean']:.3f})"
        if stats[best]["n"] < 2:
            line += "; a single seed gives no interval, so no difference is established"
        elif tied:
            line += f"; its 95 % interval overlaps {', '.join(tied)}: not a clear win over them"
        else:
            line += "; its 95 % interval overlaps no other model's"
        lines.append(line)
    return lines


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean and Student-t 95 % interval of the per-seed differences a - b (the same labeled
    subset per seed, so the pairing removes the subset's share of the spread), and the seeds
    whose interval would exclude 0 for a difference of this mean and spread."""
    from scipy.stats import t

    diff = interval([x - y for x, y in zip(a, b)])
    n, mean, sd = diff["n"], diff["mean"], diff["std"]
    need = None
    if n > 1 and mean:
        need = next((k for k in range(2, 1000)
                     if float(t.ppf(0.975, k - 1)) * sd / math.sqrt(k) < abs(mean)), None)
    return {"mean": mean, "ci95": diff["ci95"], "n": n, "seeds_needed": need}


def recommendation(section: dict, kinds: dict) -> list[dict]:
    """Per train size: the best pretraining route (models pretrained with mlm, `kinds` "route")
    against the best of the rest (general checkpoints and baselines), by mean, with the
    difference paired over seeds. Empty when either side has no model."""
    metric, out = section["metric"], []
    routes = [m for m in section["models"] if kinds.get(m) == "route"]
    others = [m for m in section["models"] if kinds.get(m) != "route"]
    if not routes or not others:
        return out
    for size in section["sizes"]:
        stats = {m: section["summary"][m][str(size)][metric] for m in section["models"]}
        route = max(routes, key=lambda m: stats[m]["mean"])
        other = max(others, key=lambda m: stats[m]["mean"])
        diff = paired_difference(stats[route]["values"], stats[other]["values"])
        lo, hi = diff["ci95"]
        verdict = "pays off" if lo > 0 else "loses" if hi < 0 else "not separated"
        out.append({"size": size, "route": route, "baseline": other, "metric": metric,
                    "route_mean": stats[route]["mean"], "baseline_mean": stats[other]["mean"],
                    "difference": diff, "verdict": verdict})
    return out


def recommendation_lines(section: dict, kinds: dict) -> list[str]:
    """The recommendation as sentences (report, console and model card)."""
    lines = []
    for r in recommendation(section, kinds):
        d, (lo, hi) = r["difference"], r["difference"]["ci95"]
        gap = f"{d['mean']:+.3f} {r['metric']}" + (f" [{lo:+.3f}, {hi:+.3f}], paired over {d['n']} seeds"
                                                  if d["n"] > 1 else " (one seed: no interval)")
        if r["verdict"] == "pays off":
            text = f"pretraining pays off: **{r['route']}** beats {r['baseline']} by {gap}"
        elif r["verdict"] == "loses":
            text = (f"no pretraining route beats the baselines: **{r['baseline']}** beats the best "
                    f"route, {r['route']}, by {-d['mean']:+.3f} {r['metric']} [{-hi:+.3f}, {-lo:+.3f}]")
        else:
            lead = r["route"] if d["mean"] >= 0 else r["baseline"]
            text = (f"not separated: best route {r['route']} vs best baseline {r['baseline']}: {gap}; "
                    f"{lead} leads")
            if d["seeds_needed"] and d["n"] > 1:
                text += f"; about {d['seeds_needed']} seeds would separate a gap this size"
        lines.append(f"n={r['size']}: {text}")
    return lines


def finetune_tables(section: dict, markdown: bool = True) -> str:
    """A table per task: rows (model, size), one column per metric, mean ± std [95 % interval]."""
    metrics = [section["metric"]] + [m for m in section["metrics"] if m != section["metric"]]
    if not markdown:  # the console shows the headline metrics only
        metrics = ["accuracy", "macro_f1"] if section["task"] == "classification" else ["f1", "precision", "recall"]
    rows = [["model", "labeled", *metrics]]
    for model in section["models"]:
        for size in section["sizes"]:
            stat = section["summary"][model][str(size)]
            rows.append([model, str(size), *(_fmt(stat[m]) for m in metrics)])
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def finetune_report(results: dict) -> str:
    """The markdown report of a fine-tuning run or suite."""
    lines = [f"# Fine-tuning report: {results['name']}", "",
             f"Models: {', '.join(results['models'])}. Scores are on the test split; each cell is the "
             "mean ± sample std over seeds and the Student-t 95 % interval of the mean. For a seed, "
             "every model trains on the same labeled subset (subsets of growing size are nested). "
             "NER is scored on words (one tag per word, from its first sub-token) with seqeval at the "
             "entity level.", ""]
    for t in results["tasks"]:
        sp = t["splits"]
        lines += [f"## {t['name']} ({t['task']}, main metric: {t['metric']})", "",
                  finetune_tables(t), "", *[f"- {w}" for w in winners(t)], "",
                  *[f"- recommendation, {w}" for w in recommendation_lines(t, results.get("kinds", {}))],
                  "",
                  f"![learning curve]({t['learning_curve']})", "",
                  f"Data: `{sp.get('train_file')}`; train pool {sp['sizes']['train_pool']}, validation "
                  f"{sp['sizes']['validation']}, test {sp['sizes']['test']}; seeds {t['seeds']}; "
                  f"split seed {sp.get('split_seed')}."]
        rates = {r["model"]: r["learning_rate"] for r in t["runs"] if "learning_rate" in r}
        if len(set(rates.values())) > 1:  # checkpoint_learning_rate: say which model trained at which
            lines.append("Fine-tuning learning rates: " + ", ".join(f"{m} {v:g}" for m, v in rates.items()) + ".")
        if "test_list" in sp:
            lines.append(f"The test documents are exactly those listed in `{sp['test_list']}`; the demo "
                         "pretraining recipe excludes the same list, so the pretrained model never saw them.")
        if "test_carved" in sp or "validation_carved" in sp:
            lines.append("Carved splits (indices into the file's examples, in file order; validation "
                         "indices are after removing the test examples) are in results.json under `splits`.")
        lines += [f"- note: {n}" for n in t["notes"]] + [""]
    if len(results["tasks"]) > 1:
        lines += ["## Average over tasks", "", "Mean of each task's main metric at its largest train size.", "",
                  "| model | average |", "|---|---|"]
        lines += [f"| {m} | {v:.3f} |" for m, v in results["average"].items()] + [""]
    lines.append(f"Total time: {results['seconds']:.0f} s with {results['torch_threads']} torch threads.")
    return "\n".join(lines) + "\n"
