"""Typed settings for every pretraining stage, loadable from YAML and overridable from the CLI.

Each stage has one dataclass; a docstring under each field says what it does. The defaults
here are the only defaults: the YAML loader and the CLI parser are generated from these
classes, so there is no second schema to keep in sync.
"""
from __future__ import annotations

import argparse
import codecs
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mlm.errors import UserError

SEED_MAX = 2**32 - 1
"""Largest seed numpy's generator (seeded by `set_seed`) accepts."""
WORKERS_MAX = 1024
"""Most processes, DataLoader workers or threads a setting may ask for: more than any machine
has, and each one costs memory (a typo like 1e300 spawned workers until the machine hung)."""
INT_MAX = 2**63 - 1
"""Largest integer any setting takes (torch, numpy and the tokenizers library hold counts in 64
bits; a larger one crashed there with an OverflowError)."""


def bounded(default: Any, lo: float | None = None, hi: float | None = None, *,
            above: bool = False, below: bool = False) -> Any:
    """A field whose value, when set, must lie between `lo` and `hi` (strictly with `above` /
    `below`); `check_ranges` enforces it before any work starts."""
    return field(default=default, metadata={"range": (lo, hi, above, below)})


def _number(v: float) -> str:
    """Integers in full (a seed's 4294967295, not 4.29497e+09) up to 19 digits, other numbers
    short (1e+300 rather than 301 digits)."""
    return str(v) if isinstance(v, int) and abs(v) <= INT_MAX else f"{v:g}"


def allowed_range(rng: tuple) -> str:
    """`(0, 1]`-style text of a field's range."""
    lo, hi, above, below = rng
    if hi is None:
        return f"{'>' if above else '>='} {_number(lo)}"
    return f"{'(' if above else '['}{_number(lo)}, {_number(hi)}{')' if below else ']'}"


