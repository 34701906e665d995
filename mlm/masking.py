"""Dynamic-masking collator: token, whole-word and span masking, vectorised torch.

Each batch is masked at once, in O(batch x length) tensor ops (no Python loop per token or
sequence); special tokens and padding are never selected.

- `token`: every maskable token is selected with probability `mlm_probability` (BERT).
- `whole_word` and `span` cut each sequence into *units*: whole words, or spans of whole words
  (SpanBERT: span lengths in words drawn from a geometric distribution with parameter
  `span_geometric_p`, truncated at `span_max_words` and renormalised; mean 3.8 words at the
  defaults 0.2 and 10). A unit never crosses a special token or padding, so a span never runs
  across a document boundary of a packed block; spans drawn next to each other may touch.
  Units are then selected by a token budget: each sequence gets a target of `mlm_probability`
  x its maskable tokens (a real number); units are taken in random order while they fit, and
  the unit that crosses the target is taken with probability (target - taken) / its length. The
  expected number of selected tokens is exactly the target, whatever the word lengths (sampling
  tokens and widening them to their words would overshoot), with little spread per sequence.
- Of the selected tokens, `mask_replace_prob` become [MASK], `random_replace_prob` random tokens
  of the non-special vocabulary, and the rest stay unchanged; for `whole_word` and `span` the
  choice is made per unit (all sub-tokens of a word or span are treated alike, as in SpanBERT).

Word boundaries come from the examples' `word_start` column (set by mlm.packing). Without it,
they are read from the tokenizer's vocabulary as packing reads them
(`mlm.tokenizer.word_start_tables`): WordPiece continuation tokens start with "##", byte-level
BPE and SentencePiece/Metaspace word-initial tokens with "Ġ" / "▁". (A word after a special
token always starts a word.) `token` masking needs no word boundaries.

Masks are a pure function of (seed, epoch, step, worker, rank): the step counts calls unless it
is set with `set_step`, the worker is the DataLoader worker id and the rank the
`torch.distributed` rank, unless given.

Document-aware attention (`document_attention=True`): when the examples carry `document_ids`
(the document's index inside its packed block, -1 on padding; mlm.packing writes them), the
attention mask becomes a 4-D boolean (batch, 1, length, length) block-diagonal mask, so a token
attends only to tokens of its own document. transformers passes a 4-D mask to the attention
as is; it is meant for the SDPA attention our models are built with.

Unpadded batches for flash-attention (`varlen=True`): the batch is also described as one
sequence of batch x length tokens cut into segments: `cu_seq_lens` (int32 offsets where a
segment starts, then the total), `max_length` (the longest segment, a Python int, so the
device never has to report it) and `position_ids` (each token's position in its block). A
segment is a block row, or with document attention a document of a row; a row's padding is a
segment of its own, which no real token attends to. flash-attn's varlen kernel then needs no
mask at all (mlm.objective passes these instead of `attention_mask`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from mlm.errors import UserError
from mlm.tokenizer import word_start_tables

STRATEGIES = ("token", "whole_word", "span")
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (order matters; stable across runs and platforms)."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


def span_length_probs(p: float, max_words: int) -> torch.Tensor:
    """P(span = k words), k = 1..max_words: geometric(p) truncated at max_words, renormalised."""
    k = torch.arange(max_words, dtype=torch.float64)
    probs = p * (1 - p) ** k
    return probs / probs.sum()


def _shift_right(x: torch.Tensor, fill: bool = False) -> torch.Tensor:
    """x[:, j-1] at column j (fill at column 0)."""
    return torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)


def _vocab_word_starts(tokenizer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per vocabulary id: (begins, ends): does this token begin a word, does a word begin after
    it (`mlm.tokenizer.word_start_tables`, as packing reads them); for a tokenizer it does not
    know, the "##", "Ġ" or "▁" marker that most of its vocabulary carries. None if none does."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tables = word_start_tables(backend) if backend is not None else None
    begins, ends = torch.ones(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool)
    if tables is not None:
        begins[:len(tables[0])] = torch.from_numpy(tables[0])
        ends[:len(tables[1])] = torch.from_numpy(tables[1])
        return begins, ends
    for marker, starts_word in (("##", False), ("Ġ", True), ("▁", True)):
        if sum(t.startswith(marker) for t in vocab) > 0.05 * len(vocab):
            for tok, i in vocab.items():
                begins[i] = tok.startswith(marker) == starts_word
            return begins, ends
    return None


def _check_probability(name: str, value: float, low_open: bool, high_open: bool) -> float:
    value = float(value)
    ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise UserError(f"{name} must be in {interval}, got {value}")
    return value


class MaskingCollator:
    """Batch a list of examples and choose fresh masks for it (see the module docstring).

    Examples are dicts with `input_ids` (list or tensor) and optionally `word_start` and
    `special_tokens_mask` (0/1 per token); sequences of unequal length are right-padded. Returns
    `input_ids`, `attention_mask`, `labels` (-100 where not predicted) and, with
    `return_masked_positions`, `masked_positions`: the flat indices of the selected tokens; with
    `replacement_uniforms`, also one uniform in [0, 1) per selected token, from which
    replaced-token detection samples its replacements (mlm.objective); with `varlen`, the
    flash-attention segments of the flattened batch (module docstring).
    """

    def __init__(self, tokenizer, strategy: str = "token", mlm_probability: float = 0.15,
                 mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1,
                 seed: int = 0, return_masked_positions: bool = False,
                 span_geometric_p: float = 0.2, span_max_words: int = 10,
                 rank: int | None = None, worker: int | None = None,
                 document_attention: bool = False, replacement_uniforms: bool = False,
                 varlen: bool = False):
        if strategy not in STRATEGIES:
            raise UserError(f"masking_strategy must be one of {', '.join(STRATEGIES)}, "
                            f"got {strategy!r}")
        self.mlm_probability = _check_probability("mlm_probability", mlm_probability, True, True)
        self.mask_replace_prob = _check_probability("mask_replace_prob", mask_replace_prob,
                                                    False, False)
        self.random_replace_prob = _check_probability("random_replace_prob",
                                                      random_replace_prob, False, False)
        if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-9:
            raise UserError(f"mask_replace_prob + random_replace_prob must be at most 1, got "
                            f"{self.mask_replace_prob} + {self.random_replace_prob}")
        _check_probability("span_geometric_p", span_geometric_p, True, False)
        if int(span_max_words) < 1:
            raise UserError(f"span_max_words must be at least 1, got {span_max_words}")
        if tokenizer.mask_token_id is None:
            raise UserError("the tokenizer has no mask token, which masked-LM training needs")
        self.tokenizer = tokenizer
        self.strategy = strategy
        self.seed, self.rank, self.worker = seed, rank, worker
        self.epoch = 0
        self.calls = 0
        self.return_masked_positions = return_masked_positions or replacement_uniforms
        self.replacement_uniforms = replacement_uniforms
        self.document_attention = document_attention
        self.varlen = varlen
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id
        others = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.bos_token_id,
                  tokenizer.eos_token_id, tokenizer.unk_token_id}
        self.pad_is_own_token = self.pad_id is not None and self.pad_id not in others
        size = len(tokenizer)
        special = torch.zeros(size, dtype=torch.bool)
        special[[i for i in tokenizer.all_special_ids if i is not None and i < size]] = True
        self.special_ids = special
        self.normal_ids = torch.nonzero(~special).squeeze(1)
        self.span_cdf = span_length_probs(span_geometric_p, int(span_max_words)).cumsum(0).float()
        self.span_cdf[-1] = 1.0
        self.vocab_word_starts = _vocab_word_starts(tokenizer) if strategy != "token" else None

    # -- the state that seeds the masks -------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_step(self, step: int) -> None:
        """Seed the next call with this step (e.g. the global batch index); calls count on."""
        self.calls = step

    def set_mlm_probability(self, p: float) -> None:
        self.mlm_probability = _check_probability("mlm_probability", p, True, True)

    def generator(self) -> torch.Generator:
        """The generator of the next call, from (seed, epoch, step, worker, rank)."""
        worker = self.worker
        if worker is None:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
        rank = self.rank
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        seed = mix_seed(self.seed, self.epoch, self.calls, worker, rank)
        return torch.Generator().manual_seed(seed)

    # -- batching ------------------------------------------------------------------------------

    def _stack(self, examples: list[dict], key: str, lengths: list[int], fill: int,
               dtype: torch.dtype) -> torch.Tensor:
        rows = [e[key] for e in examples]
        if len(set(lengths)) == 1:
            if isinstance(rows[0], torch.Tensor):
                return torch.stack(rows).to(dtype)
            return torch.as_tensor(np.asarray(rows), dtype=dtype)
        rows = [torch.as_tensor(r, dtype=dtype) for r in rows]
        return pad_sequence(rows, batch_first=True, padding_value=fill)

    def collate(self, examples: list[dict]) -> tuple[torch.Tensor, ...]:
        """(input_ids, present, maskable, word_start or None) as (batch, length) tensors.

        `present` (the attention mask) is false on right padding, on pad tokens and where the
        examples' own `attention_mask` is 0; `maskable` also excludes special tokens."""
        if not examples:
            raise UserError("the masking collator got an empty batch")
        lengths = [len(e["input_ids"]) for e in examples]
        padded = len(set(lengths)) > 1
        if padded and self.pad_id is None:
            raise UserError("sequences of unequal length need a tokenizer with a pad token")
        ids = self._stack(examples, "input_ids", lengths, self.pad_id or 0, torch.long)
        B, L = ids.shape
        present = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None] if padded \
            else torch.ones(B, L, dtype=torch.bool)
        # Padding inside fixed-length blocks (packing with document boundaries) is not attended.
        if self.pad_is_own_token:
            present &= ids != self.pad_id
        if all("attention_mask" in e for e in examples):
            present &= self._stack(examples, "attention_mask", lengths, 0, torch.bool)
        special = self.special_ids.index_select(
            0, ids.view(-1).clamp(0, len(self.special_ids) - 1)).view(B, L)
        if all("special_tokens_mask" in e for e in examples):
            special |= self._stack(examples, "special_tokens_mask", lengths, 1, torch.bool)
        maskable = present & ~special
        word_start = None
        if self.strategy != "token":
            if all("word_start" in e for e in examples):
                word_start = self._stack(examples, "word_start", lengths, 0, torch.bool)
            elif self.vocab_word_starts is not None:
                begins, ends = self.vocab_word_starts
                flat = ids.view(-1).clamp(0, len(begins) - 1)
                word_start = begins.index_select(0, flat).view(B, L) | _shift_right(
                    ends.index_select(0, flat).view(B, L), False)
            else:
                raise UserError(
                    f"masking_strategy {self.strategy!r} needs word boundaries: give the examples "
                    "a word_start column (mlm.packing does) or use a tokenizer whose vocabulary "
                    "marks them (##, Ġ or ▁), or use masking_strategy token")
            # A maskable token after a special token or at the start always begins a word.
            word_start = maskable & (word_start | ~_shift_right(maskable))
        return ids, present, maskable, word_start

    # -- masking -------------------------------------------------------------------------------

    def _span_starts(self, word_start: torch.Tensor, maskable: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
        """Unit starts of `span`: cut each row's words into spans of sampled lengths."""
        B, L = word_start.shape
        word_index = word_start.cumsum(1) - 1
        n = max(1, int(word_index[:, -1].max()) + 1)  # most words in a row: draws needed
        draws = torch.searchsorted(self.span_cdf, torch.rand(B, n, generator=gen)) + 1
        ends = draws.cumsum(1).clamp_(max=n)  # word indices where a new span begins
        boundary = torch.zeros(B, n + 1, dtype=torch.bool)
        boundary[:, 0] = True
        boundary.scatter_(1, ends, True)
        starts = word_start & boundary.gather(1, word_index.clamp_(min=0))
        # Never across a special token or padding (document boundaries of packed blocks).
        return starts | (maskable & ~_shift_right(maskable))

    def select_units(self, maskable: torch.Tensor, unit_start: torch.Tensor, p: float,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Select units by a per-row budget of p x maskable tokens (see the module docstring).

        A unit is a unit start plus the maskable tokens before the next one. Returns the selected
        tokens, each token's unit index + 1 (0 before the first unit) and the most units in a row.
        """
        B, L = maskable.shape
        unit = unit_start.cumsum(1)  # the token's unit index + 1
        W = max(1, int(unit[:, -1].max()))
        unit_len = torch.zeros(B, W + 1, dtype=torch.long).scatter_add_(
            1, unit, maskable.long())[:, 1:]
        # Random priority: int32 keys sort faster than floats; empty slots go last.
        keys = torch.randint(0, 2**30, (B, W), generator=gen, dtype=torch.int32)
        order = keys.masked_fill_(unit_len == 0, 2**30).argsort(1)
        lens = unit_len.gather(1, order)
        after = lens.cumsum(1)
        room = p * maskable.sum(1, keepdim=True) - (after - lens)  # target - taken before
        # Whole units while they fit; the one crossing the target with probability room / len.
        take = (room >= lens) | (torch.rand(B, 1, generator=gen) * lens < room)
        chosen = torch.zeros(B, W + 1, dtype=torch.bool)
        chosen[:, 1:].scatter_(1, order, take & (lens > 0))
        return maskable & chosen.gather(1, unit), unit, W

    def _document_ids(self, examples: list[dict]) -> torch.Tensor:
        """(batch, length) document index of each token in its block, -1 past a row's end."""
        lengths = [len(e["input_ids"]) for e in examples]
        return self._stack(examples, "document_ids", lengths, -1, torch.long)

    def document_mask(self, examples: list[dict], present: torch.Tensor) -> torch.Tensor:
        """(batch, 1, length, length) boolean mask: query i sees key j when both belong to the
        same document and j is not padding. Every token also sees itself, so that no row is
        empty (a fully masked row would give NaN in SDPA)."""
        doc = self._document_ids(examples)
        same = (doc[:, :, None] == doc[:, None, :]) & present[:, None, :]
        same |= torch.eye(doc.shape[1], dtype=torch.bool)
        return same[:, None]

    def varlen_segments(self, examples: list[dict], present: torch.Tensor) -> dict:
        """`cu_seq_lens`, `max_length` and `position_ids` of the batch flattened to one
        sequence (see the module docstring)."""
        B, L = present.shape
        if self.document_attention and all("document_ids" in e for e in examples):
            segment = torch.where(present, self._document_ids(examples), -1)
        else:
            segment = present.long() - 1  # 0 on tokens, -1 on padding
        starts = torch.ones(B, L, dtype=torch.bool)
        starts[:, 1:] = segment[:, 1:] != segment[:, :-1]
        cu = torch.cat([torch.nonzero(starts.view(-1)).squeeze(1), torch.tensor([B * L])])
        return {"cu_seq_lens": cu.to(torch.int32), "max_length": int((cu[1:] - cu[:-1]).max()),
                "position_ids": torch.arange(L).repeat(B, 1)}

    def __call__(self, examples: list[dict]) -> dict:
        # Batch-sized tensors gain nothing from intra-op threads, and on a busy machine every
        # OpenMP parallel region can cost milliseconds: mask on one thread, then restore.
        threads = torch.get_num_threads()
        if threads == 1:
            return self._mask(examples)
        torch.set_num_threads(1)
        try:
            return self._mask(examples)
        finally:
            torch.set_num_threads(threads)

    def _mask(self, examples: list[dict]) -> dict:
        gen = self.generator()
        self.calls += 1
        ids, present, maskable, word_start = self.collate(examples)
        p, keep_from = self.mlm_probability, self.mask_replace_prob + self.random_replace_prob
        if self.strategy == "token":
            # One uniform u per token: selected if u < p; then u / p is uniform again and
            # picks mask / random / keep.
            u = torch.rand(ids.shape, generator=gen)
            selected = maskable & (u < p)
            roll = u / p
        else:
            unit_start = word_start if self.strategy == "whole_word" else \
                self._span_starts(word_start, maskable, gen)
            selected, unit, W = self.select_units(maskable, unit_start, p, gen)
            roll = torch.rand(ids.shape[0], W + 1, generator=gen).gather(1, unit)  # per unit
        to_mask = selected & (roll < self.mask_replace_prob)
        to_rand = selected & (roll >= self.mask_replace_prob) & (roll < keep_from)
        out = torch.where(to_mask, self.mask_id, ids)
        where = torch.nonzero(to_rand.view(-1)).squeeze(1)
        if len(where):  # draw only the few replacements needed
            pick = torch.randint(len(self.normal_ids), (len(where),), generator=gen)
            out.view(-1).index_copy_(0, where, self.normal_ids.index_select(0, pick))
        labels = torch.where(selected, ids, -100)
        batch = {"input_ids": out, "attention_mask": present.long(), "labels": labels}
        if self.varlen:
            batch.update(self.varlen_segments(examples, present))
        elif self.document_attention and all("document_ids" in e for e in examples):
            batch["attention_mask"] = self.document_mask(examples, present)
        if self.return_masked_positions:
            batch["masked_positions"] = torch.nonzero(selected.view(-1)).squeeze(1)
        if self.replacement_uniforms:  # drawn last: the masks are the same with or without
            batch["replacement_uniforms"] = torch.rand(len(batch["masked_positions"]),
                                                       generator=gen)
        return batch
