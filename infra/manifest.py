"""The run manifest: `runs/<run_id>/manifest.json`, the record of what a run was and how far it got.

It holds the config (secrets removed), package versions, the git commit, seeds, the status of each stage
with its counts, the lineage (which inputs produced which outputs), and retry counters. Every change is
written at once, atomically, through the store. Opening the manifest of an existing run id resumes it:
finished stages stay finished, so a re-run can skip them.

Each stage keeps `counts` for the stage as a whole (across attempts: a resume that had nothing left to do still
reports what the stage produced) and a `history` with one entry per attempt: status, times, that attempt's own
counts and, when it failed, its one-line reason. A stage whose attempt raised is `failed`, never left `running`
(`stage_attempt`); only a process killed outright leaves `running` behind, and the next attempt marks that entry
`interrupted`.

Writers: the flow (one process) updates the manifest; tasks return counts and URIs to it. Each update
re-reads the stored manifest and merges before writing, so a second writer loses at most a concurrent change.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from infra.run_ids import check_run_id
from toa_core.credentials import redact, redact_text
from infra.store import Store, StoreKeyNotFound

VERSION_PACKAGES = ("toaflow", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "prefect",
                    "boto3", "pyarrow", "pydantic", "openai", "vllm")
STAGE_STATUSES = ("running", "finished", "failed")
_MAX_ERROR_CHARS = 4000


def manifest_key(run_id: str) -> str:
    return f"runs/{check_run_id(run_id)}/manifest.json"


def one_line(text: str) -> str:
    """A multi-line message as one line: its non-empty lines, stripped, joined with ' | '."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _stage_entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    stage = data["stages"].setdefault(name, {"attempts": 0, "counts": {}, "outputs": []})
    stage.setdefault("counts", {})
    stage.setdefault("history", [])
    return stage


def _close_attempt(stage: dict[str, Any], status: str, counts: dict[str, Any], error: str | None = None) -> None:
    """Close the stage's open attempt in `history` (or record one, for a stage that was never started)."""
    history = stage["history"]
    if not history or history[-1]["status"] != "running":
        stage["attempts"] = max(stage.get("attempts", 0), len(history) + 1)
        history.append({"attempt": stage["attempts"], "status": "running", "started_at": stage.get("started_at"),
                        "finished_at": None, "counts": {}})
    history[-1].update(status=status, finished_at=_now(), counts=dict(counts))
    if error is not None:
        history[-1]["error"] = error


