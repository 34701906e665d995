"""Objective stage: the self-supervised task an encoder learns from masked batches.

The loop sees one `torch.nn.Module` whose forward takes a masked batch and returns a dict with
the "loss" to backpropagate (and, for logging, its parts). Each objective knows how to save the
standard model folders it trains, how many FLOPs a token costs, and which model is "the"
encoder (`.model`: the one fine-tuning starts from).

- `mlm`: masked language modeling (BERT): cross-entropy on the selected tokens.
- `rtd`: replaced-token detection (ELECTRA, Clark et al. 2020): a small masked-LM generator
  fills the selected positions with samples from its softmax, and the encoder (the
  discriminator) learns, on every token, whether it was replaced. The generator is the same
  family and depth at a fraction of the width; it shares the discriminator's token embeddings
  through a linear projection (ELECTRA ties them through its `embedding_size`, which
  ModernBERT lacks). Saved: the discriminator as a `*ForTokenClassification` with one label
  ("replaced"), which `AutoModelFor{Sequence,Token}Classification` load with a fresh head, and
  the generator in `generator/` as a standard `*ForMaskedLM` (the projection folded into its
  embedding matrix), which `pipeline("fill-mask")` loads.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from mlm.config import Recipe
from mlm.errors import UserError
from mlm.modeling import (
    build_model,
    count_parameters,
    flops_per_token,
    quiet_transformers,
    resize_and_init_new_embeddings,
)
from mlm.recipe import resolve_path
from mlm.tokenizer import load_tokenizer

RTD_LABELS = {"num_labels": 1, "id2label": {0: "replaced"}, "label2id": {"replaced": 0}}
"""The discriminator's head: one logit per token, "this token was replaced"."""


def prediction_transform(model: PreTrainedModel):
    """The masked-LM head of `model` up to (not including) the vocabulary projection, per family.
    (ModernBERT has its own sparse_prediction flag, but it is read once at construction.)"""
    family = model.config.model_type
    if family == "bert":
        return model.cls.predictions.transform
    if family == "roberta":
        head = model.lm_head
        return lambda h: head.layer_norm(F.gelu(head.dense(h)))
    if family == "modernbert":
        return model.head
    raise UserError(f"sparse prediction is not available for model type '{family}'")


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _without_tied_copies(module: torch.nn.Module, state: dict) -> dict:
    """`state` less the second and later names of each tied weight (the MLM decoder tied to the
    embeddings). A state dict gathered from shards (FSDP, DeepSpeed) holds a separate tensor per
    name, so save_pretrained cannot see the tie and would write the matrix twice."""
    first: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if first.setdefault(id(param), name) != name:
            state.pop(name, None)
    return state


def _names_of(module: torch.nn.Module, param: torch.nn.Parameter) -> list[str]:
    """Every name under which `param` appears in `module` (tied weights have several)."""
    return [n for n, p in module.named_parameters(remove_duplicate=False) if p is param]


VARLEN_ATTENTION = frozenset({"flash_attention_2"})
"""Attention implementations that take a batch unpadded, as one sequence cut into segments
(flash-attn's varlen kernel), instead of a mask."""


def uses_varlen(objective: torch.nn.Module) -> bool:
    """Whether the objective's models run varlen attention, so the collator must describe each
    batch's segments (mlm.masking, `varlen`)."""
    return all(m.config._attn_implementation in VARLEN_ATTENTION for m in objective.models())


