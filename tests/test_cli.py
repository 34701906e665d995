"""User mistakes on the command line: one clear line, exit code 2, no traceback."""
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "train_mlm.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_transformers_style_flags():
    res = run("--help")
    assert res.returncode == 0
    for flag in ("--learning_rate", "--per_device_train_batch_size", "--mlm_probability",
                 "--push_to_hub", "--max_seq_length", "--recipe"):
        assert flag in res.stdout


@pytest.mark.parametrize("content, expected", [
    (None, "recipe not found"),
    ("sources:\n  - path: x\nbogus: 1\n", "unknown key 'bogus'"),
    ("sources:\n  - path: x\ntraining:\n  max_steps: lots\n", "training.max_steps"),
    ("sources:\n  - path: /nonexistent/dir/*.txt\n", "matches no file"),
    ("sources:\n  - path: /nonexistent/file.txt\n", "does not exist"),
    ("sources: [\n", "invalid YAML"),
    ("sources:\n  - path: x\ntraining:\n  output_dir: missing.yaml\n", "is a file; give a folder"),
    ("sources:\n  - path: x\nhub:\n  push_to_hub: true\n", "--push_to_hub needs --hub_model_id"),
    ("sources:\n  - path: x\nhub:\n  push_to_hub: true\n  hub_model_id: me/a/b\n",
     "--hub_model_id 'me/a/b' is not a repository id"),
    ("name: caf\u00e9\nsources:\n  - path: x\n".encode("latin-1"), "missing.yaml: not UTF-8 text"),
])
def test_bad_recipe_exits_2_with_one_line(tmp_path, content, expected):
    path = tmp_path / "missing.yaml"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    res = run("--recipe", str(path), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_readme_documents_every_flag():
    from mlm.config import flags_markdown

    readme = (REPO / "README.md").read_text()
    for row in flags_markdown().splitlines():
        flag = row.split("`")[1]
        assert f"`{flag}`" in readme, f"README misses {flag}"


@pytest.mark.parametrize("flag, value, expected", [
    ("--per_device_train_batch_size", "0", "(--per_device_train_batch_size) = 0: allowed [1, 1048576]"),
    ("--learning_rate", "-1", "(--learning_rate) = -1: allowed > 0"),
    ("--max_steps", "-3", "(--max_steps) = -3: allowed >= 1"),
    ("--max_steps", "0", "(--max_steps) = 0: allowed >= 1"),
    ("--mlm_probability", "1.5", "(--mlm_probability) = 1.5: allowed (0, 1]"),
    ("--max_seq_length", "0", "(--max_seq_length) = 0: allowed >= 8"),
    ("--warmup_ratio", "nan", "(--warmup_ratio) = nan: allowed [0, 1)"),
    ("--dedup_threshold", "2", "(--dedup_threshold) = 2: allowed (0, 1]"),
    ("--seed", "-1", "(--seed) = -1: allowed [0, 4294967295]"),
    # what building or loading the model would refuse, before the corpus and tokenizer stages
    ("--num_attention_heads", "3", "hidden_size 256 is not divisible by num_attention_heads 3"),
    ("--model_name_or_path", "nothing/here", "--model_name_or_path nothing/here: not a model folder"),
])
def test_bad_numbers_refused_before_any_work(tmp_path, flag, value, expected):
    """One line naming the setting and its range, exit 2, and nothing written (no corpus,
    tokenizer or packing stage ran first)."""
    out = tmp_path / "run"
    res = run(flag, value, "--output_dir", str(out))
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--dedup_threshold", "2"], "(--dedup_threshold) = 2: allowed (0, 1]"),
    (["--minhash_num_perm", "0"], "(--minhash_num_perm) = 0: allowed [2, 1024]"),
    (["--validation_fraction", "1.5"], "(--validation_fraction) = 1.5: allowed (0, 0.5]"),
    (["--min_chars", "-5"], "(--min_chars) = -5: allowed >= 0"),
    ([], "sources[0].weight = -1: allowed > 0"),
])
def test_corpus_cli_refuses_bad_numbers(tmp_path, args, expected):
    (tmp_path / "a.txt").write_text("some text " * 20)
    weight = "-1" if not args else "1"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"sources:\n  - path: {tmp_path / 'a.txt'}\n    weight: {weight}\n")
    out = tmp_path / "corpus"
    res = subprocess.run([sys.executable, "-m", "mlm.corpus.cli", str(recipe), "--output", str(out),
                          *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_python_dash_m_mlm_dispatches_to_the_commands():
    """`python -m mlm` (and `python -m mlm.cli`) lists the commands; a command gets its own
    flags and its own one-line refusals; an unknown one is refused with the allowed names."""
    def m(*args):
        return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)

    bare = m("mlm")
    assert bare.returncode == 2 and "finetune" in bare.stdout and "corpus" in bare.stdout
    assert m("mlm.cli", "--help").returncode == 0
    assert "--per_device_train_batch_size" in m("mlm", "train", "--help").stdout
    bad = m("mlm", "train", "--learning_rate", "-1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--learning_rate" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    unknown = m("mlm", "pretrain")
    assert unknown.returncode == 2 and "allowed train, finetune" in unknown.stderr
