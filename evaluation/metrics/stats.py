"""A metric value with its sample size and a seeded percentile-bootstrap 95% interval."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass
class Metric:
    """One number in scores.json: `value` with its interval (`ci_level`, 95% unless the field's tool says
    otherwise), computed from `n` items. `n_failed` of those `n` are failed or empty generations, scored as a
    loss / wrong / empty hypothesis; `n_excluded` items are left out because the judge could not score them.

    The interval is None when it cannot be estimated (fewer than two items)."""
    value: float | None
    ci95: tuple[float, float] | None
    n: int
    n_failed: int = 0
    unit: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)
    n_excluded: int = 0
    ci_level: float = 0.95

    higher_is_better: bool = True
    # True when the failed items are inside `n_excluded` rather than `n` (rm_mean_reward): the gate counts them once.
    failed_in_excluded: bool = False

    def to_dict(self) -> dict:
        """The scores.json entry; `ci_low`/`ci_high` are the interval (the promotion gate reads them)."""
        data = asdict(self)
        ci = data.pop("ci95")
        data["ci_low"], data["ci_high"] = (float(ci[0]), float(ci[1])) if ci is not None else (None, None)
        if not data["extra"]:
            data.pop("extra")
        if not data["note"]:
            data.pop("note")
        if not data["failed_in_excluded"]:
            data.pop("failed_in_excluded")
        return data


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, *, samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of `statistic(indices)` over `samples` resamples of range(n) with replacement.

    The statistic receives an index array so one resample can index several aligned arrays (preference and
    lengths, hypotheses and references). Resamples whose statistic is not finite are dropped."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        value = statistic(rng.integers(0, n, size=n))
        if value is not None and math.isfinite(value):
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_metric(values: Sequence[float], *, scale: float = 1.0, unit: str = "", n_failed: int = 0,
                samples: int = 1000, seed: int = 0) -> Metric:
    """The mean of `values` (times `scale`) with a bootstrap interval; None when there is nothing to average."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return Metric(None, None, 0, n_failed, unit)
    ci = bootstrap_ci(lambda idx: float(array[idx].mean() * scale), array.size, samples=samples, seed=seed)
    return Metric(float(array.mean() * scale), ci, int(array.size), n_failed, unit)