def attention_inputs(config, attention_mask: torch.Tensor,
                     cu_seq_lens: torch.Tensor | None = None, max_length: int | None = None,
                     position_ids: torch.Tensor | None = None) -> dict:
    """The attention arguments of a model with `config` for a batch: its mask, or for varlen
    attention the segments of the batch flattened to one row (the token inputs then go through
    `as_one_row`; no mask, so no padding to unpad at every layer).

    A 4-D (document-aware) mask reaches every layer as it is, so ModernBERT's local layers would
    see whole documents: they get it narrowed to their window (|i - j| <= sliding_window, what
    transformers builds from a 2-D mask and what flash-attn's varlen window does)."""
    if cu_seq_lens is None:
        if attention_mask.dim() == 4 and "sliding_attention" in \
                (getattr(config, "layer_types", None) or ()):
            band = _window_band(attention_mask.shape[-1], config.sliding_window,
                                attention_mask.device)
            return {"attention_mask": {"full_attention": attention_mask,
                                       "sliding_attention": attention_mask & band}}
        return {"attention_mask": attention_mask}
    return {"position_ids": position_ids.reshape(1, -1),
            "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_length, "max_length_k": max_length}


@functools.lru_cache(maxsize=8)
def _window_band(length: int, window: int, device: torch.device) -> torch.Tensor:
    """(length, length) boolean: |i - j| <= window (made once per length, not every step)."""
    i = torch.arange(length, device=device)
    return (i[:, None] - i[None, :]).abs() <= window


def as_one_row(x: torch.Tensor, varlen: bool) -> torch.Tensor:
    """(batch, length, ...) as one row (1, batch x length, ...) for varlen attention."""
    return x.reshape(1, -1, *x.shape[2:]) if varlen else x


class MaskedLMObjective(torch.nn.Module):
    """Masked language modeling around a `*ForMaskedLM`: mean cross-entropy on selected tokens.

    With `sparse`, the prediction head (the costliest layer of a small model with a large
    vocabulary) runs only on the selected positions rather than on every token. Wrapping the
    model in one module keeps DDP's gradient hooks on the path; what is saved is still the
    inner, standard `*ForMaskedLM`.
    """

    parts = ("loss",)
    """The entries of forward's dict (validation reports each)."""
    perplexity_of = "loss"
    """The part whose exponential is the validation perplexity: the masked-LM loss."""

    def __init__(self, model: PreTrainedModel, sparse: bool = False):
        super().__init__()
        self.model = model
        self.sparse = sparse
        if sparse:
            self.transform = prediction_transform(model)

    @property
    def _no_split_modules(self) -> list[str]:
        """The encoder's block class (the elements of its longest ModuleList), for FSDP's
        TRANSFORMER_BASED_WRAP: each block becomes a unit of its own, so parameters are sharded
        layer by layer. The embeddings are not named (ModernBERT's list names them), and this
        wrapper has no get_input/output_embeddings: the embedding matrix and the decoder (and
        BERT's decoder bias and its head's) are tied, and FSDP refuses a tied parameter in two
        units, so they stay together in the root unit."""
        lists = [m for m in self.model.base_model.modules()
                 if isinstance(m, torch.nn.ModuleList) and len(m)]
        return [type(max(lists, key=len)[0]).__name__] if lists else []

    def forward(self, input_ids, attention_mask, labels, masked_positions=None,
                cu_seq_lens=None, max_length=None, position_ids=None, **_) -> dict:
        varlen = cu_seq_lens is not None
        attention = attention_inputs(self.model.config, attention_mask, cu_seq_lens, max_length,
                                     position_ids)
        if not self.sparse:
            return {"loss": self.model(input_ids=as_one_row(input_ids, varlen), **attention,
                                       labels=as_one_row(labels, varlen)).loss}
        hidden = self.model.base_model(input_ids=as_one_row(input_ids, varlen),
                                       **attention).last_hidden_state
        flat_labels = labels.reshape(-1)
        if masked_positions is None:
            masked_positions = torch.nonzero(flat_labels != -100).squeeze(1)
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)
        logits = self.model.get_output_embeddings()(self.transform(selected))
        return {"loss": F.cross_entropy(logits.float(),
                                        flat_labels.index_select(0, masked_positions))}

    def models(self) -> list[PreTrainedModel]:
        return [self.model]

    def summary(self) -> dict:
        """What run_summary.json records of this objective beyond the encoder."""
        return {}

    def flops_per_token(self, seq_len: int, mask_rate: float) -> float:
        return flops_per_token(self.model.config, seq_len, mask_rate if self.sparse else 1.0)

    def save_pretrained(self, folder: Path, state: dict, tokenizer) -> None:
        """The masked LM and its tokenizer in `folder`, from the full `state` of this module."""
        with quiet_transformers():
            self.model.save_pretrained(
                str(folder), state_dict=_without_tied_copies(self.model, _strip(state, "model.")))
        tokenizer.save_pretrained(str(folder))


