"""The evaluation report of one benchmark: a markdown page and a PNG comparing this run with the previous
evaluated run and the base model (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")


def _fmt(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "-"
    text = f"{metric['value']:.2f}"
    if metric.get("ci_low") is not None:
        text += f" [{metric['ci_low']:.2f}, {metric['ci_high']:.2f}]"
    return text


def comparison_rows(current: dict[str, Any], previous: dict[str, Any] | None,
                    base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per metric of this run: value, 95% interval, n, and the same metric of the others (a column per
    other run that exists: no "previous_run" column when there is no previous run)."""
    rows = []
    for name, metric in current["metrics"].items():
        row = {"metric": name, "this_run": _fmt(metric), "n": metric.get("n"), "n_failed": metric.get("n_failed", 0)}
        if previous is not None:
            row["previous_run"] = _fmt(previous.get("metrics", {}).get(name))
        if base is not None:
            row["base_model"] = _fmt(base.get("metrics", {}).get(name))
        rows.append(row)
    return rows


def markdown_report(current: dict[str, Any], previous: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    lines = [f"# Evaluation: {current['benchmark']} ({current['kind']})", "",
             f"- Model: `{current['model']}` (run `{current.get('run_id')}`), {current['n_items']} items, "
             f"tasks: {', '.join(current['tasks'])}",
             f"- Previous evaluated run: `{previous.get('run_id')}` ({previous.get('model')})" if previous
             else "- Previous evaluated run: none",
             f"- Base model: `{base.get('model')}`" if base else "- Base model: not evaluated (set evaluation.base_model)",
             f"- Evaluated at {current['evaluated_at']}; intervals are bootstrap intervals (95%; Arena-Hard scores: 90%).", ""]
    circularity = current.get("circularity", {})
    if circularity.get("circular"):
        lines += ["> **Warning: circular evaluation.** " + " ".join(circularity["reasons"]) +
                  ". Scores from this judge measure agreement with the synthesis reward, not quality; "
                  "rely on an independent judge or reference-based metrics.", ""]
    others = [(key, key.replace("_", " ")) for key, scores in (("previous_run", previous), ("base_model", base))
              if scores is not None]  # columns only for the runs there are
    lines += ["| metric | this run | n | failed |" + "".join(f" {title} |" for _, title in others),
              "|---|---|---|---|" + "---|" * len(others)]
    for row in comparison_rows(current, previous, base):
        lines.append(f"| {row['metric']} | {row['this_run']} | {row['n']} | {row['n_failed']} |"
                     + "".join(f" {row[key]} |" for key, _ in others))
    diagnostics = current.get("diagnostics", {})
    if diagnostics:
        lines += ["", "Diagnostics: " + ", ".join(
            f"{k}={v}" for k, v in diagnostics.items() if not isinstance(v, dict))]
        for name, values in diagnostics.items():
            if isinstance(values, dict):
                lines.append(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return "\n".join(lines) + "\n"


def plotted_metrics(current: dict[str, Any], previous: dict[str, Any] | None,
                    base: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """(metrics drawn as panels, metrics left out because they are 0 everywhere).

    A panel whose every bar is 0 with no interval (BLEU of a model that wrote no translation, say) says nothing
    the table does not: such metrics are listed under the plot's title instead of drawn as empty axes.
    """
    computed = [name for name, metric in current["metrics"].items() if metric.get("value") is not None]
    all_zero = [name for name in computed if _all_zero(name, [current, previous, base])]
    return [name for name in computed if name not in all_zero], all_zero


def comparison_png(current: dict[str, Any], previous: dict[str, Any] | None, base: dict[str, Any] | None) -> bytes:
    """Bars per metric (one subplot each: scales differ) for base / previous / this run, with 95% error bars."""
    import io

    import matplotlib.pyplot as plt

    series = [("base model", base, "#9e9e9e"), ("previous run", previous, "#64b5f6"), ("this run", current, "#1565c0")]
    names, all_zero = plotted_metrics(current, previous, base)
    columns = max(1, min(4, len(names)))
    rows = max(1, -(-len(names) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    for axis in axes.flat[len(names):]:
        axis.axis("off")
    for axis, name in zip(axes.flat, names):
        labels, values, low, high, colors = [], [], [], [], []
        for label, scores, color in series:
            metric = (scores or {}).get("metrics", {}).get(name)
            if not metric or metric.get("value") is None:
                continue
            value = metric["value"]
            labels.append(label)
            values.append(value)
            colors.append(color)
            low.append(value - metric["ci_low"] if metric.get("ci_low") is not None else 0.0)
            high.append(metric["ci_high"] - value if metric.get("ci_high") is not None else 0.0)
        axis.bar(range(len(values)), values, color=colors, yerr=[low, high], capsize=4)
        axis.set_xticks(range(len(values)), labels, rotation=20, fontsize=8)
        axis.set_title(name, fontsize=9)
    if not names:
        axes.flat[0].axis("off")
        axes.flat[0].text(0.5, 0.5, "no metric with a non-zero value", ha="center", va="center")
    title = f"{current['benchmark']}: run {current.get('run_id')}"
    if all_zero:
        title += "\n0 for every model (not drawn): " + ", ".join(all_zero)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _all_zero(name: str, score_sets: list[dict[str, Any] | None]) -> bool:
    """True when every series that has metric `name` scores exactly 0 with a zero-width (or no) interval."""
    values = []
    for scores in score_sets:
        metric = (scores or {}).get("metrics", {}).get(name)
        if metric and metric.get("value") is not None:
            values += [metric["value"], metric.get("ci_low") or 0.0, metric.get("ci_high") or 0.0]
    return bool(values) and all(value == 0 for value in values)
