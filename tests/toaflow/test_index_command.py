"""`toa index`: lists the prompt index with each entry's state; `--prune` removes the entries of deleted runs."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from infra.incremental import record_synthesized_prompts
from infra.store import open_store
from tests.fixtures.models import tiny_config_file
from toaflow.cli import main


def test_index_lists_and_prunes_entries_of_deleted_runs(tmp_path, capsys):
    config = tiny_config_file(tmp_path)
    store = open_store(str(tmp_path / "store"))
    assert main(["index", "--config", str(config)]) == 0
    assert "is empty" in capsys.readouterr().out
    for run_id, prompts in (("kept", ["a"]), ("gone", ["b", "c"])):
        buffer = io.BytesIO()
        pq.write_table(pa.table({"prompt_id": prompts}), buffer)
        store.write_bytes(f"runs/{run_id}/datasets/sft/train.parquet", buffer.getvalue())
        record_synthesized_prompts(store, run_id, prompts)
    store.delete("runs/gone/datasets/sft/train.parquet")  # the run folder was deleted

    assert main(["index", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "kept: 1 prompts" in listed and "ok" in listed
    assert "gone: 2 prompts" in listed and "stale: datasets gone" in listed

    assert main(["index", "--config", str(config), "--prune"]) == 0
    pruned = capsys.readouterr().out
    assert "removed " in pruned and "2 prompts of run gone" in pruned and "1 stale entry removed, 1 kept" in pruned
    assert store.list("index/prompts/") == ["index/prompts/kept.parquet"]