def generator_config(config, size: float):
    """The generator's config: `config` (the discriminator's) at `size` of its width, same depth,
    64-dimensional attention heads (at least one), the feed-forward scaled alike."""
    target = config.hidden_size * size
    heads = max(1, round(target / 64))
    width = heads * max(2, 2 * round(target / heads / 2))  # an even head size (rotary positions)
    kept = {k: v for k, v in config.to_dict().items()
            if k not in ("architectures", "id2label", "label2id", "num_labels")}
    gen = config.__class__.from_dict(kept)  # no classification labels: a masked LM
    gen.hidden_size, gen.num_attention_heads = width, heads
    gen.intermediate_size = max(1, round(config.intermediate_size * width / config.hidden_size))
    return gen


class ReplacedTokenDetection(torch.nn.Module):
    """ELECTRA's objective (see the module docstring): generator MLM loss on the selected tokens
    plus `weight` x the discriminator's binary cross-entropy on every token.

    The replacements are drawn by inverse-CDF sampling from the generator's softmax with one
    uniform per selected token that the masking collator draws from its seeded generator
    (`replacement_uniforms`): so the samples, like the masks, depend only on the seed and the
    batch index (exact resume, the same on any number of processes), and validation batches
    are the same at every evaluation. A sample equal to the original token counts as not
    replaced, as in ELECTRA.
    """

    parts = ("loss", "generator_loss", "discriminator_loss")
    perplexity_of = "generator_loss"

    def __init__(self, discriminator: PreTrainedModel, generator: PreTrainedModel,
                 weight: float = 50.0, sharing: str = "tied"):
        super().__init__()
        self.model, self.generator, self.weight = discriminator, generator, weight
        own = discriminator.get_input_embeddings()
        self.shared = None  # tied: the discriminator's own matrix is the shared one
        if sharing == "disentangled":  # the shared matrix apart; the encoder's becomes a residual
            self.shared = torch.nn.Embedding.from_pretrained(own.weight.detach().clone(), freeze=False)
            with torch.no_grad():
                own.weight.zero_()
        self.transform = prediction_transform(generator)
        width, gen_width = discriminator.config.hidden_size, generator.config.hidden_size
        self.projection = torch.nn.Linear(width, gen_width, bias=False) if gen_width != width \
            else None
        if self.projection is not None:
            torch.nn.init.normal_(self.projection.weight, std=generator.config.initializer_range)
        # The generator reads and writes tokens through the shared embeddings; its own matrix
        # (tied to its decoder) is unused while training, and frozen so DDP does not wait for it.
        generator.get_input_embeddings().weight.requires_grad_(False)
        self.pad_id = discriminator.config.pad_token_id

    def forward(self, input_ids, attention_mask, labels, masked_positions,
                replacement_uniforms, cu_seq_lens=None, max_length=None, position_ids=None,
                **_) -> dict:
        varlen = cu_seq_lens is not None
        segments = (cu_seq_lens, max_length, position_ids)
        shared = self.shared if self.shared is not None else self.model.get_input_embeddings()
        embeds = shared(input_ids)
        if self.projection is not None:
            embeds = self.projection(embeds)
        hidden = self.generator.base_model(
            inputs_embeds=as_one_row(embeds, varlen),
            **attention_inputs(self.generator.config, attention_mask, *segments)).last_hidden_state
        targets = labels.reshape(-1).index_select(0, masked_positions)
        out = self.transform(hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions))
        if self.projection is not None:
            out = out @ self.projection.weight  # back to the shared embeddings' width
        logits = F.linear(out, shared.weight, self.generator.get_output_embeddings().bias).float()
        generator_loss = F.cross_entropy(logits, targets)

        with torch.no_grad():
            cdf = logits.softmax(-1).cumsum(-1)
            u = replacement_uniforms.to(cdf.dtype).unsqueeze(1) * cdf[:, -1:]
            sampled = torch.searchsorted(cdf, u).squeeze(1).clamp_(max=cdf.shape[1] - 1)
        flat = input_ids.reshape(-1)
        corrupted = flat.index_copy(0, masked_positions, sampled).view_as(input_ids)
        replaced = torch.zeros(flat.shape, device=flat.device).index_copy(
            0, masked_positions, (sampled != targets).float()).view_as(input_ids)
        attention = attention_inputs(self.model.config, attention_mask, *segments)
        if self.shared is None:
            scores = self.model(input_ids=as_one_row(corrupted, varlen), **attention).logits
        else:  # the shared matrix without its gradient, plus the encoder's residual
            embeds = F.embedding(corrupted, shared.weight.detach()) + \
                self.model.get_input_embeddings()(corrupted)
            scores = self.model(inputs_embeds=as_one_row(embeds, varlen), **attention).logits
        scores = scores.reshape(*input_ids.shape, -1)
        present = attention_mask.bool() if attention_mask.dim() == 2 else input_ids != self.pad_id
        discriminator_loss = F.binary_cross_entropy_with_logits(
            scores.squeeze(-1).float()[present], replaced[present])
        return {"loss": generator_loss + self.weight * discriminator_loss,
                "generator_loss": generator_loss.detach(),
                "discriminator_loss": discriminator_loss.detach()}

    def models(self) -> list[PreTrainedModel]:
        return [self.model, self.generator]

    def summary(self) -> dict:
        """The fill-mask generator saved beside the encoder."""
        return {"generator": {"folder": "generator", "hidden_size": self.generator.config.hidden_size,
                              "num_parameters": count_parameters(self.generator)}}

    def flops_per_token(self, seq_len: int, mask_rate: float) -> float:
        """Discriminator on every token (its one-logit head aside) plus the generator, whose
        vocabulary head runs on the selected tokens at the shared embeddings' width."""
        disc, gen = self.model.config, self.generator.config
        H, h, V = disc.hidden_size, gen.hidden_size, disc.vocab_size
        head = h * h + (h * H if self.projection is not None else 0) + H * V
        return flops_per_token(disc, seq_len, 0.0) + flops_per_token(gen, seq_len, 0.0) + \
            6.0 * (mask_rate * head + H * H)

    def save_pretrained(self, folder: Path, state: dict, tokenizer) -> None:
        """The discriminator in `folder` and the generator in `folder/generator`, each with the
        tokenizer, from the full `state` of this module. The generator's saved embedding matrix
        (tied to its decoder) is the shared one through the projection: E P^T."""
        disc_state = _strip(state, "model.")
        own = _names_of(self.model, self.model.get_input_embeddings().weight)[0]
        shared = disc_state[own]
        if self.shared is not None:  # the encoder reads shared + residual: save the sum
            shared = state["shared.weight"]
            disc_state[own] = (disc_state[own].float() + shared.float()).to(shared.dtype)
        folded = shared.float()
        if self.projection is not None:
            folded = folded @ state["projection.weight"].float().t()
        gen_state = _strip(state, "generator.")
        for name in _names_of(self.generator, self.generator.get_input_embeddings().weight):
            gen_state[name] = folded.to(shared.dtype)
        with quiet_transformers():
            self.model.save_pretrained(str(folder), state_dict=disc_state)
            self.generator.save_pretrained(str(Path(folder) / "generator"), state_dict=gen_state)
        tokenizer.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(Path(folder) / "generator"))


