"""Publishing: a model card from the run's own files, and a push to a Hugging Face-compatible hub.

`write_model_card` renders templates/model_card.md from run_summary.json, metrics.jsonl,
recipe.resolved.yaml, config.json and finetune/results.json. `push_to_hub` is create_repo +
upload_folder with huggingface_hub's own retries; what a user can fix becomes one UserError line.
The token comes from the caller, HF_TOKEN or `hf auth login`, never from the recipe.
Command line: `mlm-push FOLDER --hub_model_id NAMESPACE/NAME`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, httpx, validate_repo_id  # httpx: hub's HTTP client

from mlm.config import HubConfig, add_dataclass_arguments, apply_overrides, section_fields
from mlm.errors import ArgumentParser, UserError, command
from mlm.finetune.results import FinetuneResults
from mlm.modeling import read_model_config
from mlm.report import CARD_MARKER

DEFAULT_ENDPOINT = "https://huggingface.co"
# Patterns are fnmatch-style on paths relative to the folder ("*" also crosses "/").
DEFAULT_IGNORE_PATTERNS = [
    "checkpoints/*", "*/checkpoints/*", "checkpoint-*/*",  # resumable checkpoints
    "cache/*", "training_state/*", "*/training_state/*",  # data caches, optimizer and RNG state
    "*events.out.tfevents*",  # TensorBoard event files
    "finetune/models/*",  # fine-tuned encoders kept by finetune.py (push one on its own)
    "finetune/*.safetensors", "finetune/*.bin", "finetune/*.pt",  # other fine-tuned weights
    ".tmp-*", "*.tmp/*", "*.lock",  # half-written files
]
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
# What a user can fix, by HTTP status; any other status is "the hub refused the push".
HTTP_ERRORS = {
    401: "the hub at {endpoint} refused the token ({what}): set HF_TOKEN, run `hf auth login` or "
         "pass --token with a valid token",
    403: "no write access to {where} ({what}): use a token with write permission or a namespace you own",
    404: "{where} not found ({what}): check --hub_model_id, --hub_revision and --endpoint",
}
# config.json architecture -> (pipeline tag, Auto class, pipeline example input); else fill-mask.
ARCHITECTURES = {
    "TokenClassification": ("token-classification", "AutoModelForTokenClassification", "a sentence with Names in it"),
    "SequenceClassification": ("text-classification", "AutoModelForSequenceClassification", "a document to classify"),
}


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                revision: str | None = None, endpoint: str | None = None,
                ignore_patterns: list[str] | None = None, commit_message: str | None = None, *,
                model_card: bool = True, license: str | None = None,
                language: str | list[str] | None = None) -> str:
    """Upload a save_pretrained folder to `repo_id` ("namespace/name", or "name" in the token
    owner's namespace); returns the commit URL. `revision` is a branch, created when missing;
    `endpoint` defaults to HF_ENDPOINT read now (huggingface_hub reads it once, at import);
    `ignore_patterns` to DEFAULT_IGNORE_PATTERNS. A hand-written README.md is kept."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder to push")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: push a save_pretrained model folder "
                        "(the output_dir of train_mlm.py or finetune.py)")
    if not repo_id:
        raise UserError("no --hub_model_id: give the repository to push to, namespace/name")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"--hub_model_id {repo_id!r} is not a repository id: {exc}") from None
    read_model_config(folder, str(folder))  # a corrupt config or no weights: refused here
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    card = folder / "README.md"
    before = card.read_bytes() if model_card and card.is_file() else None  # put back on failure
    if model_card:
        write_model_card(folder, repo_id=repo_id, license=license, language=language)
    api = HfApi(endpoint=endpoint, token=token, library_name="mlm")
    print(f"pushing {folder} to {endpoint}/{repo_id}" + (f" (branch {revision})" if revision else ""))
    try:
        repo_id = api.create_repo(repo_id, private=private or None, exist_ok=True).repo_id or repo_id
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with mlm",
            ignore_patterns=list(DEFAULT_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns))
    except Exception as exc:
        if model_card and before is None:  # the folder stays as it was: no card naming a
            card.unlink(missing_ok=True)     # repository that was never pushed to
        elif model_card:
            card.write_bytes(before)
        error = _user_error(exc, endpoint, f"{endpoint}/{repo_id}" + (f"@{revision}" if revision else ""))
        if error is None:
            raise
        raise error from None  # the request's details stay out of the message and the traceback
    return str(info.commit_url)


