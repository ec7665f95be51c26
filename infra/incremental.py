"""Incremental nightly runs: which prompts were already synthesized, and the accumulated training data.

Pure store operations (no Prefect). The store-level index is one parquet file per finished synthesis run:
    index/prompts/<run_id>.parquet      columns prompt_id, run_id, recorded_at
A nightly run samples only prompts absent from the index, and records its own prompt ids once its synthesis
finishes (re-recording a run replaces its file, so a resumed run is never counted twice). An entry counts only
while its run's datasets exist: delete a run folder and its prompts are synthesized again (`toa index --prune`
removes such stale entries for good). Training then uses
every indexed run's datasets plus the new run's (written as the data run `runs/<run_id>-accumulated/`, whose
lineage.json lists the source runs): `accumulate_datasets` concatenates their
datasets/{sft,dpo}/{train,test}.parquet files and keeps, per prompt_id, the rows of the newest run only (so a
prompt re-synthesized later replaces its older data and never lands in both train and test).

Bounded data (`pipeline.accumulate`, AccumulationConfig): the accumulated set need not grow without bound. A night
is a run that synthesized new prompts; counting this run as age 0, `window_nights: N` keeps the nights of age < N,
and `decay_per_night: d` gives a night of age k the weight d**k: it keeps a seeded share d**k of its prompts (the
same prompts every time, chosen by a hash of the prompt id), and a night whose weight is below `min_weight` is left
out. TRL's trainers take no per-row loss weight, so the weight is a sampling rate. `plan_accumulation` decides,
`accumulate_datasets` applies it and counts per run what was kept and dropped (the accumulated data's card says it).
"""
from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from infra.run_ids import InvalidRunId, check_run_id
from toa_core.config import Section
from infra.store import Store
from toa_core.records import prompt_id_for

log = logging.getLogger(__name__)

INDEX_PREFIX = "index/prompts/"
STAGES = ("sft", "dpo")
SPLITS = ("train", "test")


class AccumulationConfig(Section):
    """Which earlier nights' data the nightly pipeline trains on (default: every night, all rows)."""
    window_nights: int | None = Field(
        None, ge=1, description="train on the newest N nights' data, this run's included (a night = a run that "
                                "synthesized new prompts); empty = every night")
    decay_per_night: float | None = Field(
        None, gt=0, le=1, description="a night k nights older than this run keeps a seeded share decay**k of its "
                                      "prompts (the same ones every time); empty = all of them")
    min_weight: float = Field(0.01, ge=0, lt=1, description="a night whose weight decay**k is below this is left out")
    seed: int = Field(0, description="seed of the prompt hash that picks a decayed night's rows")

    @model_validator(mode="after")
    def _decay_needs_room(self) -> "AccumulationConfig":
        if self.decay_per_night is None and "min_weight" in self.model_fields_set:
            raise ValueError("min_weight applies with decay_per_night; set decay_per_night or remove min_weight")
        return self


def plan_accumulation(runs: Sequence[str], cfg: AccumulationConfig | None) -> list[dict[str, Any]]:
    """For each night in `runs` (oldest first, this run last): {"run_id", "age", "weight", "used", "reason"}."""
    cfg = cfg or AccumulationConfig()
    plan = []
    for position, run_id in enumerate(runs):
        age = len(runs) - 1 - position
        weight = cfg.decay_per_night ** age if cfg.decay_per_night is not None else 1.0
        if cfg.window_nights is not None and age >= cfg.window_nights:
            used, reason = False, (f"left out: {age} night(s) old, outside the window of the newest "
                                   f"{cfg.window_nights} night(s) (pipeline.accumulate.window_nights)")
            weight = 0.0
        elif weight < cfg.min_weight:
            used, reason = False, (f"left out: weight {cfg.decay_per_night:g}^{age} = {weight:.3g} is below "
                                   f"min_weight {cfg.min_weight:g}")
            weight = 0.0
        elif weight < 1.0:
            used, reason = True, (f"{age} night(s) old: weight {cfg.decay_per_night:g}^{age} = {weight:.3g}, so a "
                                  f"seeded {weight:.0%} of its prompts (pipeline.accumulate.decay_per_night)")
        else:
            used, reason = True, "this run: all rows" if age == 0 else f"{age} night(s) old: all rows"
        plan.append({"run_id": run_id, "age": age, "weight": weight, "used": used, "reason": reason})
    return plan


def keeps_prompt(prompt_id: str, weight: float, seed: int = 0) -> bool:
    """Whether a night of this weight keeps `prompt_id`: a seeded hash in [0, 1) below the weight (stable)."""
    if weight >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < weight


def _read_table(store: Store, key: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(store.read_bytes(key)), columns=columns)


def _write_table(store: Store, key: str, table: pa.Table) -> str:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return store.write_bytes(key, buffer.getvalue())


