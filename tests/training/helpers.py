"""Builders for the training tests: small SFT/DPO parquet datasets in a store, tiny training configs, and a
callback that kills its own process after the first checkpoint (the crash test's crash).

The DPO data is easy on purpose (the chosen answer always says "yes", the rejected one always says "no"), so a
few steps of DPO visibly raise the reward accuracy, and the SFT target repeats so the loss visibly falls.
"""
from __future__ import annotations

import os
import signal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import TrainerCallback

from infra.store import Store
from training.config import StageSettings

TOPICS = ["the sea", "a river", "the moon", "green tea", "old books", "a small cat", "rainy days", "the city",
          "mountains", "bread", "music", "a garden", "winter", "trains", "the sky", "coffee"]


def sft_rows(count: int = 32) -> list[dict[str, Any]]:
    return [{
        "prompt_id": f"p{i}",
        "messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}."},
                     {"role": "assistant", "content": "It is good. It is good. It is good."}],
        "source": "fixture",
    } for i in range(count)]


def dpo_rows(count: int = 32) -> list[dict[str, Any]]:
    return [{
        "prompt_id": f"p{i}",
        "prompt": [{"role": "user", "content": f"Is {TOPICS[i % len(TOPICS)]} nice?"}],
        "chosen": [{"role": "assistant", "content": "yes yes yes yes"}],
        "rejected": [{"role": "assistant", "content": "no no no no"}],
        "chosen_reward": 1.0,
        "rejected_reward": -1.0,
    } for i in range(count)]


def write_parquet(store: Store, key: str, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.write_bytes(key, sink.getvalue().to_pybytes())


def write_datasets(store: Store, data_run_id: str, train_rows: int = 32, test_rows: int = 4) -> None:
    """The layout the synthesis stage writes: runs/<id>/datasets/{sft,dpo}/{train,test}.parquet."""
    for stage, make in (("sft", sft_rows), ("dpo", dpo_rows)):
        write_parquet(store, f"runs/{data_run_id}/datasets/{stage}/train.parquet", make(train_rows))
        write_parquet(store, f"runs/{data_run_id}/datasets/{stage}/test.parquet", make(test_rows))


def tiny_training(**common: Any) -> dict[str, Any]:
    """A `training:` section for the tiny model: a few seconds per stage on 2 cores."""
    return {
        "common": {"base_model": "builtin:tiny-llama", "max_length": 64, "logging_steps": 1, "save_steps": 4,
                   "seed": 0, "timeout_s": 300, "cpu_threads": 1, **common},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "sft": {"learning_rate": 1e-2, "max_steps": 10, "per_device_batch_size": 4, "warmup_ratio": 0.0,
                "lr_scheduler": "constant"},
        "dpo": {"learning_rate": 5e-3, "max_steps": 10, "per_device_batch_size": 4, "warmup_ratio": 0.0,
                "lr_scheduler": "constant", "beta": 0.1},
    }


def settings_for(store_root: str, training: dict[str, Any] | None = None, **store: Any) -> StageSettings:
    return StageSettings.model_validate({"store": {"root": store_root, **store}, "training": training or tiny_training()})


class KillAfterFirstCheckpoint(TrainerCallback):
    """SIGKILL this process right after the first checkpoint is saved (and synced: the sync callback runs first)."""

    def on_save(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
