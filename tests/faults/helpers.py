"""Helpers of the fault-injection tests: run configs that point agents at load servers, a cheap plugin reward,
store inspection, and running `toa` as a subprocess.

The synthesis flow under test is the real one (flows.synthesize / `toa synthesize`); only the models are
replaced by bench.loadserver instances and the reward by `length_reward` (in process, no model to load).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]
TOA = Path(sys.executable).with_name("toa")


def length_reward(messages: list[dict], response: str) -> float:
    """Cheap deterministic reward plug-in: longer answers score higher (the load server's answers are junk)."""
    return len(response) / 100.0


def write_prompts(path: Path, n: int) -> Path:
    """A JSONL file of `n` distinct instructions."""
    path.write_text("".join(json.dumps({"instruction": f"Fault test prompt {i}: describe item {i}."}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def fast_retry(read_timeout_s: float = 5.0, max_attempts: int = 4) -> dict[str, Any]:
    """Client retry settings for tests: millisecond backoff, a short read timeout."""
    return {"max_attempts": max_attempts, "backoff_initial_s": 0.01, "backoff_max_s": 0.3,
            "connect_timeout_s": 2.0, "read_timeout_s": read_timeout_s}


def write_config(path: Path, *, agents: list[dict[str, Any]], store: dict[str, Any], prompts: Path,
                 budget: int = 6, shard_size: int = 4, prompt_concurrency: int = 4, **extra: Any) -> Path:
    """A run config with `backend: openai` agents (each dict: name, url, optional api_key_env / retry)."""
    models = []
    for agent in agents:
        model = {"name": agent["name"], "backend": "openai", "model": "load", "endpoints": [agent["url"]],
                 "retry": agent.get("retry", fast_retry())}
        if agent.get("api_key_env"):
            model["api_key_env"] = agent["api_key_env"]
        models.append(model)
    data = {
        "name": "faults",
        "store": store,
        "models": models,
        "reward": {"kind": "plugin", "callable": "tests.faults.helpers:length_reward", "batch_wait_ms": 1},
        "search": {"strategy": "toa", "budget": budget, "max_tokens": 16, "tau": 1.0, "alpha": 0.05,
                   "prompt_concurrency": prompt_concurrency},
        "synthesis": {"prompts": {"source": str(prompts)}, "shard_size": shard_size, "shard_retries": 0,
                      # the load server stops every answer at max_tokens (finish_reason "length")
                      "ranking": {"dpo_rejected_rank": 3, "test_fraction": 0.25, "allow_truncated": True}},
    }
    for dotted, value in extra.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def samples_table(store, run_id: str):
    """All published sample shards of a run as one list of row dicts."""
    rows = []
    for key in sorted(store.list(f"runs/{run_id}/samples/")):
        if key.endswith(".parquet"):
            rows.extend(pq.read_table(io.BytesIO(store.read_bytes(key))).to_pylist())
    return rows


def checkpointed_prompts(root: Path, run_id: str) -> int:
    """Prompts finished so far in a local store: checkpoint files plus the rows of published shards."""
    run = root / "runs" / run_id
    done = len(list((run / "checkpoints").glob("shard-*/*.parquet"))) if (run / "checkpoints").exists() else 0
    for shard in (run / "samples").glob("shard-*.parquet") if (run / "samples").exists() else []:
        done += pq.read_metadata(shard).num_rows  # callers divide by the budget
    return done


def toa_env(**extra: str) -> dict[str, str]:
    """Environment for a `toa` subprocess: the repo importable (the reward plug-in lives in tests/)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_toa(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 180,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `toa ARGS` to completion and capture its output."""
    return subprocess.run([str(TOA), *args], capture_output=True, text=True, timeout=timeout,
                          env=env or toa_env(), cwd=cwd or REPO)


def straggler_reward(messages: list[dict], response: str) -> float:
    """Reward plug-in that makes every prompt marked "[slow]" a straggler: its scoring waits until all the other
    shards of the run are published (TOAFLOW_TEST_OTHERS = "<samples folder>:<how many>", waiting up to 60 s).
    A synthesis that waits for shards in waves never gets there while the straggler holds its wave."""
    import time

    if "[slow]" in messages[-1]["content"]:
        folder, count = os.environ["TOAFLOW_TEST_OTHERS"].rsplit(":", 1)
        deadline = time.monotonic() + 60
        while len(list(Path(folder).glob("shard-*.parquet"))) < int(count) and time.monotonic() < deadline:
            time.sleep(0.05)
    return length_reward(messages, response)
