"""The promotion gate: may a candidate run replace the current `latest` model?

A pure function over two score tables (no store, no Prefect), so the rule is easy to test and to explain.

Score tables map a metric name ("<benchmark>.<metric>", as the evaluation flow writes them) to
`{value, ci_low, ci_high, n, n_failed, n_excluded, higher_is_better}`; [ci_low, ci_high] is the metric's confidence
interval, `n_excluded` the items the judge could not score.

The gate fails closed: anything it cannot check blocks. For every gated metric (each finding goes into the
record, with both intervals):
- no gated metric at all blocks: promotion with nothing to check would promote anything that finished.
- a gated metric the candidate lacks, or whose value or interval is not a finite number (NaN, inf), blocks:
  it cannot be checked, and a NaN interval could never "regress".
- too few scored items: fewer than `min_scored_items` items with a real judged answer blocks (3 items of 800
  say nothing about the model).
- failures: when more than `max_failure_rate` of the metric's items are failed or empty generations OR items
  the judge could not score (n_failed + n_excluded, of n + n_excluded), the candidate is blocked, whatever its
  score: a model must not win on the few items that could be scored. `max_failure_rate=None` allows none
  (rate 0): an unset allowance allows nothing, it never switches the check off.
- against the current `latest` model: the candidate regressed when the current model's value lies beyond the
  candidate's interval on the bad side, by more than `max_regression` (metric units): for a higher-is-better
  metric, `ci_high + max_regression < current.value`; for a lower-is-better one, `ci_low - max_regression >
  current.value`. A drop that the candidate's own uncertainty can explain is noise, not a regression.
  The current scores are the ones recorded in the registry when `latest` was promoted (infra.registry), never a
  scores.json another run could rewrite. A gated metric the current model lacks (a new benchmark) cannot
  regress; it is reported as "no baseline".
- against the base model it was trained from (scored in the same pipeline run, when given): a candidate whose
  value is worse than the base model's by more than `max_regression` is blocked. This bar is the point, not
  the interval: training that leaves the model worse than where it started is never promoted, however noisy.
It is the same rule on the first run (no `latest`, no base-model score): every check that has something to
check still runs. The candidate is promoted only when no gated metric blocks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "improved", "regressed", "missing", "not_finite", "too_few_scored", "no_baseline",
                 "too_many_failures", "worse_than_base", "no_gated_metrics"]
BLOCKING: tuple[str, ...] = ("no_gated_metrics", "missing", "not_finite", "too_many_failures", "too_few_scored",
                             "regressed", "worse_than_base")
DEFAULT_MIN_SCORED_ITEMS = 30  # below this a 95% interval is too wide to tell a regression from noise
DEFAULT_MAX_FAILURE_RATE = 0.05  # the config's default (evaluation.gate.max_failure_rate)


@dataclass(frozen=True)
class MetricScore:
    """One metric of one run: point estimate, confidence interval, sample count and direction.

    `n_failed` failed or empty generations are inside `n` as losses, except for metrics marked
    `failed_in_excluded` (rm_mean_reward: a failed item has no reward), where they are inside `n_excluded`."""
    value: float
    ci_low: float
    ci_high: float
    n: int
    higher_is_better: bool = True
    n_failed: int = 0
    n_excluded: int = 0
    failed_in_excluded: bool = False

    @property
    def total(self) -> int:
        """Every item of the metric, scored or not."""
        return self.n + self.n_excluded

    @property
    def unusable(self) -> int:
        """Items that did not yield a judged answer: failed or empty generations plus items the judge could not
        score (each item counted once)."""
        return min(self.total, self.n_excluded + (0 if self.failed_in_excluded else self.n_failed))

    @property
    def scored(self) -> int:
        """Items with a real answer the judge scored."""
        return max(0, self.total - self.unusable)

    @property
    def failure_rate(self) -> float:
        """Share of the metric's items that were failed, empty or not scored by the judge (they count against
        the candidate). An empty metric is all failure."""
        return self.unusable / self.total if self.total else 1.0

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.ci_low, self.ci_high))

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any]) -> "MetricScore":
        """Build from a scores.json entry; ValueError naming the metric and field on malformed input.

        A null `value` (the metric could not be computed) becomes NaN, which the gate treats as missing.
        A null interval (fewer than two items) becomes the point itself: no uncertainty to allow for.
        A percentile-bootstrap interval need not contain the point estimate, so the interval used is
        widened to include it. A non-finite interval is kept as it is (the gate blocks on it).
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

        def count(key: str) -> int:
            value = raw.get(key)
            if value is None:
                return 0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or value != int(value):
                raise ValueError(f"metric '{name}': {key} must be a whole number >= 0, got {value!r}")
            return int(value)

        value = number("value", math.nan)
        low, high = number("ci_low", value), number("ci_high", value)
        if math.isfinite(value) and math.isfinite(low) and math.isfinite(high):
            low, high = min(low, value), max(high, value)
        return cls(value=value, ci_low=low, ci_high=high, n=count("n"),
                   higher_is_better=bool(raw.get("higher_is_better", True)), n_failed=count("n_failed"),
                   n_excluded=count("n_excluded"), failed_in_excluded=bool(raw.get("failed_in_excluded", False)))


