"""Gather concurrent `score()` calls from many trees into batched `score_batch()` calls.

TOA is sequential inside one tree, so throughput comes from many trees running at once; each asks for one score at
a time. The batcher holds the first request up to ``batch_wait_ms`` (or until ``batch_size`` requests are waiting)
and sends them as one batch. A failed batch is retried with backoff; if it still fails, every waiter gets a
RewardError (never a made-up 0.0).
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Sequence

from toa_core.config import RetryConfig
from toa_core.interfaces import RewardError, RewardModel
from toa_core.records import Message

log = logging.getLogger(__name__)

Pair = tuple[list[Message], str]


class BatchingReward:
    """A RewardModel that wraps another and batches concurrent single scores.

    `max_attempts` counts attempts per batch (1 = no retry: use it when the inner model retries on its own, as the
    HTTP reward client does).
    """

    def __init__(self, inner: RewardModel, *, batch_size: int = 16, batch_wait_ms: float = 5.0,
                 retry: RetryConfig | None = None, max_attempts: int | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.inner = inner
        self.name = inner.name
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.retry = retry or RetryConfig(max_attempts=3, backoff_initial_s=0.2, backoff_max_s=5)
        self.max_attempts = max_attempts or self.retry.max_attempts
        self.batches_sent = 0
        self._pending: list[tuple[Pair, asyncio.Future[float]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    def __repr__(self) -> str:
        return f"BatchingReward({self.inner!r}, batch_size={self.batch_size})"

    async def score(self, messages: list[Message], response: str) -> float:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        self._pending.append(((messages, response), future))
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.batch_wait_s, self._flush)
        return await future

    async def score_batch(self, pairs: Sequence[Pair]) -> list[float]:
        """Score an explicit batch directly (split into chunks of batch_size), with the same retries."""
        scores: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            scores.extend(await self._score_with_retries(list(pairs[start:start + self.batch_size])))
        return scores

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size:]
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)  # keep a reference until done (the loop only holds weak ones)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Pair, asyncio.Future[float]]]) -> None:
        live = [(pair, future) for pair, future in batch if not future.cancelled()]
        if not live:
            return
        try:
            scores = await self._score_with_retries([pair for pair, _ in live])
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it, whatever it is
            error = exc if isinstance(exc, RewardError) else RewardError(f"{self.name}: {type(exc).__name__}: {exc}")
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), value in zip(live, scores):
            if not future.done():
                future.set_result(value)

    async def _score_with_retries(self, pairs: list[Pair]) -> list[float]:
        last: Exception | None = None
        for attempt in range(self.max_attempts):
            try:
                self.batches_sent += 1
                scores = await self.inner.score_batch(pairs)
                if len(scores) != len(pairs):
                    raise RewardError(f"{self.name}: {len(scores)} scores for {len(pairs)} pairs")
                return [float(s) for s in scores]
            except Exception as exc:
                last = exc
                if attempt + 1 < self.max_attempts:
                    delay = random.uniform(0, min(self.retry.backoff_max_s, self.retry.backoff_initial_s * 2 ** attempt))
                    log.info("reward %s: batch of %d failed (%s); retrying in %.2fs", self.name, len(pairs), exc, delay)
                    await asyncio.sleep(delay)
        raise RewardError(f"{self.name}: scoring failed after {self.max_attempts} attempts: {last}") from last

    async def aclose(self) -> None:
        if self._pending:
            self._flush()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.inner.aclose()
