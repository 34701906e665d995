"""`tfidf-logreg`: the baseline a practitioner tries first, run through the same protocol.

Classification: TF-IDF word uni/bigrams (character uni/bigrams for Chinese or Japanese text)
fitted on the unlabeled training pool (no labels used), then scikit-learn's logistic regression
on the labeled subset; its C is picked on validation.
NER: a CRF-free per-token logistic regression on word-identity, shape, affix and neighbour
features; invalid I- starts in its output are read the CoNLL way by seqeval.
"""
from __future__ import annotations

import re
import time

import numpy as np
from sklearn.feature_extraction import DictVectorizer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from mlm.finetune.data import NerExample, TaskData, TextExample, joined_text, label_targets
from mlm.finetune.metrics import classification_scores, ner_scores

C_GRID = (1.0, 10.0, 100.0)


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _mostly_cjk(texts: list[str]) -> bool:
    """Chinese or Japanese text (written without spaces between words): TF-IDF then counts
    character uni/bigrams, the usual baseline there, instead of whitespace-separated words."""
    sample = "".join(texts[:2000])
    letters = sum(ch.isalpha() for ch in sample)
    return bool(letters) and len(_CJK.findall(sample)) > letters / 2


def _targets(examples, names: list[str], multi_label: bool) -> np.ndarray:
    return np.array(label_targets(examples, names, multi_label))


def _predict(clf, x, n_labels: int, multi_label: bool):
    if multi_label:
        return clf.predict(x).astype(int).tolist()
    return [int(v) for v in clf.predict(x)]


def fit_classifier(subset: list[TextExample], data: TaskData, seed: int, metric: str, cache: dict):
    """TF-IDF features (fitted once per task on the whole unlabeled pool, kept in `cache` with the
    validation set's features) and the logistic regression on `subset` whose C scores best on
    validation: (vectorizer, classifier, C, validation scores). The last fit is kept too: the
    baseline and a self-training teacher of the same run (and each of its rounds) ask for it."""
    if "tfidf" not in cache:
        texts = [joined_text(ex) for ex in data.train]
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=100_000,
                              analyzer="char" if _mostly_cjk(texts) else "word")
        vec.fit(texts)
        cache["tfidf"] = vec
        cache["x_val"] = vec.transform([joined_text(ex) for ex in data.validation])
    key = (seed, metric, tuple((joined_text(ex), tuple(ex.labels)) for ex in subset))
    if cache.get("fit", (None,))[0] == key:
        return cache["fit"][1]
    vec, x_val = cache["tfidf"], cache["x_val"]
    names, ml = data.label_names, data.multi_label
    x_train = vec.transform([joined_text(ex) for ex in subset])
    y_train = _targets(subset, names, ml)
    y_val = _targets(data.validation, names, ml).tolist()
    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf = OneVsRestClassifier(clf) if ml else clf
        if not ml and len(set(y_train.tolist())) < 2:
            clf = _Constant(int(y_train[0]))
        clf.fit(x_train, y_train)
        val = classification_scores(_predict(clf, x_val, len(names), ml), y_val, ml)
        if best is None or val[metric] > best[0][metric]:
            best = (val, clf, c)
    val, clf, c = best
    cache["fit"] = (key, (vec, clf, c, val))
    return vec, clf, c, val


def probabilities(vec, clf, examples: list[TextExample], n_labels: int) -> np.ndarray:
    """Class probabilities [examples, labels] of a single-label classifier from `fit_classifier`
    (a class the subset lacks gets 0)."""
    proba = clf.predict_proba(vec.transform([joined_text(ex) for ex in examples]))
    out = np.zeros((len(examples), n_labels))
    out[:, np.asarray(clf.classes_, dtype=int)] = proba
    return out