@dataclass(frozen=True)
class MetricCheck:
    """The gate's verdict on one gated metric, with the numbers behind it."""
    metric: str
    status: Status
    candidate: MetricScore | None
    current: MetricScore | None
    explanation: str
    base: MetricScore | None = None

    @property
    def blocks(self) -> bool:
        return self.status in BLOCKING


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


def _worse(candidate: MetricScore, reference: float, slack: float) -> bool:
    return candidate.value + slack < reference if candidate.higher_is_better else candidate.value - slack > reference


def _failures(score: MetricScore) -> str:
    """'(12 of 40 items failed or empty)', naming the items the judge could not score when there are any."""
    what = "failed or empty" if not score.n_excluded else "failed, empty or not scored by the judge"
    return f"({score.unusable} of {score.total} items {what})"


def _check(metric: str, candidate: MetricScore | None, current: MetricScore | None, base: MetricScore | None,
           max_regression: float, max_failure_rate: float | None, min_scored_items: int) -> MetricCheck:
    if candidate is None or not math.isfinite(candidate.value):
        why = f" {_failures(candidate)}" if candidate is not None and candidate.unusable else ""
        return MetricCheck(metric, "missing", candidate, current,
                           f"{metric}: the candidate has no usable score{why}, so it cannot be checked", base)
    if not candidate.finite:
        return MetricCheck(metric, "not_finite", candidate, current,
                           f"{metric}: the candidate's value or interval is not finite ({candidate.value!r} "
                           f"[{candidate.ci_low!r}, {candidate.ci_high!r}]), so it cannot be checked", base)
    for other in (current, base):
        if other is not None and other.finite and candidate.higher_is_better != other.higher_is_better:
            raise ValueError(f"metric '{metric}': higher_is_better differs between the candidate and the scores it is "
                             f"compared with")
    findings: list[tuple[Status, str]] = []
    allowed = 0.0 if max_failure_rate is None else max_failure_rate
    if candidate.failure_rate > allowed:
        findings.append(("too_many_failures",
                         f"failure rate {candidate.failure_rate:.0%} {_failures(candidate)} is above the allowed "
                         f"{allowed:.0%}"))
    if candidate.scored < min_scored_items:
        findings.append(("too_few_scored", f"only {candidate.scored} scored item(s) of {candidate.total}, fewer than "
                                           f"the {min_scored_items} required (evaluation.gate.min_scored_items)"))
    slack = f" + allowed {max_regression:g}" if max_regression else ""
    if current is not None and current.finite:
        if candidate.higher_is_better:
            regressed, improved = candidate.ci_high + max_regression < current.value, candidate.ci_low > current.value
        else:
            regressed, improved = candidate.ci_low - max_regression > current.value, candidate.ci_high < current.value
        side = "above" if candidate.higher_is_better else "below"
        findings.append(("regressed", f"current model {_fmt(current)} is {side} the candidate's interval{slack}")
                        if regressed else
                        ("improved" if improved else "ok",
                         f"current model {_fmt(current)}: {'improved' if improved else 'within the interval'}"))
    else:
        findings.append(("no_baseline", "no current model score to compare with"))
    if base is not None and base.finite:
        if _worse(candidate, base.value, max_regression):
            findings.append(("worse_than_base", f"worse than the base model it was trained from, {_fmt(base)}{slack}"))
        else:
            findings.append(("ok", f"base model {_fmt(base)}: not worse"))
    status = next((s for s in BLOCKING if any(f[0] == s for f in findings)), findings[0][0] if findings else "ok")
    if status not in BLOCKING:
        status = "improved" if any(f[0] == "improved" for f in findings) else (
            "no_baseline" if base is None and any(f[0] == "no_baseline" for f in findings) else "ok")
    explanation = f"{metric}: candidate {_fmt(candidate)}; " + "; ".join(text for _, text in findings)
    return MetricCheck(metric, status, candidate, current, explanation, base)