def _user_error(exc: Exception, endpoint: str, where: str) -> UserError | None:
    """One line for what a user can fix; None for anything else (a bug: keep the traceback)."""
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError(f"cannot push to {where}: HF_HUB_OFFLINE is set; unset it to reach the hub")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        detail = (exc.server_message or "").strip().splitlines()
        what = f"HTTP {status}" + (f": {detail[0]}" if detail else "")
        retry = "; try again later" if status == 429 or status >= 500 else ""
        text = HTTP_ERRORS.get(status, "the hub refused the push to {where} ({what})" + retry)
        return UserError(text.format(endpoint=endpoint, where=where, what=what))
    if isinstance(exc, httpx.TransportError):
        return UserError(f"cannot reach the hub at {endpoint} ({type(exc).__name__}); check --endpoint "
                         "/ HF_ENDPOINT and the network")
    if isinstance(exc, ValueError) and "Invalid metadata in README.md" in str(exc):
        return UserError(f"the hub rejected the model card's metadata: {' '.join(str(exc).split())}")
    return None


# The model card.


def _read(path: Path) -> dict:
    """A JSON or YAML file of the run as a dict; {} when missing or unreadable (a card still helps)."""
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _hub_id(name: str | None) -> str | None:
    """`name` when it can be a hub repository id (not a local path or a pkg:// spec)."""
    try:
        validate_repo_id(name or "")
    except HFValidationError:
        return None
    return None if Path(name).expanduser().exists() else name


def _is_this_model(name: str, folder: Path, repo_id: str | None) -> bool:
    """A results model is this folder: its repo id, or a path naming it (as given to finetune.py)."""
    here = folder.resolve().as_posix()
    return name == repo_id or Path(name).expanduser().resolve().as_posix() == here or \
        here.endswith("/" + name.strip("/").removeprefix("./"))


def model_card_text(folder: str | Path, repo_id: str | None = None, license: str | None = None,
                    language: str | list[str] | None = None, base_model: str | None = None) -> str:
    """The README.md text for `folder`, from its own files (see the module docstring)."""
    from mlm.report import read_metrics  # (imports matplotlib)

    folder = Path(folder)
    summary, config = _read(folder / "run_summary.json"), _read(folder / "config.json")
    recipe, rows = _read(folder / "recipe.resolved.yaml"), read_metrics(folder / "metrics.jsonl")
    results = folder / "finetune" / "results.json"
    finetuned = FinetuneResults.from_json(results) if results.is_file() else None
    scores = finetuned.scores if finetuned else []
    recommendations = list(finetuned.recommendations) if finetuned else []
    mine = [s for s in scores if _is_this_model(s.model, folder, repo_id)]
    name = repo_id or folder.name
    arch = " ".join(config.get("architectures") or [])
    pipeline_tag, auto_class, example = next(
        (v for k, v in ARCHITECTURES.items() if k in arch), ("fill-mask", "AutoModelForMaskedLM", ""))
    rtd = summary.get("objective") == "rtd"
    if rtd:  # the discriminator: no pipeline of its own; its generator/ is the fill-mask model
        pipeline_tag, auto_class = None, "AutoModelForSequenceClassification"
    mask = _read(folder / "tokenizer_config.json").get("mask_token") or "[MASK]"
    mask = mask.get("content", "[MASK]") if isinstance(mask, dict) else mask
    if pipeline_tag == "fill-mask" or rtd:
        example = f"The {mask} was launched today."
    family = summary.get("model_family") or config.get("model_type")
    base = base_model or summary.get("base_model")
    evals = [EvalResult(
        task_type="token-classification" if s.kind == "ner" else "text-classification",
        dataset_type=re.sub(r"[^\w.-]+", "-", s.task).strip("-").lower(), dataset_name=s.task,
        metric_type=s.metric, metric_value=round(s.mean, 4),
        metric_name=f"{s.metric} (mean of {s.n} seeds, {s.size} labeled examples)") for s in mine]
    data = ModelCardData(
        license=license, language=language, library_name="transformers", pipeline_tag=pipeline_tag,
        tags=["mlm"] + (["electra", "replaced-token-detection"] if rtd else
                        ["masked-lm" if pipeline_tag == "fill-mask" else pipeline_tag])
        + ([str(family)] if family else []),
        base_model=_hub_id(base), model_name=name if evals else None, eval_results=evals or None)
    shape = ", ".join(f"{config[k]} {label}" for k, label in (
        ("num_hidden_layers", "layers"), ("hidden_size", "hidden"), ("num_attention_heads", "heads")) if config.get(k))
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE), name=name, s=summary, corpus=summary.get("corpus") or {},
        recommendations=recommendations,
        t=recipe.get("training") or {}, recipe=recipe, rows=rows, family=family, base=base, shape=shape,
        train=[r["train_loss"] for r in rows if "train_loss" in r], val=[r for r in rows if "val_loss" in r],
        loss_curve=(folder / "loss_curve.png").is_file(), has_ci=any(s.ci95 for s in scores),
        scores=[(s, "**this model**" if s in mine else s.model) for s in scores],
        figures=sorted((folder / "finetune").glob("*.png")), report=(folder / "finetune" / "report.md").is_file(),
        pipeline_tag=pipeline_tag, auto_class=auto_class, example=example, rtd=rtd,
        generator=summary.get("generator") or {}, weight=(recipe.get("model") or {}).get("discriminator_weight"),
        # and number formats:
        n=lambda x: f"{x:,.0f}" if isinstance(x, (int, float)) else "n/a" if x is None else str(x),
        f=lambda x, digits=4: f"{x:.{digits}f}" if isinstance(x, (int, float)) else "n/a")
    return str(card).rstrip() + "\n"


