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

import json
import re
import uuid
from pathlib import Path

import prefect
import pytest
from prefect import flow

from tasks import flow_runs
from tasks.flow_runs import finish, run_name
from tests.fixtures.prefect import api_client, artifacts_by_flow_run, flow_runs_named


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


class FinalStateStall:
    """The Prefect server commits a run's final (Completed) state but its answer never arrives in time, as when its
    SQLite database stays locked past the client's request timeout: the client sends the request again and the
    server rejects the repeat as a duplicate transition, answering with its own copy of the state."""

    def __init__(self, monkeypatch) -> None:
        import httpx

        self.stalled: list[str] = []
        real_send = httpx.Client.send

        def send(client, request, *args, **kwargs):
            response = real_send(client, request, *args, **kwargs)
            if request.method == "POST" and re.search(r"/flow_runs/[^/]+/set_state$", request.url.path):
                state = json.loads(request.content)["state"]
                transition = state["state_details"]["transition_id"]
                if state["type"] == "COMPLETED" and transition not in self.stalled:  # the first send only
                    self.stalled.append(transition)
                    raise httpx.ReadTimeout("no answer from the server in time", request=request)
            return response

        monkeypatch.setattr(httpx.Client, "send", send)
        # The client's back-off before it sends again (2 s a time) is no part of what is tested.
        import time
        from types import SimpleNamespace

        import prefect.client.base

        monkeypatch.setattr(prefect.client.base, "time", SimpleNamespace(**{**vars(time), "sleep": lambda _: None}))


@flow(name="flow-runs-nightly", flow_run_name=run_name)
def nightly(run_id: str) -> dict:
    stage = flow_runs.call_subflow(ending, run_id=f"{run_id}-stage", outcome="promoted")
    return finish({"run_id": run_id, "stage": stage}, "2 prompts already synthesized by n-1 (2)", nothing_new=True)


def test_a_summary_reaches_its_caller_when_the_server_stalls_on_the_final_state(prefect_harness, monkeypatch):
    """A run's summary is never lost to a slow server: not by a subflow's caller (`call_subflow`), not by the caller
    of a top-level run, and the state still says what the run did."""
    stall = FinalStateStall(monkeypatch)
    name = f"stalled-{uuid.uuid4().hex[:8]}"
    assert nightly(run_id=name) == {"run_id": name,
                                    "stage": {"run_id": f"{name}-stage", "outcome": "promoted"}}
    assert len(stall.stalled) == 2  # the subflow's final state and the pipeline's: both answered by a repeat
    state = ending(run_id=f"{name}-blocked", outcome="blocked", return_state=True)
    assert len(stall.stalled) == 3
    assert (state.name, state.message) == ("Completed", "Blocked: NOT promoted (latest unchanged): blocked by "
                                                        "mini.rm_win_rate")
    assert state.result() == {"run_id": f"{name}-blocked", "outcome": "blocked"}
    # What made it survive: the server's copy points at the summary, written as JSON to the result storage.
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    written = Path(state.data.storage_key)
    assert written.parent == PREFECT_LOCAL_STORAGE_PATH.value().resolve()
    assert written.name == f"toaflow-summary-{state.state_details.flow_run_id}.json"
    record = json.loads(written.read_text())  # the record: its metadata, and the summary serialized as JSON
    assert (record["metadata"]["serializer"]["type"], json.loads(record["result"])) == (
        "json", {"run_id": f"{name}-blocked", "outcome": "blocked"})
    with api_client() as client:
        runs = {run.name: run for run in flow_runs_named(client, name, f"{name}-blocked")}
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        recorded = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        shown = artifacts_by_flow_run(client, [state.state_details.flow_run_id])
    # The server records the reference as an untyped, unkeyed artifact, which the UI's run page does not list.
    assert [(artifact.type, artifact.key, str(written) in str(artifact.data)) for artifact in recorded] == [
        (None, None, True)]
    assert shown == {state.state_details.flow_run_id: []}
    assert {run_name: (run.state.name, run.state.message.split(":")[0], run.tags)
            for run_name, run in runs.items()} == {name: ("Completed", "Nothing new", ["nothing-new"]),
                                                   f"{name}-blocked": ("Completed", "Blocked", ["blocked"])}


def test_a_summary_the_result_storage_refuses_still_ends_the_run(prefect_harness, monkeypatch, caplog):
    from prefect.results import ResultStore

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ResultStore, "persist_result_record", full_disk)
    name = f"no-storage-{uuid.uuid4().hex[:8]}"
    state = ending(run_id=name, outcome="nothing-new", return_state=True)
    assert (state.name, state.message) == ("Completed", "Nothing new: 3 prompts already synthesized by n-1 (3)")
    assert state.result() == {"run_id": name, "outcome": "nothing-new"}
    assert "could not write the run's summary to the Prefect result storage (OSError" in caplog.text


stage_runs: list[str] = []


@flow(name="flow-runs-stage", flow_run_name=run_name)
def stage(run_id: str) -> dict:
    from prefect.runtime import flow_run

    stage_runs.append(flow_run.get_id())
    return finish({"run_id": run_id, "flow_run_id": flow_run.get_id()}, "trained 2 stages")


@flow(name="flow-runs-retried", flow_run_name=run_name, retries=1, retry_delay_seconds=0)
def retried(run_id: str, lose_summary: bool) -> dict:
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    summary = flow_runs.call_subflow(stage, run_id=run_id)
    if flow_run.run_count == 1:
        if lose_summary:  # the retry runs on another host: the first attempt's summary file is not there
            (PREFECT_LOCAL_STORAGE_PATH.value() / f"toaflow-summary-{summary['flow_run_id']}.json").unlink()
        raise RuntimeError("training failed")
    return {"run_id": run_id, "stage_run_id": summary["flow_run_id"]}  # a value: Prefect would raise the first
    # attempt's error for a returned state (FlowRunEngine.result checks _raised before the state)


def test_a_retried_run_reuses_a_finished_subflow_or_runs_it_again_when_its_summary_is_gone(prefect_harness, caplog):
    """Prefect reuses a subflow run that finished in an earlier attempt of its parent (its result is persisted);
    when that result cannot be read any more the subflow runs again instead of failing the retry."""
    name = f"retried-{uuid.uuid4().hex[:8]}"
    stage_runs.clear()
    assert retried(run_id=name, lose_summary=False) == {"run_id": name, "stage_run_id": stage_runs[0]}
    assert len(stage_runs) == 1  # reused, not run twice
    stage_runs.clear()
    result = retried(run_id=f"{name}-lost", lose_summary=True)
    assert len(stage_runs) == 2 and result == {"run_id": f"{name}-lost", "stage_run_id": stage_runs[1]}
    assert f"the result of the finished flow-runs-stage flow run {stage_runs[0]} cannot be read" in caplog.text
