"""Tokenizer stage: train a WordPiece / byte-level BPE / Unigram tokenizer, load one, extend one.

Training streams texts from an iterator (the `tokenizers` trainer never holds the corpus as
a Python list); on a corpus larger than memory, `max_train_documents` / `max_train_bytes`
train on a seeded random sample streamed from the memory-mapped corpus, so the trainer's
memory depends on the sample, not on the corpus. The result is wrapped as a
`PreTrainedTokenizerFast` whose saved folder `AutoTokenizer.from_pretrained` loads with the
right special tokens and post-processor. WordPiece and BPE training are deterministic: one
sample and one config give one tokenizer.json, whatever the folder or thread count (Unigram's
trainer is not; see `train_tokenizer`).

Extension (continued pretraining from a general checkpoint): `extend_tokenizer` adds the
frequent domain words that an existing tokenizer shatters into the most pieces, as whole
entries of its model vocabulary (WordPiece/Unigram entries, or BPE merges), appended after
the old ids; `mlm.modeling.resize_and_init_new_embeddings` then gives each new row the mean
of its old pieces' embeddings. The audit (`mlm-tokenizer-audit`) is in mlm.tokenizer_audit.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from datasets import Dataset
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mlm.cache import Processes, digest, file_digest, load_cached
from mlm.config import MIN_VOCAB, TokenizerConfig, to_dict
from mlm.errors import UserError, one_line
from mlm.recipe import resolve_path

BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                 "sep_token": "[SEP]", "mask_token": "[MASK]"}
ROBERTA_SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>",
                    "sep_token": "</s>", "mask_token": "<mask>", "bos_token": "<s>",
                    "eos_token": "</s>"}


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def sample_texts(texts: Iterable[str] | Dataset, max_documents: int | None = None,
                 max_bytes: int | None = None, seed: int = 0) -> Iterator[str]:
    """Stream at most `max_documents` texts / `max_bytes` UTF-8 bytes of `texts`.

    A `datasets.Dataset` (memory-mapped Arrow) is read in a seeded random order, so a bounded
    sample is uniform over the corpus, a batch at a time; any other iterable (a generator,
    an IterableDataset of dicts with "text") is read from its start.
    """
    for name, value in (("max_train_documents", max_documents), ("max_train_bytes", max_bytes)):
        if value is not None and value <= 0:
            raise UserError(f"{name} must be positive, got {value}")
    if isinstance(texts, Dataset):
        if "text" not in texts.column_names:
            raise UserError(f"the dataset has no 'text' column (columns: {texts.column_names})")
        ds = texts.select_columns(["text"])
        if max_documents is not None or max_bytes is not None:
            ds = ds.shuffle(seed=seed)
        stream: Iterable[str] = (t for batch in ds.iter(batch_size=1000) for t in batch["text"])
    else:
        stream = (t["text"] if isinstance(t, dict) else t for t in texts)
    n = size = 0
    for text in stream:
        if max_documents is not None and n >= max_documents:
            return
        if max_bytes is not None:
            size += len(text.encode("utf-8"))
            if size > max_bytes and n > 0:
                return
        n += 1
        yield text


def _continuation_pieces(texts: Iterable[str], normalizer: normalizers.Normalizer,
                         pre_tokenizer: pre_tokenizers.PreTokenizer) -> list[str]:
    """"##" + every character that follows another inside a word of `texts` (normalized and
    pre-tokenized as the trainer does), sorted: the pieces WordPieceTrainer creates itself.

    Exact and cheap: the pre-tokenizer always splits at spaces and newlines and the normalizers
    act within such a chunk, so the distinct chunks of a batch are normalized at once, and each
    character is classified once by the pre-tokenizer itself (word character, or not: a space
    or a punctuation mark, which is a word of its own).
    """
    pairs: set[tuple[str, str]] = set()
    for batch in _batches(texts):
        chunks = {chunk for text in batch for chunk in text.replace("\n", " ").split(" ")}
        flat = normalizer.normalize_str(" ".join(chunks))
        pairs.update(zip(flat, flat[1:]))
    in_word = {c: len(pre_tokenizer.pre_tokenize_str(f"a{c}a")) == 1
               for c in {c for pair in pairs for c in pair}}
    return sorted({"##" + b for a, b in pairs if in_word[a] and in_word[b]})


# CJK ideographs (the ranges BERT's tokenizer isolates): Chinese is written without spaces, so
# a WordPiece "word" would be a whole clause, and whole-word masking would mask clauses. Each
# ideograph is its own word instead, as in BERT's Chinese and multilingual vocabularies.
CJK = (r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2CEAF}"
       r"\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]")
TOKENIZER_VERSION = 2
"""Bumped when trained tokenizers change for the same corpus and settings (2: CJK isolated)."""


def wordpiece_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """BERT's pre-tokenizer (whitespace and punctuation) with every CJK ideograph a word."""
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
                                    pre_tokenizers.BertPreTokenizer()])


