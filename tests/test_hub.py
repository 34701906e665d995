"""Publishing on loopback: push a real tiny run to a stand-in hub, download it back, load it.

The stand-in (tests/hub_server.py) answers huggingface_hub's real client on 127.0.0.1; the
large-file path (LFS/Xet) is not exercised by it.
"""
import dataclasses
import fnmatch
import json
import math
import socket
import subprocess
import sys
import time

import pytest

from mlm.config import HubConfig
from mlm.errors import UserError
from mlm.finetune.protocol import interval
from mlm.finetune.results import FinetuneResults
from mlm.hub import TEMPLATE, main, parser, push_to_hub, write_model_card
from tests.conftest import REPO
from tests.hub_server import HubServer

TOKEN = "hf_test_write_token"  # the stand-in hub's valid token, owned by user "tester"


@pytest.fixture
def online(monkeypatch):
    """Lift conftest's HF_HUB_OFFLINE=1 (read by huggingface_hub at import) for this test."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture
def hub(online):
    """A stand-in hub on 127.0.0.1."""
    server = HubServer()
    yield server
    server.close()


@pytest.fixture
def small_model(tmp_path):
    """A 2-layer, hidden-32 BERT masked LM saved with save_pretrained (no run files)."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path / "small"
    BertForMaskedLM(config).save_pretrained(str(folder))
    return folder


