"""One synthesis run spread over several hosts: a real Prefect server on loopback, the `sample-shard` deployment,
two process workers (each its own process, working folder and name, as two GPU hosts would be), and `toa
synthesize` with `synthesis.executor: workers`. One worker is killed with SIGKILL (with its flow-run processes:
a host that dies) while it samples; the run still ends with every prompt synthesized exactly once, only the
generations in flight are requested again, and the datasets equal those of a one-process run.

The default tier runs it with load-server agents (fast shard processes, exact request counts); the slow tier
runs the same on configs/tiny.yaml's in-process tiny models, counting generations through a ledger that
tests/flows/ledger/sitecustomize.py keeps in every process of the test.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from infra.store import open_store
from tests.faults.helpers import REPO, TOA, samples_table, toa_env, write_config, write_prompts
from tests.fixtures.models import tiny_config_file
from tests.fixtures.prefect import prefect_cli_env, start_worker, stop_process
from tests.fixtures.waiting import wait_for

LEDGER_DIR = Path(__file__).resolve().parent / "ledger"
WORKERS = ("host-a", "host-b")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (any session), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_host(worker: subprocess.Popen) -> None:
    """SIGKILL a worker and every process below it at once (its flow runs live in sessions of their own)."""
    victims = [worker.pid, *descendants(worker.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait(timeout=30)


def shard_runs(api_url: str, run_id: str):
    """The flow runs of run `run_id`'s shards, through the real server's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{run_id}"])))


def checkpointed(store_root: Path, run_id: str, index: int) -> int:
    return len(list((store_root / "runs" / run_id / "checkpoints" / f"shard-{index:05d}").glob("*.parquet")))


def dataset_rows(store, run_id: str) -> dict[str, list[dict]]:
    """Every dataset split's rows, provenance columns included, in a stable order."""
    rows = {}
    for kind in ("sft", "dpo"):
        for split in ("train", "test"):
            table = pq.read_table(io.BytesIO(store.read_bytes(f"runs/{run_id}/datasets/{kind}/{split}.parquet")))
            rows[f"{kind}/{split}"] = sorted(table.to_pylist(), key=repr)
    return rows


