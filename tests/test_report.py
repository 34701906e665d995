"""mlm.report: the recommendation sets the best pretraining route against the best of the rest,
with the difference paired over seeds, and says plainly when no route wins."""
from __future__ import annotations

from mlm.finetune.protocol import interval
from mlm.report import recommendation, recommendation_lines


def _section(values: dict[str, list[float]]) -> dict:
    return {"name": "t", "task": "classification", "metric": "accuracy", "models": list(values),
            "sizes": [100], "seeds": list(range(len(next(iter(values.values()))))),
            "summary": {m: {"100": {"accuracy": interval(v)}} for m, v in values.items()}}


KINDS = {"runs/a": "route", "runs/b": "route", "minilm": "checkpoint", "tfidf-logreg": "baseline"}


def test_route_that_wins_on_every_seed_pays_off():
    s = _section({"runs/a": [0.80, 0.85, 0.78, 0.90, 0.82], "runs/b": [0.70] * 5,
                  "minilm": [0.75, 0.80, 0.74, 0.86, 0.79], "tfidf-logreg": [0.6] * 5})
    [r] = recommendation(s, KINDS)
    assert (r["route"], r["baseline"], r["verdict"]) == ("runs/a", "minilm", "pays off")
    assert abs(r["difference"]["mean"] - 0.042) < 1e-9  # paired: the seeds' spread cancels
    assert "pretraining pays off: **runs/a** beats minilm by +0.042" in recommendation_lines(s, KINDS)[0]


def test_no_route_beats_the_baselines_is_said_plainly():
    s = _section({"runs/a": [0.60, 0.62, 0.58], "tfidf-logreg": [0.65, 0.68, 0.63]})
    [line] = recommendation_lines(s, KINDS)
    assert line.startswith("n=100: no pretraining route beats the baselines: **tfidf-logreg**")


def test_overlap_is_not_a_win_and_says_what_would_separate():
    s = _section({"runs/a": [0.70, 0.60, 0.72], "minilm": [0.66, 0.64, 0.65]})
    [r] = recommendation(s, KINDS)
    assert r["verdict"] == "not separated" and r["difference"]["seeds_needed"] > 3
    assert "seeds would separate" in recommendation_lines(s, KINDS)[0]
    assert recommendation(_section({"runs/a": [0.7], "runs/b": [0.6]}), KINDS) == []  # no baseline
