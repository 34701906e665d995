"""Corpus stage: every input format, cleaning, PII scrubbing, dedup, split, cache, bad input."""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlm.config import CleanConfig
from mlm.corpus import build as build_mod
from mlm.corpus.build import build_corpus, corpus_stats
from mlm.corpus.clean import clean_text, drop_reason
from mlm.corpus.cli import main
from mlm.corpus.privacy import luhn_valid, scrub
from mlm.recipe import corpus_fingerprint, load_recipe
from tests.conftest import REPO


@pytest.fixture(scope="module")
def articles(bbc_dir) -> list[str]:
    """80 real, distinct BBC articles (business and tech)."""
    texts = [p.read_text(encoding="utf-8", errors="replace")
             for folder in ("business", "tech") for p in sorted((bbc_dir / folder).glob("*.txt"))[:45]]
    seen, out = set(), []
    for t in texts:
        if t[:200] not in seen:
            seen.add(t[:200])
            out.append(t)
    return out[:80]


def write_recipe(tmp_path: Path, sources: list[dict], **sections) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "sources": sources, **sections}))
    return path


def build(tmp_path: Path, sources: list[dict], **sections):
    recipe = load_recipe(write_recipe(tmp_path, sources, **sections))
    ds = build_corpus(recipe, tmp_path / "cache")
    return ds, corpus_stats(recipe, tmp_path / "cache")


def all_texts(ds) -> list[str]:
    return list(ds["train"]["text"]) + list(ds["validation"]["text"])


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------
# Formats and compression


def test_every_format_and_compression(tmp_path, articles):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    d = tmp_path / "data"
    (d / "nested").mkdir(parents=True)
    a = iter(articles)
    expected = {}

    def put(name: str, data: bytes, text: str):
        (d / name).write_bytes(data)
        expected[name] = text

    t = next(a)
    put("plain.txt", t.encode(), t)
    t = next(a)
    put("notes.md", f"# Title here\n\nSome **bold** words and a [link](http://x.y).\n\n{t}".encode(),
        "Some bold words and a link.")
    t = next(a)
    put("doc.rst", f"Heading\n=======\n\n.. note::\n   hidden\n\n{t}".encode(), t.split("\n")[0])
    t = next(a)
    put("page.html", f"<html><script>var x=1;</script><body><p>{t}</p></body></html>".encode(),
        t.split("\n")[0])
    t1, t2 = next(a), next(a)
    rows = [{"title": "Title one", "body": t1}, {"title": "Title two", "body": t2}]
    put("tickets.jsonl", "\n".join(json.dumps(r) for r in rows).encode(), t1.split("\n")[0])
    t = next(a)
    put("nested/more.jsonl.gz", gzip.compress(json.dumps({"title": "Gz", "body": t}).encode()),
        t.split("\n")[0])
    t = next(a)
    put("more2.jsonl.bz2", bz2.compress(json.dumps({"title": "Bz", "body": t}).encode()),
        t.split("\n")[0])
    t = next(a)
    put("zipped.txt.xz", lzma.compress(t.encode()), t.split("\n")[0])
    t = next(a)
    put("zipped.md.zst", zstandard.ZstdCompressor().compress(f"## Head\n\n{t}".encode()),
        t.split("\n")[0])
    for name, delim in (("table.csv", ","), ("table.tsv", "\t")):
        t = next(a)
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=delim)
        w.writerow(["title", "body", "id"])
        w.writerow(["A title", t, "1"])
        put(name, buf.getvalue().encode(), t.split("\n")[0])
    for name, compress in (("shard.parquet", None), ("shard2.parquet.gz", gzip.compress)):
        t = next(a)
        table = pa.table({"title": ["P"], "body": [t], "n": [1]})
        pq.write_table(table, d / "tmp.parquet")
        data = (d / "tmp.parquet").read_bytes()
        (d / "tmp.parquet").unlink()
        put(name, compress(data) if compress else data, t.split("\n")[0])

    ds, stats = build(tmp_path, [{"path": str(d), "text_field": ["title", "body"]}],
                      clean={"min_chars": 5})
    texts = all_texts(ds)
    sources = list(ds["train"]["source"]) + list(ds["validation"]["source"])
    for name, snippet in expected.items():
        hits = [t for t, s in zip(texts, sources) if s.startswith(str(d / name) + ":")]
        assert hits, f"nothing read from {name}"
        assert any(snippet.strip()[:60] in h for h in hits), (name, hits[0][:200])
    joined = "\n".join(texts)
    assert "Title one\n\n" in joined  # text_field list joined by a blank line
    assert "**" not in joined and "<p>" not in joined and "var x" not in joined
    assert ".. note" not in joined and "hidden" not in joined and "http://x.y" not in joined
    assert stats["documents"]["train"] + stats["documents"]["validation"] == 14


