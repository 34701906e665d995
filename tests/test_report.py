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


def test_self_training_line_pairs_each_student_with_its_teacher():
    """The report line sets each run's student against the teacher of the same run (the model
    before pseudo-labels), paired over seeds; runs without pseudo-labels are left out; runs that
    returned their teacher are counted."""
    from mlm.report import self_training_lines

    def run(seed, student, teacher, pseudo=100):
        st = {"teacher": {"test": {"accuracy": teacher}}, "pseudo_labels": pseudo,
              "pseudo_label_teacher": "model+tfidf"}
        return {"model": "runs/a", "train_size": 100, "seed": seed, "test": {"accuracy": student},
                "self_training": st}

    s = _section({"runs/a": [0.70, 0.80, 0.60]})
    s["runs"] = [run(0, 0.70, 0.65), run(1, 0.80, 0.76), run(2, 0.60, 0.54, pseudo=300),
                 run(3, 0.10, 0.90, pseudo=0), {"model": "tfidf-logreg", "train_size": 100, "seed": 0,
                                                "test": {"accuracy": 0.5}}]
    [line] = self_training_lines(s)
    assert line.startswith("self-training, runs/a n=100: accuracy 0.650 (teacher) -> 0.700 (student")
    assert "+0.050 [" in line and "paired over 3 seeds; 167 pseudo-labeled texts per run" in line
    # under --self_training_keep better a run may return its teacher: the line says how often
    s["runs"][1]["self_training"]["kept"] = "teacher"
    s["runs"][1]["test"]["accuracy"] = 0.76
    [line] = self_training_lines(s)
    assert "-> 0.687 (reported above; the teacher in 1 of 3 runs, whose student scored lower on " \
        "validation), +0.037 [" in line
    del s["runs"]
    assert self_training_lines(s) == []
