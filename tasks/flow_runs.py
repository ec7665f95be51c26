"""How a toaflow flow run reads in the Prefect UI: named by its run id, ending in a state that says what it did.

- `run_name` is every flow's `flow_run_name`: the `run_id` parameter when given. A flow that makes up its run id
  itself calls `name_flow_run(run_id)` once it knows it, so every flow run (and every subflow run of a pipeline)
  is listed under the run id that names its folder in the store.
- `finish(summary, message)` is what a flow returns: a Completed state whose message says what the run did, or
  what it skipped and why (state name "Nothing new"), carrying the summary dict as its result.
- `call_subflow(flow, **parameters)` runs a subflow and returns its result without Prefect linking the returned
  objects to the subflow run: a task that later receives one of them (a run id string, say) would otherwise get a
  `flow_run` input, and the UI cannot render the page of a task run with such an input.

Outside a Prefect run (`flow.fn(...)`, unit tests) naming is a no-op.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

NOTHING_NEW = "Nothing new"
# A pipeline run whose candidate the gate blocked: Completed (the run did its job), but named so that an
# automation can tell someone (infra.alerts matches the event `prefect.flow-run.Blocked`).
BLOCKED = "Blocked"


def run_name() -> str:
    """`flow_run_name` of every toaflow flow: the run id when the caller gave one, else the flow's name until
    `name_flow_run` renames the run (Prefect calls this with the run's parameters in `prefect.runtime`)."""
    from prefect.runtime import flow_run

    run_id = (flow_run.parameters or {}).get("run_id")
    return str(run_id) if run_id else f"{flow_run.flow_name} (new run id)"


def name_flow_run(run_id: str) -> None:
    """Rename the current flow run to `run_id` (when it has another name); a courtesy that never fails a run."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.name == run_id:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, name=run_id)
        context.flow_run.name = run_id
    except Exception as error:  # the run's work matters more than its label
        log.warning("could not name the flow run %s: %s", run_id, error)


def finish(summary: dict[str, Any], message: str, *, nothing_new: bool = False, blocked: bool = False) -> Any:
    """The value a flow returns: a Completed state named "Completed" (or "Nothing new" when the run skipped its
    work, "Blocked" when the gate refused its candidate) with `message`, whose result is `summary`. Outside a
    Prefect run, `summary` itself."""
    from prefect.context import FlowRunContext
    from prefect.states import Completed

    from toa_core.credentials import redact, redact_text

    # The result and the message are stored by the Prefect server and shown in the UI: redacted like any file.
    summary, message = redact(summary), redact_text(message)
    if FlowRunContext.get() is None:
        return summary
    name = NOTHING_NEW if nothing_new else BLOCKED if blocked else None
    return Completed(message=message, data=summary, **({"name": name} if name else {}))


def call_subflow(subflow: Any, **parameters: Any) -> Any:
    """Run `subflow` and return its result (raising its exception when it failed).

    Asking Prefect for the final state instead of the value keeps it from linking the returned objects to the
    subflow run, so later tasks receive plain values rather than `flow_run` inputs.
    """
    state = subflow(**parameters, return_state=True)
    return state.result()