@pytest.fixture(scope="module")
def shard_deployment(prefect_server, prefect_server_home, tmp_path_factory):
    """The sample-shard deployment on the session's server: `toa deploy --name sample-shard` unless a test before
    (tests/flows/test_deployments.py deploys everything) registered it already."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name("synthesize-shard/sample-shard")
            return prefect_server
        except ObjectNotFound:
            pass
    env = prefect_cli_env(prefect_server, prefect_server_home)
    deployed = subprocess.run([str(TOA), "deploy", "--name", "sample-shard", "--gpu-slots", "2"], env=env,
                              cwd=tmp_path_factory.mktemp("deploy"), capture_output=True, text=True, timeout=600)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    return prefect_server


class Hosts:
    """Two process workers of pool toa-gpu, each in its own working folder, one shard at a time each."""

    def __init__(self, api_url: str, home: Path, root: Path, **env: str):
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        for name in WORKERS:
            folder = root / name
            folder.mkdir(parents=True)
            self.logs[name] = folder / "worker.log"
            self.processes[name] = start_worker(api_url, home, "toa-gpu", self.logs[name], cwd=folder, name=name,
                                                limit=1, PREFECT_WORKER_HEARTBEAT_SECONDS="2",
                                                TOAFLOW_WORKDIR=str(folder / "work"), **env)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                stop_process(process)

    def log_tails(self) -> str:
        return "".join(f"\n--- {name} ---\n{path.read_text(errors='replace')[-4000:]}"
                       for name, path in self.logs.items())


def run_and_kill_one_host(api_url: str, home: Path, tmp_path: Path, config: Path, run_id: str, *, shard_size: int,
                          env: dict[str, str], timeout_s: float) -> tuple[subprocess.CompletedProcess, dict]:
    """`toa synthesize` on two hosts; SIGKILL host-a once one of its shards is part-way. Returns the finished
    process and what was seen at the kill (shard index, prompts checkpointed)."""
    store_root = Path(yaml.safe_load(config.read_text())["store"]["root"])
    hosts = Hosts(api_url, home, tmp_path / "hosts", **env)
    cli_env = toa_env(**prefect_cli_env(api_url, home, **env))
    parent = subprocess.Popen([str(TOA), "synthesize", "--config", str(config), "--run-id", run_id], cwd=REPO,
                              env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict = {}
    try:
        def host_a_part_way():
            if parent.poll() is not None:
                return True
            for run in shard_runs(api_url, run_id):
                if run.labels.get("prefect.worker.name") == "host-a" and run.state and run.state.is_running():
                    index = int(next(t for t in run.tags if t.startswith("shard:")).split(":")[1])
                    if 1 <= checkpointed(store_root, run_id, index) < shard_size:
                        seen.update(shard=index, flow_run=run.id)
                        return True
            return False

        wait_for(host_a_part_way, timeout_s, "a shard part-way on host-a", poll_s=0.05)
        assert parent.poll() is None, f"the run ended before the kill:\n{parent.stderr.read()[-3000:]}"
        kill_host(hosts.processes["host-a"])
        seen["checkpointed"] = checkpointed(store_root, run_id, seen["shard"])
        stdout, stderr = parent.communicate(timeout=timeout_s)
    except BaseException:
        parent.kill()
        parent.communicate()
        hosts.stop()
        raise
    hosts.stop()
    finished = subprocess.CompletedProcess(parent.args, parent.returncode, stdout, stderr + hosts.log_tails())
    return finished, seen


def check_distributed_run(api_url: str, store, run_id: str, seen: dict, n_prompts: int, budget: int) -> None:
    """Both hosts ran shards, the killed host's shard was crashed and done again, every prompt exactly once."""
    runs = shard_runs(api_url, run_id)
    by_worker = Counter(run.labels.get("prefect.worker.name") for run in runs)
    assert set(by_worker) == set(WORKERS), by_worker  # flow-run records name each worker
    killed = next(run for run in runs if run.id == seen["flow_run"])
    assert killed.state.is_crashed() and "'host-a' went offline" in killed.state.message
    redo = [run for run in runs if f"shard:{seen['shard']}" in run.tags and run.id != killed.id]
    assert [run.labels.get("prefect.worker.name") for run in redo] == ["host-b"] and redo[0].state.is_completed()
    assert all(run.name.startswith("shard ") and f" of {run_id}" in run.name for run in runs)

    rows = samples_table(store, run_id)
    per_prompt = Counter(row["prompt_id"] for row in rows)
    assert len(per_prompt) == n_prompts and set(per_prompt.values()) == {budget}  # none missing, none twice
    assert len({row["candidate_id"] for row in rows}) == len(rows)
    manifest = store.read_json(f"runs/{run_id}/manifest.json")
    assert manifest["stages"]["sample"]["counts"]["prompts_resumed_from_checkpoints"] >= seen["checkpointed"]
    assert manifest["stages"]["rank"]["status"] == "finished"


@pytest.fixture
def load_server():
    from bench.loadserver import LoadServer

    with LoadServer(token_delay_ms=6, response_tokens=8) as server:  # ~50 ms a generation
        yield server


def load_server_config(path: Path, server, store_root: Path, prompts: Path, **synthesis) -> Path:
    extra = {f"synthesis__{key}": value for key, value in synthesis.items()}
    return write_config(path, prompts=prompts, store={"root": str(store_root)}, budget=4, shard_size=4,
                        prompt_concurrency=1, agents=[{"name": n, "url": server.base_url} for n in "abc"], **extra)