def _normalizer(config: TokenizerConfig) -> normalizers.Normalizer:
    strip = config.lowercase if config.strip_accents is None else config.strip_accents
    steps = [normalizers.NFD(), normalizers.StripAccents()] if strip else [normalizers.NFC()]
    if config.lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps)


def train_tokenizer(texts: Iterable[str] | Dataset, config: TokenizerConfig,
                    progress: bool = False) -> PreTrainedTokenizerFast:
    """Train a tokenizer of `config.tokenizer_kind` on `texts` (strings, or a Dataset with a
    `text` column), on the sample that `max_train_documents` / `max_train_bytes` allow.
    `progress`: the tokenizers library's own progress bars (reading, then merging) on stderr.

    Same sample and config, same tokenizer.json (issue #17). WordPieceTrainer creates the "##"
    piece of each character in hash-map order, so their ids, and the merges that tie in count
    (ties go to the lower ids), changed from run to run (huggingface/tokenizers#1794). They are
    therefore found first (`_continuation_pieces`, one more read of the sample) and passed as
    special tokens, which the trainer numbers in order; they are then made plain vocabulary.
    BPE (byte-level: no "##" pieces) is deterministic as is. Unigram is not, and cannot be made
    so from here: its EM sums floats over words in hash-map order, and `finalize` numbers the
    characters it re-adds in hash-set order."""
    kind = config.tokenizer_kind
    specials = ROBERTA_SPECIALS if kind == "bpe" else BERT_SPECIALS
    special_list = list(dict.fromkeys(specials.values()))
    alphabet_floor = MIN_VOCAB[kind]  # the recipe's check refuses smaller ones before any work
    if config.vocab_size < alphabet_floor:
        raise UserError(
            f"vocab_size {config.vocab_size} is too small for {kind}: it must exceed the special "
            f"tokens plus the base alphabet (at least {alphabet_floor})"
        )
    bounds = (config.max_train_documents, config.max_train_bytes)
    continuation: list[str] = []
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = _normalizer(config)
        tok.pre_tokenizer = wordpiece_pre_tokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        if not isinstance(texts, Dataset) and iter(texts) is texts:
            texts = list(sample_texts(texts, *bounds))  # a one-shot stream: its sample is read twice
        continuation = _continuation_pieces(sample_texts(texts, *bounds), tok.normalizer,
                                            tok.pre_tokenizer)
        trainer = trainers.WordPieceTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency,
            special_tokens=special_list + continuation, continuing_subword_prefix="##",
            show_progress=progress,
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.normalizer = _normalizer(config)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency,
            special_tokens=special_list, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress,
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = _normalizer(config)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=config.vocab_size, special_tokens=special_list, unk_token="[UNK]",
            show_progress=progress,
        )
    tok.train_from_iterator(_batches(sample_texts(texts, *bounds)), trainer=trainer)
    if continuation:  # plain vocabulary, not added tokens matched in the raw text
        data = json.loads(tok.to_str())
        data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in special_list]
        tok = Tokenizer.from_str(json.dumps(data))
    if tok.get_vocab_size() <= len(special_list):
        raise UserError("the tokenizer learned no vocabulary: the training text is empty")
    cls, sep = specials["cls_token"], specials["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **specials)


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")
"""Files one of which a tokenizer folder has (fast, WordPiece, BPE, or a config naming it)."""


def load_tokenizer(path: str | Path, masked_lm: bool = True) -> PreTrainedTokenizerFast:
    """Load a local tokenizer folder; it must be fast, and have a mask token for masked-LM
    training (`masked_lm`). One without a pad token pads with its sep / eos / unk token."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"tokenizer folder not found: {path}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{path}: no tokenizer in this folder (none of {', '.join(TOKENIZER_FILES)}); "
                        "save the model's tokenizer into it (tokenizer.save_pretrained)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load a tokenizer ({one_line(exc)})") from None
    if not tok.is_fast:
        raise UserError(f"{path}: a fast tokenizer (tokenizer.json) is required")
    if masked_lm and tok.mask_token is None:
        raise UserError(f"{path}: the tokenizer has no mask token, so it cannot train an MLM")
    if tok.pad_token is None:
        filler = tok.sep_token or tok.eos_token or tok.unk_token
        if filler is None:
            raise UserError(f"{path}: the tokenizer has no pad, sep, eos or unk token to pad with")
        tok.pad_token = filler
    return tok


def check_sequence_length(tokenizer: PreTrainedTokenizerFast, max_seq_length: int) -> None:
    """Refuse blocks longer than the tokenizer's model_max_length (or shorter than 8)."""
    limit = getattr(tokenizer, "model_max_length", None) or 10**9
    if max_seq_length < 8 or max_seq_length > max(limit, 8):
        raise UserError(f"max_seq_length {max_seq_length} is outside [8, {limit}] "
                        f"(the tokenizer's model_max_length)")


def check_tokenizer_settings(config: TokenizerConfig, max_seq_length: int) -> int | None:
    """Before any work: a tokenizer given by path loads, and reads blocks of max_seq_length.
    Returns its number of tokens (None when a new tokenizer is to be trained)."""
    if not config.tokenizer_name_or_path:
        return None
    tokenizer = load_tokenizer(resolve_path(config.tokenizer_name_or_path))
    check_sequence_length(tokenizer, max_seq_length)
    return len(tokenizer)


def wordpiece_continuations(backend: Tokenizer) -> np.ndarray | None:
    """Per vocabulary id (added tokens included): is it a WordPiece continuation piece ("##…")?

    A WordPiece model encodes each pre-tokenized word on its own, its first piece without the
    prefix and every later piece with it, so the prefix says exactly where words start, as
    `word_ids` would. None for other models (BPE, Unigram), whose markers only approximate it.
    """
    prefix = getattr(backend.model, "continuing_subword_prefix", None)
    if type(backend.model).__name__ != "WordPiece" or not prefix:
        return None
    vocab = backend.get_vocab(with_added_tokens=True)
    table = np.zeros(max(vocab.values()) + 1, dtype=bool)
    table[[i for t, i in vocab.items() if t.startswith(prefix)]] = True
    table[list(backend.get_added_tokens_decoder())] = False  # added tokens are whole words
    return table


def word_start_tables(backend: Tokenizer) -> tuple[np.ndarray, np.ndarray] | None:
    """Per vocabulary id (added tokens included): (begins, ends): does the token begin a
    word, and does a word begin right after it. Word starts then come from the ids alone, so
    packing encodes without offsets and word ids (`encode_batch_fast`, ~20-30 % faster, and no
    Python list per token): token j starts a word if begins[id_j] or ends[id_j-1].

    - WordPiece: a piece without the "##" prefix begins a word, exactly what `word_ids` says
      (the pre-tokenizer's words, punctuation apart: BERT's whole-word masking).
    - Byte-level BPE and Metaspace (SentencePiece-style BPE/Unigram): words are runs of
      non-whitespace, as in fairseq's whole-word masking for RoBERTa: a token whose text starts
      with whitespace begins a word ("Ġ", "▁"), and so does the token after one whose text
      ends with whitespace other than a space (a newline; a lone "Ġ" or "▁" is the leading
      space of the word that follows it). Punctuation stays with its word ("end." is one).
    - Added tokens are words of their own. None for other tokenizers (packing reads word_ids).
    """
    continuation = wordpiece_continuations(backend)
    if continuation is not None:
        begins, ends = ~continuation, np.zeros(len(continuation), dtype=bool)
    else:
        surface = _token_text(backend)
        if surface is None:
            return None
        vocab = backend.get_vocab(with_added_tokens=True)
        begins = np.zeros(max(vocab.values()) + 1, dtype=bool)
        ends = begins.copy()
        for token, i in vocab.items():
            text = surface(token)
            begins[i], ends[i] = text[:1].isspace(), text[-1:].isspace() and text[-1] != " "
    added = list(backend.get_added_tokens_decoder())
    begins[added] = ends[added] = True
    return begins, ends


def _token_text(backend: Tokenizer):
    """The function from a vocabulary entry to the text it stands for, for the two markers
    of a word's leading space: byte-level BPE (GPT-2's byte alphabet, "Ġ" for a space) and
    Metaspace ("▁"); None if the pre-tokenizer is neither. Only the pre-tokenizer's settings
    are read (its pickled JSON), not the whole tokenizer with its vocabulary and merges."""
    pre = backend.pre_tokenizer
    spec = json.loads(pre.__getstate__()) if pre is not None else {}
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = {p.get("type"): p for p in parts}
    if "ByteLevel" in kinds:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        to_byte = {c: bytes([b]) for b, c in bytes_to_unicode().items()}
        return lambda token: b"".join(to_byte.get(c) or c.encode() for c in token).decode(
            "utf-8", errors="replace")
    if "Metaspace" in kinds:
        marker = kinds["Metaspace"].get("replacement", "\u2581")
        return lambda token: token.replace(marker, " ")
    return None


def raw_backend(tokenizer: PreTrainedTokenizerFast) -> Tokenizer:
    """A copy of the Rust tokenizer with truncation and padding off.

    Some tokenizer.json files (MiniLM's among them) carry `truncation: 128` and `padding`,
    which would silently cut every document when encoding whole documents.
    """
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


# ---------------------------------------------------------------------------------------------
# Extension: add the frequent words a tokenizer fragments most.


def _strip_marker(piece: str) -> str:
    return piece.lstrip("Ġ▁")


def fragmented_words(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str],
                     min_count: int = 3) -> list[tuple[str, int, list[str]]]:
    """Words of `texts` (in the tokenizer's own normalised, pre-tokenized form) that its model
    splits into several pieces, as (word, count, pieces), most tokens-saved first (count times
    extra pieces). Only alphabetic words of 3+ characters seen `min_count` times qualify."""
    backend = raw_backend(tokenizer)
    norm, pre = backend.normalizer, backend.pre_tokenizer
    counts: Counter = Counter()
    for text in texts:
        text = norm.normalize_str(text) if norm is not None else text
        words = pre.pre_tokenize_str(text) if pre is not None else [(text, None)]
        counts.update(w for w, _ in words)
    vocab = backend.get_vocab(with_added_tokens=True)
    found = []
    for word, count in counts.items():
        bare = _strip_marker(word)
        if count < min_count or len(bare) < 3 or not bare.isalpha() or word in vocab:
            continue
        pieces = [t.value for t in backend.model.tokenize(word)]
        if len(pieces) > 1:
            found.append((word, count, pieces))
    found.sort(key=lambda r: (-r[1] * (len(r[2]) - 1), -r[1], r[0]))
    return found


