"""mlm.corpus.readers: every format and compression, units, damaged and skipped files."""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma

import pytest

from mlm.errors import UserError
from tests.corpus.conftest import all_texts, build, run_cli, write_recipe


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
    assert ".. note" not in joined and "http://x.y" not in joined
    assert "\nhidden\n" in joined  # a directive's marker goes, its body is text and stays
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


def test_skip_modes_count_instead_of_failing(tmp_path, articles):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.jsonl").write_text("\n".join([json.dumps({"text": articles[0]}), "{oops",
                                          json.dumps({"other": 1}), json.dumps({"text": 5}),
                                          json.dumps({"text": articles[1]})]))
    (d / "b.txt").write_bytes(articles[2].encode() + b"\xff\xfe broken")
    (d / "c.txt").write_text(articles[3])
    ds, stats = build(tmp_path, [{"path": str(d), "on_error": "skip", "errors": "skip"}])
    assert stats["dropped"] == {"malformed_record": 3, "encoding_error": 1}
    assert len(all_texts(ds)) == 3
    (tmp_path / "n.jsonl").write_text(json.dumps({"text": articles[0]}) + "\n" + json.dumps({"text": 5}))
    with pytest.raises(UserError, match=r"n.jsonl:2: field 'text' holds int 5, not text"):
        build(tmp_path, [{"path": str(tmp_path / "n.jsonl")}])
    ds, stats = build(tmp_path, [{"path": str(d / "b.txt")}, {"path": str(d / "c.txt")}])
    assert "\ufffd" in "".join(all_texts(ds))  # errors: replace (the default)


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
