"""Typed settings of the fine-tuning stage; the CLI flags and the suite YAML are generated from them.

A run is `models × tasks × train sizes × seeds`. One task is a `TaskConfig` (data, training,
protocol); a benchmark suite is a YAML file with the fields of `FinetuneConfig`. On the command
line every scalar field of the sections below is a flag (`--learning_rate`, `--train_file`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mlm.config import SEED_MAX, WORKERS_MAX, HubConfig, bounded
from mlm.errors import UserError

DEMO_MODEL = "runs/demo"
DEFAULT_MODELS = [DEMO_MODEL, "random-init", "tfidf-logreg"]


@dataclass
class DataConfig:
    task: Literal["classification", "ner"] = "classification"
    """Sequence classification (one or several labels per text) or named-entity recognition."""
    train_file: str | None = None
    """Labeled training data: a .csv/.tsv/.jsonl file, a CoNLL file (NER), a folder with one
    subfolder of .txt files per class (classification), or `pkg://package/sub/path`."""
    validation_file: str | None = None
    """Validation data for early stopping (default: carved from train_file, stratified)."""
    test_file: str | None = None
    """Test data scored at the end (default: carved from train_file, or test_list)."""
    test_list: str | None = None
    """A text file naming the test examples of train_file, one per line; the others form the
    training pool. Class folders: document paths relative to the folder. Other formats:
    `relative/file:LINE`, the line an example (CoNLL: a sentence) starts on. The same list can
    be a pretraining source's `exclude_from`, so test text never enters pretraining."""
    file_format: Literal["auto", "csv", "tsv", "jsonl", "conll", "folders", "lines"] = "auto"
    """Format of the data files (auto: from the extension; a directory means folders). lines: a
    folder of `<class>.txt` files, one example per line."""
    text_column: str = "text"
    """Column (csv/tsv) or field (jsonl) holding the text."""
    text_pair_column: str | None = None
    """Optional second text column, for sentence-pair tasks."""
    label_column: str = "label"
    """Column or field holding the label (classification)."""
    multi_label: bool = False
    """Several labels per example: the label field is a list, or a string split on
    label_delimiter."""
    label_delimiter: str | None = None
    """Delimiter between labels of a multi-label example given as a string, e.g. `|`."""
    labels: str | None = None
    """Declared label set, comma-separated (classification labels, or NER entity types): labels
    outside it are an error. Without it, a validation/test label never seen in training is an error."""
    exclude_labels: str | None = None
    """Comma-separated labels whose examples are left out of every split: rows of a file that
    are not part of the task (e.g. the `plot` rows beside `fresh`/`rotten` reviews). A label no
    row has is reported in the task's notes (often a typo or another case)."""
    tokens_column: str = "tokens"
    """Field holding the words of a JSONL NER example."""
    tags_column: str = "tags"
    """Field holding the tags of a JSONL NER example."""
    tag_scheme: Literal["auto", "bio", "iob1", "bioes"] = "auto"
    """Tagging scheme of NER files; all are normalised to BIO (IOB2). auto: detect per file."""
    strict_tags: bool = False
    """An invalid BIO transition (I-X not after B-X/I-X) is an error instead of being repaired."""
    validation_split: float = bounded(0.1, 0, 1, above=True, below=True)
    """Share of train_file carved out (stratified for classification) when there is no
    validation_file."""
    validation_size: int | None = bounded(None, 1, None)
    """Number of examples carved for validation (overrides validation_split)."""
    test_split: float = bounded(0.2, 0, 1, above=True, below=True)
    """Share of train_file carved out for testing when there is neither test_file nor test_list."""
    split_seed: int = bounded(0, 0, SEED_MAX - 1)  # the validation carve uses split_seed + 1
    """Seed of the carved validation/test splits (recorded in results.json)."""
    unlabeled_file: str | None = None
    """Unlabeled texts for self_training, one per line (.txt, compressed allowed), besides the
    training pool's texts outside the labeled subset. Lines equal to a validation or test text
    are left out."""

    def label_list(self, flag: str) -> list[str] | None:
        """The labels of `labels` or `exclude_labels`, split at commas (None when unset)."""
        value = getattr(self, flag)
        return None if value is None else [x.strip() for x in value.split(",") if x.strip()]

    def check(self) -> None:
        if self.task == "classification":
            seen: dict[str, str] = {}
            for flag in ("text_column", "label_column", "text_pair_column"):
                column = getattr(self, flag)
                if column is not None and column in seen:
                    raise UserError(f"--{seen[column]} and --{flag} both name the column "
                                    f"'{column}': the text and the label must be different columns")
                seen[column] = flag
        for flag in ("labels", "exclude_labels"):
            if self.label_list(flag) == []:
                raise UserError(f"--{flag} {getattr(self, flag)!r} names no label: give "
                                "comma-separated labels, e.g. pos,neg")


