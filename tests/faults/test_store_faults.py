"""The synthesis flow against an S3 endpoint that refuses connections: for a while (the run waits with backoff
and completes), and for good (a clear failure naming the endpoint; shards finished before stay intact)."""
from __future__ import annotations

import threading
from collections import Counter

import pytest

import infra.store
import tasks.synthesis
from infra.config import StoreConfig
from infra.store import open_store
from tests.faults.helpers import samples_table, write_config, write_prompts
from tests.fixtures.s3 import ControlledEndpoint, make_bucket

N_PROMPTS, BUDGET = 8, 4


def s3_store(bucket: str, endpoint: str, max_attempts: int) -> dict:
    return {"root": f"s3://{bucket}/runs-root", "endpoint_url": endpoint,
            "retry": {"max_attempts": max_attempts, "backoff_initial_s": 0.05, "backoff_max_s": 0.2,
                      "connect_timeout_s": 2, "read_timeout_s": 10}}


@pytest.fixture
def store_retries(monkeypatch):
    """Counts S3 retries across every S3Store the flow opens; `on_retry(n, callback)` runs callback at retry n."""
    state = {"count": 0, "at": {}}
    lock = threading.Lock()
    original_init = infra.store.S3Store.__init__

    def on_retry(attempt, error, delay):
        with lock:
            state["count"] += 1
            callback = state["at"].pop(state["count"], None)
        if callback is not None:
            callback()

    def init(self, cfg, on_retry_arg=None):
        original_init(self, cfg, on_retry=on_retry)

    monkeypatch.setattr(infra.store.S3Store, "__init__", init)
    return state


def test_store_down_for_a_while_then_back(tmp_path, prefect_harness, s3_server, load_servers, store_retries):
    from flows.synthesize import synthesize

    bucket = make_bucket(s3_server)
    server = load_servers(seed=3)
    with ControlledEndpoint(s3_server) as endpoint:  # refuses connections until opened
        store_retries["at"][3] = endpoint.open  # back after the run has been refused three times
        config = write_config(tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", N_PROMPTS),
                              store=s3_store(bucket, endpoint.url, max_attempts=8), budget=BUDGET,
                              agents=[{"name": n, "url": server.base_url} for n in "ab"])
        result = synthesize(config=str(config), run_id="outage")
        assert endpoint.opened.is_set()

    assert store_retries["count"] >= 3  # it waited with backoff instead of failing
    store = open_store(StoreConfig(root=f"s3://{bucket}/runs-root", endpoint_url=s3_server))
    per_prompt = Counter(row["prompt_id"] for row in samples_table(store, "outage"))
    assert len(per_prompt) == N_PROMPTS and set(per_prompt.values()) == {BUDGET}
    assert store.read_json("runs/outage/manifest.json")["stages"]["rank"]["status"] == "finished"
    assert result["counts"]["sft_train"] + result["counts"]["sft_test"] == N_PROMPTS


def test_store_down_for_good_fails_clearly_and_keeps_finished_shards(tmp_path, prefect_harness, s3_server,
                                                                      load_servers, store_retries, monkeypatch):
    from flows.synthesize import synthesize

    bucket = make_bucket(s3_server)
    server = load_servers(seed=4)
    endpoint = ControlledEndpoint(s3_server)
    endpoint.open()
    publish = tasks.synthesis._publish_shard

    def publish_then_lose_the_store(*args, **kwargs):
        outcome = publish(*args, **kwargs)
        endpoint.close()  # the endpoint goes away for good right after the first shard is published
        return outcome

    monkeypatch.setattr(tasks.synthesis, "_publish_shard", publish_then_lose_the_store)
    config = write_config(tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", N_PROMPTS),
                          store=s3_store(bucket, endpoint.url, max_attempts=3), budget=BUDGET,
                          agents=[{"name": n, "url": server.base_url} for n in "ab"])
    try:
        with pytest.raises(Exception) as failure:
            synthesize(config=str(config), run_id="lost")
    finally:
        endpoint.close()

    message = str(failure.value)
    assert endpoint.url in message and bucket in message, message
    assert "Traceback" not in message

    store = open_store(StoreConfig(root=f"s3://{bucket}/runs-root", endpoint_url=s3_server))
    shards = [k for k in store.list("runs/lost/samples/") if k.endswith(".parquet")]
    assert shards == ["runs/lost/samples/shard-00000.parquet"]
    per_prompt = Counter(row["prompt_id"] for row in samples_table(store, "lost"))
    assert len(per_prompt) == 4 and set(per_prompt.values()) == {BUDGET}  # the finished shard is whole
