"""The promotion gate: promote, block (naming the metric), first run, missing and new metrics."""
from __future__ import annotations

import pytest

from infra.promotion import MetricScore, decide_promotion


def score(value, half_width=0.05, n=100, higher_is_better=True):
    return {"value": value, "ci_low": value - half_width, "ci_high": value + half_width, "n": n,
            "higher_is_better": higher_is_better}


CURRENT = {"mini.rm_win_rate": score(0.60), "mini.mean_length": score(300.0, 20.0, higher_is_better=False)}


def test_first_run_promotes_without_comparison():
    decision = decide_promotion({"mini.rm_win_rate": score(0.1)}, None, ["mini.rm_win_rate"])
    assert decision.promote
    assert "first run" in decision.reason
    assert [check.status for check in decision.checks] == ["no_baseline"]  # the first run is still checked


def test_promotes_when_no_gated_metric_regressed():
    candidate = {"mini.rm_win_rate": score(0.58), "mini.mean_length": score(290.0, 20.0, higher_is_better=False)}
    decision = decide_promotion(candidate, CURRENT, ["mini.rm_win_rate", "mini.mean_length"])
    assert decision.promote, decision.reason
    assert [check.status for check in decision.checks] == ["ok", "ok"]
    assert decision.blocking == []


def test_drop_within_the_interval_is_not_a_regression():
    # 0.56 + 0.05 = 0.61 >= 0.60: the candidate's own uncertainty covers the current value.
    decision = decide_promotion({"mini.rm_win_rate": score(0.56)}, CURRENT, ["mini.rm_win_rate"])
    assert decision.promote


def test_blocks_and_names_the_regressed_metric():
    # 0.50 + 0.05 = 0.55 < 0.60: the current value lies above the candidate's whole interval.
    candidate = {"mini.rm_win_rate": score(0.50), "mini.mean_length": score(300.0, 20.0, higher_is_better=False)}
    decision = decide_promotion(candidate, CURRENT, ["mini.rm_win_rate", "mini.mean_length"])
    assert not decision.promote
    assert [check.metric for check in decision.blocking] == ["mini.rm_win_rate"]
    assert "mini.rm_win_rate" in decision.reason and "0.5" in decision.reason and "0.6" in decision.reason
    assert decision.to_dict()["blocking_metrics"] == ["mini.rm_win_rate"]


def test_lower_is_better_regresses_upwards():
    candidate = {"mini.mean_length": score(400.0, 20.0, higher_is_better=False)}
    decision = decide_promotion(candidate, CURRENT, ["mini.mean_length"])
    assert not decision.promote
    assert decision.blocking[0].status == "regressed"
    better = decide_promotion({"mini.mean_length": score(200.0, 20.0, higher_is_better=False)}, CURRENT,
                              ["mini.mean_length"])
    assert better.promote and better.checks[0].status == "improved"


def test_max_regression_widens_the_tolerance():
    candidate = {"mini.rm_win_rate": score(0.50)}
    assert not decide_promotion(candidate, CURRENT, ["mini.rm_win_rate"]).promote
    assert decide_promotion(candidate, CURRENT, ["mini.rm_win_rate"], max_regression=0.06).promote


def test_ungated_metrics_never_block():
    candidate = {"mini.rm_win_rate": score(0.60), "mini.mean_length": score(900.0, 1.0, higher_is_better=False)}
    assert decide_promotion(candidate, CURRENT, ["mini.rm_win_rate"]).promote


def test_missing_candidate_metric_blocks_and_new_benchmark_does_not():
    missing = decide_promotion({"mini.mean_length": score(300.0, higher_is_better=False)}, CURRENT, ["mini.rm_win_rate"])
    assert not missing.promote
    assert missing.blocking[0].status == "missing"
    nan = decide_promotion({"mini.rm_win_rate": {"value": float("nan"), "ci_low": float("nan"),
                                                  "ci_high": float("nan"), "n": 0}}, CURRENT, ["mini.rm_win_rate"])
    assert not nan.promote
    new = decide_promotion({"gsm8k.accuracy": score(0.2)}, CURRENT, ["gsm8k.accuracy"])
    assert new.promote and new.checks[0].status == "no_baseline"


def test_null_values_and_intervals_from_the_evaluation():
    # value None: the metric could not be computed -> missing; interval None: the point itself.
    no_value = decide_promotion({"mini.rm_win_rate": {"value": None, "ci_low": None, "ci_high": None, "n": 0}},
                                CURRENT, ["mini.rm_win_rate"])
    assert not no_value.promote and no_value.blocking[0].status == "missing"
    point = {"mini.rm_win_rate": {"value": 0.59, "ci_low": None, "ci_high": None, "n": 1}}
    assert not decide_promotion(point, CURRENT, ["mini.rm_win_rate"]).promote
    # a bootstrap interval that misses its own point estimate is widened to include it
    assert MetricScore.parse("x", {"value": 0.9, "ci_low": 0.1, "ci_high": 0.2, "n": 3}).ci_high == 0.9


def test_malformed_scores_raise_naming_the_metric():
    with pytest.raises(ValueError, match="mini.rm_win_rate.*ci_high must be a number"):
        decide_promotion({"mini.rm_win_rate": {"value": 0.5, "ci_low": 0.4, "ci_high": "high"}}, CURRENT,
                         ["mini.rm_win_rate"])
    with pytest.raises(ValueError, match="'x': missing value"):
        MetricScore.parse("x", {"ci_low": 0.1})
    with pytest.raises(ValueError, match="higher_is_better differs"):
        decide_promotion({"mini.mean_length": score(300.0)}, CURRENT, ["mini.mean_length"])


