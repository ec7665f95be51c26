"""Win rate against a baseline, and the length-controlled win rate of AlpacaEval 2.

A *preference* is the probability that the model's output beats the baseline's on one instruction: 1 win,
0 loss, 0.5 tie, or anything between (a judge's logprob-weighted verdict, the mean of two swapped games).

Length control (Dubois et al. 2024, AlpacaEval's `length_controlled_v1`), as implemented here:
    logit P(model beats baseline on i) = theta + phi * tanh(delta_i / sd(delta)) [+ gamma * difficulty_i]
with delta_i = len(model output) - len(baseline output) in characters (not centred: zero means equal length),
fitted by logistic regression on the (soft) preferences. The LC win rate is the mean prediction with the length
term set to zero: 100 * mean_i sigmoid(theta + gamma * difficulty_i). Differences from the published code are
listed in docs/evaluation.md (no cross-validation; one model at a time; the difficulty term only when the items
carry an `instruction_difficulty`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from evaluation.metrics.logistic import fit_logistic, sigmoid
from evaluation.metrics.stats import Metric, bootstrap_ci, mean_metric

LENGTH_L2 = 0.2  # ridge on the length and difficulty coefficients, as in AlpacaEval's regularisation strength


def win_rate(preferences: Sequence[float], *, n_failed: int = 0, samples: int = 1000, seed: int = 0) -> Metric:
    """100 * mean preference, with wins / ties / losses counted (a tie is a preference of exactly 0.5)."""
    metric = mean_metric(preferences, scale=100.0, unit="%", n_failed=n_failed, samples=samples, seed=seed)
    array = np.asarray(preferences, dtype=float)
    metric.extra = {"wins": int((array > 0.5).sum()), "ties": int((array == 0.5).sum()), "losses": int((array < 0.5).sum())}
    return metric


def _lc_fit(preference: np.ndarray, delta: np.ndarray, difficulty: np.ndarray | None) -> float:
    sd = delta.std(ddof=1) if delta.size > 1 else 0.0
    length_term = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    columns = [np.ones_like(delta), length_term]
    if difficulty is not None:
        columns.append(difficulty)
    X = np.column_stack(columns)
    penalize = np.array([False] + [True] * (X.shape[1] - 1))
    coef = fit_logistic(X, preference, l2=LENGTH_L2, penalize=penalize)
    at_equal_length = coef[0] + (coef[2] * difficulty if difficulty is not None else 0.0)
    return float(np.mean(sigmoid(np.broadcast_to(at_equal_length, delta.shape))) * 100.0)


def length_controlled_win_rate(preferences: Sequence[float], model_lengths: Sequence[int],
                               baseline_lengths: Sequence[int], *, difficulty: Sequence[float] | None = None,
                               n_failed: int = 0, samples: int = 1000, seed: int = 0) -> Metric:
    """AlpacaEval-2-style LC win rate (%) with a bootstrap 95% interval (items resampled, model refitted)."""
    sizes = {len(preferences), len(model_lengths), len(baseline_lengths)} | ({len(difficulty)} if difficulty is not None else set())
    if len(sizes) != 1:
        raise ValueError("preferences, lengths and difficulty must be aligned (one value per item)")
    preference = np.clip(np.asarray(preferences, dtype=float), 0.0, 1.0)
    delta = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    if preference.size == 0:
        return Metric(None, None, 0, n_failed, "%")
    difficulty_array = None if difficulty is None else np.asarray(difficulty, dtype=float)
    value = _lc_fit(preference, delta, difficulty_array)

    def resampled(idx: np.ndarray) -> float:
        return _lc_fit(preference[idx], delta[idx], None if difficulty_array is None else difficulty_array[idx])

    ci = bootstrap_ci(resampled, preference.size, samples=samples, seed=seed)
    return Metric(value, ci, int(preference.size), n_failed, "%",
                  note="logistic GLM on tanh(standardised length difference), predicted at equal length")
