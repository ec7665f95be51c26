"""Sampling one shard (tasks/synthesis.py) with several orchestrator processes on one host."""
from __future__ import annotations

from collections import Counter

from bench.loadserver import LoadServer
from infra.store import open_store
from runconfig import load_config
from tasks.synthesis import ingest_prompts, plan_shards, progress_key, sample_shard
from tests.faults.helpers import samples_table, write_config, write_prompts


def test_processes_per_host_splits_a_shard_and_shares_its_limits(tmp_path):
    n_prompts, budget = 8, 3
    with LoadServer(slots=64, token_delay_ms=2, response_tokens=4) as server:
        config = write_config(tmp_path / "c.yaml", prompts=write_prompts(tmp_path / "p.jsonl", n_prompts),
                              store={"root": str(tmp_path / "store")}, budget=budget, shard_size=n_prompts,
                              prompt_concurrency=4, agents=[{"name": n, "url": server.base_url} for n in "ab"],
                              synthesis__processes_per_host=2, synthesis__progress_interval_s=0.2)
        cfg = load_config(config)
        for model in cfg.models:
            model.max_concurrency = 2  # per endpoint, shared by both processes: at most 2 requests at once
        ingest_prompts.fn(cfg, "mp")
        [shard] = plan_shards.fn(cfg, "mp")
        outcome = sample_shard(cfg, "mp", 0, shard, shards=1)
        stats = server.stats()
    assert outcome["candidates"] == n_prompts * budget and outcome["errors"] == 0
    assert stats["received"] == n_prompts * budget  # every prompt searched once, by one of the two processes
    assert stats["peak_in_flight"] <= 2
    store = open_store(cfg.store)
    per_prompt = Counter(row["prompt_id"] for row in samples_table(store, "mp"))
    assert set(per_prompt) == set(shard) and set(per_prompt.values()) == {budget}
    record = store.read_json(progress_key("mp", 0))
    assert (record["prompts_done"], record["generations"], record["finished"]) == (n_prompts, n_prompts * budget, True)


def test_a_verifier_run_stops_before_sampling_when_a_prompt_has_no_checks(tmp_path):
    import pytest

    from tests.fixtures.models import tiny_config_file
    from toa_core.ingest import IngestError

    cfg = load_config(tiny_config_file(tmp_path), {"reward": {"kind": "verifier"}})
    with pytest.raises(IngestError, match=r"line 1 .*no `verify` field, which reward kind 'verifier' needs"):
        ingest_prompts.fn(cfg, "no-checks")
    assert not open_store(cfg.store).list("runs/no-checks/prompts/")