SCRATCH_LEARNING_RATE = 5e-4
"""Fine-tuning rate of mlm's from-scratch encoders and random-init when no rate is set."""
CHECKPOINT_LEARNING_RATE = 1e-4
"""Fine-tuning rate of models from a general checkpoint when no rate is set."""


@dataclass
class TrainConfig:
    learning_rate: float | None = bounded(None, 0, None, above=True)
    """Peak AdamW learning rate of every model. None: by the model's origin, SCRATCH_LEARNING_RATE
    (5e-4) for the encoders mlm pretrained from scratch and random-init, checkpoint_learning_rate
    for the others. 4x256 encoders from scratch: 1e-4 under-fits BBC topics at 100 labels, -0.032
    macro-F1 on every seed; 5e-4 and 1e-3 tie on English sentiment (bench/RESULTS.md,
    "Fine-tuning defaults")."""
    checkpoint_learning_rate: float | None = bounded(None, 0, None, above=True)
    """Peak learning rate of the models that descend from a general checkpoint: a model folder
    that mlm did not pretrain from scratch (MiniLM as is, or continued pretraining of it, whose
    run_summary.json names a base_model). None: learning_rate when that is set, else
    CHECKPOINT_LEARNING_RATE (1e-4: a MiniLM-sized checkpoint swings from epoch to epoch at 5e-4
    and under-fits 100 labels at 3e-5; bench/RESULTS.md, the development suite and the demo)."""
    weight_decay: float = bounded(0.01, 0, None)
    """AdamW weight decay (not on biases and LayerNorm)."""
    layer_decay: float = bounded(1.0, 0, 1, above=True)
    """Layer-wise learning-rate decay: the head trains at learning_rate, each encoder layer
    below at this factor times the one above (ELECTRA: 0.8; 1: one rate for all)."""
    warmup_ratio: float = bounded(0.1, 0, 1, below=True)
    """Share of the updates spent warming the learning rate up; then linear decay to 0."""
    num_train_epochs: float = bounded(10.0, 0, None, above=True)
    """Maximum passes over the training subset (early stopping may end sooner)."""
    per_device_train_batch_size: int = bounded(16, 1, 2**20)
    """Examples (NER: windows) per training step."""
    per_device_eval_batch_size: int = bounded(64, 1, 2**20)
    """Examples per evaluation step."""
    max_grad_norm: float = bounded(1.0, 0, None, above=True)
    """Gradient clipping threshold."""
    early_stopping_patience: int = bounded(4, 0, None)
    """Stop after this many epochs in which neither the validation metric nor the validation loss
    improved (0: never stop early). The weights of the best-metric epoch are kept."""
    max_length: int = bounded(128, 8, None)
    """Tokens per classification input ([CLS]/[SEP] included); longer texts are truncated, or cut
    into windows (max_windows)."""
    max_windows: int = bounded(1, 1, None)
    """Classification of long texts: cut a text into up to this many consecutive windows of
    max_length tokens, train on every window with the text's label and predict the mean of the
    windows' logits (1: truncate to the first window). Sentence pairs are always truncated."""
    windows_per_epoch: int | None = bounded(None, 1, None)
    """With max_windows > 1: train on at most this many of a text's windows per epoch, drawn
    afresh each epoch (None: all of them). Predictions still average all the windows; 1 makes an
    epoch cost one window per text instead of up to max_windows."""
    ner_max_length: int = bounded(128, 8, None)
    """Tokens per NER window; longer sentences are split into overlapping windows, never truncated."""
    doc_stride: int = bounded(32, 0, None)
    """Sub-tokens shared by consecutive NER windows (each word is scored from the window where it
    has the most context)."""
    label_all_tokens: bool = False
    """NER training: label every sub-token of a word (default: only the first). Evaluation is
    always one prediction per word, from its first sub-token."""
    class_weights: bool = False
    """Weight the loss by inverse class frequency in the training subset (classification)."""
    seqeval_strict: bool = False
    """Entity-level scores in seqeval's strict mode (IOB2) instead of the CoNLL convention."""
    dropout: float | None = bounded(0.1, 0, 1, below=True)
    """Hidden/attention dropout during fine-tuning (None: keep the checkpoint's)."""
    pooling: Literal["checkpoint", "cls", "mean"] = "checkpoint"
    """How a classification head summarises the text, for models whose head offers a choice
    (ModernBERT: the [CLS] state or the mean over tokens); checkpoint: as its config says. BERT
    and RoBERTa heads always read [CLS] and ignore this."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """Autocast precision of forward passes. auto: bf16 on a GPU with native bf16 (Ampere or newer) and on a CPU
    whose bf16 matrix products run faster than float32's (about 1.5x faster there), else no
    (float32), as in pretraining."""
    self_training: bool = True
    """Classification with one label per text: after fine-tuning (the teacher), label the
    unlabeled texts (the training pool outside the labeled subset, and unlabeled_file) with
    the teacher, keep the most confident of them (pseudo_label_share, max_pseudo_labels) and
    fine-tune a fresh copy of the model (the student, the one scored and saved) on the labeled
    and pseudo-labeled texts together. NER and multi-label tasks train one model. Sentiment,
    500 labels, 5 seeds: +0.035 macro-F1 [+0.017, +0.053] over the teacher in English, +0.026
    [+0.008, +0.044] in Chinese (bench/RESULTS.md, "Self-training")."""
    pseudo_label_teacher: Literal["model", "model+tfidf"] = "model+tfidf"
    """Who labels the unlabeled texts: the fine-tuned model alone, or the mean of its class
    probabilities and those of a TF-IDF logistic regression on the same labels (two views of
    the text, which err differently; the student is still one transformers model)."""
    pseudo_label_share: float = bounded(0.5, 0, 1, above=True)
    """Share of the unlabeled texts kept as pseudo-labels: per predicted class the most confident
    ones, at most this share of the unlabeled texts divided by the number of classes (a class
    the teacher predicts less often gives fewer)."""
    max_pseudo_labels: int = bounded(5000, 1, None)
    """At most this many pseudo-labeled texts, as many per class (the student's cost grows with
    them); a seeded sample of at most 20 times this many unlabeled texts is scored."""
    self_training_rounds: int = bounded(1, 1, 10)
    """Rounds of self-training: from the second on, the previous round's student is the
    teacher that labels the unlabeled texts again (with TF-IDF under model+tfidf), and a fresh
    student learns from its labels. Each round costs one more fine-tuning run."""
    self_training_keep: Literal["student", "better"] = "student"
    """Which model self-training returns (scored, saved, pushed). student: the last student.
    better: the student only if its validation score on the task's metric is at least its
    teacher's, else the teacher (later rounds stop at the first student that does not improve).
    On the suite, better cost 0.001-0.012 macro-F1 (a small validation set often prefers the
    teacher when the student is better on test; bench/RESULTS.md, "validation guard")."""
    setfit_num_iterations: int = bounded(20, 1, 1000)
    """SetFit (`--model setfit`): contrastive pairs drawn per labeled text and per side (similar /
    dissimilar), i.e. 2 x this x the train size pairs, one epoch over them."""
    setfit_max_steps: int = bounded(100, 1, None)
    """SetFit: at most this many contrastive steps of 16 pairs (caps the cost of large train
    sizes; at 100 labels and 20 iterations, one epoch is exactly 250 steps)."""
    setfit_learning_rate: float = bounded(2e-5, 0, None, above=True)
    """SetFit: learning rate of the sentence encoder during the contrastive step (the logistic
    regression head is fitted after it, on the encoder's embeddings). Texts are truncated to
    max_length tokens (max_windows does not apply)."""

    def rate_for(self, from_checkpoint: bool) -> float:
        """The peak learning rate of a model that does (or does not) descend from a general
        checkpoint: a rate the user set wins, else the default for the model's origin."""
        if from_checkpoint and self.checkpoint_learning_rate is not None:
            return self.checkpoint_learning_rate
        if self.learning_rate is not None:
            return self.learning_rate
        return CHECKPOINT_LEARNING_RATE if from_checkpoint else SCRATCH_LEARNING_RATE


@dataclass
class ProtocolConfig:
    train_sizes: str = "all"
    """Comma-separated numbers of labeled training examples (or `all`); every model gets the same
    subsets, nested across sizes, for a given seed."""
    seeds: int = bounded(3, 1, 1000)
    """Repeats per (model, size): subset, initialisation and data order change with the seed
    (at most 1,000: the 95 % interval is then ±0.06 standard deviations; a larger count
    is a typo that would run for weeks)."""
    seed: int = bounded(42, 0, SEED_MAX)
    """First seed; the repeats use seed, seed+1, ..."""
    metric: str | None = None
    """Score that picks the best epoch and the winner (default: macro_f1 for classification,
    f1 for NER)."""

    def sizes(self, pool: int | None) -> list[int]:
        """train_sizes (`50,100,all`) as sorted distinct sizes, checked against the pool size;
        syntax only when `pool` is None (`all` then counts as 0)."""
        sizes = []
        for part in str(self.train_sizes).split(","):
            part = part.strip().lower()
            if not part:
                raise UserError(f"--train_sizes {self.train_sizes!r}: an empty entry; give "
                                "comma-separated numbers or 'all', e.g. 100,500,all")
            if part == "all":
                sizes.append(pool or 0)
                continue
            try:
                n = int(part)
            except ValueError:
                raise UserError(f"--train_sizes: '{part}' is not a number or 'all'") from None
            if n < 1:
                raise UserError(f"--train_sizes: {n} must be at least 1")
            if pool is not None and n > pool:
                raise UserError(f"--train_sizes: {n} is larger than the {pool} training examples "
                                "available")
            sizes.append(n)
        return sorted(set(sizes))

    def check(self) -> None:
        self.sizes(None)  # the syntax, before any data is read
        if self.seed + self.seeds - 1 > SEED_MAX:
            raise UserError(f"seed {self.seed} with seeds {self.seeds}: the last seed, "
                            f"{self.seed + self.seeds - 1}, is outside [0, {SEED_MAX}]")


@dataclass
class RunConfig:
    output_dir: str | None = None
    """Where results.json, report.md, the learning curves and the models go (default:
    <first model>/finetune, or runs/finetune)."""
    save_models: Literal["best", "all", "none"] = "best"
    """Fine-tuned encoder folders to keep: best = one per (task, model), the seed with the best
    validation score at the largest train size; all = every run."""
    torch_threads: int | None = bounded(None, 1, WORKERS_MAX)
    """torch intra-op threads (default: the CPUs this process may use, by affinity and cgroup
    quota, shared among the processes of an `accelerate launch` on CPU)."""
    quiet: bool = False
    """Print only the final tables."""


@dataclass
class TaskConfig:
    """One labeled task of a run or a suite."""

    name: str = "task"
    """Short name of the task (a table and a learning curve per task)."""
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)


@dataclass
class FinetuneConfig:
    """What `finetune()` runs; a suite YAML file has exactly these keys."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    """Local save_pretrained folders, `random-init` (the first folder's architecture, untrained),
    `tfidf-logreg` (the scikit-learn baseline), `setfit` (SetFit on the MiniLM sentence encoder)
    or `setfit:<folder>` (SetFit on a local encoder folder)."""
    tasks: list[TaskConfig] = field(default_factory=list)
    """The tasks to run (a suite has several)."""
    name: str = "finetune"
    """Name of the run or suite (report title)."""
    run: RunConfig = field(default_factory=RunConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    path: str | None = field(default=None, metadata={"internal": True})
    """Suite file this was loaded from (relative data paths are resolved against its folder)."""


@dataclass
class FinetuneArgs(TaskConfig):
    """The sections that become CLI flags: a task's, plus run and hub (flag names are unique
    across sections; `name` is not a section, so not a flag)."""

    run: RunConfig = field(default_factory=RunConfig)
    hub: HubConfig = field(default_factory=HubConfig)
