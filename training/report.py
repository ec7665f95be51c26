"""The training report: one table row of final metrics per stage, and a PNG of the curves (SFT loss, DPO loss,
DPO reward accuracy) drawn from the Trainer log history each stage stores in training_metrics.json."""
from __future__ import annotations

import math
from typing import Any


def metrics_rows(stage_metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stage, only scalars (a Prefect table artifact shows them as columns)."""
    rows = []
    for stage, metrics in stage_metrics.items():
        evaluation = metrics.get("eval") or {}
        rows.append({
            "stage": stage,
            "steps": metrics.get("global_step"),
            "resumed_from_step": metrics.get("resumed_from_step"),
            "first_loss": _round(metrics.get("first_loss")),
            "final_loss": _round(metrics.get("final_loss")),
            "eval_loss": _round(evaluation.get("eval_loss")),
            "final_reward_accuracy": _round(metrics.get("final_reward_accuracy")),
            "eval_reward_accuracy": _round(evaluation.get("eval_rewards/accuracies")),
            "runtime_s": _round(metrics.get("train_runtime_s"), 1),
            "weights": metrics.get("weights"),
            "base_model": metrics.get("base_model"),
        })
    return rows


def metrics_table(rows: list[dict[str, Any]], width: int = 48) -> list[dict[str, Any]]:
    """`metrics_rows` turned on its side for the UI: one row per metric, one column per stage, so the table stays
    three columns wide however many metrics there are. Metrics no stage has are left out; long values (a base
    model's local path) keep their end."""
    stages = [row["stage"] for row in rows]
    table = []
    for metric in (key for key in (rows[0] if rows else {}) if key != "stage"):
        values = {stage: row.get(metric) for stage, row in zip(stages, rows)}
        if all(value is None for value in values.values()):
            continue
        shown = {stage: ("..." + value[-(width - 3):] if isinstance(value, str) and len(value) > width else value)
                 for stage, value in values.items()}
        table.append({"metric": metric, **shown})
    return table


def curves(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged quantity, skipping the summary entries."""
    points = [(entry["step"], entry[key]) for entry in history
              if key in entry and "step" in entry and isinstance(entry[key], (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def curves_png(stage_metrics: dict[str, dict[str, Any]]) -> Any:
    """A matplotlib figure (Agg backend, no display needed): training loss per stage, DPO reward accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage, metrics in stage_metrics.items():
        steps, values = curves(metrics.get("log_history", []), "loss")
        if steps:
            loss_axis.plot(steps, values, marker=".", label=f"{stage.upper()} loss")
    loss_axis.set(title="Training loss", xlabel="step", ylabel="loss")
    loss_axis.legend(loc="best")
    dpo = stage_metrics.get("dpo")
    steps, values = curves(dpo.get("log_history", []), "rewards/accuracies") if dpo else ([], [])
    if steps:
        accuracy_axis.plot(steps, values, marker=".", color="tab:green", label="DPO reward accuracy")
        accuracy_axis.legend(loc="best")
    else:
        accuracy_axis.text(0.5, 0.5, "no DPO stage", ha="center", va="center", transform=accuracy_axis.transAxes)
    accuracy_axis.set(title="DPO reward accuracy (chosen > rejected)", xlabel="step", ylim=(-0.05, 1.05))
    figure.tight_layout()
    return figure


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return round(value, digits)
    return value
