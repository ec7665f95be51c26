"""The synthesis flow against model servers that fail: transient faults are retried and counted, a dead server
becomes error records for its model while the search goes on with the others."""
from __future__ import annotations

import json
from collections import Counter

from infra.store import open_store
from tests.faults.helpers import fast_retry, samples_table, write_config, write_prompts

N_PROMPTS, BUDGET = 8, 6


def test_transient_faults_are_retried_and_counted(tmp_path, prefect_harness, load_servers):
    """10% HTTP 500, 5% 429 + Retry-After, 5% slower than the read timeout, 2% dropped mid-body: nothing is lost."""
    from flows.synthesize import synthesize

    # Each logical request is faulted at most twice and the client makes 4 attempts, so no generation can fail
    # for good: every fault costs exactly one retry, which makes the manifest's count exact.
    # ~110 draws at these rates: every kind but the 2% drop shows up (the seed fixes the draws; the order in which
    # requests meet them varies). A normal answer comes in milliseconds, far below the 2 s read timeout.
    server = load_servers(error_rate=0.10, throttle_rate=0.05, retry_after_s=0.2, slow_rate=0.05, slow_s=6.0,
                          drop_rate=0.02, max_faults_per_request=2, seed=7)
    retry = fast_retry(read_timeout_s=2.0)
    n_prompts, budget = 12, 8
    config = write_config(tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", n_prompts),
                          store={"root": str(tmp_path / "store")}, budget=budget,
                          agents=[{"name": name, "url": server.base_url, "retry": retry} for name in "abc"])

    result = synthesize(config=str(config), run_id="transient")

    store = open_store(str(tmp_path / "store"))
    rows = samples_table(store, "transient")
    per_prompt = Counter(row["prompt_id"] for row in rows)
    assert len(per_prompt) == n_prompts and set(per_prompt.values()) == {budget}  # every prompt's full budget
    assert [row["error"] for row in rows if row["error"]] == []
    assert all(row["reward"] is not None for row in rows)

    stats = server.stats()
    faults = sum(stats.get(f"fault_{kind}", 0) for kind in ("error", "throttle", "slow", "drop"))
    assert stats.get("fault_error", 0) and stats.get("fault_throttle", 0) and stats.get("fault_slow", 0)
    assert stats["received"] == n_prompts * budget + faults  # every attempt reached the server: no extra work
    manifest = store.read_json("runs/transient/manifest.json")
    assert manifest["retries"] == {"chat+reward": faults}
    assert manifest["stages"]["sample"]["status"] == "finished"
    assert result["counts"]["sft_train"] + result["counts"]["sft_test"] == n_prompts


def test_dead_server_gives_error_records_and_the_search_goes_on(tmp_path, prefect_harness, load_servers):
    """One model's server closes every connection without answering: its generations are recorded as errors
    (never scored), the trees keep searching with the other models, the run finishes and reports the failures."""
    from flows.synthesize import synthesize

    alive = load_servers(seed=1)
    dead = load_servers(dead_rate=1.0)
    retry = fast_retry(read_timeout_s=2.0, max_attempts=2)
    config = write_config(tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", N_PROMPTS),
                          store={"root": str(tmp_path / "store")}, budget=BUDGET,
                          agents=[{"name": "a", "url": alive.base_url, "retry": retry},
                                  {"name": "dead", "url": dead.base_url, "retry": retry},
                                  {"name": "c", "url": alive.base_url, "retry": retry}])

    result = synthesize(config=str(config), run_id="dead")

    store = open_store(str(tmp_path / "store"))
    rows = samples_table(store, "dead")
    per_prompt = Counter(row["prompt_id"] for row in rows)
    assert len(per_prompt) == N_PROMPTS and set(per_prompt.values()) == {BUDGET}
    dead_rows = [row for row in rows if row["model"] == "dead"]
    assert dead_rows, "TOA tries every model at least once per tree"
    assert all(row["error"] and row["reward"] is None and row["text"] is None for row in dead_rows)
    alive_rows = [row for row in rows if row["model"] != "dead"]
    assert alive_rows and all(row["error"] is None and row["reward"] is not None for row in alive_rows)
    # Each tree drops the dead model after search.max_model_failures (2) failures and spends the rest elsewhere.
    assert max(Counter(row["prompt_id"] for row in dead_rows).values()) <= 2
    assert dead.stats()["fault_dead"] == len(dead_rows) * 2  # two attempts each

    manifest = store.read_json("runs/dead/manifest.json")
    assert manifest["stages"]["sample"]["counts"]["failed_generations"] == len(dead_rows)
    report = json.dumps(store.read_json("runs/dead/reports/synthesis_models.json"))
    assert "dead" in report
    assert result["counts"]["sft_train"] + result["counts"]["sft_test"] == N_PROMPTS
