"""The training table shown in the UI: one row per metric and a column per stage, so it never runs off the page."""
from __future__ import annotations

from training.report import metrics_rows, metrics_table


def test_metrics_table_is_one_row_per_metric():
    rows = metrics_rows({
        "sft": {"global_step": 10, "first_loss": 2.5, "final_loss": 1.25, "train_runtime_s": 4.04,
                "base_model": "/home/someone/.cache/toaflow/models/tiny-llama-0123456789abcdef", "weights": "lora"},
        "dpo": {"global_step": 10, "final_loss": 0.5, "final_reward_accuracy": 1.0, "weights": "lora"},
    })
    table = metrics_table(rows)
    assert all(set(row) == {"metric", "sft", "dpo"} for row in table)  # three columns whatever the metrics
    by_metric = {row["metric"]: row for row in table}
    assert by_metric["steps"] == {"metric": "steps", "sft": 10, "dpo": 10}
    assert by_metric["final_reward_accuracy"]["sft"] is None and by_metric["final_reward_accuracy"]["dpo"] == 1.0
    assert "eval_loss" not in by_metric  # no stage has it
    assert by_metric["base_model"]["sft"].startswith("...") and by_metric["base_model"]["sft"].endswith("abcdef")
    assert len(by_metric["base_model"]["sft"]) == 48
