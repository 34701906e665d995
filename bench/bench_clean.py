"""Markup cleaning speed: MB/s of `clean_text` on real Markdown, reStructuredText and HTML.

The documents are the long descriptions of the installed Python distributions (Markdown and
reST READMEs: technical text full of code spans and identifiers), plus the *.rst files shipped in
site-packages; the HTML is the Markdown rendered by markdown-it-py; `--docs DIR` adds the *.md,
*.rst and *.html files of a folder. Each set is cleaned document by document, as the corpus
stage does, in `--rounds` rounds; the best round counts. `--against REV` also times the cleaning
code of a git revision (read with `git show`), interleaved round by round with the current code
so that both see the same load on a shared machine.

    python bench/bench_clean.py [--rounds 5] [--against HEAD] [--docs DIR]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import sysconfig
import time
import types
from pathlib import Path

from markdown_it import MarkdownIt

from mlm.config import CleanConfig
from mlm.corpus import clean

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = {".md": "md", ".markdown": "md", ".rst": "rst", ".html": "html", ".htm": "html"}


def real_documents(docs: Path | None) -> dict[str, list[str]]:
    """Markdown, reST and HTML documents available offline, by format."""
    found: dict[str, list[str]] = {"md": [], "rst": [], "html": []}
    for dist in importlib.metadata.distributions():
        kind = (dist.metadata.get("Description-Content-Type") or "").split(";")[0].strip()
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if dist.metadata["Name"] != "mlm" and len(body) > 1000:  # our own README changes
            if kind == "text/markdown":
                found["md"].append(body)
            elif kind == "text/x-rst":
                found["rst"].append(body)
    site = Path(sysconfig.get_paths()["purelib"])
    found["rst"] += [p.read_text(errors="replace") for p in sorted(site.rglob("*.rst"))]
    renderer = MarkdownIt("commonmark", {"html": True}).enable("table")
    found["html"] = [f"<html><body>{renderer.render(t)}</body></html>" for t in found["md"]]
    if docs:
        for path in sorted(docs.rglob("*")):
            if path.suffix.lower() in SUFFIXES:
                found[SUFFIXES[path.suffix.lower()]].append(path.read_text(errors="replace"))
    return found


def old_module(rev: str) -> types.ModuleType:
    """mlm/corpus/clean.py as it was at git revision `rev`."""
    source = subprocess.run(["git", "show", f"{rev}:mlm/corpus/clean.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"clean_{rev}")
    exec(compile(source, f"{rev}:mlm/corpus/clean.py", "exec"), module.__dict__)
    return module


def seconds(module, docs: list[str], fmt: str) -> float:
    """Time to clean every document once with `module.clean_text`."""
    cfg = CleanConfig()
    start = time.perf_counter()
    for doc in docs:
        module.clean_text(doc, cfg, fmt)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", help="also time the cleaning code of this git revision")
    parser.add_argument("--docs", type=Path, help="also read *.md/*.rst/*.html under this folder")
    args = parser.parse_args()
    modules = {"current": clean}
    if args.against:
        modules[args.against] = old_module(args.against)
    print(f"| format | MB | documents | {' | '.join(f'{n} MB/s' for n in modules)} |")
    print(f"|---|---:|---:|{'---:|' * len(modules)}")
    for fmt, docs in real_documents(args.docs).items():
        if not docs:
            continue
        mb = sum(len(d.encode()) for d in docs) / 1e6
        best = dict.fromkeys(modules, float("inf"))
        for _ in range(args.rounds):
            for name, module in modules.items():
                best[name] = min(best[name], seconds(module, docs, fmt))
        rates = " | ".join(f"{mb / best[name]:.2f}" for name in modules)
        print(f"| {fmt} | {mb:.2f} | {len(docs)} | {rates} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
