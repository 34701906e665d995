"""Reports: loss-curve pictures and small markdown tables."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl file (empty when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