def test_push_download_load_and_card_matches_the_run(tiny_recipe, hub, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard, snapshot_download
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from mlm.cli import train_main

    # train_mlm.py --push_to_hub: pretrain a real tiny run, push it at the end (HF_ENDPOINT and
    # HF_TOKEN read at call time; the token is not a recipe setting).
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recipe = tiny_recipe(max_steps=4, eval_steps=2, logging_steps=1, save_steps=2, mixed_precision="no")
    assert train_main(["--recipe", str(recipe), "--hidden_size", "32", "--num_attention_heads", "2",
                       "--push_to_hub", "--hub_model_id", "tester/tiny-mlm", "--hub_private_repo"]) == 0
    out = tmp_path / "run"
    # The token is neither uploaded nor written anywhere in the run folder.
    assert TOKEN not in "".join(f.decode(errors="replace") for f in hub.files("tester/tiny-mlm").values())
    assert not [p for p in out.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert "hub_token" not in (out / "recipe.resolved.yaml").read_text()
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.delenv("HF_TOKEN")
    # Fine-tuning results as mlm.finetune writes them (protocol.run_task, with its interval).
    results = {"name": "demo", "models": [str(out), "random-init"], "tasks": [{
        "name": "bbc-topics", "task": "classification", "metric": "macro_f1",
        "metrics": ["accuracy", "macro_f1"], "models": [str(out), "random-init"], "sizes": [100],
        "seeds": [42, 43, 44],
        "runs": [{"model": str(out), "train_size": 100, "seed": 42, "test": {"macro_f1": 0.6}}],
        "summary": {str(out): {"100": {"accuracy": interval([0.7, 0.72, 0.74]),
                                       "macro_f1": interval([0.6, 0.62, 0.64])}},
                    "random-init": {"100": {"accuracy": interval([0.5, 0.5, 0.5]),
                                            "macro_f1": interval([0.4, 0.41, 0.42])}}},
        "learning_curve": "learning_curve_bbc-topics.png"}], "average": {str(out): 0.62}}
    (out / "finetune" / "models" / "bbc-topics").mkdir(parents=True)
    (out / "finetune" / "results.json").write_text(json.dumps(results))
    (out / "finetune" / "learning_curve_bbc-topics.png").write_bytes((out / "loss_curve.png").read_bytes())
    (out / "finetune" / "models" / "bbc-topics" / "model.safetensors").write_bytes(b"a fine-tuned model")
    local = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert any(p.startswith("checkpoints/") for p in local) and any(p.startswith("cache/") for p in local)
    assert any("tfevents" in p for p in local)

    # mlm-push's function on the same folder, now with fine-tuning results and card metadata.
    url = push_to_hub(out, "tester/tiny-mlm", token=TOKEN, endpoint=hub.url,
                      license="apache-2.0", language="en")
    assert url.startswith(f"{hub.url}/tester/tiny-mlm/commit/")
    uploaded = set(hub.files("tester/tiny-mlm"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "loss_curve.png",
            "run_summary.json", "metrics.jsonl", "finetune/results.json",
            "finetune/learning_curve_bbc-topics.png"} <= uploaded
    assert not [p for p in uploaded if p.startswith(("checkpoints/", "cache/", "finetune/models/"))
                or "tfevents" in p or "training_state" in p]
    assert hub.state.repos["tester/tiny-mlm"].private

    # Back through huggingface_hub, loaded by transformers: the same weights.
    path = snapshot_download("tester/tiny-mlm", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "dl")
    model = AutoModelForMaskedLM.from_pretrained(path)
    trained = AutoModelForMaskedLM.from_pretrained(str(out))
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert AutoTokenizer.from_pretrained(path).mask_token == "[MASK]"

    # The card: metadata parses, and its figures are the run's own.
    card = ModelCard.load(f"{path}/README.md")
    assert card.data.license == "apache-2.0" and card.data.language == "en"
    assert card.data.pipeline_tag == "fill-mask" and model.config.model_type in card.data.tags
    [ours] = card.data.eval_results  # the main metric of this model; random-init's is in the table
    assert (ours.task_type, ours.dataset_name, ours.metric_type, ours.metric_value) == (
        "text-classification", "bbc-topics", "macro_f1", 0.62)
    summary = json.loads((out / "run_summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    assert summary["tokens_seen"] == 4 * 16 * 64
    ours_ci, theirs_ci = interval([0.6, 0.62, 0.64])["ci95"], interval([0.4, 0.41, 0.42])["ci95"]
    for figure in (f"{summary['tokens_seen']:,} tokens", summary["recipe_fingerprint"],
                   f"{summary['num_parameters']:,} parameters", summary["hardware"],
                   f"{val[0]:.4f} → {val[-1]:.4f}", f"{train[0]:.4f} → {train[-1]:.4f}",
                   f"{summary['corpus']['documents']:,} documents",
                   f"| **this model** | 100 | macro_f1 | 0.6200 ± 0.0200 | [{ours_ci[0]:.4f}, {ours_ci[1]:.4f}] | 3 |",
                   f"| random-init | 100 | macro_f1 | 0.4100 ± 0.0100 | [{theirs_ci[0]:.4f}, {theirs_ci[1]:.4f}] | 3 |",
                   "![learning curve bbc-topics](finetune/learning_curve_bbc-topics.png)",
                   "![training and validation loss](loss_curve.png)"):
        assert str(figure) in card.text, figure
    for section in ("## Training", "## Evaluation", "## Intended use and limits", "## How to load"):
        assert section in card.text
    assert TOKEN not in card.text

    # A second push of the unchanged folder commits nothing and answers the current commit.
    commits = len(hub.state.repos["tester/tiny-mlm"].commits)
    assert push_to_hub(out, "tester/tiny-mlm", token=TOKEN, endpoint=hub.url, license="apache-2.0",
                       language="en") == url
    assert len(hub.state.repos["tester/tiny-mlm"].commits) == commits


def test_branch_and_endpoint_from_environment(hub, small_model, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # read at call time, not at import
    url = push_to_hub(small_model, "tester/small", token=TOKEN, revision="v1")
    assert url.startswith(hub.url)
    assert "config.json" in hub.files("tester/small", "v1")
    assert "config.json" not in hub.files("tester/small", "main")
    card = hub.files("tester/small", "v1")["README.md"].decode()
    assert "No `run_summary.json`" in card and "## Evaluation" not in card
    # A bare name goes to the token owner's namespace.
    assert push_to_hub(small_model, "solo", token=TOKEN).startswith(f"{hub.url}/tester/solo/commit/")


def test_cli_push(hub, small_model, capsys):
    from huggingface_hub import ModelCard

    (small_model / "notes.txt").write_text("local notes")
    code = main([str(small_model), "--hub_model_id", "tester/cli", "--token", TOKEN,
                 "--endpoint", hub.url, "--hub_private_repo", "--license", "mit", "--language", "en,fr",
                 "--ignore_patterns", "*.txt"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"pushed to {hub.url}/tester/cli/commit/" in out.out and TOKEN not in out.out + out.err
    files = hub.files("tester/cli")
    assert "notes.txt" not in files and "model.safetensors" in files
    card = ModelCard(files["README.md"].decode())
    assert card.data.license == "mit" and card.data.language == ["en", "fr"]
    assert hub.state.repos["tester/cli"].private


def test_transient_errors_use_huggingface_hubs_retries(hub, small_model):
    """huggingface_hub retries the upload's preupload call (http_backoff, 1 s); it does not retry
    create_repo, whose 5xx becomes one line saying to try again."""
    hub.state.fail_next("/preupload/", 503, times=1)
    url = push_to_hub(small_model, "tester/retry", token=TOKEN, endpoint=hub.url)
    assert url.startswith(f"{hub.url}/tester/retry/commit/")
    assert len([p for _, p in hub.state.requests if "/preupload/" in p]) == 2
    hub.state.fail_next("/api/repos/create", 503, times=1)
    with pytest.raises(UserError, match=r"tester/retry \(HTTP 503: injected failure\); try again later"):
        push_to_hub(small_model, "tester/retry", token=TOKEN, endpoint=hub.url)


def test_bad_token_is_one_clear_line_without_the_token(hub, small_model, capsys):
    secret = "hf_not_a_valid_secret_123"
    code = main([str(small_model), "--hub_model_id", "tester/x", "--hub_token", secret,  # --token's alias
                 "--endpoint", hub.url])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "401" in err and len(err.strip().splitlines()) == 1
    assert secret not in err and "Traceback" not in err
    with pytest.raises(UserError) as info:
        push_to_hub(small_model, "tester/x", token=secret, endpoint=hub.url, model_card=False)
    assert secret not in str(info.value) and info.value.__cause__ is None


def test_foreign_namespace_is_403(hub, small_model):
    with pytest.raises(UserError, match="no write access to .*someone-else/x.*403"):
        push_to_hub(small_model, "someone-else/x", token=TOKEN, endpoint=hub.url)


def test_server_down_fails_fast(online, small_model):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot reach the hub at http://127.0.0.1:\d+ \(ConnectError\)"):
        push_to_hub(small_model, "tester/x", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert time.perf_counter() - start < 10
    assert not (small_model / "README.md").exists()  # no card left naming a repo never pushed to
    (small_model / "README.md").write_text("# my own notes\n")
    with pytest.raises(UserError, match="cannot reach the hub"):
        push_to_hub(small_model, "tester/x", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert (small_model / "README.md").read_text() == "# my own notes\n"


def test_offline_mode_is_a_clear_error_not_retried(small_model, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(small_model, "tester/x", token=TOKEN, endpoint="http://127.0.0.1:9")


def test_missing_folder_and_bad_input_are_user_errors(tmp_path, small_model):
    with pytest.raises(UserError, match="no such folder"):
        push_to_hub(tmp_path / "nope", "tester/x")
    with pytest.raises(UserError, match="no config.json"):
        push_to_hub(tmp_path, "tester/x")
    with pytest.raises(UserError, match="not a repository id"):
        push_to_hub(small_model, "a/b/c")
    with pytest.raises(UserError, match="no --hub_model_id"):
        push_to_hub(small_model, None)  # mlm-push without the flag
    res = subprocess.run([sys.executable, "-m", "mlm.hub", str(tmp_path / "nope"), "--hub_model_id",
                          "tester/x"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "no such folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_handwritten_readme_is_kept(small_model):
    (small_model / "README.md").write_text("# my own card\n")
    write_model_card(small_model)
    assert (small_model / "README.md").read_text() == "# my own card\n"
    write_model_card(small_model, overwrite=True)
    assert "## How to load" in (small_model / "README.md").read_text()


def test_results_record_reads_what_protocol_writes(tmp_path):
    """Each task's main metric per model and size, from the summary protocol.finetune writes
    (interval() and json.dumps, NaN interval for one seed); another format is a UserError."""
    path = tmp_path / "results.json"
    task = {"name": "wnut16", "task": "ner", "metric": "f1", "models": ["runs/demo", "tfidf-logreg"],
            "sizes": [50, 100], "summary": {m: {str(n): {"f1": interval([n / 1000 + d]), "precision":
                                                          interval([0.9, 0.8])} for n in (50, 100)}
                                            for m, d in (("runs/demo", 0.2), ("tfidf-logreg", 0.1))}}
    path.write_text(json.dumps({"name": "s", "models": task["models"], "tasks": [task]}))
    scores = FinetuneResults.from_json(path).scores
    assert [(s.model, s.size, s.metric, round(s.mean, 3), s.n, s.ci95) for s in scores] == [
        ("runs/demo", 50, "f1", 0.25, 1, None), ("runs/demo", 100, "f1", 0.3, 1, None),
        ("tfidf-logreg", 50, "f1", 0.15, 1, None), ("tfidf-logreg", 100, "f1", 0.2, 1, None)]
    assert all(s.task == "wnut16" and s.kind == "ner" and s.std == 0.0 for s in scores)
    task["summary"]["runs/demo"]["100"]["f1"] = interval([0.3, 0.4])
    path.write_text(json.dumps({"name": "s", "models": task["models"], "tasks": [task]}))
    lo, hi = FinetuneResults.from_json(path).scores[1].ci95
    assert math.isfinite(lo) and lo < 0.35 < hi
    path.write_text(json.dumps({"task": "bbc", "results": [{"model": "m", "mean": 0.5}]}))
    with pytest.raises(UserError, match="not a results.json written by mlm.finetune"):
        FinetuneResults.from_json(path)


def test_push_flags_come_from_hub_config_and_template_ships():
    """mlm-push has one flag per HubConfig field (no second schema), and setup.cfg ships the card
    template with the package."""
    import configparser

    from tests.conftest import REPO

    flags = {o for a in parser()._actions for o in a.option_strings}
    assert {f"--{f.name}" for f in dataclasses.fields(HubConfig)} <= flags and "token" not in str(
        [f.name for f in dataclasses.fields(HubConfig)])
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["mlm"].split(",")]
    rel = TEMPLATE.relative_to(REPO / "mlm").as_posix()
    assert TEMPLATE.is_file() and any(fnmatch.fnmatch(rel, p) for p in patterns)
