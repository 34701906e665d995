"""Model stage: build a BERT-style masked-LM encoder from a size preset, or load a checkpoint.

Models are plain transformers `*ForMaskedLM` classes, so what we save is a standard
`save_pretrained` folder that `AutoModelForMaskedLM` and `pipeline("fill-mask")` load unchanged.
"""
from __future__ import annotations

import functools
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    BertConfig,
    ModernBertConfig,
    PreTrainedModel,
    RobertaConfig,
)

from mlm.config import ModelConfig
from mlm.errors import UserError, one_line
from mlm.recipe import resolve_path

# (layers, hidden) of the BERT miniatures (Turc et al. 2019); heads = hidden / 64.
PRESETS = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
}


def model_shape(cfg: ModelConfig) -> dict:
    """Layers, width, heads and FFN width after applying the explicit overrides to the preset."""
    layers, hidden = PRESETS[cfg.model_size]
    layers = cfg.num_hidden_layers or layers
    hidden = cfg.hidden_size or hidden
    heads = cfg.num_attention_heads or max(1, hidden // 64)
    if hidden % heads:
        raise UserError(
            f"hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        )
    return {"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
            "intermediate_size": cfg.intermediate_size or 4 * hidden}


TRAINING_BYTES_PER_PARAMETER = 16
"""float32 weights, gradients and AdamW's two moments: 4 bytes each."""


def memory_for_training() -> tuple[int, str]:
    """Bytes the model's training state may use, and where: the GPU's memory when there is
    one, else the machine's RAM."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "the GPU's memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def check_fits_in_memory(shape: dict, max_seq_length: int) -> None:
    """Refuse, before any work, a model from scratch whose weights, gradients and optimizer
    state alone exceed the memory it would train in (a mistyped --num_hidden_layers or
    --hidden_size would otherwise run out of memory while the model is built). The vocabulary
    is not known yet and is left out, so the estimate is a lower bound."""
    h, layers, inner = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    params = layers * (4 * h * h + 2 * h * inner) + max(512, max_seq_length) * h
    need, (have, where) = params * TRAINING_BYTES_PER_PARAMETER, memory_for_training()
    if need > have:
        raise UserError(f"a model of {layers} layers of width {h} (FFN {inner}) with "
                        f"{max(512, max_seq_length):,} positions has at least {params / 1e9:.1f} B "
                        f"parameters: its training state alone needs {need / 2**30:,.0f} GiB, "
                        f"more than {where} ({have / 2**30:,.0f} GiB); check --num_hidden_layers, "
                        "--hidden_size, --intermediate_size and --max_seq_length")


def usable_positions(config: dict) -> int | None:
    """Tokens per sequence a checkpoint's config.json allows: max_position_embeddings, less
    RoBERTa's padding offset (its positions start after the pad id); None when positions are
    not absolute embeddings (DeBERTa without position_biased_input) or not stated."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or config.get("position_biased_input") is False:
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        return positions - int(config.get("pad_token_id") or 1) - 1
    return positions


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@functools.lru_cache(maxsize=64)
def _transformers_refusal(folder: str, content: str) -> str | None:
    """Why AutoConfig refuses a folder's config.json (an unknown model_type, a field of the
    wrong type), or None; once per folder and content of the file (a run checks its models
    several times before any work)."""
    try:
        with quiet_transformers():
            AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any refusal, reported in one line
        return one_line(exc)
    return None


def read_model_config(path: Path, name: str) -> dict:
    """The config.json of model folder `path` as a dict; `name` (how the user gave the model)
    heads the one-line error when the folder holds no configuration transformers can read, or
    no safetensors weights: checked before any work, as loading would fail after it."""
    if not (path / "config.json").is_file():
        raise UserError(f"{name}: not a model folder (no config.json in {path})")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        config = None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise UserError(f"{name}: {path / 'config.json'} is not a transformers configuration "
                        "(no model_type)")
    content = json.dumps(config, sort_keys=True)
    reason = _transformers_refusal(str(path), content)
    if reason:
        raise UserError(f"{name}: transformers cannot read {path / 'config.json'} ({reason})")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"{name}: no weights in {path} (expected {' or '.join(WEIGHT_FILES)}; "
                        "mlm loads safetensors only)")
    shapes = _weight_shapes(path, name)
    bad = _shape_mismatches(str(path), content, tuple(sorted(shapes.items())))
    if bad:
        raise UserError(f"{name}: the weights in {path} do not match its config.json: {bad}; the "
                        "folder mixes two models")
    return config


def _weight_shapes(path: Path, name: str) -> dict[str, tuple]:
    """Every tensor's shape, read from the safetensors headers alone (the file, or each shard
    of the index): a damaged or truncated copy is refused here, before any work."""
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        try:
            files = sorted({path / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{name}: {index} is damaged ({one_line(exc)}); copy the model "
                            "again") from None
    shapes: dict[str, tuple] = {}
    for weights in files:
        try:
            with safe_open(str(weights), framework="pt") as f:
                shapes.update((k, tuple(f.get_slice(k).get_shape())) for k in f.keys())
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{name}: {weights} is damaged ({one_line(exc)}); copy the model "
                            "again") from None
    return shapes


@functools.lru_cache(maxsize=64)
def _shape_mismatches(folder: str, content: str, shapes: tuple) -> str | None:
    """The first encoder tensor whose shape in the weights differs from the one config.json
    implies (the encoder built on the meta device, no memory), or None. Checked before loading
    because `ignore_mismatched_sizes`, which a new task head needs, would start such tensors
    afresh without a word, and transformers' own report of them comes only after the work."""
    try:
        with quiet_transformers(), torch.device("meta"):
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(folder, trust_remote_code=False))
    except Exception:  # noqa: BLE001 - an architecture we cannot build here: loading will say
        return None
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    prefix = f"{encoder.base_model_prefix}."
    bad = []
    for key, shape in shapes:
        own = key[len(prefix):] if key.startswith(prefix) else key
        if own in expected and expected[own] != shape:
            bad.append(f"{key} has shape {shape} in the weights but {expected[own]} in the config")
    return f"{bad[0]} ({len(bad)} tensor(s) differ)" if bad else None