def write_model_card(folder: str | Path, repo_id: str | None = None, license: str | None = None,
                     language: str | list[str] | None = None, base_model: str | None = None,
                     overwrite: bool = False) -> Path:
    """Write folder/README.md from the run's files; a README.md not written by mlm is kept unless
    `overwrite`. Returns the README path."""
    path = Path(folder) / "README.md"
    if path.is_file() and not overwrite and CARD_MARKER not in path.read_text(errors="replace"):
        print(f"keeping the existing {path} (not generated by mlm)")
        return path
    path.write_text(model_card_text(folder, repo_id=repo_id, license=license, language=language,
                                    base_model=base_model))
    return path


# Command line: mlm-push.


@dataclass
class PushArgs:
    """The recipe section mlm-push takes its hub flags from (the same flags as train_mlm.py)."""

    hub: HubConfig = field(default_factory=HubConfig)


def parser() -> argparse.ArgumentParser:
    """mlm-push's parser: the hub flags generated from HubConfig, plus the push-only arguments."""
    p = ArgumentParser(
        prog="mlm-push", description="Write a model card for a pretraining or fine-tuning output "
        "folder and upload it to a Hugging Face-compatible hub (checkpoints, caches and training "
        "state are left out).")
    p.add_argument("folder", help="output folder (a save_pretrained model, e.g. runs/demo)")
    add_dataclass_arguments(p, PushArgs)
    push = p.add_argument_group("push (not recipe settings)")
    push.add_argument("--token", "--hub_token", help="token with write access (default: HF_TOKEN or "
                      "the cached `hf auth login`)")
    push.add_argument("--endpoint", help="hub URL (default: HF_ENDPOINT, else https://huggingface.co)")
    push.add_argument("--license", help="license id for the card metadata, e.g. apache-2.0")
    push.add_argument("--language", help="language code(s) for the card, comma-separated")
    push.add_argument("--ignore_patterns", help="comma-separated patterns of files to leave out "
                      "(replaces the default: " + ", ".join(DEFAULT_IGNORE_PATTERNS) + ")")
    push.add_argument("--no_model_card", action="store_true", help="upload README.md as it is")
    push.add_argument("--commit_message", help="commit message")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    """Console entry point `mlm-push`: a user mistake prints one line and exits with code 2."""
    args = vars(parser().parse_args(argv))
    a = argparse.Namespace(**{k: args.pop(k) for k in list(args) if k not in section_fields(PushArgs)})
    hub = apply_overrides(PushArgs(), args).hub
    language = [x.strip() for x in a.language.split(",")] if a.language else None
    patterns = None if a.ignore_patterns is None else [x.strip() for x in a.ignore_patterns.split(",") if x.strip()]
    url = push_to_hub(a.folder, hub.hub_model_id, token=a.token, private=hub.hub_private_repo,
                      revision=hub.hub_revision, endpoint=a.endpoint, ignore_patterns=patterns,
                      commit_message=a.commit_message, model_card=not a.no_model_card, license=a.license,
                      language=language[0] if language and len(language) == 1 else language)
    print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
