"""Running a synthesis run's shards: a sliding window of at most `synthesis.max_shards_in_flight` shards, where the
next shard starts as soon as any one ends (a slow shard holds one place in the window, not a whole wave).

- `run_shards_locally` (executor `local`): each shard is a task of the synthesis flow run, in its process.
- `run_shards_on_workers` (executor `workers`): each shard is a flow run of the `synthesis.shard_deployment`
  deployment, created with `run_deployment` as a child of the synthesis flow run and picked up by a worker of the
  deployment's pool (one worker per GPU host). The synthesis flow follows their states: a shard whose run failed
  or crashed is submitted again (`synthesis.shard_retries` times; it resumes from its checkpoints, so only the
  prompts that were in flight are searched again), and so is a shard whose host died: its worker has been
  reported OFFLINE by Prefect (missed heartbeats) for 6 x progress_interval_s AND the shard's progress record has
  not changed for as long (a live shard rewrites it every interval, and a worker that only looked offline, e.g. a
  host too busy to send its heartbeat in time, comes back online: neither gets its shard done twice). Such a run
  is marked Crashed (it would otherwise stay "Running" forever) and submitted again.

Both report progress through `SynthesisProgress` (tasks/synthesis_progress.py) and return one outcome dict per
shard, in plan order. Prefect does the distribution: no scheduler of our own, only the window and the follow-up.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from infra.store import open_store
from runconfig import RunConfig
from tasks.synthesis import _shard_rows_and_errors, progress_key, sample_shard_task, shard_key, shard_label
from tasks.synthesis_progress import SynthesisProgress, read_progress

log = logging.getLogger(__name__)

WORKER_LABEL = "prefect.worker.name"  # set on a flow run by the worker that picked it up
STALE_INTERVALS = 6  # progress intervals a shard must show no sign of life, with its worker offline, to be lost


class ShardFailed(RuntimeError):
    """A shard failed for good (its retries are used up); the message names it and why."""


# -- executor local --------------------------------------------------------------------------------------------

def run_shards_locally(cfg: RunConfig, run_id: str, plan: list[list[str]], endpoints: dict[str, Any],
                       progress: SynthesisProgress, logger: logging.Logger | logging.LoggerAdapter = log,
                       finished: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Sample every shard as a task of the current flow run, at most `max_shards_in_flight` at once.

    Returns the outcomes in plan order; `finished` (optional) receives each as its shard ends, also when another
    shard fails the run."""
    from prefect.futures import wait

    shards = len(plan)
    sampler = sample_shard_task.with_options(retries=cfg.synthesis.shard_retries,
                                             retry_delay_seconds=cfg.synthesis.shard_retry_delay_s)
    pending = deque(range(shards))
    running: dict[int, Any] = {}
    outcomes: dict[int, dict[str, Any]] = {}
    errors: list[tuple[str, Exception]] = []
    while running or (pending and not errors):
        while pending and not errors and len(running) < cfg.synthesis.max_shards_in_flight:
            index = pending.popleft()
            running[index] = sampler.with_options(task_run_name=shard_label(index, shards)).submit(
                cfg, run_id, index, plan[index], endpoints, shards)
        done = wait(list(running.values()), timeout=cfg.synthesis.progress_interval_s).done
        for index, future in list(running.items()):
            if future not in done:
                continue
            del running[index]
            try:
                outcomes[index] = future.result()
            except Exception as error:  # failed after its retries: stop starting shards, let the others end
                errors.append((shard_label(index, shards), error))
                logger.error("%s failed for good: %s: %s", shard_label(index, shards), type(error).__name__, error)
                continue
            progress.shard_done(index, outcomes[index])
            if finished is not None:
                finished.append(outcomes[index])
            _log_done(logger, outcomes[index], shards, progress)
        progress.refresh(list(running))
        progress.publish(len(running))
    if errors:
        logger.error("%d shard(s) failed (%s); rerun the same run id to resume: finished shards and checkpointed "
                     "prompts are kept", len(errors), ", ".join(label for label, _ in errors))
        raise errors[0][1]  # the shard's own error, so the run's failure states the real reason
    return [outcomes[index] for index in range(shards)]


