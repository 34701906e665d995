"""mlm.corpus.build: corpus building: sampling weights, the cache."""
from __future__ import annotations

from mlm.corpus import build as build_mod
from mlm.corpus.build import build_corpus
from mlm.recipe import corpus_fingerprint, load_recipe
from tests.corpus.conftest import build, write_recipe


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
