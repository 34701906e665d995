"""GPU check: the first thing to run on a GPU machine (`make gpu-check`, at most ~8 minutes).

1. Measures the device's bf16 matmul peak (8192^3 products), the MFU denominator.
2. Pretrains a BERT-base-shaped and a ModernBERT-base-shaped model (12 x 768) through the real
   pipeline (BBC News corpus, tokenizer, packed blocks, masking collator, our loop) for a few
   hundred steps at sequence lengths 128 and 512 in bf16, and prints steady-state tokens/s and
   MFU (the first steps, warm-up and compilation, are left out of the rate).
3. Fine-tunes on BBC topics and fails unless the model trained on the GPU.
4. Appends the table, with the device name, to bench/RESULTS.md.

    python bench/gpu_check.py [--steps 200] [--ablations] [--no-results]

`--smoke` runs the same code on the CPU with tiny models (tests/test_gpu_check.py), so the script
is exercised where CI runs; its figures mean nothing and are never written to RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from demo_recipe import demo_recipe  # noqa: E402
from torch.utils.benchmark import Timer  # noqa: E402

from mlm.modeling import flops_per_token  # noqa: E402
from mlm.pretrain import device_peak_flops, pretrain  # noqa: E402
from mlm.recipe import load_recipe  # noqa: E402

# (family, sequence length, per-device batch): 32k tokens per step at either length.
RUNS = [("bert", 128, 256), ("modernbert", 128, 256), ("bert", 512, 64), ("modernbert", 512, 64)]
MODEL_OPTIONS = {"attn_implementation"}
PACKING_OPTIONS = {"document_attention"}


def matmul_peak(n: int = 8192, reps: int = 10) -> float:
    """bf16 dense matmul FLOP/s on random data (torch.utils.benchmark: warm-up, then `reps`
    products timed with the device synchronised)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / Timer("a @ b", globals={"a": a, "b": b}).timeit(reps).mean


