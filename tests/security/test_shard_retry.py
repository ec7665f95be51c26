"""Retries that retry (issue 21), against a real Prefect server: the key semantics are the server's.

A shard's flow run is created with an idempotency key; Prefect hands back the existing flow run for a key it has
seen. On the old main the key was `<parent flow-run id>/shard-i/attempt-<n>`: a retried parent keeps its flow-run
id and counts n from 0 again, so its retry got the old failed shard run back and failed the same way. Here the
parent (the synthesize flow with one flow retry, as the UI's Retry button or `retries:` would run it again) has its
only shard run fail on the first attempt; the retry submits a new shard run, a worker samples it, the run finishes.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from infra.store import open_store
from tests.faults.helpers import REPO, samples_table, toa_env, write_prompts
from tests.fixtures.prefect import api_client, prefect_cli_env, start_worker, stop_process
from tests.fixtures.waiting import wait_for
from tests.flows.test_distributed_synthesis import (load_server, load_server_config, shard_deployment,  # noqa: F401
                                                    shard_runs)

# The final state decides the exit code: an in-process flow call re-raises its first attempt's error even when a
# retry completed (Prefect 3.8), so the state, not the call, tells whether the run finished.
PARENT = ("import sys; from flows.synthesize import synthesize; "
          "state = synthesize.with_options(retries=1, retry_delay_seconds=1)(config='retry.yaml', run_id='retried', "
          "return_state=True); print(state.name, state.message); sys.exit(0 if state.is_completed() else 1)")


@pytest.mark.slow  # a real server, a worker and two parent attempts: about a minute
@pytest.mark.timeout(900)
def test_a_retried_parent_resubmits_its_failed_shard_and_finishes(shard_deployment, prefect_server_home,  # noqa: F811
                                                                  tmp_path, load_server):  # noqa: F811
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.states import Failed

    folder = tmp_path / "configs"  # the operator's config folder on the "hosts": shards take the config by name
    folder.mkdir()
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    load_server_config(folder / "retry.yaml", load_server, tmp_path / "store", prompts, executor="workers",
                       max_shards_in_flight=1, progress_interval_s=1, shard_retries=0)
    env = {"PYTHONPATH": str(REPO), "TOAFLOW_CONFIG_DIR": str(folder)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=toa_env(**prefect_cli_env(shard_deployment, prefect_server_home, **env)))
    worker = None
    try:
        # Attempt 1: no worker yet; its shard run fails (as a shard whose host hit an error would).
        first = wait_for(lambda: parent.poll() is not None or shard_runs(shard_deployment, "retried"), 300,
                         "the first shard run", poll_s=0.2)
        assert parent.poll() is None, parent.communicate()[1][-3000:]
        with api_client(shard_deployment) as client:
            client.set_flow_run_state(first[0].id, Failed(message="injected: the shard's host failed"), force=True)
        # Attempt 2 of the same parent flow run submits the shard again, under a new key: a new flow run.
        wait_for(lambda: parent.poll() is not None or len(shard_runs(shard_deployment, "retried")) > 1, 180,
                 "the retried parent's new shard run", poll_s=0.2)
        assert parent.poll() is None, parent.communicate()[1][-3000:]
        worker = start_worker(shard_deployment, prefect_server_home, "toa-gpu", tmp_path / "worker.log",
                              cwd=tmp_path, name="retry-host", limit=1, TOAFLOW_WORKDIR=str(tmp_path / "work"), **env)
        stdout, stderr = parent.communicate(timeout=600)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
        if worker is not None:
            stop_process(worker)
    log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:] if worker else ""
    assert parent.returncode == 0, stdout[-2000:] + stderr[-5000:] + log

    runs = sorted(shard_runs(shard_deployment, "retried"), key=lambda run: run.created)
    assert [run.state.type.value for run in runs] == ["FAILED", "COMPLETED"]
    with api_client(shard_deployment) as client:
        [synthesis] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["retried"])))
    assert synthesis.state.is_completed() and synthesis.run_count == 2  # one flow run, retried once
    rows = samples_table(open_store(str(tmp_path / "store")), "retried")
    assert len({row["prompt_id"] for row in rows}) == 4


def test_shard_keys_differ_between_parent_attempts_and_repeat_within_one():
    from tasks.shard_execution import shard_idempotency_key

    first, again = shard_idempotency_key("parent", 1, 3, 0), shard_idempotency_key("parent", 1, 3, 0)
    retried = shard_idempotency_key("parent", 2, 3, 0)  # the same flow run id, its second run attempt
    assert first == again and retried != first
    assert len({shard_idempotency_key("parent", 1, index, 0) for index in range(3)}) == 3