def test_one_run_on_two_hosts_equals_one_process(shard_deployment, prefect_server_home, tmp_path, load_server,
                                                  prefect_harness):
    """Two shards, two hosts: each host runs one shard flow run, children of the synthesis run."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    config = load_server_config(tmp_path / "two-hosts.yaml", load_server, tmp_path / "store", prompts,
                                executor="workers", max_shards_in_flight=2, progress_interval_s=1)
    # Shard flow runs are deployment runs: they take the config by name from the operator's folder of their host.
    operator = {"TOAFLOW_CONFIG_DIR": str(tmp_path)}
    hosts = Hosts(shard_deployment, prefect_server_home, tmp_path / "hosts", PYTHONPATH=str(REPO), **operator)
    try:
        finished = subprocess.run([str(TOA), "synthesize", "--config", str(config), "--run-id", "pair"], cwd=REPO,
                                  env=toa_env(**prefect_cli_env(shard_deployment, prefect_server_home, **operator)),
                                  capture_output=True, text=True, timeout=600)
    finally:
        hosts.stop()
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-6000:] + hosts.log_tails()
    assert "shard 1/2 done" in finished.stderr and "shard 2/2 done" in finished.stderr

    runs = shard_runs(shard_deployment, "pair")
    assert sorted(run.name for run in runs) == ["shard 1/2 of pair", "shard 2/2 of pair"]
    assert {run.labels.get("prefect.worker.name") for run in runs} == set(WORKERS)  # one shard on each host
    assert all(run.state.is_completed() and run.parent_task_run_id for run in runs)  # children of the run
    store = open_store(str(tmp_path / "store"))
    per_prompt = Counter(row["prompt_id"] for row in samples_table(store, "pair"))
    assert len(per_prompt) == 8 and set(per_prompt.values()) == {4}
    assert load_server.stats()["received"] == 8 * 4

    from flows.synthesize import synthesize

    local = load_server_config(tmp_path / "one-process.yaml", load_server, tmp_path / "local-store", prompts)
    synthesize(config=str(local), run_id="pair")
    assert dataset_rows(store, "pair") == dataset_rows(open_store(str(tmp_path / "local-store")), "pair")


@pytest.mark.slow
def test_a_host_killed_mid_shard_costs_only_its_prompts_in_flight(shard_deployment, prefect_server_home, tmp_path,
                                                                  load_server, prefect_harness):
    n_prompts, shard_size, budget, concurrency = 16, 4, 4, 1
    prompts = write_prompts(tmp_path / "prompts.jsonl", n_prompts)
    config = load_server_config(tmp_path / "two-hosts.yaml", load_server, tmp_path / "store", prompts,
                                executor="workers", max_shards_in_flight=2, progress_interval_s=1, shard_retries=1,
                                shard_retry_delay_s=0)
    finished, seen = run_and_kill_one_host(shard_deployment, prefect_server_home, tmp_path, config, "spread",
                                           shard_size=shard_size, timeout_s=400,
                                           env={"PYTHONPATH": str(REPO), "TOAFLOW_CONFIG_DIR": str(tmp_path)})
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-8000:]

    store = open_store(str(tmp_path / "store"))
    check_distributed_run(shard_deployment, store, "spread", seen, n_prompts, budget)
    # The killed shard lost only its prompt in flight: every other generation was requested exactly once.
    re_requested = load_server.stats()["received"] - n_prompts * budget
    assert 0 <= re_requested <= concurrency * budget


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_tiny_config_on_two_hosts_with_one_killed_equals_one_process(shard_deployment, prefect_server_home, tmp_path,
                                                                     prefect_harness, tiny_llama_dir, tiny_reward_dir):
    """The done-when test of the issue, on configs/tiny.yaml: 6 shards on two hosts, one killed mid-shard."""
    n_prompts, shard_size, concurrency = 24, 4, 1
    synthesis = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["synthesis"]
    synthesis.update(shard_size=shard_size, executor="workers", max_shards_in_flight=2, progress_interval_s=1,
                     shard_retries=1, shard_retry_delay_s=0)
    synthesis["prompts"].update(source=str(REPO / "data" / "prompts" / "mixed_instructions.jsonl"), limit=n_prompts)
    search = {**yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["search"], "prompt_concurrency": concurrency}
    config = tiny_config_file(tmp_path, "tiny-workers.yaml", synthesis=synthesis, search=search)
    budget = search["budget"]
    ledger = tmp_path / "generations.ledger"
    env = {"PYTHONPATH": f"{LEDGER_DIR}{os.pathsep}{REPO}", "TOAFLOW_TEST_LEDGER": str(ledger),
           "TOAFLOW_CONFIG_DIR": str(tmp_path)}
    finished, seen = run_and_kill_one_host(shard_deployment, prefect_server_home, tmp_path, config, "tiny-spread",
                                           shard_size=shard_size, env=env, timeout_s=900)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-8000:]

    store = open_store(str(tmp_path / "store"))
    check_distributed_run(shard_deployment, store, "tiny-spread", seen, n_prompts, budget)
    assert len(shard_runs(shard_deployment, "tiny-spread")) >= 6 + 1  # 6 shards, one of them twice
    requested = len(ledger.read_text().splitlines())
    assert 0 <= requested - n_prompts * budget <= concurrency * budget

    from flows.synthesize import synthesize

    synthesis.update(executor="local", max_shards_in_flight=1)
    (tmp_path / "local").mkdir()
    local = tiny_config_file(tmp_path / "local", "tiny-local.yaml", synthesis=synthesis, search=search)
    synthesize(config=str(local), run_id="tiny-spread")
    assert dataset_rows(store, "tiny-spread") == dataset_rows(open_store(str(tmp_path / "local" / "store")),
                                                              "tiny-spread")