def extend_tokenizer(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], n: int,
                     min_count: int = 3) -> PreTrainedTokenizerFast:
    """A copy of `tokenizer` with the `n` frequent words of `texts` it fragments most added to
    its model vocabulary (old ids unchanged, new ids appended). WordPiece and Unigram gain one
    entry per word; byte-level BPE gains the merges that build the word from its current pieces
    (and so may gain a few intermediate tokens too)."""
    if n <= 0:
        raise UserError(f"extend_vocab_words must be positive, got {n}")
    chosen = fragmented_words(tokenizer, texts, min_count)[:n]
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    base_size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    if any(added["id"] >= base_size for added in data.get("added_tokens", [])):
        raise UserError("cannot extend a tokenizer whose added tokens sit after its vocabulary")
    next_id = base_size
    if model["type"] == "WordPiece":
        for word, _, _ in chosen:
            model["vocab"][word] = next_id
            next_id += 1
    elif model["type"] == "Unigram":
        # The best existing score: one new piece then beats any split into several pieces.
        best = max((score for _, score in model["vocab"] if score < 0), default=-1.0)
        model["vocab"].extend([word, best] for word, _, _ in chosen)
    elif model["type"] == "BPE":
        string_merges = bool(model["merges"]) and isinstance(model["merges"][0], str)
        known = {tuple(m.split(" ", 1)) if string_merges else tuple(m) for m in model["merges"]}
        for _, _, pieces in chosen:
            left = pieces[0]
            for right in pieces[1:]:
                if (left, right) not in known:
                    known.add((left, right))
                    model["merges"].append(f"{left} {right}" if string_merges else [left, right])
                left = left + right
                if left not in model["vocab"]:
                    model["vocab"][left] = next_id
                    next_id += 1
    else:
        raise UserError(f"cannot extend a tokenizer of model type {model['type']}")
    backend = Tokenizer.from_str(json.dumps(data))
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    new = PreTrainedTokenizerFast(tokenizer_object=backend,
                                  model_max_length=tokenizer.model_max_length, **specials)
    return new


