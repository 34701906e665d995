"""The masking collator on real BBC News text: rates, word integrity, spans, determinism."""
from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from mlm.config import TokenizerConfig
from mlm.errors import UserError
from mlm.masking import MaskingCollator, span_length_probs
from mlm.packing import pack
from mlm.tokenizer import train_tokenizer

COLUMNS = ["input_ids", "word_start", "special_tokens_mask"]


@pytest.fixture(scope="module")
def texts(bbc_dir) -> list[str]:
    files = sorted(bbc_dir.rglob("*.txt"))[::7][:300]
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer(texts, TokenizerConfig(vocab_size=2000))


@pytest.fixture(scope="module")
def blocks(texts, tokenizer) -> list[dict]:
    """Packed 128-token blocks as a DataLoader over a torch-formatted dataset hands them over."""
    packed = pack(Dataset.from_dict({"text": texts}), tokenizer, 128)
    rows = packed.with_format("torch", columns=COLUMNS)[:]
    assert len(rows["input_ids"]) > 1000
    return [{k: rows[k][i] for k in COLUMNS} for i in range(len(rows["input_ids"]))]


@pytest.fixture(scope="module")
def sentences(texts, tokenizer) -> list[dict]:
    """Padded-batch material: paragraphs of varying length, as plain lists, with word starts."""
    paragraphs = [p for t in texts for p in t.split("\n") if len(p.split()) >= 3][:2000]
    enc = tokenizer(paragraphs, truncation=True, max_length=96, return_special_tokens_mask=True)
    out = []
    for i, ids in enumerate(enc["input_ids"]):
        words = enc.word_ids(i)
        starts = [int(w is not None and (j == 0 or words[j - 1] != w)) for j, w in enumerate(words)]
        out.append({"input_ids": ids, "special_tokens_mask": enc["special_tokens_mask"][i],
                    "word_start": starts})
    return out


def batches(examples: list[dict], size: int):
    for i in range(0, len(examples) - size + 1, size):
        yield examples[i:i + size]


def run(collator: MaskingCollator, examples: list[dict], size: int = 128, epochs: int = 1):
    """(original ids, output batch) for every batch of `epochs` passes."""
    for epoch in range(epochs):
        collator.set_epoch(epoch)
        for chunk in batches(examples, size):
            ids, _, maskable, word_start = collator.collate(chunk)
            yield ids, maskable, word_start, collator(chunk)


def realised_rate(collator, examples, size=128, epochs=1) -> float:
    selected = maskable_total = 0
    for _, maskable, _, out in run(collator, examples, size, epochs):
        selected += int((out["labels"] != -100).sum())
        maskable_total += int(maskable.sum())
    return selected / maskable_total


def word_of(word_start: torch.Tensor) -> torch.Tensor:
    """Position of each token's word start (the token's own word id within its row)."""
    pos = torch.arange(word_start.shape[1]).expand_as(word_start)
    return torch.where(word_start, pos, -1).cummax(1).values.clamp(min=0)


# -- rates -------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
@pytest.mark.parametrize("p", [0.15, 0.3, 0.5])
def test_rate_on_packed_blocks(tokenizer, blocks, strategy, p):
    # ~3 x 1,100 blocks of 128 tokens
    collator = MaskingCollator(tokenizer, strategy=strategy, mlm_probability=p, seed=3)
    assert abs(realised_rate(collator, blocks, epochs=3) - p) < 0.005


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_rate_on_padded_batches(tokenizer, sentences, strategy):
    collator = MaskingCollator(tokenizer, strategy=strategy, mlm_probability=0.3)
    assert abs(realised_rate(collator, sentences, size=64, epochs=2) - 0.3) < 0.005


def test_whole_word_rate_is_not_biased_by_word_length(tokenizer, blocks):
    """Tokens of long words are selected as often as single-token words."""
    collator = MaskingCollator(tokenizer, strategy="whole_word", mlm_probability=0.3)
    hits = torch.zeros(2)
    counts = torch.zeros(2)
    for _, maskable, word_start, out in run(collator, blocks, epochs=2):
        follower = torch.cat([word_start[:, 1:] | ~maskable[:, 1:],
                              torch.ones_like(word_start[:, :1])], 1)
        single = word_start & follower  # a one-token word
        for k, group in enumerate([single, maskable & ~single]):
            hits[k] += ((out["labels"] != -100) & group).sum()
            counts[k] += group.sum()
    rates = hits / counts
    assert (rates - 0.3).abs().max() < 0.01, rates


