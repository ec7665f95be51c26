"""Win rate, length-controlled win rate and Bradley-Terry on constructed data whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics.bradley_terry import Battle, bradley_terry
from evaluation.metrics.logistic import fit_logistic
from evaluation.metrics.stats import bootstrap_ci, mean_metric
from evaluation.metrics.win_rate import length_controlled_win_rate, win_rate


def test_win_rate_counts_ties_as_half():
    metric = win_rate([1, 1, 1, 0, 0.5], samples=200)
    assert metric.value == pytest.approx(70.0)
    assert metric.extra == {"wins": 3, "ties": 1, "losses": 1}
    assert metric.n == 5 and metric.ci95[0] <= 70.0 <= metric.ci95[1]
    assert metric.to_dict()["ci_low"] == metric.ci95[0]


def test_empty_metric_has_no_value():
    metric = win_rate([], n_failed=3)
    assert metric.value is None and metric.ci95 is None and metric.n_failed == 3


def _length_world(seed: int, n: int = 600):
    rng = np.random.default_rng(seed)
    baseline = rng.integers(200, 900, n)
    model = baseline + rng.normal(250, 300, n).round().astype(int)  # the model is mostly longer
    return rng, model, baseline


def test_length_biased_judge_loses_its_advantage_under_length_control():
    # Equal quality: the judge's only reason to prefer the model is length.
    rng, model, baseline = _length_world(0)
    delta = model - baseline
    p = 1 / (1 + np.exp(-2.5 * np.tanh(delta / delta.std())))
    preferences = (rng.random(delta.size) < p).astype(float)
    raw = win_rate(preferences, samples=200).value
    lc = length_controlled_win_rate(preferences, model, baseline, samples=200)
    assert raw > 70
    assert abs(lc.value - 50) < (raw - 50) / 3, (raw, lc.value)
    assert lc.ci95[0] < 50 < lc.ci95[1]


def test_genuinely_better_model_keeps_its_advantage():
    rng, model, baseline = _length_world(1)
    preferences = (rng.random(model.size) < 0.75).astype(float)  # quality, independent of length
    lc = length_controlled_win_rate(preferences, model, baseline, samples=200)
    assert lc.value > 68 and lc.ci95[0] > 60


def test_lc_with_instruction_difficulty_term():
    rng, model, baseline = _length_world(2, n=400)
    difficulty = rng.normal(0, 1, model.size)
    p = 1 / (1 + np.exp(-(0.8 - 1.0 * difficulty)))  # hard instructions are lost more often
    preferences = (rng.random(model.size) < p).astype(float)
    lc = length_controlled_win_rate(preferences, model, baseline, difficulty=difficulty, samples=100)
    expected = 100 * np.mean(p)  # no length effect: LC should recover the mean win probability
    assert abs(lc.value - expected) < 6


def test_lc_accepts_soft_preferences_and_checks_alignment():
    lc = length_controlled_win_rate([0.9, 0.8, 0.7, 0.6], [10, 20, 30, 40], [10, 10, 10, 10], samples=50)
    assert 0 < lc.value < 100
    with pytest.raises(ValueError, match="aligned"):
        length_controlled_win_rate([1.0, 0.0], [1], [1, 2])


def test_logistic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(4000), rng.normal(size=4000)])
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.5 + 1.5 * X[:, 1])))).astype(float)
    coef = fit_logistic(X, y)
    assert coef == pytest.approx([0.5, 1.5], abs=0.15)


def test_bootstrap_is_seeded_and_covers_the_truth():
    rng = np.random.default_rng(4)
    values = rng.normal(10, 2, 300)
    a = mean_metric(values, samples=300, seed=7)
    b = mean_metric(values, samples=300, seed=7)
    assert a.ci95 == b.ci95
    assert a.ci95[0] < 10 < a.ci95[1]
    assert a.ci95[1] - a.ci95[0] == pytest.approx(2 * 1.96 * 2 / np.sqrt(300), rel=0.25)
    assert bootstrap_ci(lambda idx: 1.0, 1) is None  # one item: no interval


def test_bradley_terry_orders_players_and_anchors_the_baseline():
    rng = np.random.default_rng(5)
    strength = {"baseline": 0.0, "good": 1.0, "weak": -1.0}
    battles = []
    for _ in range(1500):
        a, b = rng.choice(list(strength), 2, replace=False)
        p = 1 / (1 + np.exp(-(strength[a] - strength[b])))
        battles.append(Battle(a, b, float(rng.random() < p)))
    result = bradley_terry(battles, anchor="baseline", samples=100, seed=0)
    assert result["baseline"]["score"] == pytest.approx(50.0)
    assert result["good"]["score"] == pytest.approx(100 / (1 + np.exp(-1.0)), abs=4)
    assert result["weak"]["score"] < 35
    low, high = result["good"]["ci95"]
    assert low < result["good"]["score"] < high
    again = bradley_terry(battles, anchor="baseline", samples=100, seed=0)
    assert again["good"]["ci95"] == result["good"]["ci95"]


def test_bradley_terry_ties_and_strong_weights():
    even = [Battle("m", "baseline", 0.5)] * 20
    assert bradley_terry(even, anchor="baseline", samples=50)["m"]["score"] == pytest.approx(50, abs=0.5)
    strong = [Battle("m", "baseline", 1.0, weight=3.0)] * 10 + [Battle("m", "baseline", 0.0)] * 10
    assert bradley_terry(strong, anchor="baseline", samples=50)["m"]["score"] == pytest.approx(75, abs=0.5)
    with pytest.raises(ValueError, match="anchor"):
        bradley_terry(even, anchor="nobody")
