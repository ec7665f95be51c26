"""Bookkeeping you can trust: a run with failed generations, interrupted by a failing shard and resumed twice,
reports the same cumulative counts in its manifest and its report as the store holds; each attempt keeps its own
counts; the failed attempt is marked failed with its one-line reason."""
from __future__ import annotations

import tasks.synthesis
from infra.store import open_store
from tests.faults.helpers import fast_retry, samples_table, write_config, write_prompts

N_PROMPTS, BUDGET, SHARD_SIZE = 8, 6, 4


def test_resumed_run_keeps_cumulative_counts_and_per_attempt_history(tmp_path, prefect_harness, load_servers,
                                                                       monkeypatch):
    from flows.synthesize import synthesize

    alive, dead = load_servers(seed=4), load_servers(dead_rate=1.0)
    retry = fast_retry(read_timeout_s=2.0, max_attempts=2)
    config = str(write_config(
        tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", N_PROMPTS),
        store={"root": str(tmp_path / "store")}, budget=BUDGET, shard_size=SHARD_SIZE,
        agents=[{"name": "a", "url": alive.base_url, "retry": retry},
                {"name": "dead", "url": dead.base_url, "retry": retry}]))
    store = open_store(str(tmp_path / "store"))

    # Attempt 1: the second shard fails (after the first was published).
    real_sample_shard = tasks.synthesis.sample_shard

    def failing_second_shard(cfg, run_id, index, prompt_ids, endpoints=None, **options):
        if index == 1:
            raise RuntimeError("injected shard failure\nsecond line of the reason")
        return real_sample_shard(cfg, run_id, index, prompt_ids, endpoints, **options)

    monkeypatch.setattr(tasks.synthesis, "sample_shard", failing_second_shard)
    try:
        synthesize(config=config, run_id="books")
    except RuntimeError as error:
        assert "injected shard failure" in str(error)
    else:
        raise AssertionError("the first attempt should have failed")
    monkeypatch.setattr(tasks.synthesis, "sample_shard", real_sample_shard)

    sample = store.read_json("runs/books/manifest.json")["stages"]["sample"]
    assert sample["status"] == "failed"
    assert sample["error"] == "RuntimeError: injected shard failure | second line of the reason"
    first = sample["history"][0]
    assert first["status"] == "failed" and first["error"] == sample["error"]
    assert first["counts"]["shards_sampled"] == 1 and first["counts"]["candidates_generated"] == SHARD_SIZE * BUDGET
    first_errors = first["counts"]["failed_generations"]
    assert first_errors > 0  # the dead model's generations
    assert store.read_json("runs/books/manifest.json")["stages"]["ingest"]["status"] == "finished"

    # Attempt 2 samples the missing shard; attempt 3 finds everything done.
    synthesize(config=config, run_id="books")
    after_second = store.read_json("runs/books/manifest.json")
    synthesize(config=config, run_id="books")
    manifest = store.read_json("runs/books/manifest.json")

    rows = samples_table(store, "books")
    errors = sum(1 for row in rows if row["error"])
    assert len(rows) == N_PROMPTS * BUDGET
    sample = manifest["stages"]["sample"]
    expected = {"shards": 2, "candidates_generated": len(rows), "failed_generations": errors}
    assert {key: sample["counts"][key] for key in expected} == expected
    assert sample["counts"] == after_second["stages"]["sample"]["counts"]  # a resume that redid nothing changes nothing
    assert {f"sample.{key}": value for key, value in expected.items()}.items() <= manifest["counts"].items()
    assert sample["counts"]["retries"] == manifest["retries"]["chat+reward"] > 0  # the dead model's retries

    history = sample["history"]
    assert [h["status"] for h in history] == ["failed", "finished", "finished"] and sample["attempts"] == 3
    assert history[1]["counts"]["shards_sampled"] == 1 and history[1]["counts"]["shards_skipped"] == 1
    assert history[1]["counts"]["candidates_generated"] == SHARD_SIZE * BUDGET
    assert history[1]["counts"]["failed_generations"] == errors - first_errors
    assert history[2]["counts"]["shards_skipped"] == 2
    assert history[2]["counts"]["candidates_generated"] == history[2]["counts"]["failed_generations"] == 0

    report = store.read_text("runs/books/reports/synthesis.md")
    assert f"| candidates generated | {len(rows)} (0 in this attempt) |" in report
    assert f"| failed generations | {errors} (0 in this attempt) |" in report
    assert f"| request retries | {manifest['retries']['chat+reward']} (0 in this attempt) |" in report
