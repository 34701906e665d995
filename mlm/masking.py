"""Dynamic-masking collator (token and whole-word masking, vectorised torch)."""
from __future__ import annotations

import torch

from mlm.errors import UserError


class MaskingCollator:
    """Pad a list of examples into a batch and choose fresh masks for it."""

    def __init__(self, tokenizer, strategy: str = "token", mlm_probability: float = 0.15,
                 mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1,
                 seed: int = 0, return_masked_positions: bool = False, **_: object):
        if not 0 < mlm_probability < 1:
            raise UserError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if tokenizer.mask_token_id is None:
            raise UserError("the tokenizer has no mask token")
        self.tokenizer = tokenizer
        self.strategy = strategy
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.seed = seed
        self.epoch = 0
        self.calls = 0
        self.return_masked_positions = return_masked_positions
        special = torch.zeros(len(tokenizer), dtype=torch.bool)
        special[list(tokenizer.all_special_ids)] = True
        self.normal_ids = torch.nonzero(~special).squeeze(1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_step(self, step: int) -> None:
        self.calls = step

    def set_mlm_probability(self, p: float) -> None:
        self.mlm_probability = p

    def __call__(self, examples: list[dict]) -> dict:
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.calls)) % 2**63)
        self.calls += 1
        lengths = [len(e["input_ids"]) for e in examples]
        L = max(lengths)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(examples), L), pad, dtype=torch.long)
        special = torch.ones((len(examples), L), dtype=torch.bool)
        for i, e in enumerate(examples):
            ids[i, : lengths[i]] = torch.as_tensor(e["input_ids"])
            if "special_tokens_mask" in e:
                special[i, : lengths[i]] = torch.as_tensor(e["special_tokens_mask"]).bool()
            else:
                special[i, : lengths[i]] = False
        attention = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()
        prob = torch.full(ids.shape, self.mlm_probability)
        chosen = torch.bernoulli(prob, generator=gen).bool() & ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        roll = torch.rand(ids.shape, generator=gen)
        to_mask = chosen & (roll < self.mask_replace_prob)
        to_rand = chosen & (roll >= self.mask_replace_prob) & (
            roll < self.mask_replace_prob + self.random_replace_prob)
        out = ids.clone()
        out[to_mask] = self.tokenizer.mask_token_id
        pick = torch.randint(len(self.normal_ids), ids.shape, generator=gen)
        out[to_rand] = self.normal_ids[pick][to_rand]
        batch = {"input_ids": out, "attention_mask": attention, "labels": labels}
        if self.return_masked_positions:
            batch["masked_positions"] = torch.nonzero(labels.view(-1) != -100).squeeze(1)
        return batch