def test_rate_schedule(tokenizer, blocks):
    collator = MaskingCollator(tokenizer, strategy="whole_word", mlm_probability=0.3)
    collator.set_mlm_probability(0.15)
    assert abs(realised_rate(collator, blocks, epochs=2) - 0.15) < 0.005
    with pytest.raises(UserError, match="mlm_probability"):
        collator.set_mlm_probability(1.0)


# -- units -------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["whole_word", "span"])
@pytest.mark.parametrize("data", ["blocks", "sentences"])
def test_whole_words_masked_entirely(tokenizer, strategy, data, request):
    examples = request.getfixturevalue(data)
    collator = MaskingCollator(tokenizer, strategy=strategy, mlm_probability=0.3)
    for _, maskable, word_start, out in run(collator, examples, size=64):
        selected = out["labels"] != -100
        head = selected.gather(1, word_of(word_start))
        assert torch.equal(selected, head & maskable)
        assert word_start.sum() < maskable.sum()  # there are multi-token words to test


def test_word_starts_from_vocabulary(tokenizer, sentences):
    """Without word_start, a WordPiece vocabulary's ## prefix marks continuation tokens."""
    bare = [{"input_ids": e["input_ids"]} for e in sentences[:64]]
    collator = MaskingCollator(tokenizer, strategy="whole_word")
    _, _, maskable, derived = collator.collate(bare)
    _, _, _, given = collator.collate(sentences[:64])
    assert torch.equal(derived, given)
    out = collator(bare)
    selected = out["labels"] != -100
    assert torch.equal(selected, selected.gather(1, word_of(derived)) & maskable)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_word_starts_from_vocabulary_match_packing(texts, kind):
    """Byte-level BPE and Unigram: without a word_start column the collator reads the same word
    starts off the ids as packing wrote into its blocks (words run between whitespace)."""
    tok = train_tokenizer(texts[:80], TokenizerConfig(tokenizer_kind=kind, vocab_size=1500))
    packed = pack(Dataset.from_dict({"text": texts[:80]}), tok, 128)
    rows = packed.with_format("torch", columns=COLUMNS)[:256]
    given = [{k: rows[k][i] for k in COLUMNS} for i in range(len(rows["input_ids"]))]
    bare = [{k: e[k] for k in ("input_ids", "special_tokens_mask")} for e in given]
    collator = MaskingCollator(tok, strategy="whole_word")
    _, _, maskable, derived = collator.collate(bare)
    _, _, _, packed_starts = collator.collate(given)
    # A block's first token may continue a word cut at the block boundary: packing knows, the
    # ids alone do not; everywhere else the two agree.
    assert torch.equal(derived[:, 2:], packed_starts[:, 2:])
    assert 0.3 < packed_starts.sum() / maskable.sum() < 0.95  # words of several tokens


def test_span_length_distribution(tokenizer, blocks):
    """Spans cut from rows of one-token words follow the truncated geometric distribution."""
    for p, most in [(0.2, 10), (0.5, 4)]:
        collator = MaskingCollator(tokenizer, strategy="span", span_geometric_p=p,
                                   span_max_words=most)
        gen = torch.Generator().manual_seed(0)
        B, L = 4000, 130
        maskable = torch.ones(B, L, dtype=torch.bool)
        maskable[:, 0] = maskable[:, -1] = False
        starts = collator._span_starts(maskable, maskable, gen)
        pos = torch.nonzero(starts)
        gaps = pos[1:, 1] - pos[:-1, 1]
        interior = gaps[pos[1:, 0] == pos[:-1, 0]]  # the last span of a row is cut short
        observed = torch.bincount(interior, minlength=most + 1)[1:].double()
        expected = span_length_probs(p, most)
        assert len(observed) == most
        assert (observed / observed.sum() - expected).abs().max() < 0.01
        mean = (expected * torch.arange(1, most + 1)).sum()
        assert abs(interior.double().mean() - mean) < 0.05
    assert abs(float((span_length_probs(0.2, 10) * torch.arange(1, 11)).sum()) - 3.8) < 0.01


def test_spans_are_longer_than_words(tokenizer, blocks):
    def mean_run(strategy):
        collator = MaskingCollator(tokenizer, strategy=strategy, mlm_probability=0.15)
        runs = words = 0
        for _, _, word_start, out in run(collator, blocks[:512]):
            selected = out["labels"] != -100
            prev = torch.cat([torch.zeros_like(selected[:, :1]), selected[:, :-1]], 1)
            runs += int((selected & ~prev).sum())
            words += int((selected & word_start).sum())
        return words / runs

    assert mean_run("whole_word") < 1.3
    assert 3.5 < mean_run("span") < 5.0  # 3.8 words per span, a few spans touch


