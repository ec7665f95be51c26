"""Test doubles for chat and reward models: simulated agents with a known ground truth, and scripted ones.

SimulatedAgent / SimulatedReward model a pool of agents of different skill. Every response carries its hidden
quality in its text (a marker `<<q=0.123456>>`); the simulated reward reads it back (plus optional seeded
noise). A fresh answer has quality ~ skill + noise; a refinement or an aggregation starts from the best quality
among the answers quoted in its prompt and adds `refine_delta` (positive: refinement helps, negative: it hurts).
Everything is seeded from (agent seed, request seed, prompt), so a search with a fixed seed is reproducible.
The bench uses these to compare strategies against the ground truth.

ScriptedChatModel / ScriptedReward return exactly what a test scripts, count and record their calls, and fail
on demand, to pin the strategies' semantics.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from toa_core.interfaces import RewardError, SamplingParams
from toa_core.records import Generation, Message

_QUALITY_MARK = re.compile(r"<<q=(-?\d+(?:\.\d+)?)>>")


def quality_marker(quality: float) -> str:
    return f"<<q={quality:.6f}>>"


def read_qualities(text: str) -> list[float]:
    """Every quality marker in `text`, in order."""
    return [float(q) for q in _QUALITY_MARK.findall(text)]


def hidden_quality(text: str | None) -> float | None:
    """The ground-truth quality a simulated response carries (its last marker), or None."""
    qualities = read_qualities(text) if text else []
    return qualities[-1] if qualities else None


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _words(messages: Sequence[Message]) -> int:
    return sum(len(m["content"].split()) for m in messages)


class _CallTracking:
    """Counts calls and the largest number of requests in flight at once."""

    def _init_tracking(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def _enter(self) -> int:
        call_index = self.calls
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return call_index

    def _exit(self) -> None:
        self.in_flight -= 1


class SimulatedAgent(_CallTracking):
    """A ChatModel with a hidden skill. See the module docstring.

    failure_rate: probability (seeded) that a request fails for good (Generation.error set).
    latency_s: awaited per request (asyncio.sleep); 0 still yields once to the event loop, so concurrent
    searches really interleave.
    """

    def __init__(self, name: str, skill: float, *, refine_delta: float = 0.0, noise: float = 0.0,
                 seed: int = 0, failure_rate: float = 0.0, latency_s: float = 0.0):
        self.name = name
        self.skill = skill
        self.refine_delta = refine_delta
        self.noise = noise
        self.seed = seed
        self.failure_rate = failure_rate
        self.latency_s = latency_s
        self._init_tracking()

    async def generate(self, messages: list[Message], params: SamplingParams) -> Generation:
        call_index = self._enter()
        try:
            await asyncio.sleep(self.latency_s)
            prompt_text = "\n".join(m["content"] for m in messages)
            request_seed = params.seed if params.seed is not None else call_index
            rng = random.Random(_stable_seed(self.seed, self.name, request_seed, prompt_text))
            if rng.random() < self.failure_rate:
                return Generation(text=None, error=f"{self.name}: simulated failure", latency_s=self.latency_s)
            quoted = read_qualities(prompt_text)
            base = max(quoted) + self.refine_delta if quoted else self.skill
            quality = base + (rng.gauss(0.0, self.noise) if self.noise else 0.0)
            text = f"Answer from {self.name} {quality_marker(quality)}"
            return Generation(text=text, prompt_tokens=_words(messages), completion_tokens=len(text.split()),
                              latency_s=self.latency_s, finish_reason="stop")
        finally:
            self._exit()

    async def aclose(self) -> None:
        return None


class SimulatedReward(_CallTracking):
    """A RewardModel that reads the hidden quality back from a response, plus seeded noise.

    A response without a quality marker raises RewardError (as a real scorer does for input it cannot score).
    """

    def __init__(self, *, noise: float = 0.0, seed: int = 0, name: str = "simulated-reward"):
        self.name = name
        self.noise = noise
        self.seed = seed
        self._init_tracking()

    async def score(self, messages: list[Message], response: str) -> float:
        self._enter()
        try:
            await asyncio.sleep(0)
            qualities = read_qualities(response)
            if not qualities:
                raise RewardError("simulated reward: response carries no quality marker")
            noise = random.Random(_stable_seed(self.seed, response)).gauss(0.0, self.noise) if self.noise else 0.0
            return qualities[-1] + noise
        finally:
            self._exit()

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        return list(await asyncio.gather(*(self.score(m, r) for m, r in pairs)))

    async def aclose(self) -> None:
        return None


ScriptFn = Callable[[list[Message], int], "str | Generation"]
FailFn = Callable[[list[Message], int], bool]


@dataclass
class ScriptedCall:
    messages: list[Message]
    params: SamplingParams


class ScriptedChatModel(_CallTracking):
    """A ChatModel that answers from a script and records every request.

    script: None -> "<name>#<call index>"; a list -> item call_index % len; a callable (messages, call_index)
    -> text or a whole Generation.
    fail: call indices that fail, True for every call, or a callable (messages, call_index) -> bool. A failing
    call returns Generation(error=...) without consulting the script.
    """

    def __init__(self, name: str, script: Sequence[str] | ScriptFn | None = None, *,
                 fail: set[int] | bool | FailFn | None = None):
        self.name = name
        self.script = script
        self.fail = fail
        self.requests: list[ScriptedCall] = []
        self._init_tracking()

    def _fails(self, messages: list[Message], call_index: int) -> bool:
        if self.fail is None or self.fail is False:
            return False
        if self.fail is True:
            return True
        if callable(self.fail):
            return bool(self.fail(messages, call_index))
        return call_index in self.fail

    async def generate(self, messages: list[Message], params: SamplingParams) -> Generation:
        call_index = self._enter()
        try:
            self.requests.append(ScriptedCall([dict(m) for m in messages], params))
            await asyncio.sleep(0)  # let concurrent callers interleave, like a real request would
            if self._fails(messages, call_index):
                return Generation(text=None, error=f"{self.name}: scripted failure (call {call_index})")
            if self.script is None:
                text: str | Generation = f"{self.name}#{call_index}"
            elif callable(self.script):
                text = self.script(messages, call_index)
            else:
                text = self.script[call_index % len(self.script)]
            if isinstance(text, Generation):
                return text
            return Generation(text=text, prompt_tokens=_words(messages), completion_tokens=len(text.split()),
                              finish_reason="stop")
        finally:
            self._exit()

    async def aclose(self) -> None:
        return None


@dataclass
class ScriptedReward(_CallTracking):
    """A RewardModel with scripted scores.

    scores: a mapping response text -> score (texts not in it get `default`, or raise RewardError when default
    is None) or a callable (messages, response) -> score. fail: response texts, or a predicate on the text, that
    raise RewardError. Every call is recorded in `requests` as (messages, response).
    """
    scores: Mapping[str, float] | Callable[[list[Message], str], float] = field(default_factory=dict)
    default: float | None = None
    fail: set[str] | Callable[[str], bool] | None = None
    name: str = "scripted-reward"
    requests: list[tuple[list[Message], str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._init_tracking()

    async def score(self, messages: list[Message], response: str) -> float:
        self._enter()
        try:
            self.requests.append(([dict(m) for m in messages], response))
            await asyncio.sleep(0)
            if self.fail is not None and (self.fail(response) if callable(self.fail) else response in self.fail):
                raise RewardError(f"scripted reward failure for {response!r}")
            if callable(self.scores):
                return float(self.scores(messages, response))
            if response in self.scores:
                return float(self.scores[response])
            if self.default is None:
                raise RewardError(f"no scripted score for {response!r}")
            return self.default
        finally:
            self._exit()

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        return list(await asyncio.gather(*(self.score(m, r) for m, r in pairs)))

    async def aclose(self) -> None:
        return None