def test_document_paragraph_and_line(tmp_path, articles):
    f = tmp_path / "a.txt"
    f.write_text(articles[0])
    paragraphs = [p for p in articles[0].split("\n\n") if len(p.strip()) >= 20]
    ds, _ = build(tmp_path, [{"path": str(f), "document": "paragraph"}],
                  dedup={"dedup_near": False})
    assert len(all_texts(ds)) == len(paragraphs)
    assert all(s.startswith(f"{f}:") for s in ds["train"]["source"])
    f.write_text("first line of text here\nsecond line of text here\n\nthird line of text here\n")
    ds, _ = build(tmp_path, [{"path": str(f), "document": "line"}])
    sources = list(ds["train"]["source"]) + list(ds["validation"]["source"])
    assert sorted(s.rsplit(":", 1)[1] for s in sources) == ["1", "2", "4"]


# ---------------------------------------------------------------------------------------------
# Cleaning


def test_clean_text_and_filters():
    cfg = CleanConfig()
    assert clean_text("a\u200bb\x07c   d\n\n\n\n e\u0301", cfg) == "abc d\n\n\u00e9"
    assert clean_text("ﬁne", CleanConfig(normalization="NFKC")) == "fine"
    assert drop_reason("short", cfg) == "too_short"
    assert drop_reason("x" * 100, CleanConfig(max_chars=50)) == "too_long"
    assert drop_reason("12 34 56 78 90 | 11 22 33 44 | 55.66 77.88 ab", cfg) == "non_alphabetic"
    assert drop_reason("A normal sentence, with 3 numbers: 1, 2.", cfg) is None


def test_drop_counts_per_reason(tmp_path, articles):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.txt").write_text(articles[0])
    (d / "short.txt").write_text("tiny")
    (d / "numbers.txt").write_text("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 ab")
    (d / "empty.txt").write_text("")
    (d / "blob.txt").write_bytes(b"\x00\x01\x02binary" * 20)
    (d / "ok2.md").write_text(articles[1])
    ds, stats = build(tmp_path, [{"path": str(d)}])
    assert stats["dropped"] == {"too_short": 1, "non_alphabetic": 1, "empty_file": 1,
                                "binary_file": 1}
    assert len(all_texts(ds)) == 2
    assert any("binary file" in w for w in stats["warnings"])


# ---------------------------------------------------------------------------------------------
# Privacy


