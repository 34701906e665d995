"""Deduplication: exact (hash of the normalised text) and near (MinHash + LSH via datasketch).

Signatures are computed where documents are read (in worker processes); the decisions are made
in one pass in the main process, which keeps only what it must: the exact hashes seen and the
LSH index of the documents kept. A candidate from LSH is confirmed by estimating the Jaccard
similarity against the stored signature, so LSH false positives never drop a document.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from mlm.config import DedupConfig

_WORD = re.compile(r"\w+")


def exact_hash(text: str) -> bytes:
    """16-byte hash of the text with case and whitespace folded."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()


def unit_interval(key: bytes, salt: int | str) -> float:
    """A deterministic number in [0, 1) from a hash: used for the split and for sampling."""
    digest = hashlib.blake2b(key, digest_size=8, person=str(salt).encode()[:16]).digest()
    return int.from_bytes(digest, "big") / 2**64


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the word n-grams of the lowercased text (one n-gram if it is shorter).

    Each word is hashed once (crc32) and n-grams are combined with a polynomial rolling hash in
    numpy, which is several times faster than hashing every n-gram string; datasketch then
    applies its permutations to these values (the `hashfunc` below passes them through).
    """
    words = _WORD.findall(text.lower())
    if not words:
        words = [""]
    h = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    n = min(n, len(h))
    with np.errstate(over="ignore"):
        acc = np.zeros(len(h) - n + 1, dtype=np.uint64)
        for k in range(n):
            acc = acc * np.uint64(0x100000001B3) + h[k:len(h) - n + 1 + k] + np.uint64(k + 1)
        acc ^= acc >> np.uint64(29)
        acc *= np.uint64(0xBF58476D1CE4E5B9)
        acc ^= acc >> np.uint64(32)
    return np.unique(acc & np.uint64(0xFFFFFFFF))


def _identity(value):
    return int(value)


class Signer:
    """Computes MinHash signatures with one shared set of permutations."""

    def __init__(self, num_perm: int, ngram: int):
        self.ngram = ngram
        self.template = MinHash(num_perm=num_perm, seed=1, hashfunc=_identity)
        self.scheme = {"scheme": self.template.scheme} if hasattr(self.template, "scheme") else {}
        self.dtype = self.template.hashvalues.dtype

    def __call__(self, text: str) -> bytes:
        mh = MinHash(num_perm=len(self.template.hashvalues), seed=1, hashfunc=_identity,
                     permutations=self.template.permutations, **self.scheme)
        mh.update_batch(shingle_hashes(text, self.ngram).tolist())
        return mh.hashvalues.astype(self.dtype, copy=False).tobytes()

    def load(self, signature: bytes) -> LeanMinHash:
        return LeanMinHash(seed=1, hashvalues=np.frombuffer(signature, dtype=self.dtype),
                           **self.scheme)


class Deduper:
    """Streaming duplicate detection: feed documents in order, get the index of their original.

    `check(i, hash, signature)` returns (reason, original index) for a duplicate of an earlier
    document, or (None, i) for a new one (which becomes the representative of its cluster).
    """

    def __init__(self, cfg: DedupConfig, signature_of: Callable[[int], bytes]):
        self.cfg = cfg
        self.seen: dict[bytes, int] = {}
        self.signature_of = signature_of
        self.signer = Signer(cfg.minhash_num_perm, cfg.minhash_ngram) if cfg.dedup_near else None
        # Weigh misses over false candidates: every candidate is confirmed against its stored
        # signature, so a false one costs a comparison while a missed one keeps a duplicate.
        self.lsh = (MinHashLSH(threshold=cfg.dedup_threshold, num_perm=cfg.minhash_num_perm,
                               weights=(0.1, 0.9)) if cfg.dedup_near else None)

    def check(self, i: int, key: bytes, signature: bytes) -> tuple[str | None, int]:
        if self.cfg.dedup_exact:
            original = self.seen.get(key)
            if original is not None:
                return "exact_duplicate", original
            self.seen[key] = i
        if self.lsh is not None:
            mh = self.signer.load(signature)
            candidates = sorted(self.lsh.query(mh))
            for c in candidates:
                other = self.signer.load(self.signature_of(c))
                if mh.jaccard(other) >= self.cfg.dedup_threshold:
                    return "near_duplicate", c
            self.lsh.insert(i, mh, check_duplication=False)
        return None, i