@dataclass
class StageAttempt:
    """Filled in by the block of `Manifest.stage_attempt`: `counts` (the stage as a whole), `attempt_counts`
    (this attempt only; default `counts`), `outputs` (URIs)."""
    counts: dict[str, int | float] = field(default_factory=dict)
    attempt_counts: dict[str, int | float] | None = None
    outputs: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions(names: Iterable[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape results (missing ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(repo_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """{"sha", "dirty"} of the source checkout, TOAFLOW_GIT_SHA when set (images without .git), else None."""
    if os.environ.get("TOAFLOW_GIT_SHA"):
        return {"sha": os.environ["TOAFLOW_GIT_SHA"], "dirty": None}
    repo_dir = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(status.strip())} if sha else None


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    """The manifest of one run. Create or resume with `Manifest.open(store, run_id, config=..., seeds=...)`."""

    def __init__(self, store: Store, run_id: str, data: dict[str, Any]):
        self.store = store
        self.run_id = run_id
        self.data = data
        self._lock = threading.Lock()

    # -- creation and resume ----------------------------------------------------------------------------
    @classmethod
    def open(cls, store: Store, run_id: str, config: Any = None, seeds: dict[str, int] | None = None) -> "Manifest":
        """Load the run's manifest if it exists (a resume), else create it. Either way it is written back.

        On resume the original config stays the record; a resume with a different config is noted in
        `resumes` (with its hash) so the difference is visible. An invalid run id is InvalidRunId, before any I/O.
        """
        check_run_id(run_id)
        redacted = redact(config) if config is not None else None
        try:
            data = store.read_json(manifest_key(run_id))
        except StoreKeyNotFound:
            data = None
        if data is None:
            data = {
                "run_id": run_id,
                "created_at": _now(),
                "updated_at": _now(),
                "config": redacted,
                "config_hash": config_hash(redacted) if redacted is not None else None,
                "versions": package_versions(),
                "git": git_commit(),
                "seeds": dict(seeds or {}),
                "stages": {},
                "counts": {},
                "lineage": [],
                "retries": {},
                "resumes": [],
            }
        else:
            resume = {"at": _now(), "versions": package_versions(), "git": git_commit()}
            if redacted is not None:
                resume["config_hash"] = config_hash(redacted)
                resume["config_changed"] = resume["config_hash"] != data.get("config_hash")
                if data.get("config") is None:
                    data["config"], data["config_hash"] = redacted, resume["config_hash"]
            data.setdefault("resumes", []).append(resume)
            if seeds:
                data.setdefault("seeds", {}).update(seeds)
        manifest = cls(store, run_id, data)
        manifest._write()
        return manifest

    @classmethod
    def load(cls, store: Store, run_id: str) -> "Manifest":
        """Read an existing manifest without recording a resume (for reports and inspection)."""
        return cls(store, run_id, store.read_json(manifest_key(run_id)))

    @property
    def uri(self) -> str:
        return self.store.uri(manifest_key(self.run_id))

    # -- stages ----------------------------------------------------------------------------------------
    def stage(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def stage_finished(self, name: str) -> bool:
        """True when `name` finished in this run or an earlier attempt of it (a resume can skip it)."""
        stage = self.stage(name)
        return bool(stage and stage["status"] == "finished")

    def start_stage(self, name: str) -> None:
        """Mark `name` running and open a new attempt in its `history`."""
        def change(data: dict[str, Any]) -> None:
            stage = _stage_entry(data, name)
            if stage["history"] and stage["history"][-1]["status"] == "running":
                stage["history"][-1]["status"] = "interrupted"  # its process died without a word (SIGKILL, OOM)
            stage.update(status="running", started_at=_now(), finished_at=None, error=None)
            stage["attempts"] = stage.get("attempts", 0) + 1
            stage["history"].append({"attempt": stage["attempts"], "status": "running",
                                     "started_at": stage["started_at"], "finished_at": None, "counts": {}})
        self._update(change)

    def finish_stage(self, name: str, counts: dict[str, int | float] | None = None,
                     outputs: Iterable[str] = (), attempt_counts: dict[str, int | float] | None = None) -> None:
        """Mark `name` finished and record its output URIs.

        `counts` describe the stage's result as a whole, across every attempt (dataset sizes, totals read back
        from the store): they replace earlier values in the stage and in the run totals, so a resume that redid
        nothing still reports what the stage produced. `attempt_counts` (default: `counts`) is what this attempt
        did, kept in its `history` entry.
        """
        counts = dict(counts or {})
        outputs = list(outputs)

        def change(data: dict[str, Any]) -> None:
            stage = _stage_entry(data, name)
            stage.update(status="finished", finished_at=_now(), error=None)
            stage["counts"].update(counts)
            stage["outputs"] = sorted(set(stage.get("outputs", [])) | set(outputs))
            _close_attempt(stage, "finished", counts if attempt_counts is None else attempt_counts)
            data["counts"].update({f"{name}.{key}": value for key, value in counts.items()})
        self._update(change)

    def fail_stage(self, name: str, error: BaseException | str,
                   attempt_counts: dict[str, int | float] | None = None) -> None:
        """Mark `name` failed with a one-line reason: the error's type and message (secrets masked, lines joined
        with ' | ', length bounded). `attempt_counts`: what the attempt got done before it failed."""
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        text = redact_text(one_line(text))[:_MAX_ERROR_CHARS]

        def change(data: dict[str, Any]) -> None:
            stage = _stage_entry(data, name)
            stage.update(status="failed", finished_at=_now(), error=text)
            _close_attempt(stage, "failed", attempt_counts or {}, error=text)
        self._update(change)

    @contextlib.contextmanager
    def stage_attempt(self, name: str) -> Iterator["StageAttempt"]:
        """One attempt of a stage: started on entry; finished on a normal exit with the counts set on the yielded
        StageAttempt; failed, with its reason, when the block raises (also on Ctrl-C), then re-raised.

            with manifest.stage_attempt("ingest") as attempt:
                attempt.counts = ingest_prompts(cfg, run_id)
        """
        self.start_stage(name)
        attempt = StageAttempt()
        try:
            yield attempt
        except BaseException as error:
            reason: BaseException | str = error if isinstance(error, Exception) else f"interrupted ({type(error).__name__})"
            try:
                self.fail_stage(name, reason, attempt.attempt_counts)
            except Exception:  # noqa: BLE001 - the store may be what failed; the original error matters more
                pass
            raise
        self.finish_stage(name, attempt.counts, attempt.outputs, attempt.attempt_counts)

    # -- counters and lineage ----------------------------------------------------------------------------
    def add_counts(self, **counts: int | float) -> None:
        """Add to run-level counters (e.g. generations=160, errors=2); numbers accumulate across calls."""
        def change(data: dict[str, Any]) -> None:
            for key, value in counts.items():
                data["counts"][key] = data["counts"].get(key, 0) + value
        self._update(change)

    def add_retries(self, component: str, count: int) -> None:
        """Accumulate retries spent by a component (e.g. "store", "model:llama", "reward")."""
        if count:
            def change(data: dict[str, Any]) -> None:
                data["retries"][component] = data["retries"].get(component, 0) + count
            self._update(change)

    def note(self, key: str, value: Any) -> None:
        """Record `value` (JSON-able, secrets removed) under a top-level `key` of the manifest, replacing it."""
        redacted = redact(value)

        def change(data: dict[str, Any]) -> None:
            data[key] = redacted
        self._update(change)

    def add_lineage(self, stage: str, inputs: Iterable[str], outputs: Iterable[str]) -> None:
        """Record that `stage` read `inputs` (URIs) and produced `outputs`; a repeated entry is kept once."""
        entry = {"stage": stage, "inputs": sorted(set(inputs)), "outputs": sorted(set(outputs))}

        def change(data: dict[str, Any]) -> None:
            if entry not in data["lineage"]:
                data["lineage"].append(entry)
        self._update(change)

    def record_trust(self, trust: dict[str, Any]) -> None:
        """Record who started this attempt (operator or deployment), which config and which settings that run
        code it used (`trust`); an attempt whose record differs from the last one is appended, so a resume from
        another place stays visible."""
        def change(data: dict[str, Any]) -> None:
            history = data.setdefault("trust", [])
            if not history or history[-1] != trust:
                history.append(dict(trust))
        self._update(change)

    # -- persistence -----------------------------------------------------------------------------------
    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply `change` to the freshest stored manifest (merge, not overwrite) and write it back atomically."""
        with self._lock:
            try:
                self.data = self.store.read_json(manifest_key(self.run_id))
            except StoreKeyNotFound:
                pass
            for key, empty in (("stages", {}), ("counts", {}), ("lineage", []), ("retries", {})):
                self.data.setdefault(key, empty)
            change(self.data)
            self._write()

    def _write(self) -> None:
        self.data["updated_at"] = _now()
        # Lineage URIs, stage errors, counts: whatever went in, nothing secret comes out.
        self.data = redact(self.data)
        self.store.write_json(manifest_key(self.run_id), self.data)
