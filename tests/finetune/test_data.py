"""Labeled data: readers, tag schemes, errors that name the file and line, and the seeded,
stratified splits carved out of a training file."""
from __future__ import annotations

from collections import Counter

import pytest

from mlm.errors import UserError
from mlm.finetune import DataConfig
from mlm.finetune.data import load_task, read_class_folders, read_ner, stratified_order
from tests.conftest import REPO
from tests.finetune.conftest import WNUT, write_csv


def test_conll_docstart_and_schemes(tmp_path):
    bio = tmp_path / "bio.conll"
    bio.write_text("-DOCSTART- -X- O O\n\nJohn NNP B-PER\nSmith NNP I-PER\nflew VBD O\n\n"
                   "to TO O\nNew NNP B-LOC\nYork NNP I-LOC\n")
    sents, repaired = read_ner(bio, DataConfig(task="ner"))
    assert [s.tokens for s in sents] == [["John", "Smith", "flew"], ["to", "New", "York"]]
    assert sents[0].tags == ["B-PER", "I-PER", "O"] and repaired == 0

    bioes = tmp_path / "bioes.txt"
    bioes.write_text("John\tB-PER\nSmith\tE-PER\nin\tO\nParis\tS-LOC\n")
    sents, _ = read_ner(bioes, DataConfig(task="ner"))
    assert sents[0].tags == ["B-PER", "I-PER", "O", "B-LOC"]

    iob1 = tmp_path / "iob1.txt"  # IOB1: entities start with I-; B- only between touching entities
    iob1.write_text("John\tI-PER\nSmith\tI-PER\nMary\tB-PER\nin\tO\nParis\tI-LOC\n")
    sents, repaired = read_ner(iob1, DataConfig(task="ner"))
    assert sents[0].tags == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"] and repaired == 0

    bad_bio = tmp_path / "bad.txt"  # BIO with one invalid I- start among valid entities
    bad_bio.write_text("a\tB-PER\nb\tI-PER\nc\tO\nd\tI-LOC\ne\tB-ORG\n")
    sents, repaired = read_ner(bad_bio, DataConfig(task="ner", tag_scheme="bio"))
    assert sents[0].tags == ["B-PER", "I-PER", "O", "B-LOC", "B-ORG"] and repaired == 1
    with pytest.raises(UserError, match=r"bad.txt:4: invalid BIO transition"):
        read_ner(bad_bio, DataConfig(task="ner", tag_scheme="bio", strict_tags=True))


def test_wnut_reads_every_sentence(wnut):
    assert len(wnut) == 2394 and sum(len(s.tokens) for s in wnut) == 46469
    assert read_ner(WNUT, DataConfig(task="ner", file_format="conll"))[1] == 0  # nothing repaired


def test_bad_inputs_name_file_and_line(tmp_path, bbc_csv):
    bad = tmp_path / "cols.conll"
    bad.write_text("John NNP B-PER\nSmith I-PER\n")
    with pytest.raises(UserError, match=r"cols.conll:2: expected 3 columns \(as on line 1\), found 2"):
        read_ner(bad, DataConfig(task="ner"))
    unseen = tmp_path / "test.csv"
    unseen.write_text("text,label\nsome words,business\nother words,politics\n")
    cfg = DataConfig(train_file=str(bbc_csv["train"]), validation_file=str(bbc_csv["validation"]),
                     test_file=str(unseen))
    with pytest.raises(UserError, match=r"test.csv:3: label 'politics' in test never occurs in the training"):
        load_task(cfg)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\nsome words,\n")
    with pytest.raises(UserError, match=r"empty.csv:2: empty or invalid label"):
        load_task(DataConfig(train_file=str(empty)))
    number = tmp_path / "number.jsonl"
    number.write_text('{"text": "fine", "label": "a"}\n{"text": 42, "label": "b"}\n')
    with pytest.raises(UserError, match=r"number.jsonl:2: column 'text' holds int 42, not text"):
        load_task(DataConfig(train_file=str(number)))
    with pytest.raises(UserError, match=r"number.jsonl: not a folder \(file_format folders"):
        load_task(DataConfig(train_file=str(number), file_format="folders"))
    one = tmp_path / "one.csv"
    one.write_text("text,label\n" + "".join(f"review {i},pos\n" for i in range(30)))
    with pytest.raises(UserError, match=r"one.csv: every example has the label 'pos'"):
        load_task(DataConfig(train_file=str(one)))
    twice = tmp_path / "twice.csv"  # a row dict would keep only the last 'text' column
    twice.write_text("text,label,text\nthe review,pos,a note\n")
    with pytest.raises(UserError, match=r"twice.csv:1: the header names the column 'text' twice"):
        load_task(DataConfig(train_file=str(twice)))


