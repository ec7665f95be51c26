"""The records every part of toaflow exchanges: prompts, generations, scored candidates, search results.

These are the contracts of ARCHITECTURE section 2. A candidate row is what lands in
`samples/shard-*.parquet`; the tree of a TOA search is fully recoverable from the parent ids.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
CandidateKind = Literal["fresh", "refine", "aggregate"]

CANDIDATE_COLUMNS = (
    "prompt_id", "candidate_id", "parent_id", "kind", "model", "depth", "text", "reward",
    "reward_norm", "prompt_tokens", "completion_tokens", "latency_s", "finish_reason",
    "strategy", "seed", "error",
)


def is_valid_unicode(text: str) -> bool:
    """False when `text` holds a lone surrogate (JSON's "\\ud800" escape decodes to one): UTF-8 cannot encode it,
    so no hash, Parquet table or HTTP request can carry it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def prompt_id_for(messages: list[Message]) -> str:
    """Stable id of a prompt: a hash of its normalised messages (role and stripped content)."""
    canonical = json.dumps(
        [{"role": m["role"], "content": m["content"].strip()} for m in messages],
        ensure_ascii=False, separators=(",", ":"), sort_keys=True,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Prompt:
    """One normalised prompt: chat messages ending with a user turn."""
    prompt_id: str
    messages: list[Message]
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_messages(cls, messages: list[Message], source: str = "", **metadata: Any) -> "Prompt":
        return cls(prompt_id=prompt_id_for(messages), messages=messages, source=source, metadata=metadata)

    @property
    def question(self) -> str:
        """The last user message: what refine templates quote and what the reward model judges."""
        for message in reversed(self.messages):
            if message["role"] == "user":
                return message["content"]
        raise ValueError(f"prompt {self.prompt_id} has no user message")


@dataclass
class Generation:
    """The outcome of one completion request (after the client's retries)."""
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str | None = None
    error: str | None = None  # set when the request failed for good; text is then None
    retries: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


@dataclass
class Candidate:
    """One generated candidate: a row of `samples/shard-*.parquet`.

    `reward` is the raw reward-model score; `reward_norm` the value the tree used (sigmoid(reward/tau) for TOA,
    equal to reward elsewhere). Both are None when `error` is set: a failed generation is never scored 0.0.
    """
    prompt_id: str
    candidate_id: str
    parent_id: str | None
    kind: CandidateKind
    model: str
    depth: int
    text: str | None
    reward: float | None
    reward_norm: float | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str | None
    strategy: str
    seed: int
    error: str | None = None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PromptResult:
    """Everything one search produced for one prompt."""
    prompt: Prompt
    candidates: list[Candidate]
    tree: list[dict[str, Any]] | None = None  # toa and ab_mcts: node records, see toa_core.strategies.toa / ab_mcts
    retries: int = 0  # client-side retries spent on this prompt (for the manifest)
    # How the search went: generations, round_trips (the longest chain of requests that waited on each other),
    # and for toa/ab_mcts stop_reason, budget, allowance and search_cpu_s (CPU of the search logic itself).
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Candidate | None:
        scored = [c for c in self.candidates if c.reward is not None]
        return max(scored, key=lambda c: c.reward) if scored else None