def check_positions(config: dict, length: int, setting: str, name: str) -> None:
    """Refuse a sequence length (`--setting`) longer than model `name` reads."""
    positions = usable_positions(config)
    if positions is not None and length > positions:
        raise UserError(f"--{setting} {length} is longer than {name} reads "
                        f"(max_position_embeddings {positions}): allowed [8, {positions}]")


def check_model_settings(cfg: ModelConfig, max_seq_length: int) -> dict | None:
    """What building or loading the model would refuse, checked before any work: the shape of a
    model built from scratch; for a checkpoint, that it is a model folder whose positions
    cover max_seq_length. Returns the checkpoint's config.json (None from scratch)."""
    if not cfg.model_name_or_path:
        check_fits_in_memory(model_shape(cfg), max_seq_length)
        return None
    name = cfg.model_name_or_path
    config = read_model_config(resolve_path(name), f"--model_name_or_path {name}")
    check_positions(config, max_seq_length, "max_seq_length", name)
    return config


def check_embedding_rows(config: dict, name: str, tokenizer_size: int, own: bool) -> None:
    """A checkpoint's embeddings have a row for every token of the tokenizer it will read with
    (what loading refuses after the corpus and blocks are built, checked before). With its own
    tokenizer (`own`) there may be more rows than tokens: vocabularies padded to a multiple of
    64 for speed (ModernBERT-base: 50,368 rows, 50,280 tokens). With another tokenizer the
    sizes must match, or its ids would name other rows' words."""
    rows = config.get("vocab_size")
    if isinstance(rows, int) and (rows < tokenizer_size or (rows > tokenizer_size and not own)):
        raise UserError(f"--model_name_or_path {name}: its embeddings have {rows:,} rows but the "
                        f"tokenizer has {tokenizer_size:,} tokens; give the checkpoint's own "
                        "tokenizer (--tokenizer_name_or_path)")