def _log_done(logger, outcome: dict[str, Any], shards: int, progress: SynthesisProgress) -> None:
    totals = progress.publish()
    label = shard_label(outcome["index"], shards)
    if outcome["skipped"]:
        logger.info("%s done (complete before this run): %s", label, outcome["uri"])
        return
    logger.info("%s done: %d prompts, %d candidates, %d failed generations -> %s; run: %d/%d prompts, %d/%d shards",
                label, outcome["prompts"], outcome["candidates"], outcome["errors"], outcome["uri"],
                totals["prompts_done"], totals["prompts"], totals["shards_done"], shards)


# -- executor workers ------------------------------------------------------------------------------------------

def shard_idempotency_key(parent_flow_run_id: str, parent_run_count: int, index: int, failures: int) -> str:
    """The idempotency key of a shard's flow run: one per (parent flow run, parent run attempt, shard, resubmission).

    Prefect hands back the existing flow run for a key it has seen. A retried parent (the UI's Retry button, flow
    retries, a crashed run restarted) keeps its flow-run id and counts its resubmissions from 0 again; its
    `run_count` is what tells the attempts apart, so a retried parent gets fresh shard runs, not its failed ones
    (shards it completed are found in the store and not submitted at all). Within one attempt the key still makes
    a repeated submission of the same shard return the same run."""
    return f"{parent_flow_run_id}/run-{parent_run_count}/shard-{index}/attempt-{failures}"


class _Attempts:
    """Flow runs of one shard: the current one and how many have failed or crashed."""

    def __init__(self) -> None:
        self.flow_run_id = None
        self.parent_task_run_id = None
        self.failures = 0