def prepare_tokenizer(config: TokenizerConfig, train: Dataset, corpus_key: str,
                      cache_dir: str | Path, processes: Processes | None = None
                      ) -> PreTrainedTokenizerFast:
    """The recipe's tokenizer: `tokenizer_name_or_path` as is, or extended with the domain
    words it fragments, or trained on the corpus's `train` split. What is built is cached in
    `cache_dir`, keyed by the corpus fingerprint and the settings (and the base tokenizer)."""
    if config.tokenizer_name_or_path and not config.extend_vocab_words:
        return load_tokenizer(resolve_path(config.tokenizer_name_or_path))
    key = digest({"corpus": corpus_key, "tok": to_dict(config), "version": TOKENIZER_VERSION})

    def build(tmp: Path) -> None:
        if config.extend_vocab_words:
            texts = sample_texts(train, config.max_train_documents, config.max_train_bytes)
            tok = extend_tokenizer(base, texts, config.extend_vocab_words)
        else:
            tok = train_tokenizer(train, config, progress=True)  # streamed, sampled
        tok.save_pretrained(str(tmp))

    if config.extend_vocab_words:
        base_dir = resolve_path(config.tokenizer_name_or_path)
        base = load_tokenizer(base_dir)
        key = "extended-" + digest({"corpus": corpus_key, "tok": to_dict(config),
                                    "base": file_digest(base_dir / "tokenizer.json"),
                                    "version": TOKENIZER_VERSION})
    return load_cached(cache_dir, key, build, load_tokenizer, processes=processes)
