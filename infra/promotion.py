"""The promotion gate: may a candidate run replace the current `latest` model?

A pure function over two score tables (no store, no Prefect), so the rule is easy to test and to explain.

Score tables map a metric name ("<benchmark>.<metric>", as the evaluation flow writes them) to
`{value, ci_low, ci_high, n, higher_is_better}`; [ci_low, ci_high] is the metric's confidence interval.

The rule, for every gated metric (each finding goes into the record, with both intervals):
- a gated metric the candidate lacks (or whose value is not a finite number) blocks: it cannot be checked.
- failures: when more than `max_failure_rate` of the metric's items are failed or empty generations
  (n_failed / (n + n_excluded)), the candidate is blocked, whatever its score: a model that fails a third of
  the items must not win on the rest.
- against the current `latest` model: the candidate regressed when the current model's value lies beyond the
  candidate's interval on the bad side, by more than `max_regression` (metric units): for a higher-is-better
  metric, `ci_high + max_regression < current.value`; for a lower-is-better one, `ci_low - max_regression >
  current.value`. A drop that the candidate's own uncertainty can explain is noise, not a regression.
  A gated metric the current model lacks (a new benchmark) cannot regress; it is reported as "no baseline".
- against the base model it was trained from (scored in the same pipeline run, when given): a candidate whose
  value is worse than the base model's by more than `max_regression` is blocked. This bar is the point, not
  the interval: training that leaves the model worse than where it started is never promoted, however noisy.
  It applies on the first run too, when there is no current model to compare with.
The candidate is promoted only when no gated metric blocks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "improved", "regressed", "missing", "no_baseline", "too_many_failures", "worse_than_base"]
BLOCKING: tuple[str, ...] = ("missing", "too_many_failures", "regressed", "worse_than_base")


@dataclass(frozen=True)
class MetricScore:
    """One metric of one run: point estimate, confidence interval, sample count and direction."""
    value: float
    ci_low: float
    ci_high: float
    n: int
    higher_is_better: bool = True
    n_failed: int = 0
    n_excluded: int = 0

    @property
    def failure_rate(self) -> float:
        """Share of the metric's items whose generation failed (they are inside `n` as losses)."""
        total = self.n + self.n_excluded
        return self.n_failed / total if total else 0.0

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
                   higher_is_better=bool(raw.get("higher_is_better", True)), n_failed=int(raw.get("n_failed") or 0),
                   n_excluded=int(raw.get("n_excluded") or 0))


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


def _check(metric: str, candidate: MetricScore | None, current: MetricScore | None, base: MetricScore | None,
           max_regression: float, max_failure_rate: float | None) -> MetricCheck:
    if candidate is None or not math.isfinite(candidate.value):
        why = (f" ({candidate.n_failed} of {candidate.n + candidate.n_excluded} items failed or empty)"
               if candidate is not None and candidate.n_failed else "")
        return MetricCheck(metric, "missing", candidate, current,
                           f"{metric}: the candidate has no usable score{why}, so it cannot be checked", base)
    for other in (current, base):
        if other is not None and math.isfinite(other.value) and candidate.higher_is_better != other.higher_is_better:
            raise ValueError(f"metric '{metric}': higher_is_better differs between the candidate and the scores it is "
                             f"compared with")
    findings: list[tuple[Status, str]] = []
    if max_failure_rate is not None and candidate.failure_rate > max_failure_rate:
        findings.append(("too_many_failures",
                         f"failure rate {candidate.failure_rate:.0%} ({candidate.n_failed} of "
                         f"{candidate.n + candidate.n_excluded} items failed or empty) is above the allowed "
                         f"{max_failure_rate:.0%}"))
    slack = f" + allowed {max_regression:g}" if max_regression else ""
    if current is not None and math.isfinite(current.value):
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
    if base is not None and math.isfinite(base.value):
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
                     max_failure_rate: float | None = None) -> GateDecision:
    """Decide whether `candidate` (scores of the new run) may replace `current` (scores of `latest`, or None).

    `base`: scores of the base model the candidate was trained from (None: not evaluated). `max_failure_rate`:
    the largest share of failed generations a gated metric may have (None: not checked). `gated` names the
    metrics that can block promotion; other metrics are ignored. With an empty `gated` list nothing can block
    (every run that finished evaluation is promoted); say so in the config if intended.
    """
    if max_regression < 0:
        raise ValueError(f"max_regression must be >= 0, got {max_regression}")
    if current is None and not base and max_failure_rate is None:
        return GateDecision(True, "first run: there is no current model and no base-model score to compare with")
    parse = lambda table: {name: MetricScore.parse(name, raw) for name, raw in (table or {}).items()}  # noqa: E731
    candidate_scores, current_scores, base_scores = parse(candidate), parse(current), parse(base)
    checks = [_check(metric, candidate_scores.get(metric), current_scores.get(metric) if current is not None else None,
                     base_scores.get(metric), max_regression, max_failure_rate)
              for metric in dict.fromkeys(gated)]  # keep order, drop repeats
    blocking = [check for check in checks if check.blocks]
    if blocking:
        reason = "blocked by " + "; ".join(check.explanation for check in blocking)
        return GateDecision(False, reason, checks)
    against = "compared with the current model" if current is not None else \
        "first run, compared with the base model" if base else "first run"
    if not checks:
        return GateDecision(True, f"{against}: no gated metrics configured (evaluation.gate.metrics is empty)", checks)
    return GateDecision(True, f"{against}: no gated metric blocks: " + "; ".join(c.explanation for c in checks), checks)


def report_markdown(run_id: str, decision: GateDecision, compared_with: str | None,
                    candidate: Mapping[str, Mapping[str, Any]] | None = None, gated: Sequence[str] = ()) -> str:
    """The promotion report people read (runs/<id>/reports/promotion.md and the `promotion` artifact).

    It says what the decision really rested on: the run `latest` points at is named as compared-with only for
    the gated metrics it has a score for, the base model likewise; columns appear only for the runs compared.
    """
    verdict = "PROMOTED" if decision.promote else "NOT PROMOTED"
    checks = decision.checks
    with_current = [c for c in checks if c.current is not None and math.isfinite(c.current.value)]
    with_base = [c for c in checks if c.base is not None and math.isfinite(c.base.value)]
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
        if any(c.candidate is not None and c.candidate.n_failed for c in checks):
            columns.append(("failed", lambda c: f"{c.candidate.n_failed}/{c.candidate.n + c.candidate.n_excluded}"
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