def check_ranges(obj: Any, where: str = "") -> None:
    """Refuse any number outside its field's range, or not finite, naming the setting, its flag
    and the allowed range, and any combination a section's `check()` refuses; walks nested
    sections and lists of them."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        here = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_ranges(item, f"{here}[{i}]")
        rng = f.metadata.get("range")
        if rng is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        lo, hi, above, below = rng
        if isinstance(value, int) and hi is None and value > INT_MAX:
            hi = INT_MAX  # every integer is held in 64 bits somewhere
        inside = math.isfinite(value) and \
            (lo is None or (value > lo if above else value >= lo)) and \
            (hi is None or (value < hi if below else value <= hi))
        if not inside:
            # A section's fields are flags; those of a list item (a recipe's sources) are not.
            flag = "" if where.endswith("]") else f" (--{f.name})"
            raise UserError(f"{here}{flag} = {_number(value)}: allowed "
                            f"{allowed_range((lo, hi, above, below))}")
    if hasattr(obj, "check"):  # rules that tie fields together, beside them in the class
        obj.check()


@dataclass
class SourceConfig:
    path: str
    """A file, a directory (read recursively), a glob, or `pkg://package/sub/path` for data
    shipped inside an installed Python package."""
    format: Literal["auto", "txt", "md", "rst", "html", "jsonl", "csv", "tsv", "parquet", "conll"] = "auto"
    """txt | md | rst | html | jsonl | csv | tsv | parquet | conll, or auto (from the file
    extension; a .gz, .bz2, .xz or .zst ending is decompressed first, e.g. notes.jsonl.zst).
    conll (never auto): one token per line, first column, blank lines between sentences; a
    document is a sentence, its tokens joined by spaces (the text of a labeled NER file)."""
    text_field: str | list[str] | None = None
    """Field (jsonl) or column (csv/parquet) holding the text; several are joined by a blank line."""
    document: Literal["file", "paragraph", "line"] = "file"
    """What one document is in a text file: the whole file, each paragraph, or each line."""
    exclude_from: str | None = None
    """A text file listing paths (relative to `path`) to leave out, one per line; e.g. the test
    articles of a labeled task, so they never enter pretraining. An entry `file:LINE` leaves
    out one document: the line (`document: line`), record or CoNLL sentence starting there."""
    encoding: str = "utf-8"
    """Text encoding of the files."""
    errors: Literal["replace", "skip", "fail"] = "replace"
    """Invalid bytes: replace them, skip the file (counted), or fail naming the file and line."""
    on_error: Literal["fail", "skip"] = "fail"
    """A malformed record (bad JSON line, missing field): fail naming file:line, or skip and count."""
    weight: float = bounded(1.0, 0, None, above=True)
    """Sampling weight: 2.0 puts every training document in twice, 0.5 keeps a (deterministic)
    half; fractional parts are decided by a hash of the document."""

    def check(self) -> None:
        if not self.path.strip():
            raise UserError("a source's path is empty: give a file, a folder, a glob or "
                            "pkg://package/sub/path")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise UserError(f"source {self.path}: unknown encoding '{self.encoding}' (a Python "
                            "codec name, e.g. utf-8, latin-1, cp1252)") from None


@dataclass
class CleanConfig:
    normalization: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normalisation applied to every document."""
    min_chars: int = bounded(20, 0, None)
    """Documents shorter than this (after cleaning) are dropped."""
    max_chars: int | None = bounded(None, 1, None)
    """Documents longer than this are dropped (None: no limit)."""
    strip_markup: bool = True
    """Reduce Markdown, reStructuredText and HTML sources to their plain text."""
    remove_control_chars: bool = True
    """Remove control and invisible format characters (tabs and newlines stay)."""
    normalize_whitespace: bool = True
    """Collapse runs of spaces, trim lines, and keep at most one blank line between paragraphs."""
    max_non_alpha_fraction: float | None = bounded(0.5, 0, 1)
    """Drop documents where more than this share of the non-space characters are not letters
    (tables, logs, number dumps); None: keep all."""
    corpus_num_proc: int = bounded(1, 1, WORKERS_MAX)
    """Worker processes that read, clean and scrub files (files are split between them)."""

    def check(self) -> None:
        if self.max_chars is not None and self.min_chars > self.max_chars:
            raise UserError(f"clean.min_chars (--min_chars) = {self.min_chars} is above "
                            f"clean.max_chars (--max_chars) = {self.max_chars}: no document "
                            "could be kept; allowed min_chars <= max_chars")


@dataclass
class SplitConfig:
    validation_fraction: float = bounded(0.05, 0, 0.5, above=True)
    """Share of documents held out for validation loss, assigned by a hash of the text."""
    split_seed: int = bounded(0, 0, SEED_MAX)
    """Salt of the hash that assigns documents to train or validation."""


@dataclass
class PrivacyConfig:
    scrub_pii: bool = True
    """Replace personal data and secrets with typed placeholders such as [EMAIL]."""
    pii_types: list[Literal["email", "phone", "ip", "url_credentials", "credit_card", "iban",
                            "ssn", "secret"]] = field(default_factory=lambda: [
        "email", "phone", "ip", "url_credentials", "credit_card", "iban", "ssn", "secret"])
    """Kinds to scrub: e-mail addresses, phone numbers (international ones checked by
    phonenumbers), IP addresses, credentials in URLs, Luhn-valid card numbers, IBANs with a valid
    checksum, US social security numbers, secrets (cloud and API keys, tokens, passwords,
    private key blocks)."""


@dataclass
class DedupConfig:
    dedup_exact: bool = True
    """Drop documents whose normalised text (case and whitespace folded) was seen before."""
    dedup_near: bool = True
    """Drop near-duplicates: MinHash over word n-grams, candidates found by LSH."""
    dedup_threshold: float = bounded(0.8, 0, 1, above=True)
    """Estimated Jaccard similarity of word n-grams at which two documents are near-duplicates."""
    minhash_num_perm: int = bounded(128, 2, 1024)
    """MinHash permutations (more: a finer similarity estimate, more memory per document)."""
    minhash_ngram: int = bounded(5, 1, None)
    """Words per shingle of the MinHash signature."""
    keep_duplicates: bool = False
    """Keep duplicates instead of dropping them; each still lands on its original's split side."""


