"""Deployments end to end: a real Prefect server on loopback, `toa deploy`, a process worker, and the pipeline
deployment triggered from the CLI on the tiny config, as an operator would do it (docs/operations.md)."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import timezone
from pathlib import Path

import pytest
import yaml

from infra.incremental import prompt_counts
from infra.registry import latest_run_id, promotion_history
from infra.store import open_store
from tests.fixtures.prefect import (PREFECT_BIN, api_client, artifacts_by_flow_run, flow_run_inputs, flow_runs_named,
                                    prefect_cli_env, start_worker, stop_process)

REPO = Path(__file__).resolve().parents[2]
TOA = Path(sys.executable).with_name("toa")
SCHEDULE_TIMEOUT_S = 120.0


def scheduled_runs(client, deployment_id):
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))


def test_prefect_yaml_declares_the_operations_contract():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {(d["entrypoint"].rpartition(":")[2], d["name"]): d for d in spec["deployments"]}
    assert set(by_name) == {("synthesize", "on-demand"), ("synthesize_shard", "sample-shard"), ("train", "on-demand"),
                            ("evaluate", "on-demand"), ("pipeline", "nightly")}
    assert by_name[("synthesize_shard", "sample-shard")]["work_pool"]["name"] == "toa-gpu"
    nightly = by_name[("pipeline", "nightly")]
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert nightly["schedules"][0]["cron"] and nightly["schedules"][0]["timezone"] == "UTC"
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"toa-cpu", "toa-gpu"}
    for deployment in spec["deployments"]:
        module = deployment["entrypoint"].partition(":")[0]
        assert (REPO / module).is_file(), deployment["entrypoint"]
        assert deployment["enforce_parameter_schema"] is True


def test_deployment_forms_show_optional_parameters_as_plain_fields():
    """`toa deploy` tidies each deployment's parameter schema: `X | None = None` becomes a plain X field that may
    stay empty, and what the server accepts stays the same (validated as the server does)."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.synthesize import synthesize
    from toaflow.commands.deploy import tidy_parameter_schema

    raw = parameter_schema(synthesize).model_dump()
    assert {"type": "null"} in raw["properties"]["run_id"]["anyOf"]  # what Prefect renders as a None switch
    tidied = tidy_parameter_schema(raw)
    for name in ("run_id", "prompts"):
        assert tidied["properties"][name]["type"] == "string" and "default" not in tidied["properties"][name]
    assert tidied["properties"]["limit"]["type"] == "integer"
    assert tidied["properties"]["overrides"]["$ref"] == "#/definitions/RunOverrides"
    assert tidied["properties"]["config"] == raw["properties"]["config"]  # a real choice is left alone
    assert raw["properties"]["run_id"]["anyOf"]  # the input is not modified
    for accepted in ({}, {"run_id": None, "limit": None}, {"run_id": "r", "limit": 3, "overrides": {"search_budget": 4}},
                     {"config": "team/mine.yaml"}):  # a config name in the operator's folder
        validate(accepted, tidied, raise_on_error=True)
    for refused in ({"overrides": {"trust_remote_code": True}}, {"config": {"name": "inline"}}, {"limit": "many"},
                    {"config": "/srv/configs/mine.yaml"}, {"config": "../configs/x.yaml"}):  # paths, not names
        with pytest.raises(Exception, match="Validation failed"):
            validate(refused, tidied, raise_on_error=True)


def test_toa_deploy_reports_an_unreachable_server(capsys):
    from tests.fixtures.prefect import free_port
    from toaflow.cli import main

    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    assert main(["deploy", "--api-url", url]) == 2
    err = capsys.readouterr().err
    assert f"the Prefect server at {url} is unreachable" in err and "make ui" in err
    assert main(["deploy", "--api-url", url, "--gpu-slots", "0"]) == 2
    assert "--gpu-slots must be at least 1" in capsys.readouterr().err


