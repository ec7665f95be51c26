"""`toa deploy`: register toaflow's deployments (prefect.yaml) with a Prefect server.

Steps, each idempotent so the command can be re-run after editing prefect.yaml:
1. check the server at PREFECT_API_URL (or --api-url) answers;
2. create the work pools that prefect.yaml names, as `process` pools, when they do not exist yet;
3. create (or resize) the global concurrency limit "gpu" that GPU tasks take a slot of;
4. run `prefect --no-prompt deploy --all` (or `--name` for some) in the project folder;
5. tidy the deployments' run forms: an optional parameter (`run_id: str | None = None`) becomes a plain field
   that may be left empty, instead of a "string / None" switch (see `tidy_parameter_schema`);
6. with `--alert-block TYPE/NAME`: install the automations that send a message through that notification block
   when a pipeline run fails, crashes or ends with its candidate blocked (infra/alerts.py; checked before step 4,
   so a missing block fails the command before anything is deployed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from toaflow.cli import UserError

PROJECT_DIR = Path(__file__).resolve().parents[2]
GPU_LIMIT_NAME = "gpu"
DEPLOY_TIMEOUT_S = 900.0  # `prefect deploy` imports every flow (torch, transformers): slow on a small host


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy", help="register the deployments of prefect.yaml with a Prefect server",
        description="Create the work pools and the 'gpu' concurrency limit, then register every deployment of "
                    "prefect.yaml (synthesize, train, evaluate, and the nightly pipeline) with the Prefect server "
                    "at PREFECT_API_URL. Start workers afterwards: prefect worker start --pool toa-gpu.")
    parser.add_argument("--api-url", default=None,
                        help="Prefect API URL, e.g. http://127.0.0.1:4200/api (default: PREFECT_API_URL)")
    parser.add_argument("--prefect-file", default=str(PROJECT_DIR / "prefect.yaml"),
                        help="deployment file (default: the project's prefect.yaml)")
    parser.add_argument("--gpu-slots", type=int, default=1,
                        help="GPU tasks that may run at once across all hosts: the size of the 'gpu' limit "
                             "(usually the number of GPUs, or of GPU hosts when a task uses a whole host)")
    parser.add_argument("--name", action="append", default=None, metavar="FLOW/DEPLOYMENT",
                        help="register only this deployment (repeatable), e.g. pipeline/nightly")
    parser.add_argument("--alert-block", default=None, metavar="BLOCK-TYPE/BLOCK-NAME",
                        help="notification block (Slack webhook, e-mail, custom webhook, ...) told when a pipeline run "
                             "fails, crashes or ends with its candidate blocked, e.g. slack-webhook/nightly; create "
                             "the block first (docs/operations.md, 'Alerts')")
    parser.set_defaults(func=run)


def install_alert_channel(api_url: str, block_slug: str) -> str:
    """Install (or replace) the pipeline alert automations on the server at `api_url`; returns a line to print."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra.alerts import AlertSetupError, install_alerts

    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            automation_ids = install_alerts(block_slug)
    except AlertSetupError as error:
        raise UserError(str(error)) from None
    return (f"alerts: pipeline runs that fail, crash or end blocked are sent to {block_slug} "
            f"(automations {', '.join(str(automation_id) for automation_id in automation_ids)})")


def resolve_api_url(explicit: str | None) -> str:
    """The server to deploy to: --api-url, else PREFECT_API_URL (environment or active Prefect profile)."""
    if explicit:
        return explicit.rstrip("/")
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UserError("no Prefect server to deploy to: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api after "
                        "`make ui`) or pass --api-url; deployments need a server, the ephemeral mode has none")
    return url.rstrip("/")


def check_server(api_url: str) -> None:
    try:
        response = httpx.get(f"{api_url}/health", timeout=10.0)
    except httpx.HTTPError as error:
        raise UserError(f"the Prefect server at {api_url} is unreachable ({error.__class__.__name__}: {error}); "
                        "start one with `make ui` or check PREFECT_API_URL") from None
    if response.status_code != 200:
        raise UserError(f"the Prefect server at {api_url} answered {response.status_code} on /health; "
                        "is PREFECT_API_URL the API URL (ending in /api)?")


def read_deployment_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: deployment file not found; pass --prefect-file")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("deployments"), list) or not spec["deployments"]:
        raise UserError(f"{path}: needs a non-empty `deployments:` list")
    return spec


def work_pool_names(spec: dict[str, Any], only: list[str] | None = None) -> list[str]:
    """Work pools the (selected) deployments use, in first-use order."""
    names: dict[str, None] = {}
    for deployment in spec["deployments"]:
        flow_name = deployment.get("entrypoint", "").rpartition(":")[2]
        if only and f"{flow_name}/{deployment.get('name')}" not in only and deployment.get("name") not in only:
            continue
        pool = (deployment.get("work_pool") or {}).get("name")
        if pool:
            names[pool] = None
    return list(names)


