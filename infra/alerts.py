"""Someone is told when the nightly loop stops: Prefect automations that send a message through a notification
block whenever a run of the `pipeline` flow fails, crashes, or ends with its candidate blocked by the gate.

A blocked run did its job, so it ends in an ordinary Completed state (named "Completed": the UI's run lists only
show states named from a fixed list) whose message opens with "Blocked: " (tasks.flow_runs.finish). Prefect
publishes a flow-run event per state, named `prefect.flow-run.<state name>` and carrying the state's name, type
and message as labels of the flow-run resource; an event trigger matches those labels with globs. Two
automations, installed and replaced together, cover the three outcomes:

- "failed or crashed": the events `prefect.flow-run.Failed` and `prefect.flow-run.Crashed`;
- "candidate blocked": the event `prefect.flow-run.Completed` whose `prefect.state-message` matches "Blocked:*"
  (an ordinary Completed run, or one that found nothing new, "Nothing new: ...", does not match).

Two plain event triggers rather than one compound trigger: each keeps its own subject line, and each is the
simplest trigger the server evaluates (tests/infra/test_alerts.py runs them on a real Prefect server). The
message names the run (its run id is the flow run's name) and carries the state's message: the exception for a
failure, the gate's reason for a blocked candidate. Scope: every run of the `pipeline` flow (the nightly
deployment's and the ones started by hand), never its subflows (whose failure fails the pipeline too).

Where the message goes is the block's business: a Slack webhook, an e-mail service, a custom webhook (any HTTP
endpoint); docs/operations.md shows each. `toa deploy --alert-block TYPE/NAME` installs (or updates) them.
"""
from __future__ import annotations

from typing import Any

FAILED_ALERT = "toaflow: a pipeline run needs attention (failed or crashed)"
BLOCKED_ALERT = "toaflow: a pipeline run needs attention (candidate blocked)"
ALERT_AUTOMATION_NAMES = (FAILED_ALERT, BLOCKED_ALERT)
# The one automation toaflow installed before blocked runs ended "Completed" (it expected `prefect.flow-run.Blocked`,
# which no run sends any more): replaced like the current ones.
LEGACY_ALERT_NAMES = ("toaflow: a pipeline run needs attention",)
PIPELINE_FLOW = "pipeline"
BLOCKED = "Blocked"  # what opens a blocked run's state message (tasks.flow_runs.finish writes it from here)

# The UI link only when the server knows its UI address (PREFECT_UI_URL); the flow run id always.
RUN_LINK = "Prefect flow run {{ flow_run.id }}{% if flow_run|ui_url %}: {{ flow_run|ui_url }}{% endif %}"
FAILED_SUBJECT = "toaflow pipeline run {{ flow_run.name }}: {{ flow_run.state.name }}"
FAILED_BODY = ("Pipeline run {{ flow_run.name }} ended {{ flow_run.state.name }}: {{ flow_run.state.message }}\n"
               + RUN_LINK)
BLOCKED_SUBJECT = "toaflow pipeline run {{ flow_run.name }}: " + BLOCKED
# The state message opens with "Blocked: " and goes on with the gate's reason.
BLOCKED_BODY = "Pipeline run {{ flow_run.name }} ended {{ flow_run.state.message }}\n" + RUN_LINK


class AlertSetupError(RuntimeError):
    """The alert cannot be installed (unknown block, malformed slug); the message says what to fix."""


def parse_block_slug(slug: str) -> tuple[str, str]:
    """"slack-webhook/nightly" -> ("slack-webhook", "nightly"); AlertSetupError on anything else."""
    block_type, _, name = (slug or "").strip().partition("/")
    if not block_type or not name or "/" in name:
        raise AlertSetupError(f"--alert-block {slug!r}: expected BLOCK-TYPE/BLOCK-NAME, e.g. slack-webhook/nightly or "
                              "custom-webhook/ops (`prefect block ls` lists the blocks of the server)")
    return block_type, name


def alert_automations(block_document_id: Any, flow_name: str = PIPELINE_FLOW) -> list[Any]:
    """The two automations (not yet saved), each sending a notification through the block: runs of `flow_name`
    ending Failed or Crashed, and runs of `flow_name` ending Completed with a "Blocked: ..." message."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    def trigger(expect: set[str], **labels: str) -> EventTrigger:
        return EventTrigger(
            expect=expect,
            match={"prefect.resource.id": "prefect.flow-run.*", **labels},
            # The flow run's flow, a related resource: the pipeline's own runs, never its subflows'.
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_name},
            for_each={"prefect.resource.id"},  # one message per flow run
            posture="Reactive",
            threshold=1,
        )

    installed_by = "installed by `toa deploy --alert-block`; docs/operations.md"
    failed = AutomationCore(
        name=FAILED_ALERT,
        description=f"Tells someone when a run of the `{flow_name}` flow fails or crashes ({installed_by}).",
        trigger=trigger({"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}),
        actions=[SendNotification(block_document_id=block_document_id, subject=FAILED_SUBJECT, body=FAILED_BODY)])
    blocked = AutomationCore(
        name=BLOCKED_ALERT,
        description=(f"Tells someone when a run of the `{flow_name}` flow ends Completed with its candidate blocked by "
                     f"the promotion gate: a state message starting '{BLOCKED}:' ({installed_by})."),
        trigger=trigger({"prefect.flow-run.Completed"}, **{"prefect.state-message": f"{BLOCKED}:*"}),
        actions=[SendNotification(block_document_id=block_document_id, subject=BLOCKED_SUBJECT, body=BLOCKED_BODY)])
    return [failed, blocked]


def install_alerts(block_slug: str, flow_name: str = PIPELINE_FLOW) -> list[Any]:
    """Create the alert automations on the current Prefect server (PREFECT_API_URL), replacing older ones of the
    same names (and toaflow's former single automation), with the notification block `block_slug` ("TYPE/NAME")
    as their channel; returns the automation ids."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    block_type, name = parse_block_slug(block_slug)
    with get_client(sync_client=True) as client:
        try:
            block = client.read_block_document_by_name(name=name, block_type_slug=block_type)
        except ObjectNotFound:
            raise AlertSetupError(f"no notification block {block_slug!r} on the Prefect server; create it first "
                                  "(docs/operations.md, 'Alerts'), then re-run") from None
        for automation_name in (*ALERT_AUTOMATION_NAMES, *LEGACY_ALERT_NAMES):
            for existing in client.read_automations_by_name(automation_name):
                client.delete_automation(existing.id)
        return [client.create_automation(automation) for automation in alert_automations(block.id, flow_name)]
