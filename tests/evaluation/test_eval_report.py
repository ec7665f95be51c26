"""The evaluation plot: no empty panels, no "previous run" bars when there is no previous run."""
from __future__ import annotations

from evaluation.report import comparison_png, plotted_metrics


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