def decide_promotion(candidate: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]] | None,
                     gated: Sequence[str], max_regression: float = 0.0, *,
                     base: Mapping[str, Mapping[str, Any]] | None = None,
                     max_failure_rate: float | None = DEFAULT_MAX_FAILURE_RATE,
                     min_scored_items: int = DEFAULT_MIN_SCORED_ITEMS) -> GateDecision:
    """Decide whether `candidate` (scores of the new run) may replace `current` (the scores recorded for
    `latest`, or None).

    `base`: scores of the base model the candidate was trained from (None: not evaluated). `max_failure_rate`:
    the largest share of failed, empty or unscored items a gated metric may have (None: none allowed).
    `min_scored_items`: the fewest items with a judged answer a gated metric needs. `gated` names the metrics
    that can block promotion; other metrics are ignored. An empty `gated` list blocks: nothing could be checked.
    """
    if max_regression < 0:
        raise ValueError(f"max_regression must be >= 0, got {max_regression}")
    if min_scored_items < 1:
        raise ValueError(f"min_scored_items must be >= 1, got {min_scored_items}")
    if not gated:
        return GateDecision(False, "no gated metric configured (evaluation.gate.metrics is empty): the gate has "
                                   "nothing to check, so it does not promote; name at least one metric or run "
                                   "with promote=false", [])
    parse = lambda table: {name: MetricScore.parse(name, raw) for name, raw in (table or {}).items()}  # noqa: E731
    candidate_scores, current_scores, base_scores = parse(candidate), parse(current), parse(base)
    checks = [_check(metric, candidate_scores.get(metric), current_scores.get(metric) if current is not None else None,
                     base_scores.get(metric), max_regression, max_failure_rate, min_scored_items)
              for metric in dict.fromkeys(gated)]  # keep order, drop repeats
    blocking = [check for check in checks if check.blocks]
    if blocking:
        reason = "blocked by " + "; ".join(check.explanation for check in blocking)
        return GateDecision(False, reason, checks)
    against = "compared with the current model" if current is not None else \
        "first run, compared with the base model" if base else "first run"
    return GateDecision(True, f"{against}: no gated metric blocks: " + "; ".join(c.explanation for c in checks), checks)


def report_markdown(run_id: str, decision: GateDecision, compared_with: str | None,
                    candidate: Mapping[str, Mapping[str, Any]] | None = None, gated: Sequence[str] = ()) -> str:
    """The promotion report people read (runs/<id>/reports/promotion.md and the `promotion` artifact).

    It says what the decision really rested on: the run `latest` points at is named as compared-with only for
    the gated metrics it has a score for, the base model likewise; columns appear only for the runs compared.
    """
    verdict = "PROMOTED" if decision.promote else "NOT PROMOTED"
    checks = decision.checks
    with_current = [c for c in checks if c.current is not None and c.current.finite]
    with_base = [c for c in checks if c.base is not None and c.base.finite]
    compared = []
    if compared_with is None:
        compared.append("no model is `latest` yet")
    elif not checks:
        compared.append(f"`{compared_with}` (the current `latest`) on no metric: evaluation.gate.metrics is empty")
    elif not with_current:
        compared.append(f"not `{compared_with}` (the current `latest`): it has no score for any gated metric")
    else:
        compared.append(f"`{compared_with}` (the current `latest`) on {len(with_current)} of {len(checks)} gated "
                        "metric(s)")
    if with_base:
        compared.append(f"the base model on {len(with_base)} of {len(checks)} gated metric(s)")
    if not with_current and not with_base:
        compared.append("nothing was compared" + (", so nothing could regress" if checks else ""))
    lines = [f"# Promotion gate, run `{run_id}`: {verdict}", "", "Compared with: " + "; ".join(compared), "",
             f"Reason: {decision.reason}", ""]
    if checks:
        columns = [("this run", lambda c: _cell(c.candidate))]
        if with_current:
            columns.append(("current latest", lambda c: _cell(c.current)))
        if with_base:
            columns.append(("base model", lambda c: _cell(c.base)))
        if any(c.candidate is not None and c.candidate.unusable for c in checks):
            columns.append(("failed or unscored", lambda c: f"{c.candidate.unusable}/{c.candidate.total}"
                            if c.candidate is not None else "-"))
        lines += ["| metric | status | " + " | ".join(title for title, _ in columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        lines += [f"| {c.metric} | {c.status} | " + " | ".join(cell(c) for _, cell in columns) + " |" for c in checks]
    elif gated and candidate is not None:
        lines += ["| gated metric | this run |", "|---|---|"]
        for metric in dict.fromkeys(gated):
            raw = candidate.get(metric)
            lines.append(f"| {metric} | {_cell(MetricScore.parse(metric, raw)) if raw is not None else '-'} |")
    return "\n".join(lines) + "\n"


def _cell(score: MetricScore | None) -> str:
    if score is None or not math.isfinite(score.value):
        return "-"
    return f"{score.value:.4g} [{score.ci_low:.4g}, {score.ci_high:.4g}] n={score.n}"
