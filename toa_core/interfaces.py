"""The two interfaces every search strategy talks to: a chat model and a reward model.

Backends (HTTP, in-process transformers, scripted test doubles) implement these; strategies never know which.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from toa_core.records import Generation, Message


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (paper defaults: temperature 0.7, top_p 1, max_tokens 2048)."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int | None = None


@runtime_checkable
class ChatModel(Protocol):
    """One named agent. `generate` never raises for a failed request: it returns a Generation with `error` set."""
    name: str

    async def generate(self, messages: list[Message], params: SamplingParams) -> Generation: ...

    async def aclose(self) -> None: ...


class RewardError(RuntimeError):
    """A reward score could not be computed after retries. Callers record it; they never substitute 0.0."""


@runtime_checkable
class RewardModel(Protocol):
    """Scores (question, response) pairs. Raises RewardError when scoring fails for good."""
    name: str

    async def score(self, messages: list[Message], response: str) -> float: ...

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]: ...

    async def aclose(self) -> None: ...