def with_failures(value, n_failed, n=30, half_width=0.05):
    return {**score(value, half_width, n=n), "n_failed": n_failed}


def test_candidate_failing_30_percent_of_items_is_blocked_naming_the_failure_rate():
    candidate = {"mini.rm_win_rate": with_failures(0.70, n_failed=9)}  # better than current, but 9 of 30 failed
    decision = decide_promotion(candidate, CURRENT, ["mini.rm_win_rate"], max_failure_rate=0.05, min_scored_items=10)
    assert not decision.promote
    assert decision.blocking[0].status == "too_many_failures"
    assert "failure rate 30% (9 of 30 items failed or empty)" in decision.reason and "5%" in decision.reason
    assert decide_promotion({"mini.rm_win_rate": with_failures(0.70, n_failed=1)}, CURRENT, ["mini.rm_win_rate"],
                            max_failure_rate=0.05, min_scored_items=10).promote  # 3%: within the allowance


def test_first_run_worse_than_its_base_model_is_blocked_naming_the_metric():
    candidate = {"mini.chrf": score(12.7, 6.0, n=10), "mini.rm_win_rate": score(0.5)}
    base = {"mini.chrf": score(18.1, 6.0, n=10), "mini.rm_win_rate": score(0.4)}
    decision = decide_promotion(candidate, None, ["mini.rm_win_rate", "mini.chrf"], base=base, max_failure_rate=0.05,
                                min_scored_items=10)
    assert not decision.promote
    assert [c.metric for c in decision.blocking] == ["mini.chrf"] and decision.blocking[0].status == "worse_than_base"
    assert "mini.chrf" in decision.reason and "base model" in decision.reason and "18.1" in decision.reason
    # the base model's interval overlaps the candidate's: still blocked, the bar against the base is the point
    assert decision.blocking[0].candidate.ci_high > 18.1


def test_first_run_at_least_as_good_as_its_base_is_promoted_and_says_so():
    decision = decide_promotion({"mini.chrf": score(19.0)}, None, ["mini.chrf"], base={"mini.chrf": score(18.1)})
    assert decision.promote and "compared with the base model" in decision.reason
    assert decision.checks[0].base.value == 18.1


def test_base_model_is_checked_beside_the_current_model():
    candidate = {"mini.rm_win_rate": score(0.61)}
    decision = decide_promotion(candidate, CURRENT, ["mini.rm_win_rate"], base={"mini.rm_win_rate": score(0.65)})
    assert not decision.promote and decision.blocking[0].status == "worse_than_base"


def test_a_metric_nothing_could_score_is_missing_and_says_why():
    candidate = {"mini.rm_mean_reward": {"value": None, "ci_low": None, "ci_high": None, "n": 0, "n_failed": 7,
                                         "n_excluded": 7, "failed_in_excluded": True}}
    decision = decide_promotion(candidate, None, ["mini.rm_mean_reward"], max_failure_rate=0.05)
    assert not decision.promote and decision.blocking[0].status == "missing"
    assert "no usable score (7 of 7 items failed, empty or not scored by the judge)" in decision.reason
# -- the report people read -------------------------------------------------------------------------------------

def test_report_names_what_the_decision_compared():
    from infra.promotion import report_markdown

    gated = ["mini.rm_win_rate", "mini.new_metric"]
    candidate = {"mini.rm_win_rate": score(0.58), "mini.new_metric": score(0.3)}

    # Some gated metrics compared, one without a baseline: only the columns of what was compared.
    compared = report_markdown("r2", decide_promotion(candidate, CURRENT, gated), "r1", candidate, gated)
    assert "Compared with: `r1` (the current `latest`) on 1 of 2 gated metric(s)" in compared
    assert "| metric | status | this run | current latest |" in compared
    assert "| mini.new_metric | no_baseline | 0.3 [0.25, 0.35] n=100 | - |" in compared

    # No gated metric has a score at `latest`: the report does not pretend a comparison happened.
    nothing = report_markdown("r2", decide_promotion({"mini.new_metric": score(0.3)}, CURRENT, ["mini.new_metric"]),
                              "r1", candidate, ["mini.new_metric"])
    assert "Compared with: not `r1` (the current `latest`): it has no score for any gated metric; nothing was " \
           "compared, so nothing could regress" in nothing
    assert "current latest |" not in nothing

    # The first run: nothing to compare with, and its own gated values are shown.
    first = report_markdown("r1", decide_promotion(candidate, None, gated), None, candidate, gated)
    assert "Compared with: no model is `latest` yet; nothing was compared" in first and "PROMOTED" in first
    assert "| mini.rm_win_rate | no_baseline | 0.58 [0.53, 0.63] n=100 |" in first

    # The first run against its base model: that comparison is named, and only its column shown.
    base = {"mini.rm_win_rate": score(0.5), "mini.new_metric": score(0.2)}
    against_base = report_markdown("r1", decide_promotion(candidate, None, gated, base=base), None, candidate, gated)
    assert "Compared with: no model is `latest` yet; the base model on 2 of 2 gated metric(s)" in against_base
    assert "| metric | status | this run | base model |" in against_base
