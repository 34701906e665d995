"""Tokenizer stage: train a WordPiece / byte-level BPE / Unigram tokenizer, or load one.

Training streams texts from an iterator (the `tokenizers` trainer never holds the corpus as
a Python list), and the result is wrapped as a `PreTrainedTokenizerFast` whose saved folder
`AutoTokenizer.from_pretrained` loads with the right special tokens and post-processor.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mlm.config import TokenizerConfig
from mlm.errors import UserError

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


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a tokenizer of `config.tokenizer_kind` on `texts` (any iterable of strings)."""
    kind = config.tokenizer_kind
    specials = ROBERTA_SPECIALS if kind == "bpe" else BERT_SPECIALS
    special_list = list(dict.fromkeys(specials.values()))
    alphabet_floor = len(special_list) + (256 if kind == "bpe" else 100)
    if config.vocab_size < alphabet_floor:
        raise UserError(
            f"vocab_size {config.vocab_size} is too small for {kind}: it must exceed the special "
            f"tokens plus the base alphabet (at least {alphabet_floor})"
        )
    norm = [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()] \
        if config.lowercase else [normalizers.NFC()]
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency,
            special_tokens=special_list, continuing_subword_prefix="##", show_progress=False,
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        if config.lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency,
            special_tokens=special_list, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=config.vocab_size, special_tokens=special_list, unk_token="[UNK]",
            show_progress=False,
        )
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    cls, sep = specials["cls_token"], specials["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **specials)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a local tokenizer folder; it must be fast and have a mask token."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"tokenizer folder not found: {path}")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load a tokenizer ({exc})") from None
    if not tok.is_fast:
        raise UserError(f"{path}: a fast tokenizer (tokenizer.json) is required")
    if tok.mask_token is None:
        raise UserError(f"{path}: the tokenizer has no mask token, so it cannot train an MLM")
    return tok
