"""Corpus stage: read the recipe's sources, clean, deduplicate, split into train/validation."""
from mlm.corpus.build import build_corpus, load_corpus

__all__ = ["build_corpus", "load_corpus"]