# -- replacement split, specials ---------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
@pytest.mark.parametrize("split", [(0.8, 0.1), (0.5, 0.4), (1.0, 0.0)])
def test_replacement_split_and_specials(tokenizer, blocks, strategy, split):
    collator = MaskingCollator(tokenizer, strategy=strategy, mlm_probability=0.3,
                               mask_replace_prob=split[0], random_replace_prob=split[1])
    special_ids = torch.tensor(tokenizer.all_special_ids)
    counts = torch.zeros(3)
    for ids, maskable, _, out in run(collator, blocks, epochs=2):
        selected = out["labels"] != -100
        assert torch.equal(out["labels"][selected], ids[selected])
        assert torch.equal(out["input_ids"][~selected], ids[~selected])  # specials untouched
        assert not (selected & ~maskable).any()
        masked = out["input_ids"] == tokenizer.mask_token_id
        changed = selected & ~masked & (out["input_ids"] != ids)
        assert not torch.isin(out["input_ids"][changed], special_ids).any()
        counts += torch.stack([(selected & masked).sum(), changed.sum(),
                               (selected & (out["input_ids"] == ids)).sum()])
    shares = counts / counts.sum()
    expected = torch.tensor([split[0], split[1], 1 - sum(split)])
    assert (shares - expected).abs().max() < 0.01, shares


def test_padded_batch(tokenizer, sentences):
    chunk = sentences[:32]
    out = MaskingCollator(tokenizer, strategy="span", return_masked_positions=True)(chunk)
    lengths = torch.tensor([len(e["input_ids"]) for e in chunk])
    assert lengths.min() < lengths.max() == out["input_ids"].shape[1]
    expected = (torch.arange(lengths.max())[None, :] < lengths[:, None]).long()
    assert torch.equal(out["attention_mask"], expected)
    assert (out["input_ids"][expected == 0] == tokenizer.pad_token_id).all()
    assert (out["labels"][expected == 0] == -100).all()
    assert torch.equal(out["masked_positions"],
                       torch.nonzero(out["labels"].view(-1) != -100).squeeze(1))


def test_packed_batch_shapes(tokenizer, blocks):
    out = MaskingCollator(tokenizer, strategy="whole_word", return_masked_positions=True)(
        blocks[:16])
    assert out["input_ids"].shape == (16, 128) and out["input_ids"].dtype == torch.long
    assert out["attention_mask"].all()
    assert len(out["masked_positions"]) == int((out["labels"] != -100).sum())


# -- determinism -------------------------------------------------------------------------------

def masks(collator, chunk, epoch=0, step=0):
    collator.set_epoch(epoch)
    collator.set_step(step)
    return collator(chunk)["labels"]


@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
def test_deterministic_and_distinct(tokenizer, blocks, strategy):
    chunk = blocks[:32]

    def make(**kw):
        return MaskingCollator(tokenizer, strategy=strategy, mlm_probability=0.3, **kw)

    base = masks(make(seed=1), chunk, epoch=2, step=5)
    assert torch.equal(base, masks(make(seed=1), chunk, epoch=2, step=5))
    assert torch.equal(base, masks(make(seed=1, rank=0, worker=0), chunk, epoch=2, step=5))
    others = [masks(make(seed=2), chunk, 2, 5), masks(make(seed=1), chunk, 3, 5),
              masks(make(seed=1), chunk, 2, 6), masks(make(seed=1, rank=1), chunk, 2, 5),
              masks(make(seed=1, worker=1), chunk, 2, 5)]
    for other in others:
        assert not torch.equal(base, other)
    collator = make(seed=1)
    first, second = collator(chunk), collator(chunk)  # steps count on between calls
    assert not torch.equal(first["labels"], second["labels"])


def test_dataloader_workers_differ(tokenizer, blocks):
    """Each worker's copy of the collator counts its own steps: the worker id tells them apart."""
    chunk = blocks[:16]
    collator = MaskingCollator(tokenizer, strategy="whole_word", seed=7)
    loader = torch.utils.data.DataLoader([chunk] * 4, batch_size=None, num_workers=2,
                                         collate_fn=collator)
    labels = [b["labels"] for b in loader]
    assert not torch.equal(labels[0], labels[1])  # step 0 of worker 0 and of worker 1
    for w in range(2):
        expected = MaskingCollator(tokenizer, strategy="whole_word", seed=7, worker=w)(chunk)
        assert torch.equal(labels[w], expected["labels"])


# -- bad input ---------------------------------------------------------------------------------

