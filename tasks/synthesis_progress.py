"""Synthesis progress in prompts and generations, while shards run, wherever they run.

Two halves, talking through the store (the one place every host of a run can reach):

- A shard (task or flow run, on any host) counts what it does in `ShardCounters` (one per orchestrator process;
  shared memory, so child processes count into them directly) and `ShardProgressWriter` writes the totals to
  `runs/<run_id>/progress/shard-NNNNN.json` every `synthesis.progress_interval_s` and once more when it ends.
- The synthesis flow's `SynthesisProgress` reads the records of the shards in flight, adds up prompts done,
  generations, failures, generations/s and an ETA over all shards (and over every attempt of a resubmitted
  shard), and shows them in the flow run's progress artifact: the bar counts prompts, so it reaches 100 % exactly
  when every prompt of the run is synthesized; its description carries the rest.

A progress record (JSON): shard, shards, prompts (in the shard), resumed (checkpointed by an earlier attempt),
prompts_done (resumed included), generations, failed (generations that failed for good), retries, attempt (the
flow or task run that wrote it), host, started_at / updated_at (Unix time), finished, and, once finished, outcome.
"""
from __future__ import annotations

import logging
import multiprocessing
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from infra.store import Store, StoreKeyNotFound
from tasks.artifacts import ProgressReporter

log = logging.getLogger(__name__)

# Fields of one ShardCounters, in order: prompts finished, completion requests ended, of them failed, request
# retries, and the candidates (and failed candidates) of the finished prompts.
PROMPTS, GENERATIONS, FAILED, RETRIES, CANDIDATES, CANDIDATE_ERRORS = range(6)
_FIELDS = 6


class ShardCounters:
    """Running counts of one orchestrator process: prompts finished, generations, failed generations, retries.

    Backed by shared memory (a `multiprocessing` array of the spawn context), so the same object counts in the
    shard's own process and in a child process it was handed to.
    """

    def __init__(self) -> None:
        self._values = multiprocessing.get_context("spawn").Array("q", _FIELDS)

    def add(self, what: int, count: int = 1) -> None:
        with self._values.get_lock():
            self._values[what] += count

    def generation(self, ok: bool) -> None:
        """Count one completion request that has ended (after its client's own retries)."""
        with self._values.get_lock():
            self._values[GENERATIONS] += 1
            if not ok:
                self._values[FAILED] += 1

    def snapshot(self) -> list[int]:
        with self._values.get_lock():
            return list(self._values)


def sum_counters(counters: list[ShardCounters]) -> list[int]:
    totals = [0] * _FIELDS
    for counter in counters:
        for i, value in enumerate(counter.snapshot()):
            totals[i] += value
    return totals


class CountingChatModel:
    """A ChatModel that counts each finished completion request into ShardCounters, else the agent itself."""

    def __init__(self, inner: Any, counters: ShardCounters):
        self._inner = inner
        self._counters = counters

    async def generate(self, messages, params):
        generation = await self._inner.generate(messages, params)
        self._counters.generation(generation.error is None and generation.text is not None)
        return generation

    def __getattr__(self, name: str) -> Any:  # name, config, aclose, ...: the agent's own
        return getattr(self._inner, name)