MIN_VOCAB = {"wordpiece": 105, "unigram": 105, "bpe": 261}
"""Smallest vocabulary a new tokenizer can have: 5 special tokens plus the base alphabet (100
characters; 256 bytes for byte-level BPE)."""


@dataclass
class TokenizerConfig:
    tokenizer_kind: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    """Algorithm of a newly trained tokenizer."""
    tokenizer_name_or_path: str | None = None
    """Reuse an existing tokenizer folder instead of training one (None: train one, or, when
    continuing from model_name_or_path, that checkpoint's own tokenizer)."""
    vocab_size: int = bounded(16000, 105, 1_048_576)
    """Vocabulary size of a newly trained tokenizer (at most 2^20: the largest vocabularies in use
    are ~256k, and the trainers allocate memory in proportion before learning anything)."""
    min_frequency: int = bounded(2, 1, None)
    """Minimum count of a merge/piece to enter the vocabulary."""
    lowercase: bool = True
    """Lowercase (and strip accents) before tokenizing."""
    strip_accents: bool | None = None
    """Strip accents before tokenizing (None: do it when lowercase is on, as BERT uncased)."""
    max_train_documents: int | None = bounded(None, 1, None)
    """Train the tokenizer on at most this many documents, a seeded random sample of the train
    split streamed from disk (None: all); bounds the trainer's memory on a large corpus."""
    max_train_bytes: int | None = bounded(None, 1, None)
    """Train the tokenizer on at most this many bytes of UTF-8 text, sampled as above (None: all)."""
    extend_vocab_words: int = bounded(0, 0, None)
    """With tokenizer_name_or_path: add this many frequent corpus words that the tokenizer splits
    into the most pieces; their new embedding rows start as the mean of their old pieces' rows."""

    def check(self) -> None:
        if self.extend_vocab_words and not self.tokenizer_name_or_path:
            raise UserError("extend_vocab_words needs tokenizer_name_or_path (the tokenizer to "
                            "extend)")
        floor = MIN_VOCAB[self.tokenizer_kind]
        if not self.tokenizer_name_or_path and self.vocab_size < floor:
            raise UserError(f"tokenizer.vocab_size (--vocab_size) = {self.vocab_size} is too small "
                            f"for {self.tokenizer_kind}: allowed >= {floor} (its 5 special tokens "
                            "and base alphabet)")


@dataclass
class PackingConfig:
    max_seq_length: int = bounded(128, 8, None)
    """Tokens per training block, [CLS] and [SEP] included."""
    num_proc: int = bounded(1, 1, WORKERS_MAX)
    """Worker processes for tokenization. 1 (one process, the Rust tokenizer on all its threads)
    was the fastest in bench/bench_packing.py: 1.00x a bare encode, vs 0.72x for 2 workers."""
    respect_document_boundaries: bool = False
    """Start a document on a new block when it does not fit in the current one (the rest is
    padded, attention_mask 0); a document longer than a block is split across blocks."""
    document_attention: bool = False
    """Document-aware attention: a token attends only to tokens of its own document inside a
    packed block (block-diagonal 4-D mask from the blocks' document_ids; with flash_attention_2,
    one varlen segment per document instead, no mask)."""


