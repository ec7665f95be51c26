"""Candidate rows as Arrow tables: the one schema of `samples/shard-*.parquet` (ARCHITECTURE section 2)."""
from __future__ import annotations

import io
import json
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from toa_core.records import CANDIDATE_COLUMNS, Candidate

CANDIDATE_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("candidate_id", pa.string()),
    ("parent_id", pa.string()),
    ("kind", pa.string()),
    ("model", pa.string()),
    ("depth", pa.int32()),
    ("text", pa.string()),
    ("reward", pa.float64()),
    ("reward_norm", pa.float64()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    ("finish_reason", pa.string()),
    ("strategy", pa.string()),
    ("seed", pa.int64()),
    ("error", pa.string()),
])
assert tuple(CANDIDATE_SCHEMA.names) == CANDIDATE_COLUMNS, "schema and record drifted apart"


def candidates_to_table(candidates: Iterable[Candidate]) -> pa.Table:
    """Candidates -> an Arrow table with the fixed candidate schema (column order as in the records)."""
    rows = [c.to_row() for c in candidates]
    return pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table to Parquet in memory (zstd), ready for an atomic store write."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def parquet_bytes_to_table(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def trees_to_jsonl(trees: Iterable[tuple[str, list[dict[str, Any]]] | tuple[str, list[dict[str, Any]], dict]]) -> str:
    """Search trees (toa, ab_mcts), one JSON line per prompt: {"prompt_id": ..., "nodes": [...]}, plus
    "search": {...} (stop_reason, generations, round_trips, search CPU) when the item carries PromptResult.search."""
    lines = []
    for pid, nodes, *search in trees:
        record: dict[str, Any] = {"prompt_id": pid, "nodes": nodes}
        if search and search[0]:
            record["search"] = search[0]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)
