"""The run registry (latest pointer, promotion records) and the incremental prompt index / accumulated data."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.incremental import (accumulate_datasets, indexed_runs, prompt_counts, prompt_ids_sampled_in_run, prune_index,
                               record_synthesized_prompts, stale_index_entries, synthesized_prompt_ids,
                               synthesized_prompts_by_run, training_runs_of)
from infra.promotion import decide_promotion
from infra.run_ids import InvalidRunId
from infra.registry import (LATEST_KEY, RegistryError, latest_run_id, promotion_history, read_latest,
                            record_decision, set_latest)
from infra.store import open_store
from toa_core.records import prompt_id_for


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "artifacts"))


def write_parquet(store, key, columns):
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    store.write_bytes(key, buffer.getvalue())


def read_parquet(store, key):
    return pq.read_table(io.BytesIO(store.read_bytes(key))).to_pylist()


def make_run(store, run_id):
    store.write_json(f"runs/{run_id}/manifest.json", {"run_id": run_id})


def scores(value):
    return {"mini.rm_win_rate": {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 50,
                                 "higher_is_better": True}}


# -- registry ----------------------------------------------------------------------------------------------

def test_first_promotion_sets_latest_and_records_why(store):
    make_run(store, "r1")
    assert read_latest(store) is None
    decision = decide_promotion(scores(0.5), None, ["mini.rm_win_rate"])
    record = record_decision(store, "r1", decision, compared_with=None, candidate_scores=scores(0.5), current_scores=None)
    assert record.promoted
    pointer = read_latest(store)
    assert pointer["run_id"] == "r1" and "first run" in pointer["reason"] and pointer["previous_run_id"] is None
    assert store.read_json(pointer["record"])["candidate_scores"] == scores(0.5)
    assert store.read_json("runs/r1/promotion.json")["promoted"] is True
    assert pointer["scores"] == scores(0.5) and pointer["model_uri"].rstrip("/").endswith("runs/r1/models")  # the next baseline


def test_blocked_candidate_keeps_the_old_latest_and_says_which_metric(store):
    make_run(store, "r1"), make_run(store, "r2")
    record_decision(store, "r1", decide_promotion(scores(0.6), None, ["mini.rm_win_rate"]), compared_with=None,
                    candidate_scores=scores(0.6), current_scores=None)
    decision = decide_promotion(scores(0.3), scores(0.6), ["mini.rm_win_rate"])
    record = record_decision(store, "r2", decision, compared_with="r1", candidate_scores=scores(0.3),
                             current_scores=scores(0.6))
    assert not record.promoted and record.blocking_metrics == ["mini.rm_win_rate"]
    assert latest_run_id(store) == "r1"
    history = promotion_history(store)
    assert [(h["run_id"], h["promoted"]) for h in history] == [("r1", True), ("r2", False)]
    assert history[1]["checks"][0]["candidate"]["value"] == 0.3
    assert history[1]["checks"][0]["current"]["ci_low"] == pytest.approx(0.55)
    assert promotion_history(store, "r2")[0]["compared_with"] == "r1"


def test_stale_decision_and_unknown_run_are_refused(store):
    make_run(store, "r1"), make_run(store, "r2")
    set_latest(store, "r1", "restore the known-good model")
    with pytest.raises(RegistryError, match="moved to 'r1'"):
        record_decision(store, "r2", decide_promotion(scores(0.5), None, []), compared_with=None,
                        candidate_scores={}, current_scores=None)
    with pytest.raises(RegistryError, match="no folder"):
        set_latest(store, "ghost", "typo")
    with pytest.raises(InvalidRunId, match="invalid run id"):
        set_latest(store, "../etc", "escape")
    assert latest_run_id(store) == "r1"
    assert read_latest(store)["reason"] == "manual: restore the known-good model"


def test_malformed_pointer_is_reported(store):
    store.write_json(LATEST_KEY, {"oops": 1})
    with pytest.raises(RegistryError, match="malformed"):
        read_latest(store)


# -- incremental index -------------------------------------------------------------------------------------

def write_datasets_of(store, *run_ids):
    for run_id in run_ids:
        write_parquet(store, f"runs/{run_id}/datasets/sft/train.parquet", {"prompt_id": ["x"]})


def test_index_records_sampled_prompts_and_skips_failed_ones(store):
    write_parquet(store, "runs/r1/samples/shard-00000.parquet",
                  {"prompt_id": ["a", "a", "b", "c"], "error": [None, "timeout", None, "timeout"]})
    write_datasets_of(store, "r1", "r2")
    assert prompt_ids_sampled_in_run(store, "r1") == {"a", "b"}
    record_synthesized_prompts(store, "r1")
    record_synthesized_prompts(store, "r2", ["b", "d"])
    assert synthesized_prompt_ids(store) == {"a", "b", "d"}
    assert synthesized_prompt_ids(store, exclude_runs=["r2"]) == {"a", "b"}
    assert indexed_runs(store) == ["r1", "r2"]
    record_synthesized_prompts(store, "r1", ["a"])  # re-recording replaces, and moves r1 last
    assert indexed_runs(store) == ["r2", "r1"]
    assert synthesized_prompt_ids(store, exclude_runs=["r2"]) == {"a"}
    record_synthesized_prompts(store, "r3", [])  # a run that found nothing new is indexed with no prompts
    assert prompt_counts(store) == {"r2": 2, "r1": 1, "r3": 0}


def test_a_deleted_run_no_longer_keeps_its_prompts_from_being_synthesized(store):
    write_datasets_of(store, "r1", "r2")
    record_synthesized_prompts(store, "r1", ["a", "b"])
    record_synthesized_prompts(store, "r2", ["c"])
    assert synthesized_prompt_ids(store) == {"a", "b", "c"}
    for key in store.list("runs/r1/"):  # the run folder is deleted by hand
        store.delete(key)
    assert synthesized_prompt_ids(store) == {"c"}  # r1's prompts are eligible again
    assert indexed_runs(store) == ["r2"] and prompt_counts(store) == {"r2": 1}
    assert synthesized_prompts_by_run(store) == {"r2": {"c"}}
    assert [entry["run_id"] for entry in stale_index_entries(store)] == ["r1"]
    removed = prune_index(store)
    assert [(entry["run_id"], entry["prompts"]) for entry in removed] == [("r1", 2)]
    assert store.list("index/prompts/") == ["index/prompts/r2.parquet"] and not stale_index_entries(store)


def test_training_runs_of_reads_the_accumulated_lineage(store):
    store.write_json("runs/r2-accumulated/lineage.json", {"built_for": "r2", "from_runs": ["r1", "r2"]})
    assert training_runs_of(store, "r2") == ["r1", "r2"]
    assert training_runs_of(store, "r1") == ["r1"]


def _sft(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_accumulated_dataset_concatenates_runs_newest_wins(store):
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    # run 1: prompts p and q (q in test); run 2: q again (re-synthesized, now in train) and r.
    write_parquet(store, "runs/r1/datasets/sft/train.parquet", {"messages": [_sft("p", "old p")]})
    write_parquet(store, "runs/r1/datasets/sft/test.parquet", {"messages": [_sft("q", "old q")]})
    write_parquet(store, "runs/r2/datasets/sft/train.parquet", {"messages": [_sft("q", "new q"), _sft("r", "new r")]})
    write_parquet(store, "runs/r1/datasets/dpo/train.parquet",
                  {"prompt": [user("p")], "chosen": [[{"role": "assistant", "content": "c"}]],
                   "rejected": [[{"role": "assistant", "content": "x"}]], "prompt_id": [prompt_id_for(user("p"))]})
    summary = accumulate_datasets(store, ["r1", "r2"], "runs/r2/accumulated")
    assert summary["rows"] == {"sft/train": 3, "dpo/train": 1}  # the test split lost q to run 2 and is empty
    rows = read_parquet(store, "runs/r2/accumulated/sft/train.parquet")
    answers = sorted(row["messages"][-1]["content"] for row in rows)
    assert answers == ["new q", "new r", "old p"]
    assert {row["prompt_id"] for row in rows} == {prompt_id_for(user(t)) for t in "pqr"}
    assert not store.exists("runs/r2/accumulated/sft/test.parquet")
    assert read_parquet(store, "runs/r2/accumulated/dpo/train.parquet")[0]["chosen"][0]["content"] == "c"