def is_valid_run_id(run_id: str) -> bool:
    try:
        check_run_id(run_id)
    except InvalidRunId:
        return False
    return True


def index_key(run_id: str) -> str:
    return f"{INDEX_PREFIX}{check_run_id(run_id)}.parquet"


def prompt_ids_sampled_in_run(store: Store, run_id: str) -> set[str]:
    """Prompt ids with at least one successful candidate in runs/<run_id>/samples/shard-*.parquet.

    A prompt whose every generation failed is not counted: the next run tries it again.
    """
    prompt_ids: set[str] = set()
    for key in store.list(f"runs/{check_run_id(run_id)}/samples/"):
        if not key.endswith(".parquet"):
            continue
        table = _read_table(store, key)
        if "error" in table.column_names:
            table = table.filter(pc.is_null(table["error"]))
        prompt_ids.update(table["prompt_id"].to_pylist())
    return prompt_ids


def record_synthesized_prompts(store: Store, run_id: str, prompt_ids: Iterable[str] | None = None) -> str:
    """Write the index entry of `run_id` (default: the prompts sampled in its samples/ shards); returns its key."""
    ids = sorted(set(prompt_ids) if prompt_ids is not None else prompt_ids_sampled_in_run(store, run_id))
    recorded_at = datetime.now(timezone.utc).isoformat()
    table = pa.table({"prompt_id": pa.array(ids, pa.string()),
                      "run_id": pa.array([run_id] * len(ids), pa.string()),
                      "recorded_at": pa.array([recorded_at] * len(ids), pa.string())})
    table = table.replace_schema_metadata({"run_id": run_id, "recorded_at": recorded_at})
    _write_table(store, index_key(run_id), table)
    return index_key(run_id)


def has_datasets(store: Store, run_id: str) -> bool:
    """True while runs/<run_id>/datasets/ holds at least one parquet file (the data the index stands for)."""
    return any(key.endswith(".parquet") for key in store.list(f"runs/{check_run_id(run_id)}/datasets/"))


def index_entries(store: Store) -> list[dict[str, Any]]:
    """Every index entry, oldest first: {"run_id", "key", "recorded_at", "prompts", "live"}.

    `live` is False when the run's datasets are gone (its folder was deleted): such an entry no longer keeps
    its prompts from being synthesized again.
    """
    entries = []
    for key in store.list(INDEX_PREFIX):
        if not key.endswith(".parquet"):
            continue
        run_id = key[len(INDEX_PREFIX):-len(".parquet")]
        if "/" in run_id or not is_valid_run_id(run_id):
            # Not written by record_synthesized_prompts (a copy in a subfolder, a hand-made file): it names no run,
            # so it is left alone rather than failing every incremental run.
            log.warning("ignoring %s: the prompt index holds only <run_id>.parquet files directly under %s; move or "
                        "delete it", store.uri(key), store.uri(INDEX_PREFIX))
            continue
        metadata = pq.read_metadata(io.BytesIO(store.read_bytes(key)))
        schema_metadata = metadata.schema.to_arrow_schema().metadata or {}
        entries.append({"run_id": run_id, "key": key, "prompts": metadata.num_rows,
                        "recorded_at": schema_metadata.get(b"recorded_at", b"").decode(),
                        # A run that found nothing new has no datasets and no prompts: nothing to go stale.
                        "live": metadata.num_rows == 0 or has_datasets(store, run_id)})
    return sorted(entries, key=lambda entry: (entry["recorded_at"], entry["run_id"]))


def indexed_runs(store: Store) -> list[str]:
    """Runs with a live index entry, in the order they were recorded (oldest first)."""
    return [entry["run_id"] for entry in index_entries(store) if entry["live"]]


def prompt_counts(store: Store) -> dict[str, int]:
    """Runs with a live index entry (oldest first) with how many prompt ids each recorded (0 for a run that
    found nothing new)."""
    return {entry["run_id"]: entry["prompts"] for entry in index_entries(store) if entry["live"]}


def stale_index_entries(store: Store) -> list[dict[str, Any]]:
    """Index entries whose run's datasets are gone (ignored by every reader; `prune_index` deletes them)."""
    return [entry for entry in index_entries(store) if not entry["live"]]


def prune_index(store: Store) -> list[dict[str, Any]]:
    """Delete the stale index entries; returns what was removed (run id, key, prompt count)."""
    removed = stale_index_entries(store)
    for entry in removed:
        store.delete(entry["key"])
    return removed


def training_runs_of(store: Store, run_id: str) -> list[str]:
    """The runs whose datasets trained `run_id`'s model: the sources of its accumulated data, else itself."""
    lineage_key = f"runs/{check_run_id(run_id)}-accumulated/lineage.json"
    if store.exists(lineage_key):
        return list(store.read_json(lineage_key)["from_runs"])
    return [run_id]


