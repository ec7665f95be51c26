"""The promotion gate: may a candidate run replace the current `latest` model?

A pure function over two score tables (no store, no Prefect), so the rule is easy to test and to explain.

Score tables map a metric name ("<benchmark>.<metric>", as the evaluation flow writes them) to
`{value, ci_low, ci_high, n, higher_is_better}`; [ci_low, ci_high] is the metric's confidence interval.

The rule, for every gated metric:
- the candidate regressed when the current model's value lies beyond the candidate's interval on the bad side,
  by more than `max_regression` (metric units): for a higher-is-better metric, `ci_high + max_regression <
  current.value`; for a lower-is-better one, `ci_low - max_regression > current.value`. A drop that the
  candidate's own uncertainty can explain is noise, not a regression.
- a gated metric the candidate lacks (or whose value is not a finite number) blocks: it cannot be checked.
- a gated metric the current model lacks (a new benchmark) cannot regress; it is reported as "no baseline".
- with no current model at all (the first run) the candidate is promoted.
The candidate is promoted only when no gated metric regressed or was missing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "improved", "regressed", "missing", "no_baseline"]


@dataclass(frozen=True)
class MetricScore:
    """One metric of one run: point estimate, confidence interval, sample count and direction."""
    value: float
    ci_low: float
    ci_high: float
    n: int
    higher_is_better: bool = True

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any]) -> "MetricScore":
        """Build from a scores.json entry; ValueError naming the metric and field on malformed input.

        A null `value` (the metric could not be computed) becomes NaN, which the gate treats as missing.
        A null interval (fewer than two items) becomes the point itself: no uncertainty to allow for.
        A percentile-bootstrap interval need not contain the point estimate, so the interval used is
        widened to include it.
        """
        if isinstance(raw, MetricScore):
            return raw
        if not isinstance(raw, Mapping):
            raise ValueError(f"metric '{name}': expected a mapping with value/ci_low/ci_high/n, got {type(raw).__name__}")
        if "value" not in raw:
            raise ValueError(f"metric '{name}': missing value")

        def number(key: str, default: float) -> float:
            value = raw.get(key)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"metric '{name}': {key} must be a number, got {value!r}")
            return float(value)

        value = number("value", math.nan)
        low, high = number("ci_low", value), number("ci_high", value)
        if math.isfinite(value):
            low, high = min(low, value), max(high, value)
        return cls(value=value, ci_low=low, ci_high=high, n=int(raw.get("n") or 0),
                   higher_is_better=bool(raw.get("higher_is_better", True)))


@dataclass(frozen=True)
class MetricCheck:
    """The gate's verdict on one gated metric, with the numbers behind it."""
    metric: str
    status: Status
    candidate: MetricScore | None
    current: MetricScore | None
    explanation: str

    @property
    def blocks(self) -> bool:
        return self.status in ("regressed", "missing")


@dataclass(frozen=True)
class GateDecision:
    """Whether to promote, why, and the per-metric checks (blocking ones first in `blocking`)."""
    promote: bool
    reason: str
    checks: list[MetricCheck] = field(default_factory=list)

    @property
    def blocking(self) -> list[MetricCheck]:
        return [check for check in self.checks if check.blocks]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the registry records)."""
        return {"promote": self.promote, "reason": self.reason,
                "blocking_metrics": [check.metric for check in self.blocking],
                "checks": [asdict(check) for check in self.checks]}


def _fmt(score: MetricScore) -> str:
    return f"{score.value:.4g} [{score.ci_low:.4g}, {score.ci_high:.4g}] (n={score.n})"


def _check(metric: str, candidate: MetricScore | None, current: MetricScore | None, max_regression: float) -> MetricCheck:
    if candidate is None or not math.isfinite(candidate.value):
        return MetricCheck(metric, "missing", candidate, current,
                           f"{metric}: the candidate has no usable score, so it cannot be checked")
    if current is None or not math.isfinite(current.value):
        return MetricCheck(metric, "no_baseline", candidate, current,
                           f"{metric}: {_fmt(candidate)}; the current model has no score to compare with")
    if candidate.higher_is_better != current.higher_is_better:
        raise ValueError(f"metric '{metric}': higher_is_better differs between the candidate and the current scores")
    if candidate.higher_is_better:
        regressed = candidate.ci_high + max_regression < current.value
        improved = candidate.ci_low > current.value
    else:
        regressed = candidate.ci_low - max_regression > current.value
        improved = candidate.ci_high < current.value
    comparison = f"{metric}: candidate {_fmt(candidate)} vs current {_fmt(current)}"
    if regressed:
        side = "above" if candidate.higher_is_better else "below"
        slack = f" + allowed {max_regression:g}" if max_regression else ""
        return MetricCheck(metric, "regressed", candidate, current,
                           f"{comparison}: current value is {side} the candidate's interval{slack}")
    return MetricCheck(metric, "improved" if improved else "ok", candidate, current,
                       f"{comparison}: {'improved' if improved else 'within the interval'}")


def decide_promotion(candidate: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]] | None,
                     gated: Sequence[str], max_regression: float = 0.0) -> GateDecision:
    """Decide whether `candidate` (scores of the new run) may replace `current` (scores of `latest`, or None).

    `gated` names the metrics that can block promotion; other metrics are ignored. With an empty `gated`
    list nothing can block (every run that finished evaluation is promoted); say so in the config if intended.
    """
    if max_regression < 0:
        raise ValueError(f"max_regression must be >= 0, got {max_regression}")
    if current is None:
        return GateDecision(True, "first run: there is no current model to compare with")
    candidate_scores = {name: MetricScore.parse(name, raw) for name, raw in candidate.items()}
    current_scores = {name: MetricScore.parse(name, raw) for name, raw in current.items()}
    checks = [_check(metric, candidate_scores.get(metric), current_scores.get(metric), max_regression)
              for metric in dict.fromkeys(gated)]  # keep order, drop repeats
    blocking = [check for check in checks if check.blocks]
    if blocking:
        reason = "blocked by " + "; ".join(check.explanation for check in blocking)
        return GateDecision(False, reason, checks)
    if not checks:
        return GateDecision(True, "no gated metrics configured (evaluation.gate.metrics is empty)", checks)
    return GateDecision(True, "no gated metric regressed: " + "; ".join(check.explanation for check in checks), checks)
