"""Someone is told when the nightly loop stops: a Prefect automation that sends a message through a notification
block whenever a run of the `pipeline` flow fails, crashes, or ends with its candidate blocked by the gate.

The pipeline ends a blocked run in a Completed state named "Blocked" (tasks.flow_runs.BLOCKED), so the three
outcomes are three flow-run events (`prefect.flow-run.Failed`, `.Crashed`, `.Blocked`) that one event trigger
matches. The message names the run (its run id is the flow run's name) and carries the state's message: the
exception for a failure, the gate's reason for a blocked candidate. Scope: every run of the `pipeline` flow (the
nightly deployment's and the ones started by hand), never its subflows (whose failure fails the pipeline too).

Where the message goes is the block's business: a Slack webhook, an e-mail service, a custom webhook (any HTTP
endpoint); docs/operations.md shows each. `toa deploy --alert-block TYPE/NAME` installs (or updates) the automation.
"""
from __future__ import annotations

from typing import Any

ALERT_AUTOMATION_NAME = "toaflow: a pipeline run needs attention"
ALERT_STATES = ("Failed", "Crashed", "Blocked")  # "Blocked" = tasks.flow_runs.BLOCKED
PIPELINE_FLOW = "pipeline"

SUBJECT = "toaflow pipeline run {{ flow_run.name }}: {{ flow_run.state.name }}"
# The UI link only when the server knows its UI address (PREFECT_UI_URL); the flow run id always.
BODY = ("Pipeline run {{ flow_run.name }} ended {{ flow_run.state.name }}: {{ flow_run.state.message }}\n"
        "Prefect flow run {{ flow_run.id }}{% if flow_run|ui_url %}: {{ flow_run|ui_url }}{% endif %}")


class AlertSetupError(RuntimeError):
    """The alert cannot be installed (unknown block, malformed slug); the message says what to fix."""


def parse_block_slug(slug: str) -> tuple[str, str]:
    """"slack-webhook/nightly" -> ("slack-webhook", "nightly"); AlertSetupError on anything else."""
    block_type, _, name = (slug or "").strip().partition("/")
    if not block_type or not name or "/" in name:
        raise AlertSetupError(f"--alert-block {slug!r}: expected BLOCK-TYPE/BLOCK-NAME, e.g. slack-webhook/nightly or "
                              "custom-webhook/ops (`prefect block ls` lists the blocks of the server)")
    return block_type, name


def alert_automation(block_document_id: Any, flow_name: str = PIPELINE_FLOW) -> Any:
    """The automation (not yet saved): runs of `flow_name` ending Failed, Crashed or Blocked -> a notification."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    trigger = EventTrigger(
        expect={f"prefect.flow-run.{state}" for state in ALERT_STATES},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_name},
        for_each={"prefect.resource.id"},  # one message per flow run
        posture="Reactive",
        threshold=1,
    )
    return AutomationCore(name=ALERT_AUTOMATION_NAME, description=(
        f"Tells someone when a run of the `{flow_name}` flow fails, crashes or ends with its candidate blocked by the "
        "promotion gate (installed by `toa deploy --alert-block`; docs/operations.md)."),
        trigger=trigger, actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)])


def install_alerts(block_slug: str, flow_name: str = PIPELINE_FLOW) -> Any:
    """Create the alert automation on the current Prefect server (PREFECT_API_URL), replacing an older one of the
    same name, with the notification block `block_slug` ("TYPE/NAME") as its channel; returns the automation id."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    block_type, name = parse_block_slug(block_slug)
    with get_client(sync_client=True) as client:
        try:
            block = client.read_block_document_by_name(name=name, block_type_slug=block_type)
        except ObjectNotFound:
            raise AlertSetupError(f"no notification block {block_slug!r} on the Prefect server; create it first "
                                  "(docs/operations.md, 'Alerts'), then re-run") from None
        for existing in client.read_automations_by_name(ALERT_AUTOMATION_NAME):
            client.delete_automation(existing.id)
        return client.create_automation(alert_automation(block.id, flow_name))
