"""Pretraining throughput: our loop vs transformers' Trainer + DataCollatorForLanguageModeling.

Same model config (BERT, 4 layers, hidden 256, sequence 128, batch 32), same packed BBC News
blocks, same number of steps, in one run. Also measures this machine's peak matmul FLOP/s
(fp32 and bf16), which the MFU figures divide by. Prints tokens/s and ratios.

    python bench/bench_pretrain.py [--steps 40]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from demo_recipe import demo_recipe  # noqa: E402

from mlm.modeling import flops_per_token  # noqa: E402
from mlm.pretrain import device_peak_flops, prepare_data, pretrain  # noqa: E402
from mlm.recipe import load_recipe  # noqa: E402


def recipe_for(tmp: Path, steps: int, precision: str, name: str, cache: Path | None) -> Path:
    # The comparison is with the stock BERT + Trainer way: same family, shape and batch as it.
    return demo_recipe(tmp, name, steps, cache,
                       model={"model_family": "bert", "classifier_pooling": "cls"},
                       training={"per_device_train_batch_size": 32, "logging_steps": 10,
                                 "mixed_precision": precision, "max_eval_blocks": 64})


def ours(tmp: Path, steps: int, precision: str, cache: Path) -> float:
    out = pretrain(load_recipe(recipe_for(tmp, steps, precision, f"ours-{precision}", cache)))
    return json.loads((out / "run_summary.json").read_text())["tokens_per_s"]


def trainer(tmp: Path, steps: int, bf16: bool, tokenizer, blocks) -> float:
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024)
    model = BertForMaskedLM(config)
    args = TrainingArguments(output_dir=str(tmp / "trainer"), per_device_train_batch_size=32,
                             max_steps=steps, report_to=[], save_strategy="no", logging_steps=10,
                             bf16=bf16, use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True, dataloader_drop_last=True)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    start = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=blocks, data_collator=collator)
    result = trainer.train()
    elapsed = result.metrics.get("train_runtime") or time.perf_counter() - start
    return steps * 32 * 128 / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        recipe = load_recipe(recipe_for(tmp, args.steps, "no", "prep", None))
        tokenizer, train_blocks, _, _ = prepare_data(recipe)
        cache = tmp / "prep" / "cache"
        blocks = train_blocks.select_columns(["input_ids"])
        fig = {
            "ours_bf16": ours(tmp, args.steps, "bf16", cache),
            "ours_fp32": ours(tmp, args.steps, "no", cache),
            "trainer_default_fp32": trainer(tmp, args.steps, False, tokenizer, blocks),
            "trainer_bf16": trainer(tmp, args.steps, True, tokenizer, blocks),
        }
        peak32 = device_peak_flops(torch.device("cpu"), "no")
        peak16 = device_peak_flops(torch.device("cpu"), "bf16")
        from transformers import BertConfig

        fpt = flops_per_token(BertConfig(vocab_size=len(tokenizer), hidden_size=256,
                                         num_hidden_layers=4, intermediate_size=1024), 128)
    print(f"\nBERT 4x256, seq 128, batch 32, {args.steps} steps, {torch.get_num_threads()} threads")
    for k, v in fig.items():
        print(f"  {k:24s} {v:10,.0f} tokens/s")
    # bf16 is asked for here: `auto` (the default) picks float32 on CPUs with slow bf16
    print(f"  ours (bf16 + sparse head) / Trainer defaults: "
          f"{fig['ours_bf16'] / fig['trainer_default_fp32']:.2f}x  (target >= 2)")
    print(f"  ours bf16 / Trainer bf16: "
          f"{fig['ours_bf16'] / fig['trainer_bf16']:.2f}x  (target >= 1.3)")
    print(f"  ours fp32 / Trainer fp32: {fig['ours_fp32'] / fig['trainer_default_fp32']:.2f}x")
    print(f"  CPU peak matmul: fp32 {peak32 / 1e9:,.0f} GFLOP/s, bf16 {peak16 / 1e9:,.0f} GFLOP/s")
    print(f"  model FLOPs/token (dense head) {fpt / 1e6:.1f} M; MFU ours bf16 "
          f"{100 * fpt * fig['ours_bf16'] / peak16:.1f}%, Trainer fp32 "
          f"{100 * fpt * fig['trainer_default_fp32'] / peak32:.1f}%")


if __name__ == "__main__":
    main()
