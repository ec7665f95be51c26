"""The run registry: which run is the served model (`latest`), and why each candidate was promoted or not.

Pure store operations (no Prefect). Layout under the store root:
    registry/latest.json                         {"run_id", "promoted_at", "reason", "previous_run_id", "record",
                                                  "model_uri", "model_digest", "scores"}
    registry/promotions/<decided_at>-<run_id>.json   one record per gate decision, promoted or blocked
    runs/<run_id>/promotion.json                 the same record, next to the run it is about

The record is written before the pointer moves, so `latest` never names a run without its reason. Writes are
atomic (the store guarantees it); one pipeline runs at a time (the deployment's concurrency limit), so the
pointer has a single writer.

The pointer carries the gated scores `latest` was promoted on, with the URI and a digest of the model they belong
to: the next gate compares with those (`latest_scores`), never with runs/<id>/eval/*/scores.json, which a later
evaluation could rewrite.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from infra.promotion import GateDecision
from infra.run_ids import check_run_id
from infra.store import Store

LATEST_KEY = "registry/latest.json"
PROMOTIONS_PREFIX = "registry/promotions/"


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unknown run, malformed pointer); the message says what to fix."""


@dataclass(frozen=True)
class PromotionRecord:
    """One gate decision: the candidate run, the run it was compared with, the verdict and the numbers."""
    run_id: str
    promoted: bool
    reason: str
    compared_with: str | None
    decided_at: str
    blocking_metrics: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    candidate_scores: dict[str, Any] = field(default_factory=dict)
    current_scores: dict[str, Any] | None = None
    flow_run_id: str | None = None
    base_scores: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_prefix(run_id: str) -> str:
    """The store prefix of a run's folder, with the trailing '/'."""
    return f"runs/{check_run_id(run_id)}/"


def run_exists(store: Store, run_id: str) -> bool:
    """True when the store holds anything under runs/<run_id>/."""
    return bool(store.list(run_prefix(run_id)))


def read_latest(store: Store) -> dict[str, Any] | None:
    """The `latest` pointer ({"run_id", "promoted_at", "reason", ...}), or None before the first promotion."""
    if not store.exists(LATEST_KEY):
        return None
    pointer = store.read_json(LATEST_KEY)
    if not isinstance(pointer, dict) or not isinstance(pointer.get("run_id"), str):
        raise RegistryError(f"{store.uri(LATEST_KEY)} is malformed (no run_id); restore it or delete it to start over")
    return pointer


def latest_run_id(store: Store) -> str | None:
    """The run id `latest` points at, or None."""
    pointer = read_latest(store)
    return pointer["run_id"] if pointer else None


def model_digest(store: Store, run_id: str) -> str | None:
    """A fingerprint of run `run_id`'s trained model (runs/<id>/models/): sha256 over its file names and the
    bytes of its small metadata files (configs, adapter config, training metrics), so replacing the model or
    retraining it changes the digest without reading gigabytes of weights. None when the run has no model."""
    prefix = f"{run_prefix(run_id)}models/"
    keys = sorted(store.list(prefix))
    if not keys:
        return None
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key[len(prefix):].encode() + b"\0")
        if key.endswith((".json", ".yaml", ".txt")) and not key.endswith("tokenizer.json"):
            digest.update(hashlib.sha256(store.read_bytes(key)).digest())
    return "sha256:" + digest.hexdigest()


def latest_scores(store: Store, pointer: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The gated scores recorded for `latest`'s model when it was promoted (None: no `latest`, or a pointer from
    before scores were recorded / a manual promotion without scores: the gate then has no baseline)."""
    pointer = read_latest(store) if pointer is None else pointer
    if not pointer:
        return None
    scores = pointer.get("scores")
    return dict(scores) if isinstance(scores, dict) and scores else None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_decision(store: Store, run_id: str, decision: GateDecision, *, compared_with: str | None,
                    candidate_scores: dict[str, Any], current_scores: dict[str, Any] | None,
                    flow_run_id: str | None = None, base_scores: dict[str, Any] | None = None) -> PromotionRecord:
    """Write the gate's decision about `run_id`; when it promotes, move `latest` to `run_id` afterwards.

    `compared_with` is the run that was `latest` when the gate ran. If `latest` moved in between (someone
    promoted by hand), the decision is stale: RegistryError, nothing is written.
    """
    check_run_id(run_id)
    if not run_exists(store, run_id):
        raise RegistryError(f"run '{run_id}' has no folder at {store.uri(run_prefix(run_id))}; nothing to promote")
    if latest_run_id(store) != compared_with:
        raise RegistryError(f"`latest` moved to '{latest_run_id(store)}' while run '{run_id}' was compared with "
                            f"'{compared_with}'; re-run the gate")
    record = PromotionRecord(
        run_id=run_id, promoted=decision.promote, reason=decision.reason, compared_with=compared_with,
        decided_at=_now(), blocking_metrics=[check.metric for check in decision.blocking],
        checks=decision.to_dict()["checks"], candidate_scores=dict(candidate_scores),
        current_scores=dict(current_scores) if current_scores is not None else None, flow_run_id=flow_run_id,
        base_scores=dict(base_scores) if base_scores is not None else None)
    history_key = f"{PROMOTIONS_PREFIX}{record.decided_at.replace(':', '')}-{run_id}.json"
    store.write_json(history_key, record.to_dict())
    store.write_json(f"{run_prefix(run_id)}promotion.json", record.to_dict())
    if decision.promote:
        store.write_json(LATEST_KEY, {"run_id": run_id, "promoted_at": record.decided_at, "reason": record.reason,
                                      "previous_run_id": compared_with, "record": history_key,
                                      "model_uri": store.uri(f"{run_prefix(run_id)}models/"),
                                      "model_digest": model_digest(store, run_id),
                                      "scores": dict(candidate_scores)})
    return record


def set_latest(store: Store, run_id: str, reason: str, scores: dict[str, Any] | None = None) -> PromotionRecord:
    """Point `latest` at `run_id` by hand (a rollback or an operator override); `reason` is recorded with it.

    `scores` (the run's gated scores, as the operator vouches for them) become the baseline of the next gate;
    without them the next gate has no current model to compare with (its other checks still apply)."""
    if not reason.strip():
        raise RegistryError("a manual promotion needs a reason (it is recorded next to the pointer)")
    current = latest_run_id(store)
    decision = GateDecision(True, f"manual: {reason.strip()}")
    return record_decision(store, run_id, decision, compared_with=current, candidate_scores=dict(scores or {}),
                           current_scores=None)


def promotion_history(store: Store, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every recorded gate decision, oldest first (only those about `run_id` when given)."""
    records = [store.read_json(key) for key in store.list(PROMOTIONS_PREFIX) if key.endswith(".json")]
    if run_id is not None:
        records = [record for record in records if record.get("run_id") == run_id]
    return sorted(records, key=lambda record: record.get("decided_at", ""))