def build_config(cfg: ModelConfig, tokenizer, max_seq_length: int):
    """A transformers config of the chosen family sized for `tokenizer` and `max_seq_length`."""
    shape = model_shape(cfg)
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape)
    if cfg.model_family == "bert":
        return BertConfig(max_position_embeddings=max(512, max_seq_length),
                          hidden_dropout_prob=cfg.dropout,
                          attention_probs_dropout_prob=cfg.dropout, **common)
    if cfg.model_family == "roberta":
        return RobertaConfig(max_position_embeddings=max(512, max_seq_length) + 2,
                             hidden_dropout_prob=cfg.dropout, type_vocab_size=1,
                             attention_probs_dropout_prob=cfg.dropout,
                             bos_token_id=tokenizer.cls_token_id,
                             eos_token_id=tokenizer.sep_token_id, **common)
    return ModernBertConfig(max_position_embeddings=max(512, max_seq_length),
                            attention_dropout=cfg.dropout, mlp_dropout=cfg.dropout,
                            embedding_dropout=cfg.dropout,
                            # read by ModernBertForSequenceClassification when fine-tuned
                            classifier_pooling=cfg.classifier_pooling,
                            cls_token_id=tokenizer.cls_token_id,
                            sep_token_id=tokenizer.sep_token_id,
                            bos_token_id=tokenizer.cls_token_id,
                            eos_token_id=tokenizer.sep_token_id, **common)


def build_model(cfg: ModelConfig, tokenizer, max_seq_length: int, auto=AutoModelForMaskedLM,
                **config_overrides) -> PreTrainedModel:
    """A fresh model of class `auto` (default: a masked LM) from the preset, or one loaded from
    `cfg.model_name_or_path`; `config_overrides` (e.g. num_labels) go into its config."""
    if cfg.model_name_or_path:
        return load_checkpoint(resolve_path(cfg.model_name_or_path), tokenizer, auto,
                               **config_overrides)
    config = build_config(cfg, tokenizer, max_seq_length)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    return auto.from_config(config, attn_implementation="sdpa")


def load_masked_lm(path: str | Path, tokenizer=None) -> PreTrainedModel:
    """Load a local checkpoint as a masked LM, from safetensors, without running its code."""
    return load_checkpoint(path, tokenizer)


def load_checkpoint(path: str | Path, tokenizer=None, auto=AutoModelForMaskedLM,
                    **config_overrides) -> PreTrainedModel:
    """Load a local checkpoint as an `auto` model (a head the checkpoint lacks, or of another
    size, starts fresh), from safetensors, without running its code."""
    path = Path(path)
    read_model_config(path, str(path))  # AutoConfig would fail with a traceback
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, **config_overrides)
    what = "a masked-LM" if auto is AutoModelForMaskedLM else "an encoder"
    try:
        with quiet_transformers():  # "newly initialized head" is expected for a new head
            model = auto.from_pretrained(
                str(path), config=config, use_safetensors=True, trust_remote_code=False,
                attn_implementation="sdpa", ignore_mismatched_sizes=auto is not AutoModelForMaskedLM,
                dtype=torch.float32,  # whatever the checkpoint's dtype: trained in float32 + autocast
            )
    except (ValueError, OSError, RuntimeError, SafetensorError) as exc:
        raise UserError(f"{path}: cannot be loaded as {what} model ({one_line(exc)})") from None
    # More rows than tokens is a padded vocabulary (see check_embedding_rows); fewer would fail
    # with an index error at the first unlucky token.
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise UserError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings have "
            f"{model.get_input_embeddings().num_embeddings} rows"
        )
    return model


