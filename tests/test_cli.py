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
])
def test_bad_recipe_exits_2_with_one_line(tmp_path, content, expected):
    path = tmp_path / "missing.yaml"
    if content is not None:
        path.write_text(content)
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
