"""What every in-process reward model shares: scoring in a worker thread, failures as RewardError."""
from __future__ import annotations

import asyncio
import math
from typing import Any, Sequence

from toa_core.interfaces import PairErrors, RewardError
from toa_core.records import Message


class InProcessReward:
    """Base of rewards computed by a local model. Subclasses set `name` and implement `_score_sync(pairs)`,
    which runs in a worker thread (the event loop keeps serving other trees) and returns one float per pair."""

    name: str
    _model: Any = None
    _tokenizer: Any = None

    def _score_sync(self, pairs: list[tuple[list[Message], str]]) -> list[float]:
        raise NotImplementedError

    async def score(self, messages: list[Message], response: str) -> float:
        return (await self.score_batch([(messages, response)]))[0]

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        """Scores in input order. RewardError if the model fails (permanent for a single pair: the same weights
        fail the same way on the same input, unless memory ran out); PairErrors when some scores are not finite
        (each row of a batch is scored independently, so the finite ones stand)."""
        if not pairs:
            return []
        try:
            scores = await asyncio.to_thread(self._score_sync, list(pairs))
        except RewardError:
            raise
        except Exception as exc:
            out_of_memory = isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()
            raise RewardError(f"{self.name}: scoring failed: {type(exc).__name__}: {exc}",
                              permanent=len(pairs) == 1 and not out_of_memory) from exc
        if len(scores) != len(pairs):
            raise RewardError(f"{self.name}: {len(scores)} scores for {len(pairs)} pairs")
        return PairErrors.collect(self.name, [
            float(s) if math.isfinite(s) else RewardError(f"{self.name}: non-finite reward {s}", permanent=True)
            for s in scores])

    async def aclose(self) -> None:
        self._model = self._tokenizer = None
