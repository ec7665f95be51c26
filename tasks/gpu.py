"""GPU slots: the global concurrency limit "gpu" that every task using a local GPU holds while it runs.

`toa deploy --gpu-slots N` creates the limit on the Prefect server (N = GPUs, or GPU hosts when a task takes a
whole host). Without a server, or before the limit exists, acquiring a slot succeeds at once: nothing is limited.

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

from collections.abc import Iterator
from contextlib import contextmanager

GPU_LIMIT_NAME = "gpu"
GPU_LEASE_S = 60.0  # the server's minimum; renewed every 45 s while held, so a dead holder's slot returns in ~1 min


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
    if not PREFECT_API_URL.value():
        # Prefect's temporary local API (no server configured): `toa deploy` cannot have created a limit there,
        # so there is nothing to wait for (and no "limit does not exist" warning per task).
        yield
        return
    logger = get_logger("toaflow.gpu")
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