def test_spreadsheet_and_latin1_files(tmp_path):
    """A byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name; a file in
    another encoding stops with its name and the line of the first bad byte."""
    rows = "".join(f"{w} review {i},{lab}\n" for i in range(20)
                   for w, lab in (("great", "pos"), ("dull", "neg")))
    bom = tmp_path / "excel.csv"
    bom.write_bytes(("\ufefftext,label\n" + rows).encode("utf-8"))
    assert sorted(load_task(DataConfig(train_file=str(bom))).label_names) == ["neg", "pos"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes(("text,label\n" + rows + "caf\u00e9 cr\u00e8me,pos\n").encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.csv:42: not UTF-8 text"):
        load_task(DataConfig(train_file=str(latin)))
    packed = tmp_path / "ner.conll.gz"  # compressed CoNLL is read, not mistaken for bad text
    import gzip

    packed.write_bytes(gzip.compress("Jos\u00e9 B-PER\nvisits O\n\nParis B-LOC\n".encode()))
    assert [s.tokens for s in read_ner(packed, DataConfig(task="ner"))[0]] == [["Jos\u00e9", "visits"], ["Paris"]]
    conll = tmp_path / "latin.conll"
    conll.write_bytes("Jos\u00e9 B-PER\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.conll:1: not UTF-8 text"):
        read_ner(conll, DataConfig(task="ner"))
    lines = tmp_path / "lines"  # plain text is read leniently, and says so
    lines.mkdir()
    (lines / "pos.txt").write_bytes("".join(f"great film {i}\n" for i in range(20)).encode())
    (lines / "neg.txt").write_bytes(("".join(f"dull film {i}\n" for i in range(19))
                                     + "cr\u00e8me br\u00fbl\u00e9e, dull\n").encode("latin-1"))
    task = load_task(DataConfig(train_file=str(lines), file_format="lines"))
    assert task.notes == [f"lines: 1 example(s) hold bytes that are not UTF-8, read as U+FFFD "
                          f"(first: {lines / 'neg.txt'}:20)"]


def test_class_folders_reject_unknown_test_list_entry(tmp_path, bbc_dir):
    listing = tmp_path / "list.txt"
    listing.write_text("tech/001.txt\ntech/9999.txt\n")
    with pytest.raises(UserError, match="tech/9999.txt"):
        read_class_folders(bbc_dir, listing)


def test_bbc_test_list_and_stratified_validation(bbc_dir):
    cfg = DataConfig(train_file=str(bbc_dir), test_list=str(REPO / "data_recipes/splits/bbc_test.txt"),
                     validation_size=100)
    data = load_task(cfg)
    listed = set((REPO / "data_recipes/splits/bbc_test.txt").read_text().split())
    assert len(data.test) == 500 and {ex.where for ex in data.test} == listed
    assert not listed & {ex.where for ex in data.train + data.validation}
    assert len(data.validation) == 100 and len(data.train) == 2225 - 600
    counts = {k: sum(ex.labels[0] == k for ex in data.validation) for k in data.label_names}
    assert min(counts.values()) >= 15, counts  # stratified: every topic near its 20 % share
    assert load_task(cfg).splits == data.splits  # deterministic


def test_carved_splits_are_stratified_disjoint_and_seeded(tmp_path, bbc_dir):
    """Test and validation carved from one file: disjoint, every class in its share (to one
    example), the same for a seed and different for another, recorded by index."""
    sizes = {"business": 40, "sports": 20, "tech": 10}
    rows = [[doc.read_text(errors="replace")[:200], topic] for topic, n in sizes.items()
            for doc in sorted((bbc_dir / topic).glob("*.txt"))[:n]]
    path = write_csv(tmp_path / "pool.csv", ["text", "label"], rows)

    def split(seed: int):
        return load_task(DataConfig(train_file=str(path), test_split=0.2, validation_split=0.25, split_seed=seed))

    data = split(3)
    assert [len(data.train), len(data.validation), len(data.test)] == [42, 14, 14]
    assert not {ex.where for ex in data.test} & {ex.where for ex in data.train + data.validation}
    for part in (data.test, data.validation):
        counts = Counter(ex.labels[0] for ex in part)
        assert all(abs(counts[k] - len(part) * n / 70) <= 1 for k, n in sizes.items()), counts
    assert data.splits["test_carved"]["indices"] == sorted(data.splits["test_carved"]["indices"])
    assert split(3).splits == data.splits
    assert split(4).splits["test_carved"]["indices"] != data.splits["test_carved"]["indices"]


def test_a_split_that_cannot_be_stratified_names_the_file(tmp_path):
    """A class with one example cannot be split in proportion: one line naming the file, the
    split and the class; giving a validation file avoids carving it."""
    path = write_csv(tmp_path / "few.csv", ["text", "label"],
                     [[f"text {i}", "a" if i < 9 else "b"] for i in range(10)])
    with pytest.raises(UserError) as err:
        load_task(DataConfig(train_file=str(path), test_split=0.2))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: cannot carve a stratified test split of 2")
    assert "['b']" in msg and "give a test file instead" in msg
    with pytest.raises(UserError, match="cannot carve 10 test examples out of 10"):
        load_task(DataConfig(train_file=str(path), test_split=0.99999))


def test_training_subsets_are_nested_stratified_prefixes():
    """The protocol's subsets of growing size are prefixes of one seeded order in which every
    prefix holds each class in about its share of the pool (here to within one example)."""
    keys = ["a"] * 40 + ["b"] * 20 + ["c"] * 10
    order = stratified_order(keys, 7)
    assert sorted(order) == list(range(70)) and stratified_order(keys, 7) == order
    assert stratified_order(keys, 8) != order
    for size in (3, 10, 35, 70):
        counts = Counter(keys[i] for i in order[:size])
        assert all(abs(counts[k] - size * n / 70) <= 1 for k, n in (("a", 40), ("b", 20), ("c", 10))), counts


def test_an_excluded_label_no_file_has_is_noted(tmp_path):
    """--exclude_labels naming a label no row has (a typo, another case) leaves a note; one
    that some file has does not."""
    rows = [[f"text number {i} about something", ["neutral", "pos", "neg"][i % 3]] for i in range(60)]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    typo = load_task(DataConfig(train_file=str(train), exclude_labels="Neutral"))
    assert typo.notes == ["--exclude_labels: no row of train.csv has the label 'Neutral'"]
    assert {ex.labels[0] for ex in typo.train} == {"neutral", "pos", "neg"}
    right = load_task(DataConfig(train_file=str(train), exclude_labels="neutral"))
    assert right.notes == [] and {ex.labels[0] for ex in right.train} == {"pos", "neg"}
