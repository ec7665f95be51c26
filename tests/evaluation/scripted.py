"""Scripted ChatModel / RewardModel doubles for evaluation tests (deterministic, no model files)."""
from __future__ import annotations

from typing import Callable, Sequence

from toa_core.interfaces import RewardError
from toa_core.records import Generation


class ScriptedChatModel:
    """Answers with `answer(prompt_text)`; a prompt containing `fail_on` gets a failed Generation."""
    name = "scripted"

    def __init__(self, answer: Callable[[str], str], fail_on: str | None = None):
        self.answer = answer
        self.fail_on = fail_on
        self.calls = 0
        self.closed = False

    async def generate(self, messages, params):
        self.calls += 1
        text = messages[-1]["content"]
        if self.fail_on and self.fail_on in text:
            return Generation(text=None, error="HTTP 503 after 4 attempts")
        return Generation(text=self.answer(text), completion_tokens=5, latency_s=0.01, finish_reason="stop")

    async def aclose(self):
        self.closed = True


class LengthReward:
    """Reward = length of the response / 100 (a reward model with a length bias); raises on `fail_on`."""
    name = "length-reward"

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on

    async def score(self, messages, response: str) -> float:
        if self.fail_on and self.fail_on in response:
            raise RewardError("scoring server returned 500 four times")
        return len(response) / 100

    async def score_batch(self, pairs: Sequence[tuple[list, str]]) -> list[float]:
        return [await self.score(m, r) for m, r in pairs]

    async def aclose(self):
        pass
