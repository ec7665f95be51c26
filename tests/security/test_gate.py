"""The promotion gate fails closed (issue 21): each degenerate case that used to promote is blocked, and the
comparison with `latest` uses the scores recorded in the registry for its model, not a rewritable scores.json."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.config import StoreConfig
from infra.promotion import decide_promotion
from infra.registry import read_latest, record_decision
from infra.store import open_store
from tasks.pipeline import current_latest

GATED = ["mini.rm_win_rate"]


def metric(value, low=None, high=None, n=800, **counts):
    low = value - 0.03 if low is None else low
    high = value + 0.03 if high is None else high
    return {"value": value, "ci_low": low, "ci_high": high, "n": n, "higher_is_better": True, **counts}


def test_promote_with_no_gated_metric_is_blocked():
    decision = decide_promotion({"mini.rm_win_rate": metric(0.9)}, None, [])
    assert not decision.promote
    assert "no gated metric" in decision.reason and "evaluation.gate.metrics" in decision.reason


def test_pipeline_with_promote_and_no_gate_is_refused_before_any_work(tmp_path, prefect_harness):
    import flows.pipeline as pipeline_module

    config = tmp_path / "nogate.yaml"
    config.write_text(yaml.safe_dump({
        "name": "nogate", "store": {"root": str(tmp_path / "store")},
        "models": [{"name": "a", "backend": "transformers", "model": "builtin:tiny-llama"}],
        "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"}}))
    with pytest.raises(ValueError, match="no evaluation.gate.metrics.*promote=false"):
        pipeline_module.pipeline(config=str(config), run_id="nogate-1")
    assert not (tmp_path / "store" / "runs").exists()  # nothing was synthesized


@pytest.mark.parametrize("bad", [
    metric(float("nan")),
    metric(float("inf")),
    metric(0.7, low=float("nan"), high=float("nan")),   # a NaN interval could never "regress"
    metric(0.7, low=0.6, high=float("inf")),
    metric(0.7, low=float("-inf"), high=0.8),
])
def test_non_finite_value_or_interval_blocks(bad):
    current = {"mini.rm_win_rate": metric(0.9)}
    for baseline in (current, None):
        decision = decide_promotion({"mini.rm_win_rate": bad}, baseline, GATED, max_failure_rate=0.05)
        assert not decision.promote
        assert decision.blocking[0].status in ("missing", "not_finite")


def test_three_scored_items_of_800_are_not_enough():
    # The judge could score 3 items; 797 were excluded. On today's main this promoted (excluded items did not count).
    candidate = {"mini.rm_win_rate": metric(0.95, low=0.9, high=1.0, n=3, n_excluded=797)}
    decision = decide_promotion(candidate, {"mini.rm_win_rate": metric(0.5)}, GATED, max_failure_rate=0.05)
    assert not decision.promote
    assert "failure rate 100%" in decision.reason and "not scored by the judge" in decision.reason
    assert "only 3 scored item(s) of 800" in decision.reason and "min_scored_items" in decision.reason
    # The minimum applies by itself, too: 3 clean items of 3.
    small = decide_promotion({"mini.rm_win_rate": metric(0.95, n=3)}, None, GATED, max_failure_rate=0.05)
    assert not small.promote and small.blocking[0].status == "too_few_scored"
    assert decide_promotion({"mini.rm_win_rate": metric(0.95, n=3)}, None, GATED, min_scored_items=3).promote


def test_first_run_with_null_max_failure_rate_and_everything_failed_is_blocked():
    # No `latest`, no base-model score, max_failure_rate None: today's main returned "first run" and promoted.
    everything_failed = {"mini.rm_win_rate": metric(0.0, low=0.0, high=0.0, n=800, n_failed=800)}
    decision = decide_promotion(everything_failed, None, GATED, base=None, max_failure_rate=None)
    assert not decision.promote and decision.blocking[0].status == "too_many_failures"
    assert "800 of 800 items failed" in decision.reason
    # null allows no failure at all, it does not switch the check off; a clean first run still passes.
    assert decide_promotion({"mini.rm_win_rate": metric(0.4)}, None, GATED, max_failure_rate=None).promote


def test_null_max_failure_rate_is_accepted_by_the_config_and_means_none_allowed():
    from evaluation.config import GateConfig

    gate = GateConfig(metrics=["mini.rm_win_rate"], max_failure_rate=None)
    assert gate.max_failure_rate is None and gate.min_scored_items == 30
    with pytest.raises(ValueError):
        GateConfig(min_scored_items=0)


def test_a_rewritten_scores_json_of_latest_does_not_change_the_comparison(tmp_path):
    store_cfg = StoreConfig(root=str(tmp_path / "store"))
    store = open_store(store_cfg)
    store.write_json("runs/r1/manifest.json", {"run_id": "r1"})
    store.write_text("runs/r1/models/dpo/adapter_config.json", '{"r": 8}')
    promoted_on = {"mini.rm_win_rate": metric(0.8)}
    store.write_json("runs/r1/eval/mini/scores.json", {"metrics": {"rm_win_rate": promoted_on["mini.rm_win_rate"]}})
    record_decision(store, "r1", decide_promotion(promoted_on, None, GATED), compared_with=None,
                    candidate_scores=promoted_on, current_scores=None)
    pointer = read_latest(store)
    assert pointer["model_digest"].startswith("sha256:") and pointer["model_uri"].rstrip("/").endswith("models")

    # Another run's evaluation (or anyone with the evaluate deployment) rewrites r1's scores.json to look bad.
    store.write_json("runs/r1/eval/mini/scores.json", {"metrics": {"rm_win_rate": metric(0.1)}})

    compared_with, current = current_latest(store_cfg)
    assert compared_with == "r1" and current["mini.rm_win_rate"]["value"] == 0.8  # the recorded scores
    weak = {"mini.rm_win_rate": metric(0.5)}
    decision = decide_promotion(weak, current, GATED, max_failure_rate=0.05)
    assert not decision.promote and decision.blocking[0].status == "regressed"


def test_paper_configs_that_evaluate_have_a_gate_and_the_others_are_refused_by_the_pipeline():
    from runconfig import load_config

    root = Path(__file__).resolve().parents[2] / "configs" / "paper"
    gated = refused = 0
    for path in sorted(root.rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        cfg = load_config(path)
        if "evaluation" in raw:
            assert cfg.evaluation.gate.metrics, f"{path} evaluates but gates nothing"
            gated += 1
        else:
            assert not cfg.evaluation.gate.metrics  # synthesis-only: the pipeline refuses promote=true for it
            refused += 1
    assert gated == 15 and refused == 23  # 21 synthesis-only paper configs + the 2 math verifier variants
