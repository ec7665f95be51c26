"""`toa pipeline`: synthesize -> train -> evaluate -> promotion gate, as one Prefect flow run.

Without PREFECT_API_URL the flow runs against Prefect's ephemeral local API (its SQLite database in
PREFECT_HOME, the same one `make ui` serves), so the run can be inspected in the UI afterwards.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from toaflow.cli import UserError
from runconfig import load_config

DEFAULT_UI_URL = "http://127.0.0.1:4200"  # `make ui`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="synthesize, train, evaluate and promote the model if no gated benchmark regressed",
        description="Run the whole job as one Prefect flow: synthesize data (only prompts not synthesized "
                    "before), train on all runs' data, evaluate, and move the store's `latest` pointer unless a "
                    "gated benchmark regressed. Uses PREFECT_API_URL when set, else a local ephemeral API.")
    parser.add_argument("--config", required=True, help="run config YAML, e.g. configs/demo.yaml")
    parser.add_argument("--run-id", default=None, help="run id to create or resume (default: a new one)")
    parser.add_argument("--full", action="store_true",
                        help="not incremental: sample every prompt and train on this run's data only")
    parser.add_argument("--no-promote", action="store_true", help="evaluate but leave `latest` alone")
    parser.set_defaults(func=run)


def ui_hint(flow_run_id: str | None) -> str:
    """How to look at the run in the Prefect UI: the server in use, or `make ui` on the local database."""
    api_url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    path = f"/runs/flow-run/{flow_run_id}" if flow_run_id else "/runs"
    if api_url:
        base = api_url[:-len("/api")] if api_url.endswith("/api") else api_url
        return f"Prefect UI: {base}{path}"
    return f"Prefect UI: run `make ui`, then open {DEFAULT_UI_URL}{path}"


def format_scores(scores: dict[str, Any]) -> list[str]:
    lines = []
    for name, score in sorted(scores.items()):
        value, low, high = score.get("value"), score.get("ci_low"), score.get("ci_high")
        if value is None:
            lines.append(f"  {name}: not computed")
            continue
        interval = f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None else ""
        lines.append(f"  {name}: {value:.4g}{interval} (n={score.get('n', '?')})")
    return lines or ["  (no scores)"]


def run(args: argparse.Namespace) -> int:
    from infra.run_ids import ACCUMULATED_SUFFIX, check_new_run_id, new_run_id

    run_id = check_new_run_id(args.run_id, "--run-id", room_for=ACCUMULATED_SUFFIX) if args.run_id is not None else None
    cfg = load_config(args.config)  # fail fast, before Prefect starts, on a config the flow could not use
    from flows.pipeline import pipeline

    run_id = run_id or new_run_id(cfg.name)
    try:
        result = pipeline(config=args.config, run_id=run_id, incremental=not args.full, promote=not args.no_promote)
    except Exception as error:  # the flow's own log has the traceback; say how to resume
        from toa_core.credentials import redact_text

        print(f"error: the pipeline failed: {error.__class__.__name__}: {redact_text(str(error))}", file=sys.stderr)
        print(f"finished stages are kept; resume with: toa pipeline --config {args.config} --run-id {run_id}",
              file=sys.stderr)
        return 1
    if not isinstance(result, dict):
        raise UserError(f"the pipeline returned {type(result).__name__}, not its summary")
    print(f"run folder: {result['run_uri']}")
    if result.get("skipped"):
        print(f"skipped training and evaluation: {result['skipped']} "
              "(add prompts to the source, or pass --full to sample every prompt again and retrain)")
        print(ui_hint(result.get("flow_run_id")))
        return 0
    print("scores:")
    print("\n".join(format_scores(result["scores"])))
    promotion = result.get("promotion")
    if promotion is None:
        print("promotion: skipped (--no-promote)")
    else:
        verdict = "promoted to latest" if promotion["promoted"] else "NOT promoted (latest unchanged)"
        print(f"promotion: {verdict}: {promotion['reason']}")
    publish = result.get("publish")
    if publish:  # pipeline.publish: what reached the Hub repos (a failure never un-promotes)
        for pushed in publish["pushed"]:
            print(f"published: {pushed['kind']} {pushed['repo']} ({pushed['files']} files) {pushed['commit']}")
        for failed in publish["failed"]:
            print(f"publishing FAILED: {failed['kind']} {failed['repo']}: {failed['error']}")
    print(ui_hint(result.get("flow_run_id")))
    return 0
