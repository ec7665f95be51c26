"""Win rate and AlpacaEval's length-controlled win rate on constructed data whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics.logistic import fit_logistic
from evaluation.metrics.stats import bootstrap_ci, mean_metric
from evaluation.metrics.length_control import (GamedRows, LengthPrior, fit_length_controlled, is_extreme_change,
                                               length_controlled_win_rate)
from evaluation.metrics.win_rate import win_rate


def test_win_rate_counts_ties_as_half():
    metric = win_rate([1, 1, 1, 0, 0.5], samples=200)
    assert metric.value == pytest.approx(70.0)
    assert metric.extra == {"wins": 3, "ties": 1, "losses": 1}
    assert metric.n == 5 and metric.ci95[0] <= 70.0 <= metric.ci95[1]
    assert metric.to_dict()["ci_low"] == metric.ci95[0]


def test_empty_metric_has_no_value():
    metric = win_rate([], n_failed=3)
    assert metric.value is None and metric.ci95 is None and metric.n_failed == 3


def _length_world(seed: int, n: int = 300):
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
    lc = length_controlled_win_rate(preferences, model, baseline, samples=40)
    assert raw > 70
    assert abs(lc.value - 50) < (raw - 50) / 3, (raw, lc.value)
    assert lc.ci95[0] < 50 < lc.ci95[1]


def test_genuinely_better_model_keeps_its_advantage():
    rng, model, baseline = _length_world(1)
    preferences = (rng.random(model.size) < 0.75).astype(float)  # quality, independent of length
    lc = length_controlled_win_rate(preferences, model, baseline, samples=40)
    # the length prior (a longer answer usually wins) discounts a little of an advantage the data say is not length
    assert lc.value > 60 and lc.ci95[0] > 52


def test_lc_with_instruction_difficulty_term():
    rng, _, baseline = _length_world(2, n=400)
    model = baseline + rng.normal(0, 200, baseline.size).round().astype(int)  # as long as the baseline on average
    difficulty = rng.normal(0, 1, model.size)
    # AlpacaEval's sign: a higher instruction_difficulty is an instruction the baseline loses more often
    p = 1 / (1 + np.exp(-(0.8 + 1.0 * difficulty)))
    preferences = (rng.random(model.size) < p).astype(float)
    lc = length_controlled_win_rate(preferences, model, baseline, difficulty=difficulty, samples=20)
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


def _logit(p):
    return np.log(p / (1 - p))


def test_a_model_of_a_few_dozen_characters_gets_no_huge_lc():
    characters = 40
    # The rule: when every answer is much shorter than the baseline's, the length feature is constant and the
    # slope stays at the prior's, so logit(LC) - logit(win rate) <= |prior slope| (here 1.9): LC stays in the
    # neighbourhood of the raw win rate instead of the near-100 an unconstrained slope allows.
    rng = np.random.default_rng(11)
    n = 400
    baseline = rng.integers(1200, 3000, n)
    model = rng.integers(characters // 2, characters * 3 // 2, n)
    difficulty = rng.normal(0, 1.4, n)
    p = 1 / (1 + np.exp(-(-3.2 + 0.9 * difficulty)))
    preferences = (rng.random(n) < p).astype(float)
    raw = win_rate(preferences, samples=50).value
    lc = length_controlled_win_rate(preferences, model, baseline, difficulty=difficulty, samples=10)
    bound = 100 / (1 + np.exp(-(_logit(raw / 100) + abs(LengthPrior().slope))))
    assert raw < lc.value <= bound + 1.0, (raw, lc.value, bound)
    assert lc.extra["coefficients"]["np.tanh(std_delta_len)"] == pytest.approx(LengthPrior().slope, abs=0.5)
    # without the prior rows (lambda 0) the slope is unconstrained and LC runs away: what the prior prevents
    free = fit_length_controlled(preferences, model, baseline, difficulty, regularize_to_baseline_lambda=0.0)
    assert free.value > bound + 10


def test_gamed_rows_replace_the_prior_and_tie_the_slope():
    rng = np.random.default_rng(12)
    n = 400
    difficulty = rng.normal(0, 1, n)
    std_delta = np.concatenate([rng.normal(1.0, 0.5, n), rng.normal(-1.0, 0.5, n)])  # concise and verbose versions
    gamed_p = 1 / (1 + np.exp(-(-1.2 * np.tanh(std_delta) + 0.5 * np.tile(difficulty, 2))))
    gamed = GamedRows(std_delta, np.tile(difficulty, 2), (rng.random(2 * n) < gamed_p).astype(float))
    baseline = rng.integers(1500, 2500, n)
    model = rng.integers(40, 80, n)  # the slope cannot come from the model's own rows
    preferences = (rng.random(n) < 0.05).astype(float)
    fit = fit_length_controlled(preferences, model, baseline, difficulty, gamed=gamed)
    assert fit.coefficients["np.tanh(std_delta_len)"] == pytest.approx(-1.2, abs=0.5)
    metric = length_controlled_win_rate(preferences, model, baseline, difficulty=difficulty, gamed=gamed, samples=20)
    assert metric.extra["regularisation"] == "df_gamed.csv"


def test_lc_standard_error_is_alpacaevals_sem_of_predictions():
    rng = np.random.default_rng(13)
    difficulty = rng.normal(0, 1, 300)
    preferences = (rng.random(300) < 1 / (1 + np.exp(-(difficulty - 0.5)))).astype(float)
    lengths = rng.integers(500, 1500, 300)
    fit = fit_length_controlled(preferences, lengths, lengths[::-1], difficulty)
    assert fit.standard_error == pytest.approx(100 * fit.predictions.std(ddof=1) / np.sqrt(300))
    assert fit.value == pytest.approx(100 * fit.predictions.mean())


def test_extreme_change_rule_is_alpacaevals():
    assert not is_extreme_change(20, 35) and is_extreme_change(20, 45) and is_extreme_change(50, 35)


def test_computing_an_lc_leaves_the_logging_level_alone():
    """alpaca_eval sets the root logger to INFO when imported; toaflow puts it back, so a `toa` run does not start
    printing every HTTP request of Prefect's client once the evaluation computes an LC. In a fresh interpreter:
    within this session alpaca_eval may already be imported."""
    import subprocess
    import sys

    from tests.fixtures.models import REPO_ROOT

    probe = ("import logging, numpy as np\n"
             "from evaluation.metrics.length_control import length_controlled_win_rate\n"
             "rng = np.random.default_rng(0)\n"
             "model, baseline = rng.integers(100, 900, 60), rng.integers(100, 900, 60)\n"
             "length_controlled_win_rate((rng.random(60) < 0.6).astype(float), model, baseline, samples=5)\n"
             "print(logging.getLevelName(logging.getLogger().level))\n")
    ran = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == "WARNING"
