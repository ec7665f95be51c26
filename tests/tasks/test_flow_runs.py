"""How a flow run ends (tasks.flow_runs.finish), checked through the API the Prefect UI reads: a run that found
nothing new or whose candidate the gate blocked ends in a Completed state NAMED "Completed", so the UI's run lists
show it, with a message opening "Nothing new: " / "Blocked: " and a tag (`nothing-new`, `blocked`) next to the run's
own tags.

The UI's run lists (a deployment's Runs tab, the Runs page) filter by default with "All except scheduled": every
state name of a fixed list in the UI's bundle but "Scheduled". The test reads that list from the bundle Prefect
ships and asks the API for the runs the way the UI does; a run in a state with a name of its own ("Blocked") is
missing from the answer.
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import prefect
import pytest
from prefect import flow

from tasks import flow_runs
from tasks.flow_runs import finish, run_name
from tests.fixtures.prefect import api_client, flow_runs_named


def ui_listed_state_names() -> list[str]:
    """The state names the UI's "All except scheduled" run filter asks for, read from the UI bundle."""
    assets = Path(prefect.__file__).parent / "server" / "ui" / "assets"
    for bundle in sorted(assets.glob("index-*.js")):
        for names in re.findall(r"=\[((?:`\w+`,)+`\w+`)\]", bundle.read_text(errors="replace")):
            listed = names.replace("`", "").split(",")
            if "AwaitingConcurrencySlot" in listed and "Completed" in listed:
                return [name for name in listed if name != "Scheduled"]
    pytest.fail(f"no list of state names in the Prefect UI bundle under {assets}: has the UI changed? Re-check what "
                "its run lists filter on before trusting the names toaflow's runs end in")


@flow(name="flow-runs-ending", flow_run_name=run_name)
def ending(run_id: str, outcome: str) -> dict:
    summary = {"run_id": run_id, "outcome": outcome}
    if outcome == "nothing-new":
        return finish(summary, "3 prompts already synthesized by n-1 (3)", nothing_new=True)
    if outcome == "blocked":
        return finish(summary, "NOT promoted (latest unchanged): blocked by mini.rm_win_rate", blocked=True)
    return finish(summary, "promoted to latest: first run")


def test_every_ending_is_listed_by_the_ui_and_says_what_happened(prefect_harness):
    listed = ui_listed_state_names()
    assert "Completed" in listed and "Failed" in listed and "Blocked" not in listed
    suffix = uuid.uuid4().hex[:8]
    names = {outcome: f"{outcome}-{suffix}" for outcome in ("promoted", "nothing-new", "blocked")}
    states = {}
    with prefect.tags("nightly"):  # a tag the run had already (a deployment's, say) stays
        for outcome, name in names.items():
            states[outcome] = ending(run_id=name, outcome=outcome, return_state=True)
    assert {outcome: state.name for outcome, state in states.items()} == dict.fromkeys(names, "Completed")
    assert states["blocked"].message == "Blocked: NOT promoted (latest unchanged): blocked by mini.rm_win_rate"
    assert states["nothing-new"].message == "Nothing new: 3 prompts already synthesized by n-1 (3)"
    assert states["promoted"].message == "promoted to latest: first run"
    assert states["blocked"].result() == {"run_id": names["blocked"], "outcome": "blocked"}

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterState, \
        FlowRunFilterStateName

    with api_client() as client:
        runs = {run.name: run for run in flow_runs_named(client, *names.values())}
        # What the UI's run list asks for by default: these names and the state names it shows.
        ui_list = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=list(names.values())),
            state=FlowRunFilterState(name=FlowRunFilterStateName(any_=listed))))
    assert sorted(run.name for run in ui_list) == sorted(names.values())
    assert {outcome: sorted(runs[name].tags) for outcome, name in names.items()} == {
        "promoted": ["nightly"], "nothing-new": ["nightly", "nothing-new"], "blocked": ["blocked", "nightly"]}


def test_finish_outside_a_run_and_its_arguments():
    assert finish({"a": 1}, "Blocked", blocked=True) == {"a": 1}  # flow.fn(...), unit tests: the summary itself
    with pytest.raises(ValueError, match="not both"):
        finish({}, "?", nothing_new=True, blocked=True)


def test_a_label_the_server_refuses_never_fails_the_run(monkeypatch, caplog):
    import prefect.client.orchestration

    def unreachable(*args, **kwargs):
        raise ConnectionError("the Prefect server is restarting")

    monkeypatch.setattr(prefect.client.orchestration, "get_client", unreachable)
    assert flow_runs.update_flow_run(uuid.uuid4(), "tag the flow run 'blocked'", tags=["blocked"]) is False
    assert "could not tag the flow run 'blocked': the Prefect server is restarting" in caplog.text
