"""Deployment parameters name, never point (issue 21).

A UI user may fill a deployment's form, nothing more. On the old main two runs were enough to run code on a worker:
run 1 with `prompts` = an s3:// object that is a YAML config (downloaded to a predictable cache path before any
check, left there when ingest failed, its path printed), run 2 with `config` = that cached path, which set
`trust_remote_code: true`. Here each step is refused at its first parameter check, before anything is read,
downloaded or written. The flows are called as a deployment run calls them (Prefect's documented runtime mock
PREFECT__RUNTIME__DEPLOYMENT__ID makes `prefect.runtime.deployment.id` say so), and once through a real Prefect
server and `prefect flow-run execute`, as a worker would run it.
"""
from __future__ import annotations

import hashlib
import subprocess
import tempfile
import uuid

import pytest
import yaml

from infra.store import open_store
from runconfig.parameters import ConfigParameterError
from tests.faults.helpers import REPO
from tests.fixtures.models import tiny_config_file
from tests.fixtures.prefect import PREFECT_BIN, api_client, prefect_cli_env
from tests.fixtures.s3 import make_bucket
from tests.flows.test_distributed_synthesis import shard_deployment  # noqa: F401  (the real-server fixture)

EVIL_CONFIG = {"name": "evil", "models": [{"name": "m", "model": "x", "endpoints": ["http://127.0.0.1:9/v1"]}],
               "reward": {"kind": "hf_classifier", "model": "s3-fetched-model", "trust_remote_code": True}}


@pytest.fixture
def operator_folder(tmp_path, monkeypatch, s3_server):
    """The worker's operator config folder (TOAFLOW_CONFIG_DIR) holding one config, `night.yaml`, whose store is a
    bucket on the loopback S3 server; prompt roots declared on the worker: one s3 prefix. Also a private temp
    folder and cache, to see what is left behind."""
    bucket = make_bucket(s3_server)
    folder = tmp_path / "operator-configs"
    folder.mkdir()
    tiny_config_file(folder, "night.yaml", store={"root": f"s3://{bucket}/store", "endpoint_url": s3_server})
    monkeypatch.setenv("TOAFLOW_CONFIG_DIR", str(folder))
    monkeypatch.setenv("TOAFLOW_PROMPT_ROOTS", f"s3://{bucket}/prompts")
    monkeypatch.setenv("TOAFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(tmp_path)
    return {"bucket": bucket, "endpoint": s3_server, "folder": folder, "tmp": tmp_path / "tmp",
            "cache": tmp_path / "cache"}


@pytest.fixture
def as_deployment_run(monkeypatch):
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(uuid.uuid4()))


@pytest.fixture
def downloads(monkeypatch):
    """Every prompt-source fetch and S3 download made while the test runs."""
    import infra.store
    import tasks.synthesis

    seen: list[str] = []
    fetch, download = tasks.synthesis.fetch_source, infra.store.S3Store.download_file

    def spy_fetch(uri, *args, **kwargs):
        seen.append(uri)
        return fetch(uri, *args, **kwargs)

    def spy_download(self, key, local):
        seen.append(key)
        return download(self, key, local)

    monkeypatch.setattr(tasks.synthesis, "fetch_source", spy_fetch)
    monkeypatch.setattr(infra.store.S3Store, "download_file", spy_download)
    return seen


def store_of(operator_folder, root: str = "store"):
    from infra.config import StoreConfig

    return open_store(StoreConfig(root=f"s3://{operator_folder['bucket']}/{root}",
                                  endpoint_url=operator_folder["endpoint"]))


def put_object(operator_folder, key: str, text: str) -> str:
    """Upload `text` to the test bucket at `key`; returns its s3:// URI."""
    store_of(operator_folder, key.split("/", 1)[0]).write_text(key.split("/", 1)[1], text)
    return f"s3://{operator_folder['bucket']}/{key}"


def test_the_two_run_ui_chain_is_refused_at_the_first_parameter_check(operator_folder, as_deployment_run, downloads,
                                                                       prefect_harness):
    from flows.synthesize import synthesize
    from flows.train import train

    run_yaml = put_object(operator_folder, "x/run.yaml", yaml.safe_dump(EVIL_CONFIG))  # outside the prompt roots
    with pytest.raises(ConfigParameterError, match=r"parameter `prompts` .* refused") as refused:
        synthesize(config="night.yaml", run_id="run-1", prompts=run_yaml)
    assert downloads == []  # nothing was fetched: the check comes first
    assert "cache" not in str(refused.value) and not operator_folder["cache"].exists()
    assert not list(operator_folder["tmp"].iterdir())
    # Run 2: the path run 1 would have left on the old main, planted there by other means.
    planted = operator_folder["cache"] / "sources" / hashlib.sha256(run_yaml.encode()).hexdigest()[:16] / "run.yaml"
    planted.parent.mkdir(parents=True)
    planted.write_text(yaml.safe_dump(EVIL_CONFIG))
    for flow, extra in ((synthesize, {}), (train, {})):
        with pytest.raises(ConfigParameterError, match=r"parameter `config` .* refused.*allowed configs: night.yaml"):
            flow(config=str(planted), run_id="run-2", **extra)
    assert not store_of(operator_folder).list("runs/")  # neither run left a folder behind


