"""The workers executor's decisions (tasks/shard_execution.py) against a scripted stand-in for Prefect: the sliding
window, resubmission of a shard whose host died, no resubmission when its worker only looked offline, and clear
failures. The real thing (server, deployment, process workers, a killed host) is tests/flows/
test_distributed_synthesis.py; this covers the same decisions in a second."""
from __future__ import annotations

import itertools
import uuid
from types import SimpleNamespace

import pytest
from prefect.client.schemas.objects import WorkerStatus
from prefect.states import Cancelled, Completed, Failed, Running, Scheduled

from infra.store import open_store
from runconfig import load_config
from tasks.shard_execution import ShardFailed, run_shards_on_workers
from tasks.synthesis import progress_key, shard_key
from tasks.synthesis_progress import SynthesisProgress
from tests.fixtures.models import tiny_config_file
from toa_core.candidate_table import candidates_to_table, table_to_parquet_bytes


class FakeCluster:
    """Prefect as the follower sees it. Each poll (read_flow_runs by id) advances every live run one step:
    scheduled -> running on a host -> `work(run, index)` decides (default: publish the shard and complete)."""

    def __init__(self, store, run_id: str, hosts=("host-a", "host-b")):
        self.store, self.run_id = store, run_id
        self.runs: dict[uuid.UUID, SimpleNamespace] = {}
        self.workers = {host: WorkerStatus.ONLINE for host in hosts}
        self.next_host = itertools.cycle(hosts)
        self.work = self.publish
        self.max_live = 0
        self.crashed_by_follower: list[tuple[str, str]] = []

    # what the follower calls
    def read_deployment_by_name(self, name):
        return SimpleNamespace(id=uuid.uuid4(), work_pool_name="toa-gpu")

    def create_run(self, name, *, parameters, timeout, as_subflow, flow_run_name, scheduled_time, tags,
                   idempotency_key):
        assert timeout == 0 and as_subflow and name == "synthesize-shard/sample-shard"
        run = SimpleNamespace(id=uuid.uuid4(), name=flow_run_name, tags=tags, labels={}, state=Scheduled(),
                              parent_task_run_id=None, index=parameters["shard_index"], steps=0)
        self.runs[run.id] = run
        return run

    def read_flow_runs(self, flow_run_filter=None, deployment_filter=None):
        if deployment_filter is not None:
            return []  # nothing to adopt
        wanted = set(flow_run_filter.id.any_)
        for run in self.runs.values():
            if run.id in wanted and not run.state.is_final():
                self.advance(run)
        self.max_live = max(self.max_live, sum(not r.state.is_final() for r in self.runs.values()))
        return [run for run in self.runs.values() if run.id in wanted]

    def read_workers_for_work_pool(self, pool):
        return [SimpleNamespace(name=name, status=status) for name, status in self.workers.items()]

    def set_flow_run_state(self, run_id, state, force=False):
        assert force
        self.runs[run_id].state = state
        self.crashed_by_follower.append((self.runs[run_id].labels["prefect.worker.name"], state.message))

    def set_task_run_state(self, *args, **kwargs):
        pass

    # the world
    def advance(self, run) -> None:
        run.steps += 1
        if run.state.is_scheduled():
            host = next(self.next_host)
            while self.workers[host] != WorkerStatus.ONLINE:  # only a live worker picks a run up
                host = next(self.next_host)
            run.labels["prefect.worker.name"] = host
            run.state = Running()
            return
        self.work(run, run.index)

    def record(self, run, index, **fields) -> None:
        self.store.write_json(progress_key(self.run_id, index),
                              {"shard": index, "attempt": str(run.id), "prompts": 1, "resumed": 0,
                               "prompts_done": 0, "generations": run.steps, "failed": 0, "updated_at": run.steps,
                               **fields})

    def publish(self, run, index) -> None:
        self.store.write_bytes(shard_key(self.run_id, index), table_to_parquet_bytes(candidates_to_table([])))
        outcome = {"index": index, "uri": f"shard-{index}", "prompts": 1, "candidates": 0, "errors": 0,
                   "retries": 0, "resumed_prompts": 0, "skipped": False}
        self.record(run, index, finished=True, outcome=outcome)
        run.state = Completed()


