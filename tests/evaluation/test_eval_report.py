"""The evaluation plot: no empty panels, no "previous run" bars when there is no previous run."""
from __future__ import annotations

from evaluation.report import comparison_png, comparison_rows, markdown_report, plotted_metrics


def scores(run_id, **values):
    return {"benchmark": "mini", "run_id": run_id, "metrics": {
        name: {"value": value, "ci_low": value, "ci_high": value, "n": 4} for name, value in values.items()}}


def test_metrics_that_are_zero_everywhere_are_listed_not_drawn():
    current = scores("r2", rm_win_rate=60.0, bleu=0.0, chrf=0.0)
    base = scores("base", rm_win_rate=50.0, bleu=0.0, chrf=0.0)
    assert plotted_metrics(current, None, base) == (["rm_win_rate"], ["bleu", "chrf"])
    previous = scores("r1", rm_win_rate=55.0, bleu=1.5, chrf=0.0)  # one series scored BLEU: draw it
    assert plotted_metrics(current, previous, base) == (["rm_win_rate", "bleu"], ["chrf"])
    assert plotted_metrics(scores("r", bleu=0.0), None, None) == ([], ["bleu"])
    assert comparison_png(scores("r", bleu=0.0), None, None)[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_and_report_have_no_previous_run_column_without_a_previous_run():
    current = {**scores("r1", rm_win_rate=60.0), "kind": "toaflow_mini", "model": "m", "n_items": 4, "tasks": ["chat"],
               "evaluated_at": "now"}
    base = scores("base", rm_win_rate=50.0)
    assert list(comparison_rows(current, None, base)[0]) == ["metric", "this_run", "n", "n_failed", "base_model"]
    report = markdown_report(current, None, base)
    assert "| metric | this run | n | failed | base model |" in report and "previous run |" not in report
    assert "Previous evaluated run: none" in report
    with_previous = comparison_rows(current, scores("r0", rm_win_rate=55.0), base)[0]
    assert with_previous["previous_run"] == "55.00 [55.00, 55.00]"
