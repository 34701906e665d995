"""Document-aware attention: what it costs in speed and what it changes in validation loss.

Two pretraining runs of the demo recipe (ModernBERT 4x256, batch 8, BBC News) with the same
seed, steps, data order and masks; the only difference is `document_attention`: with it, a
token of a packed block attends only to tokens of its own document (a block-diagonal 4-D mask
passed to SDPA); without it, to the whole block. Prints tokens/s, their ratio, and the final
validation loss of each run (fixed 15 % validation masks; each run is validated with its own
attention mode, as it would be used).

    python bench/bench_doc_attention.py [--steps 300] [--max_seq_length 128]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from demo_recipe import demo_recipe  # noqa: E402

from mlm.pretrain import pretrain  # noqa: E402
from mlm.recipe import load_recipe  # noqa: E402


def run(tmp: Path, steps: int, length: int, document_attention: bool) -> dict:
    path = demo_recipe(tmp, f"doc-{document_attention}", steps,
                       tmp / "doc-False" / "cache",  # the second run reuses the first's blocks
                       packing={"max_seq_length": length, "document_attention": document_attention},
                       training={"max_eval_blocks": 256})
    out = pretrain(load_recipe(path))
    return json.loads((out / "run_summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--max_seq_length", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {flag: run(Path(tmp), args.steps, args.max_seq_length, flag)
                for flag in (False, True)}
    r = rows[False]
    print(f"\n{args.steps} steps of the demo recipe ({r['model_family']}, "
          f"{r['num_parameters'] / 1e6:.1f} M parameters), sequence {args.max_seq_length}")
    print(f"{'attention':<22}{'tokens/s':>10}{'val loss':>10}")
    for flag, label in ((False, "whole block"), (True, "own document only")):
        r = rows[flag]
        print(f"{label:<22}{r['tokens_per_s']:>10,.0f}{r['final_val_loss']:>10.3f}")
    print(f"speed ratio (document-aware / whole block): "
          f"{rows[True]['tokens_per_s'] / rows[False]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
