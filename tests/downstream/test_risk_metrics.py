"""Mirai label construction, Mirai's per-year AUC on a hand-computed example, and agreement with scikit-survival."""

from __future__ import annotations

import numpy as np
import pytest

from downstream.risk.metrics import RiskScores, mirai_labels, mirai_year_auc, risk_metrics, survival_arrays

# (years_to_cancer, years_to_last_followup): A cancer in year 1, B in year 3, C free for 6 y, D free for 1.5 y,
# E free for 0.4 y (no label), F cancer after 7 y (a negative within 5 y)
NAN = float("nan")
YTC = [0.5, 2.3, NAN, NAN, NAN, 7.0]
YTLF = [0.5, 2.3, 6.0, 1.5, 0.4, 7.0]


def test_mirai_labels_follow_get_label():
    labels = mirai_labels(YTC, YTLF, max_followup=5)
    assert labels.time_at_event.tolist() == [0, 2, 4, 0, -1, 4]
    assert labels.positive.tolist() == [True, True, False, False, False, False]
    assert labels.keep.tolist() == [True, True, True, True, False, True]
    assert labels.y_seq[1].tolist() == [0, 0, 1, 1, 1]
    assert labels.y_seq[0].tolist() == [1, 1, 1, 1, 1]
    assert labels.y_mask[1].tolist() == [1, 1, 1, 0, 0]
    assert labels.y_mask[3].tolist() == [1, 0, 0, 0, 0]
    assert labels.y_mask[4].sum() == 0
    assert labels.y_seq[[2, 3, 5]].sum() == 0 and labels.y_mask[[2, 5]].all()


def test_mirai_labels_reject_bad_follow_up():
    with pytest.raises(ValueError, match="negative"):
        mirai_labels([NAN, -1.0], [2.0, 1.0])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        mirai_labels([NAN, NAN], [2.0, NAN])


def test_mirai_year_auc_matches_hand_computation():
    labels = mirai_labels(YTC, YTLF)
    probs = np.zeros((6, 5))
    # year 2: case A; negatives B (cancer later), C, F; D (1.5 y follow-up) and E dropped -> 2 of 3 pairs right
    probs[:, 1] = [0.55, 0.5, 0.6, 0.99, 0.99, 0.2]
    assert mirai_year_auc(probs, labels.time_at_event, labels.positive, 2) == pytest.approx(2 / 3)
    # year 3: cases A, B; negatives C, F -> pairs (A,C) (A,F) (B,F) right, (B,C) wrong
    probs[:, 2] = [0.7, 0.4, 0.5, 0.99, 0.99, 0.1]
    assert mirai_year_auc(probs, labels.time_at_event, labels.positive, 3) == pytest.approx(3 / 4)


def test_mirai_year_auc_is_nan_without_cases():
    labels = mirai_labels([NAN, NAN], [6.0, 6.0])
    assert np.isnan(mirai_year_auc(np.zeros((2, 5)), labels.time_at_event, labels.positive, 1))


def test_risk_metrics_equal_scikit_survival_on_fixed_arrays():
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc
    from sksurv.util import Surv

    rng = np.random.default_rng(3)
    n = 60
    onset = rng.exponential(4.0, n)
    follow = rng.uniform(1.0, 8.0, n)
    ytc = np.where(onset <= follow, onset, np.nan)
    ytlf = np.where(onset <= follow, onset, follow)
    risk = -onset + rng.normal(0, 2, n)
    probs = np.sort(rng.uniform(0, 1, (n, 5)), axis=1)
    got = risk_metrics(RiskScores(probs, risk), (ytc, ytlf), (ytc, ytlf), [f"p{i}" for i in range(n)], n_resamples=0)

    event, time = survival_arrays(ytc, ytlf)
    surv = Surv.from_arrays(event=event, time=time)
    assert got["harrell_c"]["value"] == pytest.approx(concordance_index_censored(event, time, risk)[0])
    assert got["uno_c"]["value"] == pytest.approx(concordance_index_ipcw(surv, surv, risk, tau=5.0)[0])
    auc2 = cumulative_dynamic_auc(surv, surv, probs[:, 1], [2.0])[0][0]
    assert got["td_auc_2y"]["value"] == pytest.approx(auc2)
    assert got["harrell_c"]["value"] > 0.6  # the risk above is informative
    assert np.isnan(got["harrell_c"]["low"])  # no resamples, no interval


def test_risk_metrics_bootstrap_interval_brackets_estimate():
    rng = np.random.default_rng(4)
    n = 80
    onset = rng.exponential(4.0, n)
    ytc = np.where(onset <= 6, onset, np.nan)
    ytlf = np.minimum(onset, 6.0)
    probs = np.repeat(-onset[:, None], 5, axis=1) + np.linspace(0, 1, 5)
    got = risk_metrics(
        RiskScores(probs, -onset), (ytc, ytlf), (ytc, ytlf), [f"p{i // 2}" for i in range(n)], n_resamples=30
    )
    assert got["harrell_c"]["value"] == pytest.approx(1.0)
    for name in ("uno_c", "td_auc_5y", "mirai_auc_2y"):
        m = got[name]
        assert m["low"] <= m["value"] <= m["high"] + 1e-9, name


def test_risk_metrics_reject_wrong_shapes():
    with pytest.raises(ValueError, match="expected probs"):
        risk_metrics(RiskScores(np.zeros((6, 3)), np.zeros(6)), (YTC, YTLF), (YTC, YTLF), list("abcdef"))