@pytest.mark.timeout(1200)
# The second night (nothing new, run by the worker) is slow-tier: how a nothing-new night ends on a real server
# (Completed, message, tag, no artifacts) is checked by tests/infra/test_alerts.py ("alert-nothing"), the
# incremental rule by tests/flows/test_pipeline.py, and a worker running the deployment by the first night.
@pytest.mark.parametrize("nights", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["one-night", "two-nights"])
def test_deploy_then_run_the_pipeline_deployment_from_the_cli(nights, prefect_server, prefect_server_home, tmp_path):
    env = prefect_cli_env(prefect_server, prefect_server_home)
    store_root = tmp_path / "artifacts"
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config["store"] = {"root": str(store_root)}
    # The smallest run that still exercises every stage: 3 prompts x 6 generations, 2 steps per stage.
    three_prompts = tmp_path / "three.jsonl"  # every prompt is taken on the first night: the second finds none
    three_prompts.write_text("".join((REPO / "data" / "prompts" / "mixed_instructions.jsonl").read_text()
                                     .splitlines(keepends=True)[:3]))
    config["synthesis"]["prompts"] = {"source": str(three_prompts)}
    config["search"]["budget"] = 6
    config["synthesis"]["ranking"]["dpo_rejected_rank"] = 3
    config["training"]["sft"]["max_steps"] = config["training"]["dpo"]["max_steps"] = 2
    # The config keeps tiny.yaml's gate (promote=true needs one). Random tiny models answer nothing, so the gate,
    # failing closed, blocks the candidate: the run still ends Completed ("Blocked: ..."), which is what this test
    # is about (the gate's rules are tested in tests/infra/test_promotion.py and tests/security/test_gate.py).
    operator_configs = tmp_path / "operator-configs"  # the worker's TOAFLOW_CONFIG_DIR: runs name configs in it
    operator_configs.mkdir()
    config_path = operator_configs / "tiny-deployed.yaml"
    config_path.write_text(yaml.safe_dump(config))

    deploy = subprocess.run([str(TOA), "deploy", "--gpu-slots", "2"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=900)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    with api_client(prefect_server) as client:
        nightly = client.read_deployment_by_name("pipeline/nightly")
        assert nightly.work_pool_name == "toa-gpu"
        assert nightly.global_concurrency_limit.limit == 1
        assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        assert nightly.schedules[0].schedule.timezone == "UTC"
        assert [s.slug for s in nightly.schedules] == ["every day at 02:00 UTC"]  # the label the UI shows
        schema = nightly.parameter_openapi_schema
        properties = schema["properties"]
        assert "operator's config folder" in properties["config"]["description"]  # the form explains each field
        shipped, other = properties["config"]["anyOf"]  # a choice of the operator's configs, or another name
        assert "demo.yaml" in shipped["enum"] and "tiny.yaml" in shipped["enum"]
        assert other["title"] == "other config name" and other["pattern"].startswith("^(?![/~])")
        assert properties["incremental"]["type"] == "boolean"
        # Optional parameters are plain fields left empty, not a "string / None" switch.
        assert properties["run_id"]["type"] == "string" and "anyOf" not in properties["run_id"]
        assert "default" not in properties["run_id"]
        overrides = schema["definitions"]["RunOverrides"]
        assert overrides["additionalProperties"] is False
        assert all("anyOf" not in field and "default" not in field for field in overrides["properties"].values())
        assert "search.budget" in {field["title"] for field in overrides["properties"].values()}
        shard = client.read_deployment_by_name("synthesize-shard/sample-shard").parameter_openapi_schema
        assert shard["properties"]["overrides"]["$ref"] == "#/definitions/RunOverrides"  # typed, not a free dict
        assert shard["definitions"]["RunOverrides"]["additionalProperties"] is False

        # Parameters cannot make a run execute code: the server refuses them before any run exists.
        from prefect.exceptions import PrefectHTTPStatusError

        train = client.read_deployment_by_name("train/on-demand")
        for refused in ({"config": "configs/tiny.yaml", "run_id": "r", "overrides": {"reward.trust_remote_code": True}},
                        {"config": {**config, "reward": {**config["reward"], "trust_remote_code": True}}, "run_id": "r"},
                        {"config": str(config_path), "run_id": "r"},  # a path, however real, is not a name
                        {"config": "configs/tiny.yaml", "run_id": "r",
                         "overrides": {"training_common_trust_remote_code": True}}):
            with pytest.raises(PrefectHTTPStatusError, match="409"):
                client.create_flow_run_from_deployment(train.id, parameters=refused)
        allowed = client.create_flow_run_from_deployment(
            train.id, parameters={"config": "configs/tiny.yaml", "run_id": "r", "overrides": {"search_budget": 4}})
        client.delete_flow_run(allowed.id)
        for name in ("synthesize/on-demand", "train/on-demand", "evaluate/on-demand"):
            client.read_deployment_by_name(name)
        assert client.read_work_pool("toa-cpu").type == "process"
        assert client.read_global_concurrency_limit_by_name("gpu").limit == 2

        # The server's scheduler turns the cron schedule into future runs within seconds of the deployment.
        deadline = time.monotonic() + SCHEDULE_TIMEOUT_S
        future = scheduled_runs(client, nightly.id)
        while not future and time.monotonic() < deadline:
            time.sleep(1.0)
            future = scheduled_runs(client, nightly.id)
        assert future, "the nightly schedule produced no scheduled runs"
        starts = [run.expected_start_time.astimezone(timezone.utc) for run in future]
        assert all((start.hour, start.minute) == (2, 0) for start in starts), starts
        # Pause the schedule so a nightly run that happens to fall due cannot race the manual one.
        client.pause_deployment(nightly.id)
        for run in scheduled_runs(client, nightly.id):
            client.delete_flow_run(run.id)

    def night(run_id: str, watch_timeout_s: int) -> subprocess.CompletedProcess:
        """One run of pipeline/nightly from the CLI, watched to its end, with a worker up only meanwhile."""
        worker = start_worker(prefect_server, prefect_server_home, "toa-gpu", tmp_path / "worker.log",
                              TOAFLOW_CONFIG_DIR=str(operator_configs))
        try:
            return subprocess.run(
                [str(PREFECT_BIN), "deployment", "run", "pipeline/nightly", "-p", f"config={config_path.name}",
                 "-p", f"run_id={run_id}", "--watch", "--watch-timeout", str(watch_timeout_s)],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=watch_timeout_s + 60)
        finally:
            stop_process(worker)

    # Run ids of their own per variant: both variants may run against the session's one server.
    first, second_id = (f"deployed-{nights}n-1", f"deployed-{nights}n-2")
    triggered = night(first, 900)
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")
    assert triggered.returncode == 0, triggered.stdout[-3000:] + triggered.stderr[-2000:] + worker_log[-6000:]
    assert "finished successfully in 'Completed'" in triggered.stdout, triggered.stdout[-2000:]

    if nights == 2:
        second = night(second_id, 600)  # the second night: every prompt was synthesized on the first
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]

    with api_client(prefect_server) as client:
        first_runs = flow_runs_named(client, first)
        # The pipeline and its three subflow runs, each named by the run id.
        assert sorted(client.read_flow(run.flow_id).name for run in first_runs) == [
            "evaluate", "pipeline", "synthesize", "train"]
        nothing_new = flow_runs_named(client, second_id)
        assert sorted(client.read_flow(run.flow_id).name for run in nothing_new) == (
            ["pipeline", "synthesize"] if nights == 2 else [])
        night_1 = next(run for run in first_runs if run.parent_task_run_id is None)
        # Both nights end in a state the UI's run lists show (Completed), saying and tagged what happened.
        assert night_1.state.name == "Completed" and night_1.state.message.startswith("Blocked: NOT promoted")
        assert sorted(night_1.tags) == ["blocked", "gpu", "pipeline", "toaflow"]  # the deployment's tags stay
        if nights == 2:
            night_2 = next(run for run in nothing_new if run.parent_task_run_id is None)
            assert night_2.state.name == "Completed" and "nothing-new" in night_2.tags
            assert night_2.state.message.startswith(f"Nothing new: 3 prompts already synthesized by {first} (3)")
        # No task run received a subflow's result object: every task run page renders.
        every_input = flow_run_inputs(client, [run.id for run in first_runs + nothing_new])
        assert [entry for entry in every_input if entry[2] == "flow_run"] == []
        artifacts = artifacts_by_flow_run(client, [run.id for run in first_runs + nothing_new])
    assert all(artifacts[run.id] == [] for run in nothing_new)  # nothing new: no empty plots or tables
    keys = [artifact.key for run in first_runs for artifact in artifacts[run.id]]
    assert len(keys) == len(set(keys)), keys  # each key once per run
    assert {"synthesis-models", "training-metrics", "evaluation-mini", "promotion"} <= set(keys)
    assert not [key for key in keys if "deployed" in key]  # the run id is in descriptions, never in keys

    store = open_store(str(store_root))
    assert latest_run_id(store) is None, promotion_history(store)[0]["reason"]  # blocked: nothing was promoted
    assert promotion_history(store)[0]["reason"].startswith("blocked by mini.rm_win_rate")
    assert "mini.rm_win_rate" in promotion_history(store)[0]["candidate_scores"]
    assert store.list(f"runs/{first}/datasets/sft/") and store.list(f"runs/{first}/models/dpo/")
    assert store.list(f"runs/{first}/eval/mini/")
    assert prompt_counts(store) == {first: 3, **({second_id: 0} if nights == 2 else {})}
    assert len(promotion_history(store)) == 1 and not store.list(f"runs/{second_id}/models/")

    # GPU tasks share the "gpu" limit that `toa deploy --gpu-slots 2` created: with both slots held, a third
    # request cannot get one (it times out instead of running on an occupied GPU).
    # In a process of its own: this test process also hosts the session's Prefect test harness, whose API
    # client would otherwise answer instead of the real server.
    probe = (
        "from tasks.gpu import gpu_slot\n"
        "with gpu_slot('holds both', slots=2):\n"
        "    try:\n"
        "        with gpu_slot('must wait', timeout_s=1.0):\n"
        "            raise SystemExit('a third slot was granted')\n"
        "    except TimeoutError:\n"
        "        pass\n"
        "with gpu_slot('free again', slots=2):\n"
        "    print('slots ok')\n"
    )
    checked = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0 and "slots ok" in checked.stdout, checked.stdout + checked.stderr[-3000:]

    # Without the limit on the server, GPU tasks run unlimited and say nothing about it.
    with api_client(prefect_server) as client:
        client.delete_global_concurrency_limit_by_name("gpu")
    quiet = subprocess.run([sys.executable, "-c", "from tasks.gpu import gpu_slot\nwith gpu_slot('no limit'):\n"
                            "    print('ran')"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "ran" in quiet.stdout, quiet.stderr[-3000:]
    assert "do not exist" not in quiet.stdout + quiet.stderr
