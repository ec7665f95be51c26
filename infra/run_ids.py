"""Run ids: one rule for every place a run id becomes a store key or a local folder.

A run id is 1 to 128 characters: a letter or digit, then letters, digits, '.', '_' or '-'
(`[A-Za-z0-9][A-Za-z0-9._-]{0,127}`). So it is always exactly one path segment: never absolute, never '.' or
'..', never containing '/'. Every entry point checks it before it touches the store or the disk: the `toa`
commands, the flows (which Prefect deployments call directly), `Manifest.open`, the training stage processes and
the local run folder that holds server logs.

    check_run_id("tiny-20261122-013000-9f3a")   # returned unchanged
    check_run_id("../x")                         # InvalidRunId naming the rule

Some run ids are made by toaflow itself from another one: the pipeline's training data of run R is the run
'R-accumulated'. A run id given by hand (a flow's `run_id` parameter, `--run-id`) may not end with such a reserved
suffix (`check_new_run_id`): `night-accumulated` would otherwise be overwritten by pipeline `night`.
"""
from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

RUN_ID_RULE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # 1 to MAX_RUN_ID_LENGTH characters
_RUN_ID = re.compile(RUN_ID_RULE)


class InvalidRunId(ValueError):
    """A run id breaks the rule; the message quotes it and says what is allowed."""


MAX_RUN_ID_LENGTH = 128
ACCUMULATED_SUFFIX = "-accumulated"  # the pipeline's accumulated training data of run R: 'R-accumulated'
RESERVED_SUFFIXES = (ACCUMULATED_SUFFIX,)


def check_run_id(run_id: object, what: str = "run id", room_for: str = "") -> str:
    """Return `run_id` unchanged when it follows the rule, else raise InvalidRunId (`what` names the parameter).

    `room_for`: a suffix another run id is made with (the pipeline's '<run id>-accumulated'); the id must leave
    room for it, so the derived id follows the rule too.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidRunId(
            f"invalid {what} {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit (no '/', no absolute paths, no '..'), e.g. 'demo-2026-01-15'")
    if len(run_id) + len(room_for) > MAX_RUN_ID_LENGTH:
        raise InvalidRunId(
            f"{what} {run_id!r} is {len(run_id)} characters; use at most {MAX_RUN_ID_LENGTH - len(room_for)} here, "
            f"as '<run id>{room_for}' must be a run id too")
    return run_id


def check_new_run_id(run_id: object, what: str = "run id", room_for: str = "") -> str:
    """`check_run_id` for a run id given by hand, the run a flow creates or writes: it may not end with a suffix
    toaflow reserves for the runs it derives (RESERVED_SUFFIXES)."""
    check_run_id(run_id, what, room_for)
    reserved = next((suffix for suffix in RESERVED_SUFFIXES if str(run_id).endswith(suffix)), None)
    if reserved:
        raise InvalidRunId(f"{what} {run_id!r} ends with {reserved!r}, which toaflow reserves for the runs it makes "
                           f"itself ('<run id>{reserved}' holds a pipeline run's accumulated training data); choose "
                           "another run id")
    return run_id  # type: ignore[return-value]


def run_id_slug(name: str) -> str:
    """`name` made safe for the start of a run id (other characters become '-'), at most 40 characters."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-._")[:40].strip("-._")
    return slug or "run"


def new_run_id(name: str = "run") -> str:
    """A fresh run id: the config's name (slugged), the UTC time and 4 random hex digits, e.g.
    "tiny-20261122-013000-9f3a". Sorting ids of one config sorts them by start time."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return check_run_id(f"{run_id_slug(name)}-{stamp}-{secrets.token_hex(2)}")
