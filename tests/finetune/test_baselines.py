"""The TF-IDF + logistic-regression baseline on real BBC News articles (its NER side is checked
with the neural NER run in test_ner.py, on the same tweets)."""
from __future__ import annotations

from mlm.finetune import DataConfig
from mlm.finetune.baselines import run_classification
from mlm.finetune.data import load_task, stratified_order
from tests.conftest import REPO


def test_tfidf_baseline_well_above_chance_on_bbc(bbc_dir):
    data = load_task(DataConfig(train_file=str(bbc_dir), test_list=str(REPO / "data_recipes/splits/bbc_test.txt"),
                                validation_size=100))
    data.test = data.test[::2]  # 250 of the 500 test articles, all five topics
    subset = [data.train[i] for i in stratified_order([e.labels[0] for e in data.train], 0)[:100]]
    out = run_classification(subset, data, 0, "macro_f1", {})
    assert out["test"]["accuracy"] > 0.75  # chance is about 0.2 with five topics
