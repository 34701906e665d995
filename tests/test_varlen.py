"""Unpadded (varlen) batches for flash-attention: the collator's segments and the objectives'
plumbing, checked on CPU against the masked SDPA path.

flash-attn itself needs a CUDA GPU, so here transformers' attention interface runs a reference
varlen attention instead of its kernel: SDPA on each segment named by `cu_seq_lens_q`, alone.
Everything of ours (the segments, the flattened inputs and positions, the arguments reaching
every attention layer of a BERT and a ModernBERT) is the code a GPU run uses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AttentionInterface, AutoModelForMaskedLM, AutoModelForTokenClassification
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from mlm.config import ModelConfig, TokenizerConfig
from mlm.errors import UserError
from mlm.masking import MaskingCollator
from mlm.modeling import build_model
from mlm.objective import (
    RTD_LABELS,
    MaskedLMObjective,
    ReplacedTokenDetection,
    generator_config,
    uses_varlen,
)
from mlm.packing import pack
from mlm.tokenizer import train_tokenizer

REFERENCE = "mlm_test_varlen_reference"
COLUMNS = ["input_ids", "word_start", "special_tokens_mask", "attention_mask", "document_ids"]


def reference_varlen(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                     sliding_window=None, cu_seq_lens_q=None, cu_seq_lens_k=None,
                     max_length_q=None, **_):
    """What flash-attn's varlen kernel computes, on CPU: each segment attends to itself only,
    within the window transformers gives flash-attn (window_size = sliding_window - 1 each
    side)."""
    assert attention_mask is None, "varlen attention must get no mask"
    assert cu_seq_lens_q is not None and torch.equal(cu_seq_lens_q, cu_seq_lens_k)
    assert query.shape[0] == 1 and int(cu_seq_lens_q[-1]) == query.shape[2]
    assert isinstance(max_length_q, int)
    out = torch.empty_like(query)
    bounds = cu_seq_lens_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        band = None
        if sliding_window is not None:
            i = torch.arange(b - a)
            band = (i[:, None] - i[None, :]).abs() <= sliding_window - 1
        out[:, :, a:b] = F.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], attn_mask=band, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(REFERENCE, reference_varlen)
AttentionMaskInterface.register(REFERENCE, flash_attention_mask)  # transformers' own, for flash


@pytest.fixture(scope="module")
def tokenizer(bbc_dir):
    files = sorted(bbc_dir.rglob("*.txt"))[::9][:200]
    return train_tokenizer([p.read_text(encoding="utf-8") for p in files],
                           TokenizerConfig(vocab_size=1500))


@pytest.fixture(scope="module")
def examples(bbc_dir, tokenizer) -> list[dict]:
    """Six 64-token blocks holding several short documents each; the last ends in padding."""
    files = sorted(bbc_dir.rglob("*.txt"))[::5][:40]
    docs = [p.read_text(encoding="utf-8")[:70] for p in files]
    packed = pack(Dataset.from_dict({"text": docs}), tokenizer, 64,
                  respect_document_boundaries=True)
    rows = packed.with_format("torch", columns=COLUMNS)[:6]
    out = [{k: rows[k][i] for k in COLUMNS} for i in range(6)]
    assert all(int(e["document_ids"].max()) >= 1 for e in out)  # several documents per block
    assert not all(bool(e["attention_mask"].all()) for e in out)  # and some padding
    return out


def collate(tokenizer, examples, document_attention: bool, varlen: bool, **kw) -> dict:
    collator = MaskingCollator(tokenizer, strategy="whole_word", mlm_probability=0.3, seed=7,
                               document_attention=document_attention, varlen=varlen, **kw)
    return collator(examples)


def test_segments_of_a_flattened_batch(tokenizer):
    """Boundaries at every block row, every document (with document attention) and every run
    of padding; positions restart at each row; the longest segment is a plain int."""
    rows = [([5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 0, 1, 1, 2, 2, 2], [1] * 8),
            ([5, 6, 7, 8, 9, 0, 0, 0], [0, 0, 0, 0, 0, -1, -1, -1], [1] * 5 + [0] * 3)]
    batch = [{"input_ids": torch.tensor(i), "document_ids": torch.tensor(d),
              "attention_mask": torch.tensor(m)} for i, d, m in rows]
    pad = tokenizer.pad_token_id
    for e in batch:
        e["input_ids"][e["attention_mask"] == 0] = pad
    docs = MaskingCollator(tokenizer, document_attention=True, varlen=True)(batch)
    assert docs["cu_seq_lens"].tolist() == [0, 3, 5, 8, 13, 16]
    assert docs["cu_seq_lens"].dtype == torch.int32
    assert docs["max_length"] == 5 and isinstance(docs["max_length"], int)
    assert docs["position_ids"].tolist() == [list(range(8))] * 2
    assert docs["attention_mask"].shape == (2, 8)  # no 4-D mask: varlen needs none
    rows_only = MaskingCollator(tokenizer, varlen=True)(batch)
    assert rows_only["cu_seq_lens"].tolist() == [0, 8, 13, 16]
    assert rows_only["max_length"] == 8
    assert "cu_seq_lens" not in MaskingCollator(tokenizer, document_attention=True)(batch)


def _mlm(tokenizer, family: str, sparse: bool) -> MaskedLMObjective:
    torch.manual_seed(0)
    # ModernBERT's local layers with a window of +-8 tokens, shorter than the documents, so
    # that a window applied wrongly on either path shows
    window = {"local_attention": 16} if family == "modernbert" else {}
    model = build_model(ModelConfig(model_family=family, model_size="tiny"), tokenizer, 64,
                        **window)
    assert family != "modernbert" or "sliding_attention" in model.config.layer_types
    return MaskedLMObjective(model, sparse=sparse).eval()


def _loss_and_grads(objective, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    objective.zero_grad()
    loss = objective(**batch)["loss"]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in objective.parameters() if p.grad is not None]


@pytest.mark.parametrize("family,sparse", [("modernbert", True), ("modernbert", False),
                                           ("bert", True)])
def test_varlen_batches_train_like_masked_ones(tokenizer, examples, family, sparse):
    """The varlen path gives the masked SDPA path's loss and gradients, with and without
    document attention; and the segments matter: cut at rows only, the gradients differ."""
    objective = _mlm(tokenizer, family, sparse)
    results = {}
    for docs in (True, False):
        masked = collate(tokenizer, examples, docs, varlen=False,
                         return_masked_positions=sparse)
        varlen = collate(tokenizer, examples, docs, varlen=True, return_masked_positions=sparse)
        assert torch.equal(masked["labels"], varlen["labels"])  # same masks either way
        objective.model.set_attn_implementation("sdpa")
        assert not uses_varlen(objective)
        want, want_grads = _loss_and_grads(objective, masked)
        objective.model.set_attn_implementation(REFERENCE)
        got, got_grads = _loss_and_grads(objective, varlen)
        assert torch.allclose(got, want, atol=1e-5), (family, docs, got, want)
        assert len(got_grads) == len(want_grads)
        for g, w in zip(got_grads, want_grads):
            assert torch.allclose(g, w, atol=1e-5), (family, docs)
        results[docs] = got_grads
    # A fresh model's loss hardly depends on context; its gradients do, 100x above the
    # tolerance of the equalities above.
    apart = max(float((a - b).abs().max()) for a, b in zip(results[True], results[False]))
    assert apart > 1e-4, apart


def test_replaced_token_detection_takes_varlen_batches(tokenizer, examples):
    """Generator and discriminator both read the segments: same losses as with the 4-D mask."""
    torch.manual_seed(0)
    disc = build_model(ModelConfig(model_size="tiny"), tokenizer, 64,
                       AutoModelForTokenClassification, **RTD_LABELS)
    gen = AutoModelForMaskedLM.from_config(generator_config(disc.config, 0.25))
    rtd = ReplacedTokenDetection(disc, gen, 50.0, "tied").eval()
    kw = {"replacement_uniforms": True}
    masked = collate(tokenizer, examples, True, varlen=False, **kw)
    varlen = collate(tokenizer, examples, True, varlen=True, **kw)
    for part in rtd.models():
        part.set_attn_implementation("sdpa")
    with torch.no_grad():
        want = rtd(**masked)
    for part in rtd.models():
        part.set_attn_implementation(REFERENCE)
    with torch.no_grad():
        got = rtd(**varlen)
    for name in ("generator_loss", "discriminator_loss"):
        assert torch.allclose(got[name], want[name], atol=1e-5), name


def test_flash_attention_only_where_it_can_run():
    """flash_attention_2 asked for on a CPU, or without half-precision autocast (flash-attn
    computes in bf16/fp16 only), is refused naming the setting and what is allowed; `auto`
    then takes SDPA (eager on CPU at short lengths)."""
    flash = ModelConfig(attn_implementation="flash_attention_2")
    for device, precision in (("cpu", "bf16"), ("cuda", "no")):
        with pytest.raises(UserError, match=r"--attn_implementation.*allowed auto, sdpa or eager"):
            flash.attention_for(device, 128, precision)
    assert ModelConfig().attention_for("cuda", 128, "no") == "sdpa"
    assert ModelConfig().attention_for("cpu", 128, "bf16") == "eager"
    assert ModelConfig().attention_for("cpu", 512, "bf16") == "sdpa"