def test_a_prompts_source_outside_the_roots_is_refused_with_nothing_downloaded(operator_folder, as_deployment_run,
                                                                               downloads, tmp_path, prefect_harness):
    from flows.synthesize import synthesize

    secret = tmp_path / "secrets.txt"
    secret.write_text('{"prompt": "DB password is hunter2"}\n')
    outside = put_object(operator_folder, "elsewhere/prompts.jsonl", '{"prompt": "hi"}\n')
    for source in (str(secret), outside, f"s3://{operator_folder['bucket']}/prompts/../elsewhere/prompts.jsonl"):
        with pytest.raises(ConfigParameterError, match=r"parameter `prompts` .* refused"):
            synthesize(config="night.yaml", run_id="outside", prompts=source)
    assert downloads == []
    assert not store_of(operator_folder).list("runs/")  # no run folder, no ingested line


def test_a_declared_source_is_downloaded_privately_and_removed_on_failure(operator_folder, as_deployment_run,
                                                                          downloads, prefect_harness):
    """A source under the roots that is not a prompt file fails ingest: the download is gone, the error names the
    source only."""
    from flows.synthesize import synthesize

    source = put_object(operator_folder, "prompts/run.yaml", yaml.safe_dump(EVIL_CONFIG))
    with pytest.raises(Exception) as failed:
        synthesize(config="night.yaml", run_id="declared", prompts=source)
    assert downloads and downloads[0] == source
    assert str(failed.value).startswith(f"{source}: cannot tell the format")  # the source, not a local path
    assert str(operator_folder["tmp"]) not in str(failed.value) and "toaflow-prompts-" not in str(failed.value)
    assert not list(operator_folder["tmp"].iterdir()) and not operator_folder["cache"].exists()


@pytest.mark.timeout(600)
def test_a_real_deployment_run_pointing_config_outside_the_folder_is_refused_before_any_task(
        shard_deployment, prefect_server_home, tmp_path):  # noqa: F811
    from prefect.exceptions import PrefectHTTPStatusError

    outside = tmp_path / "evil.yaml"
    outside.write_text(yaml.safe_dump(EVIL_CONFIG))
    parameters = {"config": str(outside), "run_id": "evil", "shard_index": 0}
    with api_client(shard_deployment) as client:
        deployment = client.read_deployment_by_name("synthesize-shard/sample-shard")
        # The server checks the form first: a path is not a config name.
        with pytest.raises(PrefectHTTPStatusError, match="409") as refused:
            client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        assert "config" in refused.value.response.text
        # A caller of the API can switch that check off for one run: the flow itself still refuses.
        response = client._client.post(f"/deployments/{deployment.id}/create_flow_run",
                                       json={"parameters": parameters, "enforce_parameter_schema": False})
        response.raise_for_status()
        flow_run_id = response.json()["id"]
    executed = subprocess.run([str(PREFECT_BIN), "flow-run", "execute", flow_run_id],
                              env=prefect_cli_env(shard_deployment, prefect_server_home, PYTHONPATH=str(REPO)),
                              cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    with api_client(shard_deployment) as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.state.is_failed(), (run.state, executed.stdout[-2000:], executed.stderr[-3000:])
    assert "parameter `config`" in run.state.message
    assert "allowed configs: demo.yaml, demo_translation.yaml, tiny.yaml" in run.state.message
    assert task_runs == []  # refused before any task ran


def test_a_deployment_evaluation_names_a_stored_model_never_a_folder_or_endpoint(operator_folder, as_deployment_run,
                                                                                 tmp_path, prefect_harness):
    from flows.evaluate import evaluate

    planted = tmp_path / "planted-model"
    planted.mkdir()
    for model in (str(planted), "http://127.0.0.1:9/v1#m", "s3://elsewhere/model", "runs/../x/models/dpo"):
        with pytest.raises(ConfigParameterError, match=r"parameter `model` .* refused"):
            evaluate(config="night.yaml", run_id="eval-x", model=model)
    assert not store_of(operator_folder).list("runs/")
