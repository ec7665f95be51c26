"""Prefect tasks of the training flow: run one stage as its own process, then report the metrics.

Thin on purpose: the recipes live in training/, the process handling in training.launch.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from infra.store import open_store
from tasks.artifacts import PhaseTimer, figure_png, publish_png, publish_table
from tasks.gpu import gpu_slot
from training.config import StageSettings, load_stage_settings, parse_stage_settings
from training.launch import run_stage_process, stage_argv
from training.report import curves_png, metrics_rows, metrics_table
from training.stage import METRICS_FILE, model_prefix


def stage_settings(config: str | dict[str, Any]) -> StageSettings:
    """The store and training sections of a config file path or an already loaded config mapping."""
    if isinstance(config, dict):
        return parse_stage_settings(config, source="<config>")
    return load_stage_settings(config)


def _config_file(config: str | dict[str, Any], settings: StageSettings) -> str:
    """A file the stage process can read: the YAML itself, or the mapping's sections written to a temp JSON."""
    if not isinstance(config, dict):
        return str(Path(config).resolve())
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", prefix="toaflow-train-", delete=False)
    with handle:
        json.dump(settings.model_dump(mode="json"), handle)
    return handle.name


# Never retried by Prefect: a crashed stage resumes from its stored checkpoint when the flow is re-run, and an
# automatic retry of an OOM or a bad dataset would only fail again after minutes of model loading.
@task(name="train-stage", task_run_name="train-{stage}", retries=0)
def train_stage(stage: str, config: str | dict[str, Any], run_id: str, data_run_id: str | None = None,
                force: bool = False) -> dict[str, Any]:
    """Run `python -m training.<stage>` (or `accelerate launch`), streaming its log; returns its final metrics
    (without the log history) and the model's store URI. Raises training.launch.StageFailed on failure."""
    logger = get_run_logger()
    settings = stage_settings(config)
    store = open_store(settings.store)
    config_file = _config_file(config, settings)
    argv = stage_argv(stage, config_file, run_id, data_run_id, settings.training.common, force=force)
    logger.info("starting %s: %s", stage, " ".join(argv))
    try:
        with gpu_slot(f"train-{stage}-{run_id}"):
            run_stage_process(argv, timeout_s=settings.training.common.timeout_s, log=logger.info)
    finally:
        if isinstance(config, dict):
            Path(config_file).unlink(missing_ok=True)
    metrics = store.read_json(f"{model_prefix(run_id, stage)}/{METRICS_FILE}")
    metrics.pop("log_history", None)
    return {"uri": store.uri(model_prefix(run_id, stage)), "metrics": metrics}


@task(name="training-report")
def training_report(config: str | dict[str, Any], run_id: str, stages: list[str]) -> dict[str, str]:
    """Final-metrics table and loss / reward-accuracy curves, saved under runs/<id>/reports/ and shown in Prefect
    (artifact keys training-metrics and training-curves)."""
    timer = PhaseTimer()
    store = open_store(stage_settings(config).store)
    stage_metrics = {stage: store.read_json(f"{model_prefix(run_id, stage)}/{METRICS_FILE}") for stage in stages}
    rows = metrics_rows(stage_metrics)
    timer.lap("read metrics")
    png = figure_png(curves_png(stage_metrics))
    timer.lap("plot")
    table_key = f"runs/{run_id}/reports/training_metrics.json"
    store.write_json(table_key, rows)
    publish_table(None, None, metrics_table(rows), title=f"Training metrics, run {run_id}", artifact="training-metrics")
    png_key = f"runs/{run_id}/reports/training_curves.png"
    png_uri = publish_png(store, png_key, png, title=f"Training curves, run {run_id}", artifact="training-curves")
    timer.lap("publish")  # store writes and Prefect artifacts
    get_run_logger().info("training report of run %s: %s", run_id, timer.summary())
    return {"table": store.uri(table_key), "curves": png_uri}