def build_objective(recipe: Recipe, tokenizer, attention: str) -> torch.nn.Module:
    """The recipe's encoder inside its training objective, its models on the `attention`
    implementation (`ModelConfig.attention_for`). A checkpoint continued with an extended
    vocabulary is loaded with its own tokenizer, then grown to the new one."""
    cfg, seq = recipe.model, recipe.packing.max_seq_length
    auto, extra = (AutoModelForTokenClassification, RTD_LABELS) if cfg.objective == "rtd" \
        else (AutoModelForMaskedLM, {})
    if cfg.model_name_or_path and recipe.tokenizer.extend_vocab_words:
        base = load_tokenizer(resolve_path(recipe.tokenizer.tokenizer_name_or_path))
        model = build_model(cfg, base, seq, auto, **extra)
        resize_and_init_new_embeddings(model, base, tokenizer)
    else:
        model = build_model(cfg, tokenizer, seq, auto, **extra)
    if cfg.objective == "rtd":
        generator = AutoModelForMaskedLM.from_config(
            generator_config(model.config, cfg.generator_size), attn_implementation="sdpa")
        objective = ReplacedTokenDetection(model, generator, cfg.discriminator_weight,
                                           cfg.embedding_sharing)
    else:
        objective = MaskedLMObjective(model, sparse=cfg.sparse_prediction)
    with quiet_transformers():  # flash-attn's "model not on the GPU yet" advice: it will be
        for part in objective.models():
            part.set_attn_implementation(attention)
    return objective