@pytest.fixture
def setup(tmp_path):
    config = tiny_config_file(tmp_path)
    cfg = load_config(config, {"synthesis.executor": "workers", "synthesis.max_shards_in_flight": 2,
                               "synthesis.progress_interval_s": 0.01, "synthesis.shard_retries": 1,
                               "synthesis.shard_retry_delay_s": 0})
    store = open_store(cfg.store)
    plan = [[f"prompt-{i}"] for i in range(5)]
    cluster = FakeCluster(store, "r")

    def run():
        progress = SynthesisProgress(store, lambda i: progress_key("r", i), plan, cfg.search.budget, artifact=None,
                                     run_label="r")
        outcomes = run_shards_on_workers(cfg, "r", plan, progress, parameters={"config": str(config)},
                                         client=cluster, create_run=cluster.create_run)
        return outcomes, progress

    return cluster, run


def test_a_sliding_window_of_shard_flow_runs(setup):
    cluster, run = setup
    outcomes, progress = run()
    assert [o["index"] for o in outcomes] == list(range(5))
    assert cluster.max_live == 2  # never more than max_shards_in_flight at once
    assert sorted(r.name for r in cluster.runs.values()) == [f"shard {i}/5 of r" for i in range(1, 6)]
    assert all({"run:r", f"shard:{r.index}"} <= set(r.tags) for r in cluster.runs.values())
    totals = progress.totals()
    assert (totals["prompts_done"], totals["prompts"], totals["shards_done"]) == (5, 5, 5)


def test_a_shard_whose_host_died_is_crashed_and_done_again(setup):
    cluster, run = setup

    def work(run_, index):
        if index == 0 and run_.labels["prefect.worker.name"] == "host-a":
            cluster.workers["host-a"] = WorkerStatus.OFFLINE  # the host dies: its record stops changing
            cluster.store.write_json(progress_key("r", 0), {"shard": 0, "attempt": str(run_.id), "updated_at": 1,
                                                            "prompts_done": 0, "generations": 3})
            return
        cluster.publish(run_, index)

    cluster.work = work
    outcomes, progress = run()
    assert len(outcomes) == 5
    assert [host for host, _ in cluster.crashed_by_follower] == ["host-a"]
    assert "'host-a' went offline" in cluster.crashed_by_follower[0][1]
    attempts = [r for r in cluster.runs.values() if r.index == 0]
    assert [r.labels["prefect.worker.name"] for r in attempts] == ["host-a", "host-b"]
    assert attempts[0].state.is_crashed() and attempts[1].state.is_completed()
    assert progress.totals()["generations"] >= 3  # the lost attempt's generations still count


def test_a_worker_that_only_looks_offline_keeps_its_shard(setup):
    cluster, run = setup

    def work(run_, index):
        if run_.steps < 40 and index == 0:  # a long shard whose worker misses heartbeats, while it still works
            cluster.workers["host-a"] = WorkerStatus.OFFLINE
            cluster.record(run_, index)  # a fresh record every poll: alive
            return
        cluster.workers["host-a"] = WorkerStatus.ONLINE
        cluster.publish(run_, index)

    cluster.work = work
    outcomes, _ = run()
    assert len(outcomes) == 5 and not cluster.crashed_by_follower
    assert len(cluster.runs) == 5  # nothing submitted twice


def test_failures_beyond_the_retries_fail_the_run_naming_the_shard(setup):
    cluster, run = setup

    def work(run_, index):
        if index == 2:
            run_.state = Failed(message="CUDA out of memory")
            return
        cluster.publish(run_, index)

    cluster.work = work
    with pytest.raises(ShardFailed, match=r"shard 3/5: Failed after 2 attempt\(s\): CUDA out of memory"):
        run()
    assert len([r for r in cluster.runs.values() if r.index == 2]) == 2  # one retry (shard_retries: 1)


def test_a_cancelled_shard_run_fails_the_run(setup):
    cluster, run = setup

    def cancel(run_, index):
        run_.state = Cancelled() if index == 1 else run_.state
        if index != 1:
            cluster.publish(run_, index)

    cluster.work = cancel
    with pytest.raises(ShardFailed, match=r"shard 2/5: its flow run .* was cancelled"):
        run()
