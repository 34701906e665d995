"""mlm.corpus.cli: the mlm-corpus command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO
from tests.corpus.conftest import run_cli, write_recipe


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
