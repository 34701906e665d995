"""Named-entity recognition with `AutoModelForTokenClassification`.

Words are tokenized one by one (a word the tokenizer maps to nothing becomes [UNK], so no word
is lost). A sentence longer than the model's window is split into overlapping windows of
sub-tokens (`doc_stride` shared); training uses every window, and each word is scored once, from
the window where its first sub-token has the most context on both sides. Whatever the training
alignment (`label_all_tokens`), evaluation is on words: one tag per word, from its first
sub-token, scored with seqeval at the entity level.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mlm.errors import UserError
from mlm.finetune.config import TrainConfig
from mlm.finetune.data import NerExample, TaskData
from mlm.finetune.engine import fit, load_model, predict_logits
from mlm.finetune.metrics import ner_scores


def word_pieces(tokenizer, words: list[str]) -> list[list[int]]:
    """Sub-token ids of each word ([UNK] for a word that yields none)."""
    ids = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    return [p if p else [unk] for p in ids]


def windows(n_tokens: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most `size` sub-tokens covering 0..n_tokens, consecutive spans
    sharing `stride` sub-tokens."""
    if stride >= size:
        raise UserError(f"doc_stride ({stride}) must be smaller than the window ({size} sub-tokens)")
    spans, start = [], 0
    while True:
        end = min(start + size, n_tokens)
        spans.append((start, end))
        if end == n_tokens:
            return spans
        start = end - stride


def encode(tokenizer, sentences: list[NerExample], label_names: list[str], max_length: int, stride: int,
           label_all_tokens: bool = False) -> list[dict]:
    """Window features: input_ids, labels (-100 where not trained), and `score`: (position in the
    window, sentence index, word index) of the words this window predicts at evaluation."""
    index = {n: i for i, n in enumerate(label_names)}
    prefix, suffix = special_frame(tokenizer)
    size = max_length - len(prefix) - len(suffix)
    if size < 2:
        raise UserError(f"ner_max_length {max_length} leaves no room for words")
    lead = len(prefix)
    feats = []
    for s, ex in enumerate(sentences):
        pieces = word_pieces(tokenizer, ex.tokens)
        flat, first_of, labels = [], [], []
        for p, tag in zip(pieces, ex.tags):
            first_of.append(len(flat))
            flat += p
            inside = "I-" + tag[2:] if tag.startswith("B-") else tag
            labels += [index[tag]] + [index[inside] if label_all_tokens else -100] * (len(p) - 1)
        spans = windows(len(flat), size, stride)
        owner = {}  # word -> window with the most context around its first sub-token
        for w, pos in enumerate(first_of):
            best = max((min(pos - a, b - 1 - pos), -k) for k, (a, b) in enumerate(spans) if a <= pos < b)
            owner[w] = -best[1]
        for k, (a, b) in enumerate(spans):
            ids = prefix + flat[a:b] + suffix
            lab = [-100] * len(ids)
            lab[lead: lead + b - a] = labels[a:b]
            score = [(lead + first_of[w] - a, s, w) for w in range(len(first_of)) if owner[w] == k]
            feats.append({"input_ids": ids, "labels": lab, "score": score})
    return feats


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP] for BERT,
    <s> / </s> for RoBERTa), read off one encoding (transformers 5 fast tokenizers have no
    build_inputs_with_special_tokens)."""
    body = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i: i + len(body)] == body:
            return full[:i], full[i + len(body):]
    raise UserError("cannot locate the text among the special tokens of this tokenizer")


def word_predictions(logits: list[torch.Tensor], feats: list[dict], sentences: list[NerExample],
                     label_names: list[str]) -> list[list[str]]:
    """One tag per word, taken from its first sub-token in the window that owns it."""
    out = [[None] * len(ex.tokens) for ex in sentences]
    for lg, f in zip(logits, feats):
        ids = lg.argmax(-1).tolist()
        for pos, s, w in f["score"]:
            out[s][w] = label_names[ids[pos]]
    missing = [(s, w) for s, tags in enumerate(out) for w, t in enumerate(tags) if t is None]
    if missing:  # cannot happen by construction; a guard so a bug never drops words silently
        raise AssertionError(f"no prediction for {len(missing)} words, e.g. sentence {missing[0][0]}")
    return out


def run(spec: str, first_folder: Path | None, subset: list[NerExample], data: TaskData, seed: int,
        cfg: TrainConfig, metric: str) -> dict:
    """Fine-tune `spec` on `subset`, pick the best epoch on validation (entity F1), score test."""
    model, tok = load_model(spec, first_folder, "ner", data.label_names, seed, cfg)
    args = (data.label_names, cfg.ner_max_length, cfg.doc_stride)
    train = encode(tok, subset, *args, label_all_tokens=cfg.label_all_tokens)
    val, test = encode(tok, data.validation, *args), encode(tok, data.test, *args)
    for f in train:
        f.pop("score")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    bs = cfg.per_device_eval_batch_size

    index = {n: i for i, n in enumerate(data.label_names)}

    def score(feats, sentences):
        logits = predict_logits(model, [{"input_ids": f["input_ids"]} for f in feats], bs, pad, cfg.mixed_precision)
        preds = word_predictions(logits, feats, sentences, data.label_names)
        scores = ner_scores(preds, [ex.tags for ex in sentences], cfg.seqeval_strict)
        scored = [(lg[pos], index[sentences[s].tags[w]]) for lg, f in zip(logits, feats) for pos, s, w in f["score"]]
        scores["loss"] = torch.nn.functional.cross_entropy(
            torch.stack([x for x, _ in scored]), torch.tensor([y for _, y in scored])).item()
        return scores, preds

    result = fit(model, train, lambda: score(val, data.validation)[0], metric, cfg, seed, pad)
    test_scores, preds = score(test, data.test)
    best = result.history[result.best_epoch - 1]
    predictions = [{"where": ex.where, "tokens": ex.tokens, "tags": ex.tags, "prediction": p}
                   for ex, p in zip(data.test, preds)]
    return {"model": model, "tokenizer": tok, "fit": result,
            "validation": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
            "test": test_scores, "predictions": predictions}