@dataclass
class MaskingConfig:
    masking_strategy: Literal["token", "whole_word", "span"] = "whole_word"
    """Which units are masked together: single tokens, whole words, or spans of words."""
    mlm_probability: float = bounded(0.30, 0, 1, above=True)
    """Share of tokens selected for prediction during training."""
    mlm_probability_end: float | None = bounded(None, 0, 1, above=True)
    """If set, the masking rate moves linearly from mlm_probability to this by the end."""
    eval_mlm_probability: float = bounded(0.15, 0, 1, above=True)
    """Masking rate of the fixed validation masks, so validation loss is comparable across runs."""
    mask_replace_prob: float = bounded(0.8, 0, 1)
    """Of the selected tokens, share replaced by [MASK]."""
    random_replace_prob: float = bounded(0.1, 0, 1)
    """Of the selected tokens, share replaced by a random token (the rest stay unchanged)."""
    span_geometric_p: float = bounded(0.2, 0, 1, above=True)
    """Span masking: parameter p of the geometric distribution of span lengths in words
    (SpanBERT: 0.2)."""
    span_max_words: int = bounded(10, 1, 1024)
    """Span masking: longest span in words; the geometric is truncated here and renormalised
    (SpanBERT: 10, mean 3.8 words)."""

    def check(self) -> None:
        if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-9:
            raise UserError(f"masking.mask_replace_prob + random_replace_prob (--mask_replace_prob, "
                            f"--random_replace_prob) = {self.mask_replace_prob} + "
                            f"{self.random_replace_prob}: allowed a sum in [0, 1]")


@dataclass
class ModelConfig:
    model_family: Literal["bert", "roberta", "modernbert"] = "modernbert"
    """transformers architecture of a model built from scratch. ModernBERT (pre-norm, GeGLU,
    rotary positions) is the default: on the demo budget it leaves the unigram plateau that a
    post-LN BERT of the same shape stays on (bench/RESULTS.md, issue #9 notebook)."""
    model_size: Literal["tiny", "mini", "small", "medium", "base"] = "mini"
    """Size preset (BERT miniatures: tiny 2x128, mini 4x256, small 4x512, medium 8x512,
    base 12x768 as layers x hidden)."""
    model_name_or_path: str | None = None
    """Continue pretraining from this local checkpoint instead of building from scratch."""
    num_hidden_layers: int | None = bounded(None, 1, 1024)
    """Override the preset's depth."""
    hidden_size: int | None = bounded(None, 1, 65536)
    """Override the preset's width."""
    num_attention_heads: int | None = bounded(None, 1, 1024)
    """Override the preset's number of attention heads."""
    intermediate_size: int | None = bounded(None, 1, 2**20)
    """Override the preset's feed-forward width (default 4x hidden)."""
    dropout: float = bounded(0.0, 0, 1, below=True)
    """Hidden and attention dropout during pretraining (0: none, as in cramming/ModernBERT)."""
    classifier_pooling: Literal["cls", "mean"] = "mean"
    """ModernBERT only: the pooling its sequence-classification head will use when fine-tuned
    (saved in config.json; mean pooling suits encoders pretrained on a small budget)."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel while pretraining (the saved model is the same). auto: flash_attention_2
    on a CUDA GPU (compute capability 8.0+) with the flash-attn package and bf16 or fp16
    autocast; eager (plain matmul + softmax) on
    CPU at max_seq_length <= 128, where torch's fused CPU attention is slow to backpropagate
    (demo recipe: 1.3x the tokens/s, bench/RESULTS.md); SDPA otherwise. With
    flash_attention_2 a batch of packed blocks runs unpadded, as one sequence cut at block (and,
    with document_attention, document) boundaries: flash-attn's varlen kernel."""
    sparse_prediction: bool = True
    """Run the prediction head only on the selected tokens (the saved model is unchanged)."""
    objective: Literal["mlm", "rtd"] = "mlm"
    """Self-supervised objective. mlm: predict the masked tokens. rtd: replaced-token detection
    (ELECTRA): a small masked-LM generator fills the masks with samples and the encoder learns, on
    every token, whether it was replaced; the encoder is saved as the model and the generator in
    output_dir/generator (a fill-mask model). mlm is the default: from scratch on 15 CPU minutes,
    rtd fine-tuned 7-38 points below it on every task of the development suite (bench/RESULTS.md,
    issue #15)."""
    generator_size: float = bounded(0.25, 0, 1, above=True)
    """rtd: the generator's width as a share of the encoder's (ELECTRA: 1/4 to 1/3), same depth,
    one attention head per 64 dimensions; it shares the encoder's token embeddings through a
    projection."""
    embedding_sharing: Literal["tied", "disentangled"] = "tied"
    """rtd: how the generator and the encoder share token embeddings. tied: one matrix that both
    losses train (ELECTRA). disentangled: the generator's masked-LM loss alone trains the shared
    matrix, and the encoder adds a residual of its own that starts at zero (DeBERTa-v3's
    gradient-disentangled sharing), so the 50x replaced-token loss cannot pull the embeddings
    away from what the masked-LM learns; the saved encoder holds their sum."""
    discriminator_weight: float = bounded(50.0, 0, None, above=True)
    """rtd: weight of the replaced-token loss against the generator's masked-LM loss (ELECTRA: 50)."""

    def attention_for(self, device_type: str, max_seq_length: int, precision: str) -> str:
        """The attention implementation of a run on this device, length and autocast
        precision (`auto` decided); refuses flash_attention_2 where it cannot run."""
        available = flash_attention_available()
        flash = available and device_type == "cuda" and precision in ("bf16", "fp16")
        if self.attn_implementation == "flash_attention_2" and not flash:
            raise UserError(
                "model.attn_implementation (--attn_implementation) = flash_attention_2 needs a "
                "CUDA GPU of compute capability 8.0 or more, the flash-attn package and "
                f"mixed_precision bf16 or fp16; this run has {device_type}, precision "
                f"{precision}{'' if available else ', no flash-attn'}: "
                "allowed auto, sdpa or eager")
        if self.attn_implementation != "auto":
            return self.attn_implementation
        if flash:
            return "flash_attention_2"
        return "eager" if device_type == "cpu" and max_seq_length <= 128 else "sdpa"