def test_bad_settings(tokenizer, blocks):
    for p in (0, 1, 1.5, -0.1):
        with pytest.raises(UserError, match="mlm_probability"):
            MaskingCollator(tokenizer, mlm_probability=p)
    with pytest.raises(UserError, match="mask_replace_prob \\+ random_replace_prob"):
        MaskingCollator(tokenizer, mask_replace_prob=0.8, random_replace_prob=0.3)
    with pytest.raises(UserError, match="masking_strategy"):
        MaskingCollator(tokenizer, strategy="words")
    with pytest.raises(UserError, match="span_geometric_p"):
        MaskingCollator(tokenizer, strategy="span", span_geometric_p=0)
    with pytest.raises(UserError, match="span_max_words"):
        MaskingCollator(tokenizer, strategy="span", span_max_words=0)


def test_tokenizer_without_mask_or_word_boundaries():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    no_mask = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    with pytest.raises(UserError, match="mask token"):
        MaskingCollator(no_mask)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                  mask_token="[MASK]", unk_token="[UNK]")
    examples = [{"input_ids": [5, 6, 7, 5, 6]}]
    assert MaskingCollator(tok, strategy="token")(examples)["labels"].shape == (1, 5)
    with pytest.raises(UserError, match="masking_strategy 'whole_word' needs word boundaries"):
        MaskingCollator(tok, strategy="whole_word")(examples)
    with_starts = [{**examples[0], "word_start": [1, 0, 1, 1, 0]}]
    assert MaskingCollator(tok, strategy="span")(with_starts)["labels"].shape == (1, 5)


def test_padding_inside_fixed_length_blocks(tokenizer, blocks):
    """Blocks that end a document early are padded inside their fixed length."""
    chunk = []
    for e in blocks[:16]:
        ids = e["input_ids"].clone()
        ids[-20:] = tokenizer.pad_token_id
        keep = torch.ones_like(ids)
        keep[-20:] = 0
        chunk.append({**e, "input_ids": ids, "attention_mask": keep})
    out = MaskingCollator(tokenizer, strategy="span", mlm_probability=0.5)(chunk)
    assert not out["attention_mask"][:, -20:].any() and out["attention_mask"][:, 1:-20].all()
    assert (out["labels"][:, -20:] == -100).all()
    assert (out["input_ids"][:, -20:] == tokenizer.pad_token_id).all()


def test_document_attention_mask(tokenizer, texts):
    """The 4-D mask is block-diagonal over documents, excludes padding, and really isolates the
    documents inside a BERT and a ModernBERT: editing one document leaves the other's outputs
    unchanged with it, and changes them without it."""
    from mlm.config import ModelConfig
    from mlm.modeling import build_model

    short = [t[:300] for t in texts[:40]]
    packed = pack(Dataset.from_dict({"text": short}), tokenizer, 128,
                  respect_document_boundaries=False)
    cols = COLUMNS + ["attention_mask", "document_ids"]
    rows = packed.with_format("torch", columns=cols)[:4]
    examples = [{k: rows[k][i] for k in cols} for i in range(4)]
    doc = rows["document_ids"][0]
    assert doc.max() >= 1  # the first block holds several documents
    collator = MaskingCollator(tokenizer, mlm_probability=0.15, document_attention=True)
    mask = collator(examples)["attention_mask"]
    assert mask.shape == (4, 1, 128, 128) and mask.dtype == torch.bool
    same = doc[:, None] == doc[None, :]
    assert torch.equal(mask[0, 0], same | torch.eye(128, dtype=torch.bool))
    plain = MaskingCollator(tokenizer, mlm_probability=0.15)(examples)["attention_mask"]
    assert plain.shape == (4, 128)

    ids = rows["input_ids"][:1].long()
    first = doc == 0
    edited = ids.clone()
    edited[0, 1:int(first.sum()) - 1] = tokenizer.mask_token_id  # rewrite document 0's words
    for family in ("bert", "modernbert"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(model_family=family, model_size="tiny"), tokenizer, 128)
        model.eval()
        with torch.no_grad():
            isolated = [model.base_model(input_ids=x, attention_mask=mask[:1])
                        .last_hidden_state[0] for x in (ids, edited)]
            mixed = [model.base_model(input_ids=x, attention_mask=plain[:1])
                     .last_hidden_state[0] for x in (ids, edited)]
        later = ~first
        assert torch.allclose(isolated[0][later], isolated[1][later], atol=1e-5), family
        assert not torch.allclose(mixed[0][later], mixed[1][later], atol=1e-3), family
