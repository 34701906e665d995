"""Tokenizer audit: how well one or more tokenizers fit a corpus, side by side.

Words are the same for every tokenizer (runs of letters/digits, or single punctuation marks,
in the original text), so the figures compare: fertility (tokens per word), the unknown-token
rate, the share of word occurrences split into several tokens, and the frequent words split
into the most pieces. Each token is assigned to the word holding its first non-space character,
through the tokenizer's character offsets.

    mlm-tokenizer-audit CORPUS TOKENIZER [TOKENIZER ...] [--max_documents N] [--json OUT]
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from mlm.errors import ArgumentParser, UserError, command

WORD = re.compile(r"\w+|[^\w\s]")


def audit(tokenizers: dict, texts: list[str], top: int = 15, frequent: int = 2000) -> dict:
    """Audit figures of each named tokenizer on `texts` (see module docstring)."""
    from mlm.tokenizer import raw_backend

    word_counts: Counter = Counter()
    spans = []
    for text in texts:
        found = [(m.start(), m.group()) for m in WORD.finditer(text)]
        word_counts.update(w for _, w in found)
        spans.append(found)
    n_words = sum(word_counts.values())
    if n_words == 0:
        raise UserError("the corpus sample holds no word to audit")
    common = {w for w, _ in word_counts.most_common(frequent)}
    results = {}
    for name, tok in tokenizers.items():
        backend = raw_backend(tok)
        unk = tok.unk_token_id
        n_tokens = n_unk = n_split = 0
        pieces_of: dict[str, list[str]] = {}
        for text, found, enc in zip(texts, spans, backend.encode_batch(texts,
                                                                      add_special_tokens=False)):
            n_tokens += len(enc.ids)
            n_unk += sum(1 for i in enc.ids if i == unk) if unk is not None else 0
            if not found or not enc.ids:
                continue
            starts = np.array([s for s, _ in found])
            where = np.array([_first_visible(text, a, b) for a, b in enc.offsets])
            word_of = np.searchsorted(starts, where, side="right") - 1
            per_word = np.bincount(word_of[word_of >= 0], minlength=len(found))
            n_split += int((per_word > 1).sum())
            for k in np.nonzero(per_word > 1)[0]:
                word = found[k][1]
                if word in common and word not in pieces_of:
                    pieces_of[word] = [enc.tokens[j] for j in np.nonzero(word_of == k)[0]]
        worst = sorted(pieces_of.items(), key=lambda kv: (-len(kv[1]), -word_counts[kv[0]]))
        results[name] = {
            "vocab_size": len(tok),
            "fertility": n_tokens / n_words,
            "unknown_rate": n_unk / max(1, n_tokens),
            "split_share": n_split / n_words,
            "tokens": n_tokens,
            "most_fragmented": [{"word": w, "count": word_counts[w], "pieces": p}
                                for w, p in worst[:top]],
        }
    return {"documents": len(texts), "words": n_words, "tokenizers": results}


def _first_visible(text: str, start: int, end: int) -> int:
    """The first non-space character of a token's span (byte-level and metaspace tokens carry
    the space before a word); the span's start if it has none."""
    for i in range(start, min(end, len(text))):
        if not text[i].isspace():
            return i
    return end if end > start else start