@pytest.mark.parametrize("text, kind, placeholder", [
    ("write to jane.doe@example.co.uk today", "email", "[EMAIL]"),
    ("call +44 20 7946 0958 now", "phone", "[PHONE]"),
    ("call (555) 123-4567 now", "phone", "[PHONE]"),
    ("call 020 7946 0958 now", "phone", "[PHONE]"),
    ("host 192.168.10.4 is down", "ip", "[IP]"),
    ("host 2001:db8:85a3::8a2e:370:7334 is down", "ip", "[IP]"),
    ("clone https://bob:hunter22@git.example.com/x.git", "url_credentials", "[CREDENTIALS]"),
    ("paid with 4111 1111 1111 1111 yesterday", "credit_card", "[CREDIT_CARD]"),
    ("paid with 5500-0000-0000-0004 yesterday", "credit_card", "[CREDIT_CARD]"),
    ("key AKIAIOSFODNN7EXAMPLE in config", "secret", "[SECRET]"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789AB leaked", "secret", "[SECRET]"),
    ('db password: "correcthorse" in notes', "secret", "[SECRET]"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKC\n-----END RSA PRIVATE KEY-----", "secret",
     "[PRIVATE_KEY]"),
])
def test_scrub_finds_each_kind(text, kind, placeholder):
    out, counts = scrub(text)
    assert placeholder in out and counts == {kind: 1}, (out, counts)


def test_luhn_and_no_false_positives():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    out, counts = scrub("card 4111 1111 1111 1112 and 1234 5678 9012 3456")
    assert not counts, out
    ordinary = ("On 2004-05-12 at 10:30:45 shares rose 3.5% to $1,234,567.89 (12/05/2004). "
                "Score 3-1 in 1999; 25,000,000 people; ISBN 978-0-306-40615-7; order 1234567890123; "
                "ratio 16:9; call at 12:30; pi is 3.14159265358979; version 2.0.1 was released.")
    out, counts = scrub(ordinary)
    assert out == ordinary and not counts


def test_pii_counted_in_stats(tmp_path, articles):
    f = tmp_path / "t.txt"
    f.write_text(articles[0] + ("\nPlease contact jane@example.com about the server at 192.168.0.1 "
                                 "and the card 4111111111111111 today.")
                 + "\n\n" + articles[1])
    ds, stats = build(tmp_path, [{"path": str(f), "document": "paragraph"}])
    assert stats["pii"] == {"credit_card": 1, "email": 1, "ip": 1}
    assert "jane@example.com" not in "".join(all_texts(ds))
    ds, stats = build(tmp_path, [{"path": str(f), "document": "paragraph"}],
                      privacy={"pii_types": ["email"]})
    assert stats["pii"] == {"email": 1}


# ---------------------------------------------------------------------------------------------
# Dedup and split


def _near_copy(text: str) -> str:
    words = text.split(" ")
    for i in range(5, len(words), 120):
        words[i] = "changed"
    return " ".join(words)


def test_exact_and_near_duplicates_removed(tmp_path, articles):
    d = tmp_path / "d"
    d.mkdir()
    for i, t in enumerate(articles[:30]):
        (d / f"{i:02d}.txt").write_text(t)
    (d / "30_exact.txt").write_text(articles[3].upper().replace("\n", "\n\n"))
    (d / "31_near.txt").write_text(_near_copy(articles[4]))
    ds, stats = build(tmp_path, [{"path": str(d)}])
    assert stats["duplicates"]["exact"] == 1 and stats["duplicates"]["near"] == 1
    assert stats["dropped"]["exact_duplicate"] == 1 and stats["dropped"]["near_duplicate"] == 1
    assert len(all_texts(ds)) == 30
    _, stats = build(tmp_path, [{"path": str(d)}], dedup={"dedup_near": False})
    assert stats["duplicates"]["near"] == 0 and stats["documents"]["train"] + \
        stats["documents"]["validation"] == 31


def test_near_duplicates_never_split(tmp_path, articles):
    d = tmp_path / "d"
    d.mkdir()
    for i, t in enumerate(articles[:40]):
        (d / f"a{i:02d}.txt").write_text(t)
        (d / f"b{i:02d}.txt").write_text(_near_copy(t))
    ds, stats = build(tmp_path, [{"path": str(d)}], split={"validation_fraction": 0.5},
                      dedup={"keep_duplicates": True})
    assert stats["duplicates"]["near"] == 40 and stats["duplicates"]["kept"]
    side = {}
    for split in ("train", "validation"):
        for s in ds[split]["source"]:
            side[Path(s.rsplit(":", 1)[0]).name[1:]] = side.get(
                Path(s.rsplit(":", 1)[0]).name[1:], set()) | {split}
    assert all(len(v) == 1 for v in side.values()), side
    assert {s for v in side.values() for s in v} == {"train", "validation"}


def test_weight_up_and_down_samples(tmp_path, articles):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i, t in enumerate(articles[:20]):
        (a / f"{i}.txt").write_text(t)
    for i, t in enumerate(articles[20:60]):
        (b / f"{i}.txt").write_text(t)
    sources = [{"path": str(a), "weight": 2}, {"path": str(b), "weight": 0.5}]
    ds, stats = build(tmp_path, sources, split={"validation_fraction": 0.0})
    per = stats["sources"]
    assert per[str(a)]["documents"] in (39, 40)  # one may be held out for validation
    assert 10 <= per[str(b)]["documents"] <= 30
    ds2, stats2 = build(tmp_path, sources, split={"validation_fraction": 0.0})
    assert stats2["sources"] == per  # deterministic


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_reused_and_invalidated(tmp_path, articles, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_text(articles[0] + "\n\n" + articles[1])
    path = write_recipe(tmp_path, [{"path": str(f), "document": "paragraph"}])
    recipe = load_recipe(path)
    build_corpus(recipe, tmp_path / "cache")
    before = corpus_fingerprint(recipe)
    calls = []
    real = build_mod._build
    monkeypatch.setattr(build_mod, "_build", lambda *a: calls.append(1) or real(*a))
    ds = build_corpus(load_recipe(path), tmp_path / "cache")
    assert calls == [] and len(ds["train"]) > 0
    f.write_text(articles[2])  # a changed input file: a new fingerprint, a rebuild
    assert corpus_fingerprint(load_recipe(path)) != before
    build_corpus(load_recipe(path), tmp_path / "cache")
    assert calls == [1]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def test_killed_run_leaves_no_cache(tmp_path, articles):
    f = tmp_path / "a.txt"
    f.write_text(articles[0] + "\n\n" + articles[1])
    recipe = load_recipe(write_recipe(tmp_path, [{"path": str(f), "document": "paragraph"}]))
    key = corpus_fingerprint(recipe)
    (tmp_path / "cache" / f".{key}.tmp").mkdir(parents=True)  # debris of a killed run
    (tmp_path / "cache" / f".{key}.tmp" / "junk").write_text("half")
    ds = build_corpus(recipe, tmp_path / "cache")
    assert len(ds["train"]) > 0 and len(ds["validation"]) > 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [key]


# ---------------------------------------------------------------------------------------------
# The command line: stats table, and one clear line for every user mistake


def test_cli_builds_prints_table_and_is_idempotent(tmp_path, articles, capsys):
    d = tmp_path / "d"
    d.mkdir()
    for i, t in enumerate(articles[:10]):
        (d / f"{i}.txt").write_text(t)
    (d / "dup.txt").write_text(articles[0])
    recipe = write_recipe(tmp_path, [{"path": str(d)}])
    code, out, err = run_cli(capsys, recipe, "--output", tmp_path / "out", "--dedup_threshold", 0.7)
    assert code == 0, err
    assert "exact duplicate" in out and "documents" in out and "written to" in out
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped"]["exact_duplicate"] == 1
    from datasets import load_from_disk

    assert set(load_from_disk(str(tmp_path / "out"))) == {"train", "validation"}
    mtime = (tmp_path / "out" / "stats.json").stat().st_mtime_ns
    code, out, _ = run_cli(capsys, recipe, "--output", tmp_path / "out", "--dedup_threshold", 0.7)
    assert code == 0 and "up to date" in out
    assert (tmp_path / "out" / "stats.json").stat().st_mtime_ns == mtime


def _bad_inputs(tmp: Path, article: str) -> list[tuple[list[dict], dict, str]]:
    (tmp / "bad.jsonl").write_text(json.dumps({"text": article}) + "\n{not json\n")
    (tmp / "nofield.jsonl").write_text(json.dumps({"body": article}) + "\n")
    (tmp / "nocol.csv").write_text("title,body\nx,y\n")
    (tmp / "latin1.txt").write_bytes(("ok line\n" * 3 + "caf\u00e9\n").encode("latin-1"))
    (tmp / "doc.docx").write_bytes(b"PK\x03\x04 binary")
    (tmp / "short.txt").write_text("tiny\n")
    return [
        ([{"path": str(tmp / "bad.jsonl")}], {}, "bad.jsonl:2: malformed JSON"),
        ([{"path": str(tmp / "nofield.jsonl")}], {}, "no field 'text' (fields: body)"),
        ([{"path": str(tmp / "nocol.csv")}], {}, "no column 'text' (columns: title, body)"),
        ([{"path": str(tmp / "latin1.txt"), "errors": "fail"}], {}, "latin1.txt:4: not valid utf-8"),
        ([{"path": str(tmp / "doc.docx")}], {}, "cannot tell the format"),
        ([{"path": str(tmp / "short.txt"), "format": "docx"}], {}, "format: must be one of"),
        ([{"path": str(tmp / "*.nothing")}], {}, "matches no file"),
        ([{"path": str(tmp / "short.txt")}], {}, "too_short: 1"),
        ([{"path": str(tmp / "short.txt")}], {"clean": {"min_chars": "many"}}, "clean.min_chars"),
    ]


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, articles, capsys):
    for i, (sources, sections, expected) in enumerate(_bad_inputs(tmp_path, articles[0])):
        recipe = tmp_path / f"r{i}.yaml"
        recipe.write_text(yaml.safe_dump({"sources": sources, **sections}))
        code, out, err = run_cli(capsys, recipe, "--output", tmp_path / f"out{i}")
        assert code == 2, (expected, out, err)
        assert expected in err, (expected, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / f"out{i}").exists()
    other = tmp_path / "notacorpus"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    recipe = write_recipe(tmp_path, [{"path": str(tmp_path / "nocol.csv")}])
    code, _, err = run_cli(capsys, recipe, "--output", other)
    assert code == 2 and "not a corpus folder" in err and (other / "keep.txt").exists()


def test_skip_modes_count_instead_of_failing(tmp_path, articles):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.jsonl").write_text("\n".join([json.dumps({"text": articles[0]}), "{oops",
                                          json.dumps({"other": 1}), json.dumps({"text": articles[1]})]))
    (d / "b.txt").write_bytes(articles[2].encode() + b"\xff\xfe broken")
    (d / "c.txt").write_text(articles[3])
    ds, stats = build(tmp_path, [{"path": str(d), "on_error": "skip", "errors": "skip"}])
    assert stats["dropped"] == {"malformed_record": 2, "encoding_error": 1}
    assert len(all_texts(ds)) == 3
    ds, stats = build(tmp_path, [{"path": str(d / "b.txt")}, {"path": str(d / "c.txt")}])
    assert "\ufffd" in "".join(all_texts(ds))  # errors: replace (the default)


