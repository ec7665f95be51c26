"""GPU slots: the global concurrency limit "gpu" that every task using a local GPU holds while it runs.

`toa deploy --gpu-slots N` creates the limit on the Prefect server (N = GPUs, or GPU hosts when a task takes a
whole host). Without a server, or before the limit exists, acquiring a slot succeeds at once: nothing is limited.

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


@contextmanager
def gpu_slot(purpose: str, slots: int = 1, timeout_s: float | None = None) -> Iterator[None]:
    """Hold `slots` slots of the "gpu" limit for the block; wait (up to `timeout_s`, None = no bound) for them.

    `purpose` is logged, so an operator can see which task waits. Slots are leased: a crashed process's
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
    with concurrency(GPU_LIMIT_NAME, occupy=slots, timeout_seconds=timeout_s):
        logger.info("%s: holding %d GPU slot(s)", purpose, slots)
        yield