def run_shards_on_workers(cfg: RunConfig, run_id: str, plan: list[list[str]], progress: SynthesisProgress, *,
                          parameters: dict[str, Any], logger: logging.Logger | logging.LoggerAdapter = log,
                          client: Any = None, create_run: Any = None, finished: list[dict[str, Any]] | None = None
                          ) -> list[dict[str, Any]]:
    """Sample every shard as a flow run of `synthesis.shard_deployment`, at most `max_shards_in_flight` at once.

    `parameters` are the shard flow's parameters besides run_id and shard_index (config, overrides, digest).
    `client` (a sync PrefectClient) and `create_run` (`run_deployment`) default to Prefect's own. Returns the
    outcomes in plan order; `finished` (optional) receives each as its shard ends, also when another fails the run.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    if client is None:
        with get_client(sync_client=True) as own_client:
            return run_shards_on_workers(cfg, run_id, plan, progress, parameters=parameters, logger=logger,
                                         client=own_client, create_run=create_run, finished=finished)
    follower = _ShardRunFollower(cfg, run_id, plan, progress, parameters, logger, client,
                                 create_run or run_deployment, finished if finished is not None else [])
    return follower.run()


class _ShardRunFollower:
    def __init__(self, cfg: RunConfig, run_id: str, plan: list[list[str]], progress: SynthesisProgress,
                 parameters: dict[str, Any], logger, client, create_run, finished: list[dict[str, Any]]) -> None:
        self.cfg, self.run_id, self.plan, self.progress, self.finished = cfg, run_id, plan, progress, finished
        self.parameters, self.logger, self.client, self.create_run = parameters, logger, client, create_run
        self.shards = len(plan)
        self.store = open_store(cfg.store)
        self.attempts = {index: _Attempts() for index in range(self.shards)}
        self.outcomes: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.deployment = client.read_deployment_by_name(cfg.synthesis.shard_deployment)
        self.pool = self.deployment.work_pool_name
        self.signs_of_life: dict[int, tuple[Any, float]] = {}  # index -> (record's updated_at, when it last changed)
        self.offline_since: dict[str, float] = {}  # worker name -> when it was first seen offline (this spell)

    # -- the loop --------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        pending: deque[int] = deque()
        for index in range(self.shards):
            if self.store.exists(shard_key(self.run_id, index)):  # finished by an earlier attempt of this run
                self._finish(index, self._outcome(index, skipped=True))
            else:
                pending.append(index)
        running: dict[int, Any] = self._adopt(pending)
        while running or (pending and not self.errors):
            while pending and not self.errors and len(running) < self.cfg.synthesis.max_shards_in_flight:
                index = pending.popleft()
                running[index] = self._submit(index)
            time.sleep(self.cfg.synthesis.progress_interval_s)
            records = self.progress.refresh(list(running))
            for index, state in self._states(running, records).items():
                if state is None:
                    continue
                del running[index]
                self.signs_of_life.pop(index, None)
                retry = self._settle(index, state)
                if retry is not None:
                    running[index] = self._submit(index, delay_s=retry)
            self.progress.publish(len(running))
        if self.errors:
            raise ShardFailed(f"{len(self.errors)} shard(s) failed: {'; '.join(self.errors)}; rerun the same run id "
                              "to resume (finished shards and checkpointed prompts are kept)")
        return [self.outcomes[index] for index in range(self.shards)]

    def _states(self, running: dict[int, Any], records: dict[int, dict[str, Any]]) -> dict[int, Any]:
        """{index: final state or None} for the running shards; a run whose host died is crashed here."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        if not running:
            return {}
        by_id = {run.id: run for run in self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in running.values()])))}
        offline = self._offline_workers()
        states: dict[int, Any] = {}
        for index, submitted in running.items():
            run = by_id.get(submitted.id)
            state = run.state if run is not None else None
            if run is None:
                states[index] = self._crash(submitted, index, "its flow run was deleted")
            elif state is not None and state.is_final():
                states[index] = state
            elif state is not None and (state.is_running() or state.is_pending()) \
                    and self._lost(index, offline.get(run.labels.get(WORKER_LABEL)), records.get(index)):
                states[index] = self._crash(run, index, f"its worker {run.labels[WORKER_LABEL]!r} went offline "
                                                        "and the shard stopped reporting progress (host down or "
                                                        "worker killed)")
            else:
                states[index] = None
        return states

    def _lost(self, index: int, offline_since: float | None, record: dict[str, Any] | None) -> bool:
        """True when the shard's worker has been offline, and its progress record unchanged, for a while."""
        now = time.monotonic()
        window = STALE_INTERVALS * self.cfg.synthesis.progress_interval_s
        marker = (record or {}).get("updated_at")
        last = self.signs_of_life.get(index)
        if offline_since is None or last is None or last[0] != marker:
            self.signs_of_life[index] = (marker, now)
            return False
        return now - offline_since >= window and now - last[1] >= window

    def _settle(self, index: int, state: Any) -> float | None:
        """Record a shard run's end; returns the delay before resubmitting it, or None when it needs no retry."""
        label = shard_label(index, self.shards)
        attempts = self.attempts[index]
        self._mirror_parent_task(attempts, state)
        if state.is_completed() and self.store.exists(shard_key(self.run_id, index)):
            self._finish(index, self._outcome(index))
            return None
        if state.is_cancelled():
            self.errors.append(f"{label}: its flow run {attempts.flow_run_id} was cancelled")
            return None
        why = state.message or state.name
        if state.is_completed():
            why = "its flow run completed without publishing the shard"
        attempts.failures += 1
        if attempts.failures > self.cfg.synthesis.shard_retries:
            self.errors.append(f"{label}: {state.name} after {attempts.failures} attempt(s): {why}")
            self.logger.error("%s failed for good (flow run %s): %s", label, attempts.flow_run_id, why)
            return None
        self.logger.warning("%s: flow run %s ended %s (%s); submitting it again (retry %d of %d), it resumes from "
                            "its checkpoints", label, attempts.flow_run_id, state.name, why, attempts.failures,
                            self.cfg.synthesis.shard_retries)
        return self.cfg.synthesis.shard_retry_delay_s if state.is_failed() else 0.0

    def _finish(self, index: int, outcome: dict[str, Any]) -> None:
        self.outcomes[index] = outcome
        self.finished.append(outcome)
        self.progress.shard_done(index, outcome)
        _log_done(self.logger, outcome, self.shards, self.progress)

    # -- Prefect calls ---------------------------------------------------------------------------------------

    def _submit(self, index: int, delay_s: float = 0.0):
        from datetime import datetime, timedelta, timezone

        from prefect.runtime import flow_run

        attempts = self.attempts[index]
        parameters = {**self.parameters, "run_id": self.run_id, "shard_index": index}
        run = self.create_run(
            self.cfg.synthesis.shard_deployment, parameters=parameters, timeout=0, as_subflow=True,
            flow_run_name=f"{shard_label(index, self.shards)} of {self.run_id}",
            scheduled_time=datetime.now(timezone.utc) + timedelta(seconds=delay_s),
            tags=["toaflow", "synthesize-shard", f"run:{self.run_id}", f"shard:{index}"],
            idempotency_key=shard_idempotency_key(flow_run.get_id() or self.run_id, flow_run.get_run_count(), index,
                                                  attempts.failures))
        attempts.flow_run_id, attempts.parent_task_run_id = run.id, run.parent_task_run_id
        self.logger.info("%s submitted as flow run %s (%s) to pool %s", shard_label(index, self.shards), run.name,
                         run.id, self.pool)
        return run

    def _adopt(self, pending: deque[int]) -> dict[int, Any]:
        """Shard runs of this run id still scheduled or running (the synthesis flow itself was restarted): follow
        them instead of starting the same shards twice."""
        from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                    FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags)
        from prefect.client.schemas.objects import StateType

        active = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
        runs = self.client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment.id])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{self.run_id}"]),
                                          state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))))
        adopted: dict[int, Any] = {}
        for run in runs:
            index = next((int(tag.split(":", 1)[1]) for tag in run.tags if tag.startswith("shard:")), None)
            if index in pending and index not in adopted:
                adopted[index] = run
                pending.remove(index)
                self.attempts[index].flow_run_id = run.id
                self.logger.info("%s: following its flow run %s, started before this flow run",
                                 shard_label(index, self.shards), run.id)
        return adopted

    def _offline_workers(self) -> dict[str, float]:
        """{worker name: since when (monotonic) it has been offline without a break} for the deployment's pool."""
        from prefect.client.schemas.objects import WorkerStatus

        if not self.pool:
            return {}
        now = time.monotonic()
        offline = {worker.name for worker in self.client.read_workers_for_work_pool(self.pool)
                   if worker.status == WorkerStatus.OFFLINE}
        self.offline_since = {name: self.offline_since.get(name, now) for name in offline}
        return self.offline_since

    def _crash(self, run: Any, index: int, why: str):
        """Mark a shard run that cannot finish as Crashed (so the UI tells the truth) and return that state."""
        from prefect.states import Crashed

        state = Crashed(message=f"{shard_label(index, self.shards)}: {why}")
        try:
            self.client.set_flow_run_state(run.id, state, force=True)
        except Exception as error:  # the run may be gone; the shard is resubmitted either way
            self.logger.warning("could not mark flow run %s crashed: %s", run.id, error)
        return state

    def _mirror_parent_task(self, attempts: _Attempts, state: Any) -> None:
        """`run_deployment` leaves the parent's placeholder task run Pending: give it the child's end state."""
        if attempts.parent_task_run_id is None:
            return
        from prefect.states import State

        try:
            self.client.set_task_run_state(attempts.parent_task_run_id,
                                           State(type=state.type, name=state.name, message=state.message), force=True)
        except Exception as error:
            self.logger.debug("could not update the placeholder task run: %s", error)

    def _outcome(self, index: int, skipped: bool = False) -> dict[str, Any]:
        """A finished shard's outcome: from its progress record, else from the published file itself."""
        record = read_progress(self.store, progress_key(self.run_id, index)) or {}
        if not skipped and isinstance(record.get("outcome"), dict):
            return record["outcome"]
        key = shard_key(self.run_id, index)
        rows, errors = _shard_rows_and_errors(self.store, key)
        return {"index": index, "uri": self.store.uri(key), "prompts": len(self.plan[index]), "candidates": rows,
                "errors": errors, "retries": 0, "resumed_prompts": 0 if skipped else int(record.get("resumed", 0)),
                "skipped": skipped, "new_candidates": 0, "new_errors": 0}

