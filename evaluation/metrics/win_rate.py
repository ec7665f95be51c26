"""Win rate against a baseline.

A *preference* is the probability that the model's output beats the baseline's on one instruction: 1 win,
0 loss, 0.5 tie, or anything between (a judge's logprob-weighted verdict, the mean of two swapped games).
A failed or empty generation is a loss (preference 0), counted in `n_failed`. The length-controlled win rate
lives in evaluation/metrics/length_control.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from evaluation.metrics.stats import Metric, mean_metric


def win_rate(preferences: Sequence[float], *, n_failed: int = 0, n_excluded: int = 0, samples: int = 1000,
             seed: int = 0) -> Metric:
    """100 * mean preference, with wins / ties / losses counted (a tie is a preference of exactly 0.5)."""
    metric = mean_metric(preferences, scale=100.0, unit="%", n_failed=n_failed, samples=samples, seed=seed)
    metric.n_excluded = n_excluded
    array = np.asarray(preferences, dtype=float)
    metric.extra = {"wins": int((array > 0.5).sum()), "ties": int((array == 0.5).sum()), "losses": int((array < 0.5).sum())}
    return metric
