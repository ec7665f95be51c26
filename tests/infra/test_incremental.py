"""Bounded accumulated data: the plan of which nights count and with what weight, and its effect on the rows."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.incremental import AccumulationConfig, accumulate_datasets, keeps_prompt, plan_accumulation
from infra.store import open_store


def test_plan_applies_the_window_and_the_decay():
    nights = ["n1", "n2", "n3", "n4"]
    everything = plan_accumulation(nights, None)
    assert [(e["run_id"], e["age"], e["weight"], e["used"]) for e in everything] == [
        ("n1", 3, 1.0, True), ("n2", 2, 1.0, True), ("n3", 1, 1.0, True), ("n4", 0, 1.0, True)]
    window = plan_accumulation(nights, AccumulationConfig(window_nights=2))
    assert [e["used"] for e in window] == [False, False, True, True]
    assert "outside the window of the newest 2" in window[0]["reason"]
    decay = plan_accumulation(nights, AccumulationConfig(decay_per_night=0.5, min_weight=0.2))
    assert [e["weight"] for e in decay] == [0.0, 0.25, 0.5, 1.0]
    assert "below min_weight 0.2" in decay[0]["reason"] and "0.5^2 = 0.25" in decay[1]["reason"]
    with pytest.raises(ValueError, match="min_weight applies with decay_per_night"):
        AccumulationConfig(min_weight=0.3)


def test_a_decayed_night_keeps_a_stable_seeded_share_of_its_prompts(tmp_path):
    ids = [f"p{i}" for i in range(400)]
    kept = [p for p in ids if keeps_prompt(p, 0.25)]
    assert 70 <= len(kept) <= 130  # about a quarter
    assert kept == [p for p in ids if keeps_prompt(p, 0.25)]  # the same prompts every time

    store = open_store(str(tmp_path))
    for run, prompts in (("old", ids[:200]), ("new", ids[200:])):
        buffer = io.BytesIO()
        pq.write_table(pa.table({"prompt_id": prompts, "messages": [[{"role": "user", "content": p},
                                                                     {"role": "assistant", "content": "a"}]
                                                                    for p in prompts]}), buffer)
        store.write_bytes(f"runs/{run}/datasets/sft/train.parquet", buffer.getvalue())
    summary = accumulate_datasets(store, ["old", "new"], "runs/acc/datasets", weights={"old": 0.25})
    rows = pq.read_table(io.BytesIO(store.read_bytes("runs/acc/datasets/sft/train.parquet")))["prompt_id"].to_pylist()
    assert set(rows) == {p for p in ids[:200] if keeps_prompt(p, 0.25)} | set(ids[200:])
    assert summary["by_run"]["new"]["sft"] == {"rows": 200, "kept": 200}
    assert summary["by_run"]["old"]["sft"]["rows"] == 200 and summary["by_run"]["old"]["sft"]["kept"] < 100