def synthesized_prompts_by_run(store: Store, exclude_runs: Iterable[str] = ()) -> dict[str, set[str]]:
    """{run_id: prompt ids} of every live index entry except those of `exclude_runs` (oldest run first)."""
    excluded = set(exclude_runs)
    return {entry["run_id"]: set(_read_table(store, entry["key"], columns=["prompt_id"])["prompt_id"].to_pylist())
            for entry in index_entries(store) if entry["live"] and entry["run_id"] not in excluded}


def synthesized_prompt_ids(store: Store, exclude_runs: Iterable[str] = ()) -> set[str]:
    """Every prompt id some earlier synthesis run recorded (and whose data still exists), except those
    recorded by `exclude_runs`.

    Exclude the run being (re-)synthesized, so resuming a run does not skip its own prompts.
    """
    seen: set[str] = set()
    for prompt_ids in synthesized_prompts_by_run(store, exclude_runs).values():
        seen.update(prompt_ids)
    return seen


def _derived_prompt_ids(table: pa.Table, stage: str) -> list[str]:
    """prompt_id per row: the column when the dataset has it, else the hash of the prompt's messages."""
    if "prompt_id" in table.column_names:
        return table["prompt_id"].to_pylist()
    if stage == "dpo":
        return [prompt_id_for(prompt) for prompt in table["prompt"].to_pylist()]
    ids = []
    for messages in table["messages"].to_pylist():
        end = len(messages)
        while end and messages[end - 1]["role"] == "assistant":
            end -= 1  # the prompt is the conversation before the answer being learned
        ids.append(prompt_id_for(messages[:end]))
    return ids


def accumulate_datasets(store: Store, run_ids: Sequence[str], dest_prefix: str,
                        weights: Mapping[str, float] | None = None, seed: int = 0) -> dict[str, Any]:
    """Concatenate the datasets of `run_ids` (oldest first) into `dest_prefix`/{sft,dpo}/{train,test}.parquet.

    Per stage, each prompt_id keeps the rows of the newest run that has it, in the split that run gave it; then a
    run of weight w < 1 (`weights`, default 1) keeps the rows of the prompts `keeps_prompt` picks for it.
    Runs without a dataset file are skipped. Returns {"runs": [...], "rows": {"sft/train": n, ...}, "keys": [...],
    "by_run": {run: {"sft": {"rows", "kept"}, "dpo": {...}}}} (rows = its rows after the newest-run rule).
    """
    dest_prefix = dest_prefix.rstrip("/")
    weights = weights or {}
    summary: dict[str, Any] = {"runs": list(run_ids), "rows": {}, "keys": [],
                               "by_run": {run: {stage: {"rows": 0, "kept": 0} for stage in STAGES} for run in run_ids}}
    for stage in STAGES:
        owner: dict[str, tuple[int, str]] = {}  # prompt_id -> (run position, split) of its newest rows
        tables: dict[tuple[int, str], pa.Table] = {}
        for position, run_id in enumerate(run_ids):
            for split in SPLITS:
                key = f"runs/{check_run_id(run_id)}/datasets/{stage}/{split}.parquet"
                if not store.exists(key):
                    continue
                table = _read_table(store, key)
                ids = _derived_prompt_ids(table, stage)
                if "prompt_id" not in table.column_names:
                    table = table.append_column("prompt_id", pa.array(ids, pa.string()))
                tables[(position, split)] = table
                for prompt_id in ids:
                    owner[prompt_id] = (position, split)  # later runs overwrite earlier ones
        by_split: dict[str, list[pa.Table]] = {split: [] for split in SPLITS}
        for (position, split), table in sorted(tables.items()):
            run_id, weight = run_ids[position], weights.get(run_ids[position], 1.0)
            newest = [owner[prompt_id] == (position, split) for prompt_id in table["prompt_id"].to_pylist()]
            keep = [is_newest and keeps_prompt(prompt_id, weight, seed)
                    for is_newest, prompt_id in zip(newest, table["prompt_id"].to_pylist())]
            summary["by_run"][run_id][stage]["rows"] += sum(newest)
            summary["by_run"][run_id][stage]["kept"] += sum(keep)
            by_split[split].append(table.filter(pa.array(keep, pa.bool_())))
        for split, parts in by_split.items():
            if not parts:
                continue
            merged = pa.concat_tables(parts, promote_options="permissive")
            if split == "test" and merged.num_rows == 0:
                continue  # training runs without a test split rather than on an empty one
            key = f"{dest_prefix}/{stage}/{split}.parquet"
            _write_table(store, key, merged)
            summary["rows"][f"{stage}/{split}"] = merged.num_rows
            summary["keys"].append(key)
    return summary
