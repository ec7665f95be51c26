"""Gather concurrent `score()` calls from many trees into batched `score_batch()` calls.

TOA is sequential inside one tree, so throughput comes from many trees running at once; each asks for one score at
a time. The batcher holds the first request up to ``batch_wait_ms`` (or until ``batch_size`` requests are waiting)
and sends them as one batch.

One bad pair never costs the other trees their scores:
- a model that knows which pairs failed says so (PairErrors): the others keep their scores at once;
- a batch that fails as a whole is rescored pair by pair before anything is recorded as an error, so only the pair
  that really fails does;
- a pair that failed for a reason that would not change (`RewardError.permanent`: a non-finite score, a request the
  server rejects) is not retried, and is remembered: asked again, it fails at once without reaching the model;
- other failures are retried per pair, with backoff, up to ``max_attempts`` in all.
A pair that still fails gets a RewardError (never a made-up 0.0).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections import OrderedDict
from typing import Sequence

from toa_core.config import RetryConfig
from toa_core.interfaces import PairErrors, RewardError, RewardModel
from toa_core.records import Message

log = logging.getLogger(__name__)

Pair = tuple[list[Message], str]
Outcome = float | RewardError
_REMEMBERED_FAILURES = 4096  # permanently bad pairs kept (oldest forgotten first)


class BatchingReward:
    """A RewardModel that wraps another and batches concurrent single scores.

    `max_attempts` counts attempts per pair (1 = no retry: use it when the inner model retries on its own, as the
    HTTP reward client does); rescoring a failed batch pair by pair is isolation, not a retry, and always happens.
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
        self.batches_sent = 0  # calls of inner.score_batch, whatever their size
        self.batches_split = 0  # batches that failed as a whole and were rescored pair by pair
        self._bad_pairs: OrderedDict[str, RewardError] = OrderedDict()
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
        """Score an explicit batch directly (split into chunks of batch_size), with the same isolation and retries;
        PairErrors, carrying the good scores, when some pairs fail."""
        outcomes: list[Outcome] = []
        for start in range(0, len(pairs), self.batch_size):
            outcomes.extend(await self._score_isolated(list(pairs[start:start + self.batch_size])))
        return PairErrors.collect(self.name, outcomes)

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
            outcomes = await self._score_isolated([pair for pair, _ in live])
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it, whatever it is
            error = exc if isinstance(exc, RewardError) else RewardError(f"{self.name}: {type(exc).__name__}: {exc}")
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(live, outcomes):
            if future.done():
                continue
            if isinstance(outcome, RewardError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def _score_isolated(self, pairs: list[Pair]) -> list[Outcome]:
        """One outcome per pair: the whole batch first, then pair by pair for what failed (see module docstring)."""
        # Digests only once some pair is known to be bad: the common path stays free of hashing.
        keys = [_pair_key(pair) for pair in pairs] if self._bad_pairs else [None] * len(pairs)
        outcomes: list[Outcome | None] = [self._known_bad(key) for key in keys]
        todo = [index for index, outcome in enumerate(outcomes) if outcome is None]
        if todo:
            for index, outcome in zip(todo, await self._attempt([pairs[i] for i in todo])):
                outcomes[index] = outcome
        for attempt in range(1, self.max_attempts):
            retry = [i for i in todo if isinstance(outcomes[i], RewardError) and not outcomes[i].permanent]
            if not retry:
                break
            delay = random.uniform(0, min(self.retry.backoff_max_s, self.retry.backoff_initial_s * 2 ** (attempt - 1)))
            log.info("reward %s: %d of %d pairs failed (%s); retrying them one by one in %.2fs", self.name,
                     len(retry), len(pairs), outcomes[retry[0]], delay)
            await asyncio.sleep(delay)
            results = await asyncio.gather(*[self._attempt([pairs[i]]) for i in retry])
            for index, (outcome,) in zip(retry, results):
                outcomes[index] = outcome
        for index in todo:
            outcome = outcomes[index]
            if isinstance(outcome, RewardError) and outcome.permanent:
                self._remember(keys[index] or _pair_key(pairs[index]), outcome)
            elif isinstance(outcome, RewardError) and self.max_attempts > 1:
                outcomes[index] = RewardError(f"{self.name}: scoring failed after {self.max_attempts} attempts: "
                                              f"{outcome}")
        return outcomes  # type: ignore[return-value]

    async def _attempt(self, pairs: list[Pair]) -> list[Outcome]:
        """One call of the inner model; if it fails as a whole for several pairs, one call per pair, so the
        outcome of each pair is its own."""
        try:
            self.batches_sent += 1
            scores = await self.inner.score_batch(pairs)
            if len(scores) != len(pairs):
                raise RewardError(f"{self.name}: {len(scores)} scores for {len(pairs)} pairs")
            return [float(score) for score in scores]
        except PairErrors as exc:
            if len(exc.results) == len(pairs):
                return list(exc.results)
            error: BaseException = exc
        except Exception as exc:  # noqa: BLE001 - classified below; a pair's outcome, never the run's end
            error = exc
        if len(pairs) == 1:
            return [error if isinstance(error, RewardError) else RewardError(f"{self.name}: {type(error).__name__}: "
                                                                             f"{error}")]
        self.batches_split += 1
        log.info("reward %s: a batch of %d failed as a whole (%s); rescoring it pair by pair", self.name,
                 len(pairs), error)
        results = await asyncio.gather(*[self._attempt([pair]) for pair in pairs])
        return [outcome for (outcome,) in results]

    def _known_bad(self, key: str | None) -> RewardError | None:
        """A fresh RewardError when this pair is known to fail for good, else None."""
        known = self._bad_pairs.get(key) if key is not None else None
        return RewardError(str(known), permanent=True) if known is not None else None

    def _remember(self, key: str, error: RewardError) -> None:
        self._bad_pairs[key] = error
        while len(self._bad_pairs) > _REMEMBERED_FAILURES:
            self._bad_pairs.popitem(last=False)

    async def aclose(self) -> None:
        if self._pending:
            self._flush()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.inner.aclose()


def _pair_key(pair: Pair) -> str:
    """A stable digest of one (messages, response) pair, to recognise a pair already known to be bad."""
    messages, response = pair
    data = json.dumps([messages, response], ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
