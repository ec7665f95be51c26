"""The stage datasets: fetched from the store, checked against what TRL needs, loaded with `datasets`.

Layout written by the synthesis stage: runs/<data_run>/datasets/{sft,dpo}/{train,test}.parquet
- SFT: `messages` (a conversation ending with the assistant's answer) + provenance columns.
- DPO: `prompt` (the conversation so far), `chosen`, `rejected` (each a list holding one assistant message).
Provenance columns are dropped before training: TRL's collators only want the conversational columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from infra.store import Store
from training.modeling import TrainingSetupError

REQUIRED_COLUMNS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}
SPLITS = ("train", "test")


def dataset_key(data_run_id: str, stage: str, split: str) -> str:
    """Store key of one split of a stage's dataset."""
    return f"runs/{data_run_id}/datasets/{stage}/{split}.parquet"


def fetch_stage_dataset(store: Store, data_run_id: str, stage: str, local_dir: Path,
                        max_train_samples: int | None = None) -> dict[str, Any]:
    """Download and validate the stage's splits; returns {"train": Dataset, "test": Dataset | None}.

    Raises TrainingSetupError when the train split is missing or empty, or a split lacks a required column
    or holds rows TRL cannot format.
    """
    splits: dict[str, Any] = {"train": None, "test": None}
    for split in SPLITS:
        key = dataset_key(data_run_id, stage, split)
        if not store.exists(key):
            if split == "train":
                raise TrainingSetupError(
                    f"no {stage.upper()} dataset at {store.uri(key)}: run `toa synthesize` for run '{data_run_id}' "
                    "first, or pass --data-run-id with the run that holds the datasets")
            continue  # no test split: training runs without evaluation
        local = store.download_file(key, local_dir / stage / f"{split}.parquet")
        try:
            metadata = pq.ParquetFile(local).metadata
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise TrainingSetupError(f"{store.uri(key)} is not a readable parquet file: {error}") from None
        _check_columns(metadata.schema.to_arrow_schema().names, stage, store.uri(key))
        if metadata.num_rows == 0:
            if split == "train":
                raise TrainingSetupError(
                    f"{store.uri(key)} has no rows; the synthesis stage produced no {stage.upper()} data")
            continue  # an empty test split: no evaluation (datasets cannot load an empty parquet file)
        from datasets import load_dataset  # imported late: a missing dataset is reported without loading torch

        dataset = load_dataset("parquet", data_files=str(local), split="train")
        _check_rows(dataset, stage, store.uri(key))
        dataset = dataset.select_columns(list(REQUIRED_COLUMNS[stage]))
        if split == "train" and max_train_samples is not None:
            dataset = dataset.select(range(min(max_train_samples, len(dataset))))
        splits[split] = dataset if len(dataset) else None
    return splits


def _check_columns(columns: list[str], stage: str, where: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS[stage] if c not in columns]
    if missing:
        raise TrainingSetupError(
            f"{where} lacks column(s) {', '.join(missing)} that {stage.upper()} training needs "
            f"(has: {', '.join(columns) or 'none'}); expected {', '.join(REQUIRED_COLUMNS[stage])} "
            "in TRL's conversational format (lists of {role, content} messages)")


def _check_rows(dataset: Any, stage: str, where: str) -> None:
    """Every conversational cell must be a non-empty list of {role, content}; completions must be the assistant's."""
    for column in REQUIRED_COLUMNS[stage]:
        for row_number, messages in enumerate(dataset[column]):
            problem = _message_list_problem(messages)
            if problem is None and column in ("chosen", "rejected") and messages[-1]["role"] != "assistant":
                problem = "its last message is not from the assistant"
            if problem is None and column == "messages" and not any(m["role"] == "assistant" for m in messages):
                problem = "it has no assistant message to learn from"
            if problem:
                raise TrainingSetupError(f"{where}: row {row_number}, column '{column}': {problem}")


def _message_list_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"expected a non-empty list of messages, got {type(messages).__name__} {str(messages)[:60]!r}"
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            return f"each message needs string 'role' and 'content', got {str(message)[:80]!r}"
    return None