def ensure_work_pools(api_url: str, names: list[str]) -> list[str]:
    """Create the missing pools as `process` pools (existing ones, whatever their type, are left alone)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    created = []
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
                continue
            except ObjectNotFound:
                pass
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template(),
                description=f"toaflow {name}: start workers with `prefect worker start --pool {name}`"))
            created.append(name)
    return created


def ensure_gpu_limit(api_url: str, slots: int) -> str:
    """Create the global concurrency limit "gpu" with `slots`, or resize it; returns what was done."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(GPU_LIMIT_NAME)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT_NAME, limit=slots))
            return f"created concurrency limit '{GPU_LIMIT_NAME}' with {slots} slot(s)"
        if current.limit == slots and current.active:
            return f"concurrency limit '{GPU_LIMIT_NAME}' already has {slots} slot(s)"
        client.update_global_concurrency_limit(GPU_LIMIT_NAME, GlobalConcurrencyLimitUpdate(limit=slots, active=True))
        return f"resized concurrency limit '{GPU_LIMIT_NAME}' from {current.limit} to {slots} slot(s)"


def tidy_parameter_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The form-friendly version of a flow's parameter schema (a new dict).

    Prefect renders `X | None = None` as a switch between X and "None" ('Property is type "None"'). Here such a
    property becomes plain X without a default: the form shows an empty field, leaves it out of the run's
    parameters when it stays empty, and the flow then uses its own default (None). The server still accepts an
    explicit null for it (it allows null for optional properties without a default). Applied to the nested
    models under `definitions` too.
    """
    import copy

    tidied = copy.deepcopy(schema)

    def tidy_properties(properties: dict[str, Any]) -> None:
        for prop in properties.values():
            options = prop.get("anyOf")
            if prop.get("default", "no default") is not None or not options:
                continue
            kept = [option for option in options if option.get("type") != "null"]
            if len(kept) == len(options):
                continue
            del prop["anyOf"], prop["default"]
            if len(kept) == 1:
                prop.update({key: value for key, value in kept[0].items() if key not in prop})
            else:
                prop["anyOf"] = kept

    tidy_properties(tidied.get("properties", {}))
    for definition in tidied.get("definitions", {}).values():
        tidy_properties(definition.get("properties", {}))
        for prop in definition.get("properties", {}).values():
            if prop.get("default", "no default") is None:
                del prop["default"]  # typed optional fields (runconfig.parameters) left empty
    return tidied


def tidy_deployment_forms(api_url: str, spec: dict[str, Any], only: list[str] | None = None) -> list[str]:
    """Apply `tidy_parameter_schema` to the registered deployments of `spec`; returns their entrypoints."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tidied = []
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        registered = client.read_deployments()
        for deployment in spec["deployments"]:
            entrypoint, name = deployment.get("entrypoint", ""), deployment.get("name")
            function = entrypoint.rpartition(":")[2]
            if only and f"{function}/{name}" not in only and name not in only:
                continue
            # Matched by entrypoint and name: a flow's name may differ from its function's (synthesize-shard).
            for found in (d for d in registered if d.name == name and d.entrypoint == entrypoint):
                schema = tidy_parameter_schema(found.parameter_openapi_schema or {})
                if schema != found.parameter_openapi_schema:
                    client.update_deployment(found.id, DeploymentUpdate(parameter_openapi_schema=schema))
                tidied.append(entrypoint)
    return tidied


def prefect_executable() -> str:
    """The `prefect` CLI of this environment (next to its python), else the one on PATH."""
    beside = Path(sys.executable).with_name("prefect")
    found = str(beside) if beside.exists() else shutil.which("prefect")
    if not found:
        raise UserError("the `prefect` command is not installed in this environment; run `make venv`")
    return found


def run(args: argparse.Namespace) -> int:
    if args.gpu_slots < 1:
        raise UserError(f"--gpu-slots must be at least 1, got {args.gpu_slots}")
    prefect_file = Path(args.prefect_file).resolve()
    spec = read_deployment_file(prefect_file)
    api_url = resolve_api_url(args.api_url)
    check_server(api_url)

    pools = work_pool_names(spec, args.name)
    created = ensure_work_pools(api_url, pools)
    print(f"work pools: {', '.join(created) + ' created' if created else 'all exist'}")
    print(ensure_gpu_limit(api_url, args.gpu_slots))
    if args.alert_block:
        print(install_alert_channel(api_url, args.alert_block))

    command = [prefect_executable(), "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    command += [item for name in args.name for item in ("--name", name)] if args.name else ["--all"]
    env = dict(os.environ, PREFECT_API_URL=api_url)
    print("$ " + " ".join(command))
    try:
        # The project folder is where deployments record their code location (no `pull` section in prefect.yaml).
        completed = subprocess.run(command, cwd=prefect_file.parent, env=env, timeout=DEPLOY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"`prefect deploy` did not finish within {DEPLOY_TIMEOUT_S:.0f} s") from None
    if completed.returncode != 0:
        print(f"error: `prefect deploy` failed with exit code {completed.returncode} (its output is above)", file=sys.stderr)
        return completed.returncode
    tidy_deployment_forms(api_url, spec, args.name)
    ui_url = api_url[:-len("/api")] if api_url.endswith("/api") else api_url
    print(f"registered; deployments are listed at {ui_url}/deployments")
    for pool in pools:
        print(f"start a worker for pool {pool} on each of its hosts: prefect worker start --pool {pool}")
    return 0