class ShardProgressWriter:
    """Writes one shard's progress record to the store every `interval_s` and at the end.

    The record is rewritten every interval even when no count moved (a single generation can take minutes): its
    changing `updated_at` is the shard's sign of life, which the synthesis flow checks before it declares a shard
    lost with its host.

    Use as a context manager around the shard's search; `finish(outcome)` writes the final record. `on_update`
    (optional) is called with each record written, e.g. to move the shard flow run's own progress artifact.
    """

    def __init__(self, store: Store, key: str, *, shard: int, shards: int, prompts: int, resumed: int,
                 counters: list[ShardCounters], interval_s: float, attempt: str | None = None,
                 on_update: Callable[[dict[str, Any]], None] | None = None):
        self.store, self.key, self.counters, self.interval_s = store, key, counters, interval_s
        self.on_update = on_update
        self.record: dict[str, Any] = {
            "shard": shard, "shards": shards, "prompts": prompts, "resumed": resumed, "prompts_done": resumed,
            "generations": 0, "failed": 0, "retries": 0, "attempt": attempt, "host": socket.gethostname(),
            "started_at": time.time(), "updated_at": time.time(), "finished": False,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written: tuple | None = None

    def __enter__(self) -> "ShardProgressWriter":
        self.write()
        self._thread = threading.Thread(target=self._loop, name=f"progress-shard-{self.record['shard']}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.record["finished"]:
            self.write()  # what a failed attempt got done, for the flow's totals

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write(force=True)

    def write(self, force: bool = False) -> None:
        prompts, generations, failed, retries = sum_counters(self.counters)[:4]
        self.record.update(prompts_done=self.record["resumed"] + prompts, generations=generations, failed=failed,
                           retries=retries)
        state = (prompts, generations, failed, retries, self.record["finished"])
        if state == self._written and not force:
            return
        self.record["updated_at"] = time.time()
        try:
            self.store.write_json(self.key, self.record)
            self._written = state
        except Exception as error:  # progress is a courtesy: a store hiccup must not fail the shard
            log.warning("could not write shard progress %s: %s", self.key, error)
        if self.on_update is not None:
            try:
                self.on_update(dict(self.record))
            except Exception as error:
                log.warning("could not show shard progress: %s", error)

    def finish(self, outcome: dict[str, Any]) -> None:
        """The shard is published: record its outcome (the synthesis flow reads it from here)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.record["finished"] = True
        self.record["outcome"] = outcome
        self.record["prompts_done"] = self.record["prompts"]
        self.write(force=True)
        self.record["prompts_done"] = self.record["prompts"]


def read_progress(store: Store, key: str) -> dict[str, Any] | None:
    """A shard's progress record, or None when it has none yet."""
    try:
        return store.read_json(key)
    except (StoreKeyNotFound, FileNotFoundError):
        return None
    except ValueError as error:  # a record caught mid-write on a store without atomic writes
        log.debug("unreadable progress record %s: %s", key, error)
        return None


def describe_duration(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 3.4 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _ShardState:
    prompts: int
    done: bool = False
    attempt: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    carried_generations: int = 0  # generations of earlier attempts of this shard (crashed or failed)
    carried_failed: int = 0


class SynthesisProgress:
    """The synthesis flow's view of its shards: totals, generations/s, ETA, and the progress artifact.

    `plan` gives each shard's prompt count; `budget` the generations per prompt (for the ETA). Call
    `refresh(indices)` with the shards in flight, `shard_done(index, outcome)` when a shard ends, `publish()` to
    update the artifact (it is only written when something changed).
    """

    RATE_WINDOW_S = 300.0

    def __init__(self, store: Store, key_of: Callable[[int], str], plan: list[list[str]], budget: int, *,
                 artifact: str | None, run_label: str):
        self.store, self.key_of, self.budget, self.run_label = store, key_of, budget, run_label
        self.shards = [_ShardState(prompts=len(ids)) for ids in plan]
        self.total_prompts = sum(len(ids) for ids in plan)
        self._samples: deque[tuple[float, int]] = deque()
        self._started = time.monotonic()
        self._published: tuple | None = None
        self._bar = ProgressReporter(self.total_prompts, artifact=artifact,
                                     description=f"synthesis run {run_label}: starting") if artifact else None

    # -- counts --------------------------------------------------------------------------------------------

    def refresh(self, indices: list[int]) -> dict[int, dict[str, Any]]:
        """Read the progress records of these shards (the ones in flight); returns those that exist."""
        records = {}
        for index in indices:
            record = read_progress(self.store, self.key_of(index))
            if record is not None:
                self._take(index, record)
                records[index] = record
        return records

    def _take(self, index: int, record: dict[str, Any]) -> None:
        state = self.shards[index]
        if state.done:
            return
        if state.attempt is not None and record.get("attempt") != state.attempt and state.record:
            # A new attempt of a resubmitted shard: keep what the earlier one generated in the totals.
            state.carried_generations += int(state.record.get("generations", 0))
            state.carried_failed += int(state.record.get("failed", 0))
        state.attempt = record.get("attempt")
        state.record = record

    def shard_done(self, index: int, outcome: dict[str, Any] | None = None) -> None:
        """A shard is published (or was already complete): all its prompts count as done."""
        record = read_progress(self.store, self.key_of(index))
        if record is not None:
            self._take(index, record)
        self.shards[index].done = True

    def totals(self) -> dict[str, Any]:
        prompts_done = resumed = generations = failed = 0
        for state in self.shards:
            record = state.record
            prompts_done += state.prompts if state.done else min(state.prompts, int(record.get("prompts_done", 0)))
            resumed += int(record.get("resumed", 0))
            generations += state.carried_generations + int(record.get("generations", 0))
            failed += state.carried_failed + int(record.get("failed", 0))
        now = time.monotonic()
        self._samples.append((now, generations))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.RATE_WINDOW_S:
            self._samples.popleft()
        first_t, first_generations = self._samples[0]
        rate = (generations - first_generations) / (now - first_t) if now - first_t > 0 else 0.0
        remaining = max(0, (self.total_prompts - resumed) * self.budget - generations)
        if prompts_done >= self.total_prompts:
            remaining = 0
        return {"prompts": self.total_prompts, "prompts_done": prompts_done, "generations": generations,
                "failed": failed, "generations_per_s": rate,
                "eta_s": remaining / rate if rate > 0 else (0.0 if remaining == 0 else None),
                "shards": len(self.shards), "shards_done": sum(s.done for s in self.shards)}

    def describe(self, totals: dict[str, Any], running: int) -> str:
        eta = totals["eta_s"]
        eta_text = "done" if totals["prompts_done"] >= totals["prompts"] else (
            f"ETA {describe_duration(eta)}" if eta is not None else "ETA unknown yet")
        return (f"synthesis run {self.run_label}: {totals['prompts_done']:,}/{totals['prompts']:,} prompts, "
                f"{totals['generations']:,} generations ({totals['failed']:,} failed), "
                f"{totals['generations_per_s']:.1f} generations/s, {eta_text}; "
                f"shards {totals['shards_done']}/{totals['shards']} done, {running} running")

    def publish(self, running: int = 0) -> dict[str, Any]:
        """Update the progress artifact (percent of prompts done, the rest in its description); returns totals."""
        totals = self.totals()
        key = (totals["prompts_done"], totals["generations"], totals["failed"], totals["shards_done"], running)
        if self._bar is not None and key != self._published:
            self._bar.set(totals["prompts_done"], self.describe(totals, running))
            self._published = key
        return totals


def shard_artifact_updater(artifact: str, label: str, prompts: int) -> Callable[[dict[str, Any]], None]:
    """For a shard flow run: an `on_update` for ShardProgressWriter that moves the run's own progress artifact."""
    bar = ProgressReporter(prompts, artifact=artifact, description=f"{label}: starting")

    def update(record: dict[str, Any]) -> None:
        elapsed = max(1e-9, record["updated_at"] - record["started_at"])
        bar.set(record["prompts_done"],
                f"{label}: {record['prompts_done']:,}/{record['prompts']:,} prompts, {record['generations']:,} "
                f"generations ({record['failed']:,} failed), {record['generations'] / elapsed:.1f} generations/s")

    return update