def flash_attention_available() -> bool:
    """Whether flash-attn 2 can run here: the package, and a CUDA GPU of compute capability
    8.0 or more (Ampere and later; flash-attn 2 refuses older ones)."""
    import torch
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available() and torch.cuda.get_device_capability() >= (8, 0)


@dataclass
class TrainingConfig:
    output_dir: str = "runs/demo"
    """Where the model, tokenizer, logs and checkpoints are written."""
    learning_rate: float = bounded(1e-3, 0, None, above=True)
    """Peak learning rate of AdamW."""
    weight_decay: float = bounded(0.01, 0, None)
    """AdamW weight decay (not applied to biases and norms)."""
    adam_beta1: float = bounded(0.9, 0, 1, below=True)
    """AdamW beta1 (decay of the gradient's running mean)."""
    adam_beta2: float = bounded(0.98, 0, 1, below=True)
    """AdamW beta2 (decay of the squared gradient's running mean; 0.98 as RoBERTa, steadier
    than 0.999 with the large learning rates of short runs)."""
    adam_epsilon: float = bounded(1e-6, 0, None, above=True)
    """AdamW epsilon."""
    warmup_ratio: float = bounded(0.06, 0, 1, below=True)
    """Share of the budget spent warming the learning rate up linearly."""
    head_warmup_ratio: float = bounded(0.0, 0, 1, below=True)
    """Share of the budget in which only the prediction head learns and the encoder (embeddings
    included) stays as it is: for continued pretraining of a checkpoint saved without its MLM
    head (MiniLM), whose new, random head would first send noise into the pretrained encoder
    (the linear-probe-then-fine-tune idea, Kumar et al. 2022). 0: everything learns from the start.
    Measured with MiniLM on English sentiment, 0.4: +0.003 to +0.005 macro-F1 over 0, not
    separated over 5 seeds (bench/RESULTS.md, 2026-12-08)."""
    lr_scheduler_type: Literal["linear", "cosine"] = "linear"
    """Decay after warmup, laid out over the whole budget."""
    per_device_train_batch_size: int | None = bounded(None, 1, 2**20)
    """Blocks per device per step (default: 8 on CPU, where on a time budget more updates of
    fewer tokens learn faster than fewer big ones (bench/RESULTS.md); 64 on a GPU, where a batch
    of 8 leaves the device mostly idle)."""
    per_device_eval_batch_size: int = bounded(64, 1, 2**20)
    """Blocks per device per validation step."""
    gradient_accumulation_steps: int = bounded(1, 1, 2**20)
    """Steps whose gradients are summed before each optimizer update."""
    max_steps: int | None = bounded(None, 1, None)
    """Budget in optimizer updates."""
    max_tokens: int | None = bounded(None, 1, None)
    """Budget in training tokens seen."""
    max_minutes: float | None = bounded(8.0, 0, None, above=True)
    """Budget in wall-clock minutes of training (the schedule is laid out over it)."""
    max_grad_norm: float = bounded(1.0, 0, None, above=True)
    """Gradient clipping threshold."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision. auto: bf16 on a GPU with native bf16 (Ampere or newer), and on a CPU whose bf16 matrix
    products run faster than float32's (native AVX-512 BF16 or AMX: about 1.5x the tokens/s);
    else no (float32; where bf16 is slow, autocast ran at 0.46-0.74x). The run summary records the
    choice."""
    eval_steps: int = bounded(200, 1, None)
    """Validate every this many optimizer updates (and at the end)."""
    max_eval_blocks: int = bounded(256, 1, None)
    """Validation blocks used per evaluation."""
    logging_steps: int = bounded(20, 1, None)
    """Log training loss every this many updates."""
    seed: int = bounded(42, 0, SEED_MAX)
    """Seed of model initialisation, data order and masks."""
    dataloader_num_workers: int | None = bounded(None, 0, WORKERS_MAX)
    """DataLoader worker processes that mask batches ahead of the model (default: none on CPU,
    where they would take cores from the model; 4 on a GPU, with pinned memory)."""
    torch_compile: bool = False
    """Compile the model with torch.compile (inductor): faster steps after a warm-up of tens of
    seconds to minutes (demo model on CPU: 55 s, then 1.3x the tokens/s in one measurement; not yet
    measured on a GPU, nor for quality per minute)."""
    save_steps: int | None = bounded(None, 1, None)
    """Write a checkpoint every this many optimizer updates."""
    save_minutes: float | None = bounded(10.0, 0, None, above=True)
    """Write a checkpoint every this many minutes of training."""
    save_total_limit: int = bounded(2, 1, None)
    """Checkpoints kept in output_dir/checkpoints (the oldest are removed)."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir/checkpoints."""
    resume_from_checkpoint: str | None = None
    """Continue from this checkpoint folder (output_dir/checkpoints/step-N) instead."""
    overwrite_output_dir: bool = False
    """Train into an output_dir that holds a model trained with other settings (or one mlm did
    not train), removing the old model and what was measured on it once the run is set up."""
    max_nonfinite_steps: int = bounded(5, 1, None)
    """Stop after this many non-finite losses in a row (each such step is skipped)."""
    torch_threads: int | None = bounded(None, 1, WORKERS_MAX)
    """torch intra-op threads (default: the CPUs this process may use, by affinity and cgroup
    quota, shared among the processes of an `accelerate launch` on CPU)."""

    def check(self) -> None:
        if not (self.max_steps or self.max_tokens or self.max_minutes):
            raise UserError("set a budget: max_steps, max_tokens or max_minutes")

    def train_batch_size(self, device_type: str) -> int:
        """per_device_train_batch_size, or its default for the device type."""
        return self._or_device_default("per_device_train_batch_size", device_type)

    def loader_workers(self, device_type: str) -> int:
        """dataloader_num_workers, or its default for the device type."""
        return self._or_device_default("dataloader_num_workers", device_type)

    def _or_device_default(self, name: str, device_type: str) -> int:
        value = getattr(self, name)
        if value is None:
            value = DEVICE_DEFAULTS["cpu" if device_type == "cpu" else "gpu"][name]
        return value


