"""Checkpoints that survive the machine: each one is copied to the store as it is saved, and a re-run of a
stage downloads the newest complete one and resumes from it.

Store layout: runs/<id>/models/<stage>/checkpoints/checkpoint-<step>/ (published with `upload_dir`, whose
marker file, written last, says the copy is complete). Only the newest complete checkpoint is kept in the store.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from infra.store import DIR_MARKER, Store
from toa_core.folders import remove_tree

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_prefix(run_id: str, stage: str) -> str:
    return f"runs/{run_id}/models/{stage}/checkpoints"


def complete_checkpoints(store: Store, prefix: str) -> list[tuple[int, str]]:
    """(step, folder key) of every fully uploaded checkpoint under `prefix`, oldest first."""
    found = []
    for key in store.list(prefix + "/"):
        parts = key[len(prefix) + 1:].split("/")
        if len(parts) == 2 and parts[1] == DIR_MARKER and (match := _CHECKPOINT.match(parts[0])):
            found.append((int(match.group(1)), f"{prefix}/{parts[0]}"))
    return sorted(found)


def restore_latest_checkpoint(store: Store, prefix: str, local_root: Path) -> Path | None:
    """Download the newest complete checkpoint into `local_root/checkpoint-N`; None when there is none."""
    found = complete_checkpoints(store, prefix)
    if not found:
        return None
    step, key = found[-1]
    local = local_root / f"checkpoint-{step}"
    remove_tree(local, local_root)
    store.download_dir(key, local)
    log.info("resuming from %s (step %d)", store.uri(key), step)
    return local


def delete_checkpoints(store: Store, prefix: str, keep_step: int | None = None) -> None:
    """Remove stored checkpoints (all, or all but `keep_step`). The marker goes first so a half-deleted
    checkpoint is never mistaken for a complete one."""
    for step, key in complete_checkpoints(store, prefix):
        if step == keep_step:
            continue
        store.delete(f"{key}/{DIR_MARKER}")
        for object_key in store.list(key + "/"):
            store.delete(object_key)


class StoreCheckpointSync(TrainerCallback):
    """Upload every checkpoint the Trainer saves, then drop the older ones from the store.

    Runs on the main process only; under DeepSpeed/FSDP all ranks save into the same local folder first (a
    single-node run), and the Trainer has finished writing the folder when `on_save` fires.
    """

    def __init__(self, store: Store, prefix: str):
        self.store = store
        self.prefix = prefix

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        if not local.is_dir():
            log.warning("checkpoint folder %s not found; nothing synced to the store", local)
            return
        key = f"{self.prefix}/checkpoint-{step}"
        self.store.upload_dir(local, key)
        delete_checkpoints(self.store, self.prefix, keep_step=step)
        # A plain print: the parent process streams it, and the crash test watches for it.
        print(f"checkpoint step {step} synced to {self.store.uri(key)}", flush=True)
