"""The preflight as the first task of a run: its report in the log, and when a check found a problem, a failure
that carries the report (also shown as an artifact). The rules live in infra.preflight."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from infra.preflight import problems, report, run_preflight
from tasks.artifacts import publish_markdown


class PreflightFailed(RuntimeError):
    """A preflight check found a problem; the message is the whole report (one line per check, with fixes)."""


@task(name="preflight", retries=0)
def preflight_task(config_path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, int]:
    """Run every preflight check of the config; raise PreflightFailed with the report if one found a problem."""
    checks = run_preflight(config_path, overrides=overrides)
    text = report(checks)
    found = problems(checks)
    get_run_logger().info("preflight of %s:\n%s", config_path, text)
    if found:
        # an artifact only when it stops the run: a passing preflight is in the log, and runs stay uncluttered
        publish_markdown(None, None, f"# Preflight of `{Path(config_path).name}`\n\n```\n{text}\n```\n",
                         title="why the run stopped before it started anything", artifact="preflight")
        raise PreflightFailed(f"preflight found {len(found)} problem(s) in {config_path}; nothing was started:\n{text}")
    return {"checks": len(checks), "problems": 0}