DEVICE_DEFAULTS = {
    "cpu": {"per_device_train_batch_size": 8, "dataloader_num_workers": 0},
    "gpu": {"per_device_train_batch_size": 64, "dataloader_num_workers": 4},
}
"""Defaults that depend on the device (one source: TrainingConfig reads them)."""


@dataclass
class HubConfig:
    """Where to publish. The token is not a setting (a recipe is written next to the model): it
    comes from HF_TOKEN or `hf auth login`."""

    push_to_hub: bool = False
    """Upload the result to a Hugging Face-compatible hub at the end."""
    hub_model_id: str | None = None
    """Repository id (namespace/name) to push to."""
    hub_private_repo: bool = False
    """Create the repository as private."""
    hub_revision: str | None = None
    """Branch to push to (default: main)."""

    def check(self) -> None:
        if not self.push_to_hub:
            return
        if not self.hub_model_id:
            raise UserError("--push_to_hub needs --hub_model_id (namespace/name)")
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:  # before the run, not after hours of training
            validate_repo_id(self.hub_model_id)
        except HFValidationError as exc:
            raise UserError(f"--hub_model_id {self.hub_model_id!r} is not a repository id: "
                            f"{exc}") from None


@dataclass
class Recipe:
    """A pretraining recipe: which text, how to clean it, the tokenizer, the model and the run."""

    sources: list[SourceConfig] = field(default_factory=list)
    """Where the unlabeled text comes from."""
    name: str = "recipe"
    """Short name of the recipe (used in reports and model cards)."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    path: str | None = field(default=None, metadata={"internal": True})
    """File the recipe was loaded from (set by the loader)."""


# ---------------------------------------------------------------------------------------------
# Generic loading: dict -> dataclass with type checks that name the offending key.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently coerce) `value` against the annotation `tp`; raise UserError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], where)
        for arg in options:
            try:
                return _coerce(value, arg, where)
            except UserError:
                pass
        expected = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise UserError(f"{where}: expected {expected}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and value not in args:  # YAML 1.1 reads a bare `no` as false
            value = next((a for a in args if str(a) in (("yes", "on", "true") if value
                                                          else ("no", "off", "false"))), value)
        if value not in args:
            raise UserError(f"{where}: must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping of settings, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from `data`, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        here = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise UserError(f"unknown key '{here}' (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(value, hints[key], here)
    missing = [
        f.name for f in known.values()
        if f.name not in kwargs and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}missing required key '{missing[0]}'")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (for YAML dumps and fingerprints)."""
    return dataclasses.asdict(obj)