def run_classification(subset: list[TextExample], data: TaskData, seed: int, metric: str, cache: dict) -> dict:
    t0 = time.time()
    vec, clf, c, val = fit_classifier(subset, data, seed, metric, cache)
    names, ml = data.label_names, data.multi_label
    preds = _predict(clf, vec.transform([joined_text(ex) for ex in data.test]), len(names), ml)
    test = classification_scores(preds, _targets(data.test, names, ml).tolist(), ml)
    predictions = [{"where": ex.where, "label": ex.labels,
                    "prediction": [n for n, v in zip(names, p) if v] if ml else [names[p]]}
                   for ex, p in zip(data.test, preds)]
    return {"validation": val, "test": test, "predictions": predictions, "seconds": time.time() - t0,
            "hyperparameters": {"C": c}}


class _Constant:
    """A 'classifier' for a subset with a single class (logistic regression needs two)."""

    def __init__(self, label: int):
        self.label = label
        self.classes_ = np.array([label])

    def fit(self, x, y):
        return self

    def predict(self, x):
        return np.full(x.shape[0], self.label)

    def predict_proba(self, x):
        return np.ones((x.shape[0], 1))


def _shape(word: str) -> str:
    s = re.sub("[A-Z]", "X", word)
    s = re.sub("[a-z]", "x", s)
    s = re.sub("[0-9]", "d", s)
    return re.sub(r"(.)\1{2,}", r"\1\1", s)


def token_features(words: list[str], i: int) -> dict:
    w = words[i]
    low = w.lower()
    feats = {"bias": 1.0, "w=" + low: 1.0, "shape=" + _shape(w): 1.0, "pre3=" + low[:3]: 1.0,
             "suf3=" + low[-3:]: 1.0, "suf2=" + low[-2:]: 1.0, "title": float(w.istitle()),
             "upper": float(w.isupper()), "digit": float(any(ch.isdigit() for ch in w)),
             "at": float(w.startswith("@")), "hash": float(w.startswith("#")),
             "url": float(low.startswith(("http", "www."))), "first": float(i == 0)}
    for off in (-2, -1, 1, 2):
        j = i + off
        tok = words[j].lower() if 0 <= j < len(words) else ("<s>" if j < 0 else "</s>")
        feats[f"w{off:+d}={tok}"] = 1.0
        if 0 <= j < len(words):
            feats[f"title{off:+d}"] = float(words[j].istitle())
    return feats


def run_ner(subset: list[NerExample], data: TaskData, seed: int, metric: str, strict: bool = False) -> dict:
    t0 = time.time()
    vec = DictVectorizer()
    x = vec.fit_transform([token_features(ex.tokens, i) for ex in subset for i in range(len(ex.tokens))])
    y = [t for ex in subset for t in ex.tags]

    def predict(clf, sentences):
        feats = [token_features(ex.tokens, i) for ex in sentences for i in range(len(ex.tokens))]
        flat = list(clf.predict(vec.transform(feats))) if feats else []
        out, k = [], 0
        for ex in sentences:
            out.append([str(t) for t in flat[k: k + len(ex.tokens)]])
            k += len(ex.tokens)
        return out

    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed) if len(set(y)) > 1 else None
        if clf is None:
            break
        clf.fit(x, y)
        val = ner_scores(predict(clf, data.validation), [ex.tags for ex in data.validation], strict)
        if best is None or val[metric] > best[0][metric]:
            best = (val, clf, c)
    if best is None:  # only "O" in the subset: predict "O" everywhere
        const = _Constant(0)
        const.predict = lambda m: np.array(["O"] * m.shape[0])
        val = ner_scores(predict(const, data.validation), [ex.tags for ex in data.validation], strict)
        best = (val, const, None)
    val, clf, c = best
    preds = predict(clf, data.test)
    test = ner_scores(preds, [ex.tags for ex in data.test], strict)
    predictions = [{"where": ex.where, "tokens": ex.tokens, "tags": ex.tags, "prediction": p}
                   for ex, p in zip(data.test, preds)]
    return {"validation": val, "test": test, "predictions": predictions, "seconds": time.time() - t0,
            "hyperparameters": {"C": c}}
