"""Contrastive task-adaptive pretraining of a sentence encoder (issue #14 experiment).

Masked-LM TAPT did not make all-MiniLM-L6-v2 (a contrastively trained sentence embedder) a
better sentiment classifier than MiniLM as is (bench/RESULTS.md, 2026-12-08). This trains the
same checkpoint on the same unlabeled text with an objective that keeps its embedding geometry:
unsupervised SimCSE (Gao et al. 2021), each text its own positive under two dropout masks,
the other texts of the batch its negatives: sentence-transformers' MultipleNegativesRankingLoss
on (text, text) pairs. The corpus is the recipe's (built or loaded from its cache, so the test
texts it excludes stay out). The output is a save_pretrained folder that `finetune.py --model`
and `setfit:FOLDER` read.

Measured (bench/RESULTS.md, 2026-12-08): on English sentiment it ties MiniLM as is at 100
labels and trails it by 0.017 at 500, exactly as masked-LM TAPT does; not part of the toolkit.

    python bench/tapt_contrastive.py --recipe data_recipes/suite/en_sentiment_minilm.yaml \
        --output_dir runs/ablations/en_simcse
    python bench/suite.py --tasks en-sentiment --skip_pretraining \
        --routes runs/ablations/en_simcse --models none --output_dir runs/ablations/en_simcse_ft
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from datasets import Dataset

from mlm.corpus.build import build_corpus
from mlm.recipe import load_recipe, resolve_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", required=True, help="a continued-pretraining recipe (its sources "
                   "and model_name_or_path are used)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--learning_rate", type=float, default=3e-5)
    p.add_argument("--per_device_train_batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()

    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers

    recipe = load_recipe(args.recipe)
    out = Path(args.output_dir)
    corpus = build_corpus(recipe, out / "cache" / "corpus")
    texts = [t for t in corpus["train"]["text"] if t.strip()]
    model = SentenceTransformer(str(resolve_path(recipe.model.model_name_or_path)), device="cpu")
    model.max_seq_length = args.max_seq_length
    pairs = Dataset.from_dict({"anchor": texts, "positive": texts})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SentenceTransformerTrainer(
            model=model, train_dataset=pairs, loss=losses.MultipleNegativesRankingLoss(model),
            args=SentenceTransformerTrainingArguments(
                output_dir=tmp, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
                per_device_train_batch_size=args.per_device_train_batch_size, warmup_ratio=0.1,
                seed=args.seed, save_strategy="no", logging_steps=50, report_to="none",
                batch_sampler=BatchSamplers.NO_DUPLICATES, disable_tqdm=False))
        result = trainer.train()
    model.save(str(out))
    summary = {"objective": "simcse", "base_model": recipe.model.model_name_or_path,
               "texts": len(texts), "steps": result.global_step,
               "train_loss": result.training_loss, "seconds": round(time.perf_counter() - start, 1),
               **{k: v for k, v in vars(args).items() if k != "output_dir"}}
    (out / "run_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
