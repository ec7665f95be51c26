"""How a toaflow flow run reads in the Prefect UI: named by its run id, ending in a state that says what it did.

- `run_name` is every flow's `flow_run_name`: the `run_id` parameter when given. A flow that makes up its run id
  itself calls `name_flow_run(run_id)` once it knows it, so every flow run (and every subflow run of a pipeline)
  is listed under the run id that names its folder in the store.
- `finish(summary, message)` is what a flow returns: a Completed state whose message says what the run did, or
  what it skipped and why ("Nothing new: ..."), or why the gate refused its candidate ("Blocked: ..."), carrying
  the summary dict as its result. The state is always NAMED "Completed": the Prefect UI's run lists filter by
  default on a fixed list of state names ("All except scheduled"), and a run in a state with a name of its own
  ("Blocked", say) is missing from them. A run that skipped its work or was blocked carries a tag instead
  (`nothing-new`, `blocked`), shown next to it in every list.
  The summary is also written (JSON) to the flow's Prefect result storage, so that it reaches the caller even when
  the server stalls while the run ends: see `persisted_summary`.
- `call_subflow(flow, **parameters)` runs a subflow and returns its result without Prefect linking the returned
  objects to the subflow run: a task that later receives one of them (a run id string, say) would otherwise get a
  `flow_run` input, and the UI cannot render the page of a task run with such an input. A finished subflow run
  whose result cannot be read is run again.

Outside a Prefect run (`flow.fn(...)`, unit tests) naming is a no-op.
"""
from __future__ import annotations

import logging
from typing import Any

from infra.alerts import BLOCKED

log = logging.getLogger(__name__)

# What opens the state message of a run that skipped its work, or whose candidate the gate blocked (such a run did
# its job: Completed), and the tag the run gets. BLOCKED is the alert's: infra.alerts tells someone of a pipeline run
# whose Completed state message starts with BLOCKED + ":".
NOTHING_NEW = "Nothing new"
NOTHING_NEW_TAG = "nothing-new"
BLOCKED_TAG = "blocked"


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
    if update_flow_run(context.flow_run.id, f"name the flow run {run_id}", name=run_id):
        context.flow_run.name = run_id


def tag_flow_run(tag: str) -> None:
    """Add `tag` to the current flow run's tags (shown next to the run in the UI's lists); a courtesy that never
    fails a run."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or tag in (context.flow_run.tags or []):
        return
    tags = [*(context.flow_run.tags or []), tag]  # the update replaces the list: keep the run's own tags
    if update_flow_run(context.flow_run.id, f"tag the flow run {tag!r}", tags=tags):
        context.flow_run.tags = tags


def update_flow_run(flow_run_id: Any, what: str, **fields: Any) -> bool:
    """Set `fields` (name, tags) of a flow run through the Prefect API; False (and a warning saying `what` could not
    be done) when the server refuses or cannot be reached: the run's work matters more than its label."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, **fields)
        return True
    except Exception as error:
        log.warning("could not %s: %s", what, error)
        return False


def finish(summary: dict[str, Any], message: str, *, nothing_new: bool = False, blocked: bool = False) -> Any:
    """The value a flow returns: a Completed state (named "Completed", so that the UI lists it) with `message`,
    whose result is `summary`. When the run skipped its work (`nothing_new`) or the gate refused its candidate
    (`blocked`), the message opens with "Nothing new: " or "Blocked: " and the run gets the matching tag.
    Outside a Prefect run, `summary` itself."""
    from prefect.context import FlowRunContext
    from prefect.states import Completed

    from toa_core.credentials import redact, redact_text

    if nothing_new and blocked:
        raise ValueError("finish: a run either skipped its work (nothing_new) or had its candidate blocked, not both")
    # The result and the message are stored by the Prefect server and shown in the UI: redacted like any file.
    summary, message = redact(summary), redact_text(message)
    if FlowRunContext.get() is None:
        return summary
    if nothing_new or blocked:
        label, tag = (NOTHING_NEW, NOTHING_NEW_TAG) if nothing_new else (BLOCKED, BLOCKED_TAG)
        message = f"{label}: {message}"
        tag_flow_run(tag)
    return Completed(message=message, data=persisted_summary(summary))


def persisted_summary(summary: dict[str, Any]) -> Any:
    """`summary` as a Prefect result record already written to the current flow's result storage (JSON, under
    `PREFECT_LOCAL_STORAGE_PATH` unless the server or the settings name a default storage block), or `summary`
    itself (and a warning) when it cannot be written.

    Why: when the server is slow to commit the final state (its SQLite database locked, say), the client's request
    times out after the server did commit, and Prefect's client sends it again; the server rejects the repeat as a
    duplicate transition and answers with its own copy of the state, which the engine then keeps as the run's
    final state. The server's copy carries the result only as a reference to persisted data: without one the caller
    (`flow(...)`, `state.result()`) gets `MissingResult` instead of the summary the run computed. The record is
    small (the redacted summary), one file per finished flow run, keyed by the flow run id.
    """
    from prefect.context import FlowRunContext
    from prefect.serializers import JSONSerializer

    context = FlowRunContext.get()
    if context is None or context.result_store is None or context.flow_run is None:
        return summary
    try:
        # One file holding the record's metadata and the summary (the flow's own store writes the metadata to a
        # null storage, which only Prefect's async writer accepts).
        store = context.result_store.model_copy(update={"serializer": JSONSerializer(), "metadata_storage": None})
        record = store.create_result_record(summary, key=f"toaflow-summary-{context.flow_run.id}.json")
        store.persist_result_record(record)
    except Exception as error:  # the run's result must never be lost to a storage failure: keep it in memory
        log.warning("could not write the run's summary to the Prefect result storage (%s: %s); its caller gets "
                    "it only if the server accepts the final state at once", type(error).__name__, error)
        return summary
    return record


def call_subflow(subflow: Any, **parameters: Any) -> Any:
    """Run `subflow` and return its result (raising its exception when it failed).

    Asking Prefect for the final state instead of the value keeps it from linking the returned objects to the
    subflow run, so later tasks receive plain values rather than `flow_run` inputs.

    A Completed subflow run whose result cannot be read is run again (a fresh subflow run: toaflow's flows resume
    by run id, skipping finished work). That happens when a retried parent run (the UI's Retry) reuses a subflow
    run that finished in an earlier attempt on another host, whose summary file (`persisted_summary`) is local to
    that host; or when the summary could not be written and the server stalled on the final state.
    """
    state = subflow(**parameters, return_state=True)
    if not state.is_completed():
        return state.result()  # raises the subflow's exception
    try:
        return state.result()
    except Exception as error:
        log.warning("the result of the finished %s flow run %s cannot be read (%s: %s): running it again",
                    getattr(subflow, "name", subflow), state.state_details.flow_run_id, type(error).__name__, error)
    return subflow(**parameters, return_state=True).result()
