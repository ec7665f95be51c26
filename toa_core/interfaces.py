"""The two interfaces every search strategy talks to: a chat model and a reward model.

Backends (HTTP, in-process transformers, scripted test doubles) implement these; strategies never know which.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from toa_core.records import Generation, Message, Prompt


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (paper defaults: temperature 0.7, top_p 1, max_tokens 2048)."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int | None = None
    # What this request belongs to (the prompt id for a search): HTTP backends keep one session's requests on one
    # replica, whose prefix cache then holds the prompt (toa_core/backends/routing.py). None: no affinity.
    session_id: str | None = None


@runtime_checkable
class ChatModel(Protocol):
    """One named agent. `generate` never raises for a failed request: it returns a Generation with `error` set."""
    name: str

    async def generate(self, messages: list[Message], params: SamplingParams) -> Generation: ...

    async def aclose(self) -> None: ...


class RewardError(RuntimeError):
    """A reward score could not be computed after retries. Callers record it; they never substitute 0.0.

    `permanent` says the pair itself cannot be scored (a non-finite score, a request the server rejects as
    invalid, an in-process model failing on that one input): asking again would give the same answer, so the
    batcher never retries it.
    """

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class PairErrors(RewardError):
    """Some pairs of a `score_batch` call failed, the others were scored: `results[i]` is pair i's score or its
    RewardError. Raised by reward models that know which pair failed, so callers keep the good scores."""

    def __init__(self, name: str, results: Sequence[float | RewardError]):
        failed = [(index, item) for index, item in enumerate(results) if isinstance(item, BaseException)]
        first_index, first = failed[0]
        super().__init__(f"{name}: {len(failed)} of {len(results)} pairs failed; first (pair {first_index}): {first}",
                         permanent=all(item.permanent for _, item in failed))
        self.results = list(results)

    @staticmethod
    def collect(name: str, results: Sequence[object]) -> list[float]:
        """Scores from per-pair outcomes (floats, or exceptions as `gather(..., return_exceptions=True)` gives
        them): the floats when all succeeded, else PairErrors. Exceptions that are not RewardErrors are wrapped."""
        outcomes: list[float | RewardError] = []
        for item in results:
            if isinstance(item, RewardError):
                outcomes.append(item)
            elif isinstance(item, BaseException):
                if not isinstance(item, Exception):
                    raise item  # cancellation, KeyboardInterrupt: not a scoring outcome
                outcomes.append(RewardError(f"{name}: {type(item).__name__}: {item}"))
            else:
                outcomes.append(float(item))  # type: ignore[arg-type]
        if any(isinstance(item, RewardError) for item in outcomes):
            raise PairErrors(name, outcomes)
        return outcomes  # type: ignore[return-value]


@runtime_checkable
class RewardModel(Protocol):
    """Scores (question, response) pairs. Raises RewardError when scoring fails for good; `score_batch` raises
    PairErrors when it knows which pairs failed (the others' scores ride along in it)."""
    name: str

    async def score(self, messages: list[Message], response: str) -> float: ...

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PromptAwareReward(RewardModel, Protocol):
    """A reward model that needs the prompt's record, not only its messages (the verifier reads the checks in
    `prompt.metadata`). Strategies score through PromptSession, which calls `score_prompt` when the reward
    model has it; its `score` / `score_batch` raise a permanent RewardError saying so."""

    async def score_prompt(self, prompt: Prompt, messages: list[Message], response: str) -> float: ...
