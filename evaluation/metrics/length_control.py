"""AlpacaEval 2's length-controlled (LC) win rate, computed the way AlpacaEval computes it.

Per model, AlpacaEval fits the GLM `length_controlled_v1`

    preference ~ tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline - 1

where `preference` is the probability that the model beats the baseline on an instruction, `std_delta_len` is
(baseline length - model length) in characters divided by its standard deviation over the model's items, and
`instruction_difficulty` is a per-instruction number shared by every model. The model rows have
`not_gamed_baseline = 1` (that coefficient is the model's own strength); the fit also sees the rows of two "gamed"
versions of the baseline (its own outputs made verbose / concise, `df_gamed.csv`) with `not_gamed_baseline = 0`
and a sample weight of `regularize_to_baseline_lambda / 2` = 0.1 each. Those rows tie down the length slope when
the model's own data cannot (a model whose answers are all much shorter than the baseline's has a length feature
that barely varies, so the slope and the strength could trade off freely). The fit is AlpacaEval's own
`fit_LogisticRegressionCV` (L1, liblinear, no intercept, 5-fold grouped cross-validation over C, soft labels).
LC = 100 * mean of the predictions with `std_delta_len = 0`; `lc_standard_error` = 100 * their standard error
of the mean, exactly as AlpacaEval reports it.

Without `df_gamed.csv` (it lives only on the HF Hub) toaflow substitutes *length-prior rows*: for every item,
two rows of a same-model comparison at tanh(std_delta_len) = +-tanh(1), whose preference is what a gamed
baseline with slope `prior.slope` and difficulty weight `prior.difficulty_coef` would show, with the same
weight 0.1 as the gamed rows. They pull the slope towards the prior exactly where the model's data are silent.
The rule that follows (tested): when the length feature is (nearly) constant, logit(LC) - logit(win rate) is
about |prior.slope| * |tanh| <= |prior.slope|, so a model with answers of a few dozen characters gets at most
the uplift a typical model of the leaderboard gets from its length, never an LC far above its raw win rate.
See docs/evaluation.md for where the prior's two numbers come from and what they cost against the leaderboard.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from evaluation.metrics.stats import Metric, bootstrap_ci

# Column names as AlpacaEval's patsy formula names them, so coefficients read like its weights files.
LENGTH = "np.tanh(std_delta_len)"
DIFFICULTY = "instruction_difficulty"
NOT_GAMED = "not_gamed_baseline.astype(float)"
FEATURES = (LENGTH, DIFFICULTY, NOT_GAMED)
REGULARIZE_TO_BASELINE_LAMBDA = 0.2  # AlpacaEval's length_controlled_v1: weight of the gamed rows (split over 2)
N_SPLITS = 5


@dataclass(frozen=True)
class LengthPrior:
    """The stand-in for the gamed-baseline rows when df_gamed.csv is not available.

    `slope`: coefficient of tanh(std_delta_len) (negative: longer than the baseline helps, as in AlpacaEval's
    sign convention); default -1.9 = the median slope AlpacaEval's own fits give the 40 leaderboard models of
    the shared calibration set (its package's weights file). `difficulty_coef`: 0.76 = the mean difficulty
    weight of AlpacaEval's fits of its two gamed baselines (same file)."""
    slope: float = -1.9
    difficulty_coef: float = 0.76
    feature: float = float(np.tanh(1.0))


@dataclass
class GamedRows:
    """The gamed-baseline rows (AlpacaEval's df_gamed.csv): length feature, difficulty and preference in [0, 1]."""
    std_delta_len: np.ndarray
    difficulty: np.ndarray
    preference: np.ndarray
    source: str = "df_gamed.csv"


def fit_alpaca_eval_glm(frame, *, n_splits: int, C: float | None, sample_weight=None):
    """AlpacaEval's soft-label logistic fit of `frame["preference"]` on the other columns (its own function).

    Importing alpaca_eval sets the root logger to INFO (alpaca_eval/annotators/base.py), which would print every
    HTTP request of Prefect's client in a `toa` run: the level is put back. Its `pkg_resources` warning and newer
    scikit-learn's deprecation of `penalty=` (the fit is unchanged) are muted.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = logging.getLogger()
        level = root.level
        try:
            from alpaca_eval.metrics.glm_winrate import fit_LogisticRegressionCV
        finally:
            root.setLevel(level)
        kwargs = {"C": C} if C is not None else {}
        return fit_LogisticRegressionCV(frame, "preference", is_ytrue_proba=True, n_splits=n_splits,
                                        sample_weight=sample_weight, **kwargs)


def _design(preference: np.ndarray, std_delta: np.ndarray, difficulty: np.ndarray,
            gamed: GamedRows | None, prior: LengthPrior, lam: float):
    """The training rows (model rows first) and their sample weights."""
    import pandas as pd

    use_prior = gamed is None and lam > 0
    if use_prior:
        # Centred, so that the prior's same-model comparison at equal length on an average instruction is a coin
        # flip; the model rows absorb the shift in their own coefficient.
        difficulty = difficulty - difficulty.mean()
    frames = [pd.DataFrame({LENGTH: np.tanh(std_delta), DIFFICULTY: difficulty, NOT_GAMED: np.ones_like(std_delta),
                            "preference": preference})]
    weights = [np.ones_like(std_delta)]
    if gamed is not None:
        frames.append(pd.DataFrame({LENGTH: np.tanh(gamed.std_delta_len), DIFFICULTY: gamed.difficulty,
                                    NOT_GAMED: np.zeros(len(gamed.preference)), "preference": gamed.preference}))
        weights.append(np.full(len(gamed.preference), lam / 2))
    elif use_prior:
        for sign in (-1.0, 1.0):
            x = np.full_like(std_delta, sign * prior.feature)
            target = 1.0 / (1.0 + np.exp(-(prior.slope * x + prior.difficulty_coef * difficulty)))
            frames.append(pd.DataFrame({LENGTH: x, DIFFICULTY: difficulty, NOT_GAMED: np.zeros_like(x),
                                        "preference": target}))
            weights.append(np.full_like(x, lam / 2))
    return pd.concat(frames, ignore_index=True), np.concatenate(weights)


def standardized_length_difference(model_lengths: np.ndarray, baseline_lengths: np.ndarray) -> np.ndarray:
    """AlpacaEval's std_delta_len: (baseline - model) characters over their standard deviation (ddof 1)."""
    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    sd = delta.std(ddof=1) if delta.size > 1 else 0.0
    return delta / sd if sd > 0 else np.zeros_like(delta)


@dataclass
class LCFit:
    """One fit: LC (%), AlpacaEval's standard error (%), coefficients, chosen C, per-item predictions."""
    value: float
    standard_error: float
    coefficients: dict[str, float]
    C: float
    predictions: np.ndarray


def fit_length_controlled(preference: Sequence[float], model_lengths: Sequence[float],
                          baseline_lengths: Sequence[float], difficulty: Sequence[float] | None = None, *,
                          gamed: GamedRows | None = None, prior: LengthPrior = LengthPrior(),
                          regularize_to_baseline_lambda: float = REGULARIZE_TO_BASELINE_LAMBDA,
                          C: float | None = None) -> LCFit:
    """Fit the GLM for one model and predict at equal length. `C` fixed skips the cross-validation."""
    preference = np.clip(np.asarray(preference, dtype=float), 0.0, 1.0)
    std_delta = standardized_length_difference(np.asarray(model_lengths), np.asarray(baseline_lengths))
    diff = np.zeros_like(std_delta) if difficulty is None else np.asarray(difficulty, dtype=float)
    frame, weights = _design(preference, std_delta, diff, gamed, prior, regularize_to_baseline_lambda)
    n_splits = 0 if C is not None else min(N_SPLITS, len(frame))
    model = fit_alpaca_eval_glm(frame, n_splits=n_splits, C=C, sample_weight=weights)
    test = frame.iloc[:len(preference)][list(FEATURES)].copy()
    test[LENGTH] = 0.0
    predictions = model.predict_proba(test)[:, 1]
    chosen = float(np.ravel(model.C_)[0]) if hasattr(model, "C_") else float(C)
    sem = float(np.std(predictions, ddof=1) / np.sqrt(predictions.size)) if predictions.size > 1 else 0.0
    return LCFit(float(predictions.mean() * 100.0), sem * 100.0,
                 dict(zip(FEATURES, (float(c) for c in model.coef_[0]))), chosen, predictions)


def is_extreme_change(win_rate: float, lc: float, abs_diff: float = 10.0, rel_diff: float = 4.0) -> bool:
    """AlpacaEval's warning rule: LC moved by more than max(abs_diff, a quarter of the room) from the win rate."""
    too_small = lc < min(win_rate - win_rate / rel_diff, win_rate - abs_diff)
    too_large = lc > max(win_rate + (100 - win_rate) / rel_diff, win_rate + abs_diff)
    return bool(too_small or too_large)


def length_controlled_win_rate(preferences: Sequence[float], model_lengths: Sequence[int],
                               baseline_lengths: Sequence[int], *, difficulty: Sequence[float] | None = None,
                               gamed: GamedRows | None = None, prior: LengthPrior = LengthPrior(),
                               difficulty_source: str | None = None, n_failed: int = 0, samples: int = 200,
                               seed: int = 0) -> Metric:
    """LC win rate (%) as AlpacaEval computes it, with its `lc_standard_error` in `extra` and a seeded bootstrap
    95% interval (items resampled, GLM refitted at the C that cross-validation chose on all items)."""
    sizes = {len(preferences), len(model_lengths), len(baseline_lengths)} | (
        {len(difficulty)} if difficulty is not None else set())
    if len(sizes) != 1:
        raise ValueError("preferences, lengths and difficulty must be aligned (one value per item)")
    preference = np.clip(np.asarray(preferences, dtype=float), 0.0, 1.0)
    if preference.size < 2:
        return Metric(None, None, int(preference.size), n_failed, "%",
                      note="length-controlled win rate needs at least two judged items")
    model = np.asarray(model_lengths, dtype=float)
    baseline = np.asarray(baseline_lengths, dtype=float)
    diff = None if difficulty is None else np.asarray(difficulty, dtype=float)
    fit = fit_length_controlled(preference, model, baseline, diff, gamed=gamed, prior=prior)

    def resampled(idx: np.ndarray) -> float:
        return fit_length_controlled(preference[idx], model[idx], baseline[idx],
                                     None if diff is None else diff[idx], gamed=gamed, prior=prior, C=fit.C).value

    ci = bootstrap_ci(resampled, preference.size, samples=samples, seed=seed)
    raw = float(preference.mean() * 100.0)
    extra = {"lc_standard_error": fit.standard_error, "coefficients": fit.coefficients, "C": fit.C,
             "regularisation": gamed.source if gamed is not None else
             f"length prior (slope {prior.slope:g}, difficulty weight {prior.difficulty_coef:g})",
             "difficulty": difficulty_source or ("none" if diff is None else "given"),
             "extreme_change": is_extreme_change(raw, fit.value)}
    return Metric(fit.value, ci, int(preference.size), n_failed, "%",
                  note="AlpacaEval 2 length_controlled_v1 GLM, predicted at equal length", extra=extra)