def format_table(report: dict) -> str:
    """The audit as a side-by-side text table, then each tokenizer's most fragmented words."""
    names = list(report["tokenizers"])
    rows = [("vocab size", lambda r: f"{r['vocab_size']:,}"),
            ("tokens / word (fertility)", lambda r: f"{r['fertility']:.3f}"),
            ("unknown-token rate", lambda r: f"{r['unknown_rate']:.4%}"),
            ("words split in 2+ tokens", lambda r: f"{r['split_share']:.2%}")]
    width = max(12, *(len(n) for n in names))
    lines = [f"{report['documents']} documents, {report['words']:,} words",
             f"{'':28}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for label, fmt in rows:
        lines.append(f"{label:28}" + "".join(f"{fmt(report['tokenizers'][n]):>{width + 2}}"
                                             for n in names))
    for name in names:
        lines.append(f"\nmost fragmented frequent words — {name}:")
        for row in report["tokenizers"][name]["most_fragmented"]:
            lines.append(f"  {row['word']:<24} x{row['count']:<6} {' '.join(row['pieces'])}")
    return "\n".join(lines)


def corpus_texts(spec: str, max_documents: int | None = None) -> Iterator[str]:
    """Documents of a recipe (.yaml), a folder, a text/jsonl/csv file or `pkg://` path."""
    from mlm.config import SourceConfig
    from mlm.corpus.readers import detect_format, read_documents
    from mlm.recipe import load_recipe, source_files

    if spec.endswith((".yaml", ".yml")):
        recipe = load_recipe(spec)
        sources, base = recipe.sources, Path(spec).parent
    else:
        sources, base = [SourceConfig(path=spec)], None
    n = 0
    for source in sources:
        for path in source_files(source, base):
            fmt = source.format if source.format != "auto" else detect_format(path) or "txt"
            for item in read_documents(path, source, fmt):
                if not isinstance(item, tuple):  # a skipped file or record
                    continue
                if max_documents is not None and n >= max_documents:
                    return
                if item[0].strip():
                    n += 1
                    yield item[0]


def _spread(texts: Iterable[str], max_documents: int) -> list[str]:
    """An evenly spaced sample of `max_documents` texts (folders are often sorted by topic)."""
    texts = list(texts)
    if len(texts) <= max_documents:
        return texts
    return [texts[i] for i in np.linspace(0, len(texts) - 1, max_documents).astype(int)]


@command
def main(argv: list[str] | None = None) -> int:
    """Command line of mlm-tokenizer-audit."""
    parser = ArgumentParser(
        prog="mlm-tokenizer-audit",
        description="Compare tokenizers on a corpus sample: fertility (tokens per word), "
                    "unknown-token rate, share of words split, most fragmented frequent words.")
    parser.add_argument("corpus", help="a data recipe (.yaml), a folder, a text/jsonl/csv file, "
                                       "or pkg://package/path")
    parser.add_argument("tokenizers", nargs="+", metavar="TOKENIZER",
                        help="tokenizer folders (or pkg:// paths), optionally NAME=PATH")
    parser.add_argument("--max_documents", "--max-documents", type=int, default=1000,
                        help="documents in the sample, evenly spaced over the corpus (default 1000)")
    parser.add_argument("--top", type=int, default=15,
                        help="most fragmented frequent words to list per tokenizer (default 15)")
    parser.add_argument("--json", default="tokenizer_audit.json",
                        help="where to write the figures as JSON (default tokenizer_audit.json)")
    args = parser.parse_args(argv)
    from mlm.recipe import resolve_path
    from mlm.tokenizer import load_tokenizer

    if args.max_documents < 1:
        raise UserError(f"--max_documents must be at least 1, got {args.max_documents}")
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    out = Path(args.json)
    if out.is_dir() or not out.parent.is_dir():
        raise UserError(f"--json {out}: " + ("is a folder; give a file name" if out.is_dir() else
                                             f"its folder {out.parent} does not exist"))
    toks = {}
    for spec in args.tokenizers:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        folder = resolve_path(path)
        name = name or folder.name
        if name in toks:  # a dict would keep only the last of the two
            raise UserError(f"two tokenizers are named '{name}'; name them apart, e.g. "
                            "general=PATH domain=PATH")
        toks[name] = load_tokenizer(folder)
    texts = _spread(corpus_texts(args.corpus, 50 * args.max_documents), args.max_documents)
    if not texts:
        raise UserError(f"{args.corpus}: no document to audit")
    report = audit(toks, texts, top=args.top)
    print(format_table(report))
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