@contextmanager
def quiet_transformers():
    """No progress bars or warnings from transformers and Accelerate inside (a "Writing model
    shards" bar and a "Removed shared tensor" warning for tied weights at every save are noise)."""
    import logging

    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    accelerate_log = logging.getLogger("accelerate")  # save_state's tied-weight warning
    level = accelerate_log.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    accelerate_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        accelerate_log.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise learning-rate decay: 0 for the embeddings, i + 1 for
    transformer layer i (`encoder.layer.i.` in BERT/RoBERTa, `layers.i.` in ModernBERT), and
    num_layers + 1 for what sits on top (final norm, pooler, task head)."""
    found = re.search(r"(?:^|\.)layers?\.(\d+)\.", name)
    if found:
        return int(found.group(1)) + 1
    return 0 if "embed" in name else num_layers + 1


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float | None = None,
                 layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay for biases and norms (pretraining and fine-tuning). With
    `layer_decay` < 1 (and `lr`), layer-wise learning-rate decay: the top of the model trains at
    `lr` and each layer below at `layer_decay` times the one above (ELECTRA, DeBERTa-v3), so the
    new head learns fast while the pretrained lower layers move little."""
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0
    groups: dict[tuple[bool, int], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "norm" in name.lower()
        depth = layer_depth(name, layers) if layer_decay != 1.0 else 0
        groups.setdefault((no_decay, depth), []).append(p)
    out = []
    for (no_decay, depth), params in sorted(groups.items(), key=lambda kv: kv[0]):
        group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if lr is not None and layer_decay != 1.0:
            group["lr"] = lr * layer_decay ** (layers + 1 - depth)
        out.append(group)
    return out


def count_parameters(model: torch.nn.Module, embeddings: bool = True) -> int:
    """Number of parameters (optionally without the input and position embeddings)."""
    total = sum(p.numel() for p in model.parameters())
    if embeddings:
        return total
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return total - emb


def flops_per_token(config, seq_len: int, head_fraction: float = 1.0) -> float:
    """Training FLOPs per token (forward + backward): 6 N + 12 L H S (Kaplan/PaLM estimate),
    with N the encoder weights plus the prediction head, which sparse prediction runs on only
    `head_fraction` of the tokens."""
    L, H = config.num_hidden_layers, config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * H)
    # ModernBERT's GeGLU projects to 2 x intermediate (value and gate) before the output layer.
    mlp = (3 if config.model_type == "modernbert" else 2) * H * inter
    per_layer = 4 * H * H + mlp
    head = H * H + H * config.vocab_size
    return 6.0 * (L * per_layer + head * head_fraction) + 12.0 * L * H * seq_len

def resize_and_init_new_embeddings(model: PreTrainedModel, old_tokenizer, new_tokenizer) -> list[int]:
    """Grow `model`'s embeddings from `old_tokenizer`'s vocabulary to `new_tokenizer`'s (an
    extension that kept the old ids, see mlm.tokenizer.extend_tokenizer), and start each new
    row as the mean of the old rows of the pieces the old tokenizer splits its text into (the
    output bias too, when the head has one). Returns the new ids."""
    old_n, new_n = len(old_tokenizer), len(new_tokenizer)
    rows = model.get_input_embeddings().num_embeddings
    if rows < old_n:
        raise UserError(f"the model has {rows} embedding rows but the old tokenizer {old_n} tokens")
    new_ids = list(range(old_n, new_n))
    old_vocab = old_tokenizer.get_vocab()
    if any(new_tokenizer.convert_ids_to_tokens(i) != t for t, i in old_vocab.items() if i < old_n):
        raise UserError("the new tokenizer does not keep the old tokenizer's ids")
    if new_n > rows:  # a padded vocabulary's spare rows take the first new words as they are
        model.resize_token_embeddings(new_n, mean_resizing=False)
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    bias = getattr(out, "bias", None) if out is not None else None
    untied = out is not None and out.weight.data_ptr() != emb.data_ptr()
    with torch.no_grad():
        for i in new_ids:
            text = new_tokenizer.convert_tokens_to_string([new_tokenizer.convert_ids_to_tokens(i)])
            pieces = old_tokenizer(text, add_special_tokens=False)["input_ids"] or \
                [old_tokenizer.unk_token_id]
            index = torch.tensor(pieces, device=emb.device)
            emb[i] = emb[index].mean(0)
            if untied:
                out.weight[i] = out.weight[index].mean(0)
            if bias is not None and bias.shape[0] > i:
                bias[i] = bias[index].mean(0)
    return new_ids
