from __future__ import annotations

import numpy as np
import pytest
import torch

from mvmlm import metrics


def test_binary_and_macro_auc():
    y = np.array([0, 0, 1, 1])
    assert metrics.auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert metrics.auc(y, np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])) == pytest.approx(0.75)
    y3 = np.array([0, 1, 2, 2])
    perfect = np.eye(3)[y3]
    assert metrics.auc(y3, perfect) == pytest.approx(1.0)
    assert np.isnan(metrics.auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_macro_auc_skips_classes_absent_from_labels():
    y = np.array([0, 0, 2, 2])
    scores = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7]])
    assert metrics.auc(y, scores) == pytest.approx(1.0)


def test_classification_metrics_threshold_and_argmax():
    out = metrics.classification_metrics(np.array([0, 1, 1, 0]), np.array([0.2, 0.9, 0.4, 0.6]))
    assert out["balanced_accuracy"] == pytest.approx(0.5)
    assert out["auc"] == pytest.approx(0.75)


def test_bootstrap_resamples_whole_patients():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    scores = y + rng.normal(0, 0.8, 200)
    patients = np.repeat(np.arange(100), 2)
    estimate, low, high = metrics.bootstrap_ci(lambda idx: metrics.auc(y[idx], scores[idx]), patients, n_resamples=200)
    assert low < estimate < high and 0.5 < low and high < 1
    seen = []
    metrics.bootstrap_ci(lambda idx: seen.append(idx) or 0.0, patients, n_resamples=5)
    for idx in seen[1:]:
        drawn = patients[idx]
        # both images of every drawn patient come together
        assert all((drawn == p).sum() % 2 == 0 for p in np.unique(drawn))


def test_retrieval_recall_with_duplicate_positives():
    keys = torch.eye(4)
    query = torch.tensor([[1.0, 0, 0, 0], [0, 0.5, 1, 0], [0, 0, 1, 0.1], [0, 0, 0, 1]])
    out = metrics.retrieval_recall(query, keys, ks=(1, 2))
    assert out == {"R@1": 0.75, "R@2": 1.0}
    positives = torch.eye(4, dtype=torch.bool)
    positives[1, 2] = True
    assert metrics.retrieval_recall(query, keys, ks=(1,), positives=positives)["R@1"] == 1.0


def test_concordance_and_time_dependent_auc():
    event = np.array([1, 1, 0, 1, 0, 0])
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    perfect = -time
    assert metrics.harrell_c(event, time, perfect) == pytest.approx(1.0)
    assert metrics.harrell_c(event, time, time) == pytest.approx(0.0)
    assert metrics.uno_c((event, time), (event, time), perfect, tau=4.5) == pytest.approx(1.0)
    aucs = metrics.time_dependent_auc((event, time), (event, time), perfect, times=[1.5, 3.5])
    assert aucs[1.5] == pytest.approx(1.0) and aucs[3.5] == pytest.approx(1.0)
