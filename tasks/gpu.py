"""GPU slots: the global concurrency limit "gpu" that every task using a local GPU holds while it runs.

`toa deploy --gpu-slots N` creates the limit on the Prefect server (N = GPUs, or GPU hosts when a task takes a
whole host). Without a server, or while the server has no such limit, acquiring a slot succeeds at once and
quietly: nothing is limited (the first task of a process logs that once, at debug level).

This limit is the only layer of GPU accounting (GPU tasks carry no tag-based task concurrency limit on top). Slots
are held through a lease of GPU_LEASE_S seconds that a thread of the holding process renews: a process that dies
(a killed worker, a host gone) stops renewing, and the server's repossessor returns its slots once the lease has
expired, so a slot can never leak for good.

    from tasks.gpu import gpu_slot

    @task
    def train_stage(...):
        with gpu_slot(f"train-{stage}"):
            run_stage_process(...)
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

GPU_LIMIT_NAME = "gpu"
GPU_LEASE_S = 60.0  # the server's minimum; renewed every 45 s while held, so a dead holder's slot returns in ~1 min
LIMIT_CHECK_TTL_S = 60.0  # a limit `toa deploy` creates while a process runs is seen within a minute

_limit_checked: dict[str, tuple[float, bool]] = {}  # API URL -> (when checked, limit exists)
_told_unlimited: set[str] = set()  # API URLs whose missing limit was logged


def gpu_limit_exists(api_url: str) -> bool:
    """Whether the server at `api_url` has the "gpu" concurrency limit (cached for LIMIT_CHECK_TTL_S).

    Asked first so that a server without the limit costs no per-task "Concurrency limits ['gpu'] do not exist"
    warning; a server that cannot be asked counts as having it (the acquisition then reports the real problem).
    """
    checked = _limit_checked.get(api_url)
    if checked and time.monotonic() - checked[0] < LIMIT_CHECK_TTL_S:
        return checked[1]
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT_NAME)
        exists = True
    except ObjectNotFound:
        exists = False
    except Exception:
        return True
    _limit_checked[api_url] = (time.monotonic(), exists)
    return exists


@contextmanager
def gpu_slot(purpose: str, slots: int = 1, timeout_s: float | None = None,
             lease_s: float = GPU_LEASE_S) -> Iterator[None]:
    """Hold `slots` slots of the "gpu" limit for the block; wait (up to `timeout_s`, None = no bound) for them.

    `purpose` is logged, so an operator can see which task waits. The slots are leased for `lease_s` seconds at a
    time (renewed while the block runs) and the lease names the holding flow or task run: a crashed process's
    slots return to the pool when its lease expires instead of leaking.
    """
    from prefect.concurrency.sync import concurrency
    from prefect.logging import get_logger
    from prefect.settings import PREFECT_API_URL

    if slots < 1:
        raise ValueError(f"gpu_slot({purpose!r}): slots must be >= 1, got {slots}")
    logger = get_logger("toaflow.gpu")
    api_url = PREFECT_API_URL.value()
    # Prefect's temporary local API (no server configured), or a server where `toa deploy` did not create the
    # limit: nothing to wait for, and no "limit does not exist" warning per task.
    if not api_url or not gpu_limit_exists(api_url):
        if api_url and api_url not in _told_unlimited:
            _told_unlimited.add(api_url)
            logger.debug("no '%s' concurrency limit on %s: GPU tasks are not limited "
                         "(create it with `toa deploy --gpu-slots N`)", GPU_LIMIT_NAME, api_url)
        yield
        return
    logger.info("%s: waiting for %d GPU slot(s) of limit '%s'", purpose, slots, GPU_LIMIT_NAME)
    with concurrency(GPU_LIMIT_NAME, occupy=slots, timeout_seconds=timeout_s, lease_duration=lease_s,
                     holder=_lease_holder()):
        logger.info("%s: holding %d GPU slot(s)", purpose, slots)
        yield


def _lease_holder():
    """The task run or flow run that holds the slots (shown with the lease on the server), if any."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
    return None
