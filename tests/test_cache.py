"""mlm.cache: digests and the atomic cache entry every stage builds through."""
from __future__ import annotations

import pytest

from mlm.cache import cached, digest


def test_built_once_then_reused(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "data.txt").write_text("v1")

    first = cached(tmp_path, "k", build)
    again = cached(tmp_path, "k", build)
    assert first == again == tmp_path / "k"
    assert len(calls) == 1 and calls[0] != first  # built elsewhere, then renamed into place
    assert (first / "data.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_failed_build_leaves_no_entry_and_the_next_one_succeeds(tmp_path):
    def broken(tmp):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached(tmp_path, "k", broken)
    assert not any(tmp_path.iterdir())  # neither the entry nor its temporary folder
    entry = cached(tmp_path, "k", lambda tmp: (tmp / "ok.txt").write_text("whole"))
    assert sorted(p.name for p in entry.iterdir()) == ["ok.txt"]  # no debris of the failed one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_rebuild_replaces_the_entry(tmp_path):
    cached(tmp_path, "k", lambda tmp: (tmp / "old.txt").write_text("old"))
    entry = cached(tmp_path, "k", lambda tmp: (tmp / "new.txt").write_text("new"), rebuild=True)
    assert sorted(p.name for p in entry.iterdir()) == ["new.txt"]


def test_digest_is_stable_and_discriminating():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    assert len(digest("x")) == 16