def test_cli_subprocess_help_and_error():
    cmd = [sys.executable, "-m", "mlm.corpus.cli"]
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0
    for flag in ("--output", "--dedup_threshold", "--scrub_pii", "--max_non_alpha_fraction",
                 "--corpus_num_proc", "--validation_fraction"):
        assert flag in res.stdout
    res = subprocess.run([*cmd, "/nonexistent.yaml"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "--output" in res.stderr and "Traceback" not in res.stderr


def _corrupt_gz(text: str) -> bytes:
    """A gzip member whose deflate data is damaged (zlib.error on reading, not a header error)."""
    data = bytearray(gzip.compress(text.encode() * 20))
    for i in range(20, min(len(data) - 8, 60)):
        data[i] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_damaged_gzip_fails_with_one_line_or_is_skipped(tmp_path, articles, capsys, damage):
    d = tmp_path / "d"
    d.mkdir()
    good = gzip.compress(articles[0].encode())
    bad = _corrupt_gz(articles[1]) if damage == "corrupt" else \
        gzip.compress(articles[1].encode() * 20)[:-40]
    (d / "bad.txt.gz").write_bytes(bad)
    (d / "good.txt.gz").write_bytes(good)
    (d / "c.txt").write_text(articles[2])
    recipe = write_recipe(tmp_path, [{"path": str(d)}])
    code, _, err = run_cli(capsys, recipe, "--output", tmp_path / "out")
    assert code == 2, err
    assert f"{d / 'bad.txt.gz'}: cannot read" in err and "on_error: skip" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    ds, stats = build(tmp_path, [{"path": str(d), "on_error": "skip"}])
    assert stats["dropped"].get("unreadable_file") == 1
    texts = " ".join(all_texts(ds))
    assert articles[0][:60] in texts and articles[2][:60] in texts