def read_utf8(path: Path) -> str:
    """A whole UTF-8 text file (a byte-order mark dropped), or one line naming the file and its
    first bad byte."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it "
                        "as UTF-8") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: YAML keeps the last one, so
    a second `training:` section would silently drop every setting of the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with a clear error for a missing file, bad syntax or a key given
    twice."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a recipe file (YAML)")
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        data = yaml.load(read_utf8(path), Loader=_UniqueKeyLoader) or {}  # noqa: S506 - safe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of settings")
    return data


# ---------------------------------------------------------------------------------------------
# CLI: one flag per scalar field of the recipe's sections (names are unique across sections).


def _scalar_fields(cls: type) -> list[tuple[str, dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is list:
            continue
        out.append((f.name, f, tp))
    return out


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (read from the source, like litgpt)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def section_fields(root: type = Recipe) -> dict[str, str]:
    """Map each CLI flag name to the recipe section that owns it."""
    owners: dict[str, str] = {}
    hints = typing.get_type_hints(root)
    for f in dataclasses.fields(root):
        tp = hints[f.name]
        if not dataclasses.is_dataclass(tp):
            continue
        for name, _, _ in _scalar_fields(tp):
            if name in owners:
                raise AssertionError(f"flag --{name} is defined by two sections")
            owners[name] = f.name
    return owners


def add_dataclass_arguments(parser: argparse.ArgumentParser, root: type = Recipe) -> None:
    """Add `--field value` for every scalar field of every section of `root` (default: unset)."""
    hints = typing.get_type_hints(root)
    for f in dataclasses.fields(root):
        tp = hints[f.name]
        if not dataclasses.is_dataclass(tp):
            continue
        group = parser.add_argument_group(f.name)
        docs = _field_docs(tp)
        defaults = tp() if all(
            g.default is not dataclasses.MISSING or g.default_factory is not dataclasses.MISSING
            for g in dataclasses.fields(tp)
        ) else None
        for name, _, ftp in _scalar_fields(tp):
            default = getattr(defaults, name, None)
            choices = _literal_choices(ftp)
            meta = "{" + ",".join(map(str, choices)) + "}" if choices else _metavar(ftp)
            extra = {"nargs": "?", "const": "true"} if ftp is bool else {}
            group.add_argument(
                f"--{name}", default=argparse.SUPPRESS, metavar=meta,
                # argparse expands %-formats in help: a docstring's "95 %" stays text
                help=f"{docs.get(name, '')} (default: {default})".replace("%", "%%"), **extra,
            )


def _literal_choices(tp: Any) -> tuple | None:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def _non_none(tp: Any) -> list:
    """The types a hint allows besides None (`str | None` -> [str]; `int` -> [int])."""
    return [a for a in typing.get_args(tp) if a is not type(None)] or [tp]


def _metavar(tp: Any) -> str:
    return "|".join(_type_name(a).upper() for a in _non_none(tp))


def apply_overrides(recipe: Recipe, overrides: dict[str, str]) -> Recipe:
    """Set `--flag value` overrides on the recipe's sections, type-checked like YAML."""
    owners = section_fields(type(recipe))
    for name, raw in overrides.items():
        section = getattr(recipe, owners[name])
        hint = typing.get_type_hints(type(section))[name]
        choices = tuple(map(str, _literal_choices(hint) or ()))
        value: Any = raw
        if isinstance(raw, str) and not raw.strip():
            raise UserError(f"--{name} is empty: give it a value, or leave the flag out for the "
                            "default")
        # a text setting (a path, a column, a branch) is taken as written: YAML would make
        # 007 a 7, 1.10 a 1.1 and "on" a boolean
        textual = all(a is str for a in _non_none(hint))
        if isinstance(raw, str) and raw not in choices and raw.lower() in ("none", "null"):
            value = None
        if value is not None and isinstance(value, str) and value not in choices and not textual:
            # (a choice is taken as written: YAML would read `--mixed_precision no` as false)
            try:
                parsed = yaml.safe_load(value)
                if not isinstance(parsed, (dict, list)):
                    value = parsed
            except yaml.YAMLError:
                pass
        setattr(section, name, _coerce(value, hint, f"--{name}"))
    return recipe


def flags_markdown(root: type = Recipe) -> str:
    """Markdown table rows `| --flag | default | doc |` for every CLI flag (used in README)."""
    hints = typing.get_type_hints(root)
    rows = []
    for f in dataclasses.fields(root):
        tp = hints[f.name]
        if not dataclasses.is_dataclass(tp):
            continue
        docs = _field_docs(tp)
        defaults = tp()
        for name, _, _ in _scalar_fields(tp):
            rows.append(f"| `--{name}` | `{getattr(defaults, name)}` | {f.name}: {docs.get(name, '')} |")
    return "\n".join(rows)