def steady_rate(run_dir: Path, skip: int) -> float:
    """Tokens/s between the first logged step past `skip` and the last logged step."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "elapsed_s" in r]
    first = next(r for r in rows if r["step"] >= skip)
    last = rows[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def pretrain_run(tmp: Path, cache: Path | None, family: str, seq: int, batch: int, steps: int,
                 peak: float, size: str = "base", **options) -> dict:
    """One run; `options` are training settings, or model / packing ones where named so."""
    name = f"{family}-{seq}-" + "-".join(f"{k}{v}" for k, v in options.items())
    model = {k: options.pop(k) for k in list(options) if k in MODEL_OPTIONS}
    packing = {k: options.pop(k) for k in list(options) if k in PACKING_OPTIONS}
    training = options
    recipe = demo_recipe(
        tmp, name, steps, cache,
        packing={"max_seq_length": seq, **packing},
        model={"model_family": family, "model_size": size,
               "classifier_pooling": "cls" if family == "bert" else "mean", **model},
        training={"per_device_train_batch_size": batch, "mixed_precision": "bf16",
                  "learning_rate": 2e-4, "logging_steps": 20, "max_eval_blocks": 64,
                  "save_minutes": None, **training})
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = pretrain(load_recipe(recipe))
    wall = time.perf_counter() - t0
    summary = json.loads((out / "run_summary.json").read_text())
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(out))
    tps = steady_rate(out, skip=min(60, steps // 3))
    fpt = flops_per_token(config, seq, summary["mlm_probability"])
    return {"family": family, "size": size, "seq": seq, "batch": batch,
            "options": {**model, **packing, **training}, "tokens_s": tps,
            "attention": summary["attn_implementation"],
            "mfu": fpt * tps / peak, "gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
            "wall_s": wall, "val_loss": summary["final_val_loss"], "dir": out}


def finetune_on_gpu(model_dir: Path, tmp: Path, expected: str = "cuda") -> dict:
    """BBC topics, 100 labels, one seed: the model must have trained on the GPU."""
    from mlm.finetune.cli import load_suite
    from mlm.finetune.protocol import finetune

    cfg = load_suite(ROOT / "data_recipes" / "benchmarks" / "bbc.yaml")
    cfg.models = [str(model_dir)]
    cfg.run.output_dir = str(tmp / "finetune")
    cfg.run.quiet = True
    task = cfg.tasks[0]
    task.protocol.seeds = 1
    task.training.num_train_epochs = 3
    task.training.learning_rate = 5e-5
    t0 = time.perf_counter()
    results = finetune(cfg)
    row = results["tasks"][0]["runs"][0]
    if not row["device"].startswith(expected):
        raise SystemExit(f"gpu-check FAILED: fine-tuning ran on {row['device']}, not {expected}")
    return {"device": row["device"], "accuracy": row["test"]["accuracy"],
            "seconds": time.perf_counter() - t0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="pretraining steps per run")
    parser.add_argument("--ablations", action="store_true",
                        help="also BERT-base at 128 without DataLoader workers and compiled, "
                             "ModernBERT-base at 128 compiled, and ModernBERT-base at 512 with "
                             "document attention through SDPA and through auto (flash-attn's "
                             "varlen kernel when installed)")
    parser.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md")
    parser.add_argument("--smoke", action="store_true",
                        help="the same code on the CPU with tiny models (a test of the script)")
    args = parser.parse_args()
    runs, size, device = RUNS, "base", "cuda"
    if args.smoke:
        runs = [(f, s, 8) for f, s, _ in RUNS]
        size, device, args.no_results = "tiny", "cpu", True
    elif not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible to torch (use --smoke to try the script on CPU)",
              file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke)"
    peak = matmul_peak() if device == "cuda" else device_peak_flops(torch.device("cpu"), "bf16")
    print(f"{name}: bf16 matmul peak {peak / 1e12:.3g} TFLOP/s (measured)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cache = None
        plan = [(f, s, b, {}) for f, s, b in runs]
        if args.ablations:
            batch = runs[0][2]
            plan += [("bert", 128, batch, {"dataloader_num_workers": 0}),
                     ("bert", 128, batch, {"torch_compile": True}),
                     ("modernbert", 128, batch, {"torch_compile": True}),
                     # document-aware attention: a 4-D mask through SDPA, against flash-attn's
                     # varlen kernel on the unpadded batch (what `auto` picks when installed)
                     ("modernbert", 512, runs[3][2], {"document_attention": True,
                                                      "attn_implementation": "sdpa"}),
                     ("modernbert", 512, runs[3][2], {"document_attention": True})]
        for family, seq, batch, options in plan:
            row = pretrain_run(tmp, cache, family, seq, batch, args.steps, peak, size, **options)
            cache = cache or row["dir"] / "cache"
            rows.append(row)
            print(f"  {family:<10} seq {seq:<3} batch {batch:<3} {row['attention']:<17} "
                  f"{row['options'] or ''} "
                  f"{row['tokens_s']:>10,.0f} tokens/s  MFU {100 * row['mfu']:5.1f}%  "
                  f"{row['gib']:.1f} GiB  ({row['wall_s']:.0f} s)", flush=True)
        ft = finetune_on_gpu(rows[0]["dir"], tmp, device)
        print(f"  fine-tuning on {ft['device']}: BBC accuracy {ft['accuracy']:.3f} "
              f"({ft['seconds']:.0f} s)")
    table = [f"\n### GPU check: {name}, {datetime.date.today()} (torch {torch.__version__})\n",
             f"bf16 matmul peak measured: {peak / 1e12:.3g} TFLOP/s. {args.steps} steps per run, "
             "rate over the steps after the first third (warm-up and compilation left out).\n",
             "| model | seq | batch | attention | options | tokens/s | MFU | peak GiB |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        table.append(f"| {r['family']}-{r['size']} | {r['seq']} | {r['batch']} | "
                     f"{r['attention']} | {opts} | "
                     f"{r['tokens_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['gib']:.1f} |")
    table.append(f"\nFine-tuning (BBC topics, 100 labels, 1 seed, 3 epochs) ran on "
                 f"{ft['device']}: accuracy {ft['accuracy']:.3f} in {ft['seconds']:.0f} s.\n")
    text = "\n".join(table)
    print(text)
    if not args.no_results:
        with (ROOT / "bench" / "RESULTS.md").open("a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
