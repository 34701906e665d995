"""mlm.corpus.dedup: exact and near-duplicate removal."""
from __future__ import annotations

from pathlib import Path

from tests.corpus.conftest import all_texts, build


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
