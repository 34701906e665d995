"""Named-entity recognition with `AutoModelForTokenClassification`.

The fast tokenizer reads each sentence as words (`is_split_into_words`) and maps sub-tokens back
to words (`word_ids()`); a word it maps to nothing becomes [UNK], so no word is lost. A sentence
longer than the model's window becomes the tokenizer's overflow windows (consecutive windows
share `doc_stride` sub-tokens); training uses every window, and each word is scored once, from
the window where its first sub-token has the most context on both sides. Whatever the training
alignment (`label_all_tokens`), evaluation is on words: one tag per word, from its first
sub-token, scored with seqeval at the entity level.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import DataCollatorForTokenClassification

from mlm.errors import UserError
from mlm.finetune.config import TrainConfig
from mlm.finetune.data import NerExample, TaskData
from mlm.finetune.engine import fit, load_model, once, predict_logits
from mlm.finetune.metrics import ner_scores


def known_words(tokenizer, sentences: list[NerExample]) -> list[list[str]]:
    """Each sentence's words, with the [UNK] token for a word the tokenizer maps to nothing."""
    vocab = sorted({w for ex in sentences for w in ex.tokens})
    pieces = tokenizer(vocab, add_special_tokens=False)["input_ids"] if vocab else []
    empty = {w for w, p in zip(vocab, pieces) if not p}
    unk = tokenizer.unk_token or tokenizer.convert_ids_to_tokens(0)
    return [[unk if w in empty else w for w in ex.tokens] for ex in sentences]


def encode(tokenizer, sentences: list[NerExample], label_names: list[str], max_length: int, stride: int,
           label_all_tokens: bool = False) -> list[dict]:
    """Window features: input_ids, labels (-100 where not trained), and `score`: (position in the
    window, sentence index, word index) of the words this window predicts at evaluation."""
    size = max_length - tokenizer.num_special_tokens_to_add()
    if size < 2:
        raise UserError(f"ner_max_length {max_length} leaves no room for words")
    if stride >= size:
        raise UserError(f"doc_stride ({stride}) must be smaller than the window ({size} sub-tokens)")
    enc = tokenizer(known_words(tokenizer, sentences), is_split_into_words=True, truncation=True,
                    max_length=max_length, stride=stride, return_overflowing_tokens=True)
    # Sub-token p of window k is sub-token shift + p of its sentence: a window starts `stride`
    # sub-tokens before the end of the previous window of its sentence.
    windows, end, first = [], {}, {}  # first: (sentence, word) -> its first sub-token
    for k, s in enumerate(enc["overflow_to_sample_mapping"]):
        words = enc.word_ids(k)
        body = [p for p, w in enumerate(words) if w is not None]
        shift = end.get(s, stride) - stride - body[0]
        end[s] = shift + body[-1] + 1
        windows.append((s, shift, words, shift + body[0], shift + body[-1]))
        for p in body:
            first.setdefault((s, words[p]), shift + p)
    owner = {}  # (sentence, word) -> (context, window): the most context, the first on a tie
    for k, (s, _, words, lo, hi) in enumerate(windows):
        for w in set(words) - {None}:
            context = min(first[s, w] - lo, hi - first[s, w])  # < 0: its first sub-token is not here
            if context > owner.get((s, w), (-1,))[0]:
                owner[s, w] = (context, k)
    index = {n: i for i, n in enumerate(label_names)}
    feats = []
    for k, (s, shift, words, _, _) in enumerate(windows):
        tags, labels, score = sentences[s].tags, [], []
        for p, w in enumerate(words):
            if w is None:
                labels.append(-100)
            elif first[s, w] == shift + p:
                labels.append(index[tags[w]])
                if owner[s, w][1] == k:
                    score.append((p, s, w))
            else:  # a continuation sub-token: trained as the word's inside tag, or not at all
                inside = "I-" + tags[w][2:] if tags[w].startswith("B-") else tags[w]
                labels.append(index[inside] if label_all_tokens else -100)
        feats.append({"input_ids": enc["input_ids"][k], "labels": labels, "score": score})
    return feats


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
        cfg: TrainConfig, metric: str, progress: str | None = None, cache: dict | None = None) -> dict:
    """Fine-tune `spec` on `subset`, pick the best epoch on validation (entity F1), score test.
    `cache`: one per task, to encode its validation and test sets once per tokenizer."""
    model, tok = load_model(spec, first_folder, "ner", data.label_names, seed, cfg)
    args = (data.label_names, cfg.ner_max_length, cfg.doc_stride)
    train = encode(tok, subset, *args, label_all_tokens=cfg.label_all_tokens)
    val, test = once(cache, tok.name_or_path,
                       lambda: (encode(tok, data.validation, *args), encode(tok, data.test, *args)))
    collator, bs = DataCollatorForTokenClassification(tok), cfg.per_device_eval_batch_size
    index = {n: i for i, n in enumerate(data.label_names)}

    def score(feats, sentences):
        logits = predict_logits(model, feats, bs, collator, cfg.mixed_precision)
        preds = word_predictions(logits, feats, sentences, data.label_names)
        scores = ner_scores(preds, [ex.tags for ex in sentences], cfg.seqeval_strict)
        scored = [(lg[pos], index[sentences[s].tags[w]]) for lg, f in zip(logits, feats) for pos, s, w in f["score"]]
        scores["loss"] = torch.nn.functional.cross_entropy(
            torch.stack([x for x, _ in scored]), torch.tensor([y for _, y in scored])).item()
        return scores, preds

    result = fit(model, train, lambda: score(val, data.validation)[0], metric, cfg, seed, collator, progress=progress)
    test_scores, preds = score(test, data.test)
    predictions = [{"where": ex.where, "tokens": ex.tokens, "tags": ex.tags, "prediction": p}
                   for ex, p in zip(data.test, preds)]
    return {"model": model, "tokenizer": tok, "fit": result, "validation": result.validation,
            "test": test_scores, "predictions": predictions}
