"""What every search strategy shares: the context (agents, reward, config, templates) and one generation.

One generation = one completion request + one reward score, and it always yields exactly one Candidate:
- the request failed for good (Generation.error) -> a Candidate with `error` set, text None, reward None;
  the reward model is not called;
- the reward could not be computed (RewardError) -> the text is kept, reward None, error "reward: ...";
- otherwise reward = RM(original prompt messages, response): a refinement or an aggregation is judged against the
  question the user asked, never against the refine/aggregate prompt the model saw.
  A reward model that reads the prompt's record (PromptAwareReward: the verifier and its checks) gets the prompt too.
A failed generation is never scored 0.0.

Candidate ids are `f"{prompt_id}-{index:04d}"` where `index` is the generation's position in the strategy's
plan; the sampling seed of every request is derived from (search.seed, prompt_id, index), so the same config and
the same backends reproduce the same ids, seeds and (with seeded backends) the same texts.
"""
from __future__ import annotations

import abc
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar

from toa_core.adaptive import BudgetPool
from toa_core.config import SearchConfig, repeated_names
from toa_core.interfaces import ChatModel, PromptAwareReward, RewardError, RewardModel, SamplingParams
from toa_core.prompts import Templates, load_templates
from toa_core.records import Candidate, CandidateKind, Generation, Message, Prompt, PromptResult

logger = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any printable parts (the same on every machine and Python run)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


def stable_sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass
class SearchContext:
    """The resources a strategy works with. One context is shared by all prompts of a run (it holds no per-prompt
    state); `start(prompt, strategy)` starts the per-prompt bookkeeping.

    agents: the chat models in configured order (that order is the deterministic tie-break everywhere).
    templates: defaults to the packaged templates with `search.prompts` overrides, for `search.task`.
    seed: defaults to `search.seed`.
    budget_pool: generations saved by prompts that stopped early (adaptive budgets); `run_search` gives each run
    its own. None: a tree strategy run on its own keeps its savings to itself.
    """
    agents: list[ChatModel]
    reward: RewardModel
    search: SearchConfig
    templates: Templates | None = None
    seed: int | None = None
    budget_pool: BudgetPool | None = None
    # Whether `reward` is a PromptAwareReward, remembered for the reward object it was checked on: isinstance on a
    # runtime-checkable Protocol walks the protocol's attributes (~60 us under cProfile), once per generation else.
    _prompt_aware: tuple[RewardModel, bool] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.agents:
            raise ValueError("SearchContext needs at least one agent")
        names = [agent.name for agent in self.agents]
        duplicates = repeated_names(names)
        if duplicates:
            raise ValueError(f"agent names must be unique; repeated: {', '.join(duplicates)}")
        if self.templates is None:
            self.templates = load_templates(self.search.prompts, task=self.search.task)
        elif self.templates.task != self.search.task:
            raise ValueError(f"templates are for task '{self.templates.task}' but search.task is '{self.search.task}'")
        if self.seed is None:
            self.seed = self.search.seed

    def score(self, prompt: Prompt, question_messages: list[Message], text: str) -> Awaitable[float]:
        """The reward of one answer: rewards that read the prompt's record (the verifier) get the prompt too."""
        reward = self.reward
        known = self._prompt_aware
        if known is None or known[0] is not reward:  # first call, or the reward model was swapped
            known = self._prompt_aware = (reward, isinstance(reward, PromptAwareReward))
        if known[1]:
            return reward.score_prompt(prompt, question_messages, text)
        return reward.score(question_messages, text)

    @property
    def agent_names(self) -> list[str]:
        return [agent.name for agent in self.agents]

    def agent(self, name: str | None = None) -> ChatModel:
        """The agent called `name`; None means `search.model`, or the first agent if that is unset too."""
        name = name if name is not None else self.search.model
        if name is None:
            return self.agents[0]
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise ValueError(f"search.model '{name}' is not one of the configured models: {', '.join(self.agent_names)}")

    def start(self, prompt: Prompt, strategy: str,
             normalize: Callable[[float], float] | None = None) -> "PromptSession":
        """Start one prompt's search. `normalize` maps a raw reward to `reward_norm` (identity by default)."""
        return PromptSession(self, prompt, strategy, normalize or (lambda reward: reward))


@dataclass
class PromptSession:
    """Per-prompt bookkeeping: generation indices, candidate records, retries spent."""
    ctx: SearchContext
    prompt: Prompt
    strategy: str
    normalize: Callable[[float], float]
    _next_index: int = 0
    _candidates: dict[int, Candidate | None] = field(default_factory=dict)
    _retries: int = 0
    # Round trips: a virtual clock in which every generation takes one unit. A generation starts at the time of the
    # latest one that had finished when it was requested and ends one unit later; the clock ends at the length of
    # the longest chain of requests that waited on each other (N for sequential TOA, 1 for random sampling).
    _clock: int = 0

    # --- indices and seeds --------------------------------------------------------------------------------

    def _claim(self, index: int | None) -> int:
        if index is None:
            index = self._next_index
        if index < 0 or index in self._candidates:
            raise ValueError(f"generation index {index} already used (or negative) for prompt {self.prompt.prompt_id}")
        self._candidates[index] = None  # reserved until the candidate exists
        self._next_index = max(self._next_index, index + 1)
        return index

    def candidate_id(self, index: int) -> str:
        return f"{self.prompt.prompt_id}-{index:04d}"

    def request_seed(self, index: int) -> int:
        return derive_seed(self.ctx.seed, self.prompt.prompt_id, index)

    def sampling_params(self, index: int) -> SamplingParams:
        """The search-level sampling settings; per-agent overrides (ModelConfig) are applied by the backend.
        The prompt id is the session: HTTP backends keep a tree's requests on one replica (prefix cache)."""
        search = self.ctx.search
        return SamplingParams(temperature=search.temperature, top_p=search.top_p,
                              max_tokens=search.max_tokens, seed=self.request_seed(index),
                              session_id=self.prompt.prompt_id)

    # --- one generation -----------------------------------------------------------------------------------

    def generate_and_score(
        self,
        model: ChatModel,
        messages: list[Message],
        kind: CandidateKind,
        parent: Candidate | None,
        depth: int,
        question_messages: list[Message] | None = None,
        *,
        index: int | None = None,
    ) -> Awaitable[Candidate]:
        """One completion + one reward score -> a Candidate (never raises for a failed request or score).

        This is a plain function returning an awaitable: the generation index is claimed at call time, so
        concurrent generations get ids in the order they were requested, not the order they finish.
        `question_messages` (default: the prompt's messages) is what the reward model judges the response against.
        """
        claimed = self._claim(index)
        return self._generate(claimed, model, messages, kind, parent, depth,
                              question_messages if question_messages is not None else self.prompt.messages,
                              self._clock)

    async def _generate(self, index: int, model: ChatModel, messages: list[Message], kind: CandidateKind,
                        parent: Candidate | None, depth: int, question_messages: list[Message],
                        requested_at: int) -> Candidate:
        try:
            return await self._generate_and_score(index, model, messages, kind, parent, depth, question_messages)
        finally:
            self._clock = max(self._clock, requested_at + 1)

    async def _generate_and_score(self, index: int, model: ChatModel, messages: list[Message], kind: CandidateKind,
                                  parent: Candidate | None, depth: int, question_messages: list[Message]) -> Candidate:
        params = self.sampling_params(index)
        try:
            generation = await model.generate(messages, params)
        except Exception as exc:  # the ChatModel contract says never raise; a buggy backend must not kill the run
            logger.exception("agent %s raised instead of returning an error Generation", model.name)
            generation = Generation(text=None, error=f"{type(exc).__name__}: {exc}")
        self._retries += generation.retries
        reward = reward_norm = None
        error = generation.error
        if error is None and generation.text is None:
            error = "backend returned no text"
        if error is None:
            try:
                reward = float(await self.ctx.score(self.prompt, question_messages, generation.text))
                if not math.isfinite(reward):
                    raise RewardError(f"non-finite reward {reward!r}")
                reward_norm = float(self.normalize(reward))
            except RewardError as exc:
                reward = reward_norm = None
                error = f"reward: {exc}"
            except Exception as exc:  # same reasoning as above: record it for this candidate, keep the run going
                logger.exception("reward model %s raised %s (not a RewardError)", self.ctx.reward.name, type(exc).__name__)
                reward = reward_norm = None
                error = f"reward: {type(exc).__name__}: {exc}"
        if error is not None:
            logger.warning("prompt %s generation %d (%s, %s) failed: %s",
                           self.prompt.prompt_id, index, model.name, kind, error)
        candidate = Candidate(
            prompt_id=self.prompt.prompt_id,
            candidate_id=self.candidate_id(index),
            parent_id=parent.candidate_id if parent is not None else None,
            kind=kind,
            model=model.name,
            depth=depth,
            text=generation.text,
            reward=reward,
            reward_norm=reward_norm,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            latency_s=generation.latency_s,
            finish_reason=generation.finish_reason,
            strategy=self.strategy,
            seed=params.seed,
            error=error,
        )
        self._candidates[index] = candidate
        return candidate

    def record_skipped(self, model_name: str, kind: CandidateKind, depth: int, error: str,
                       *, index: int | None = None) -> Candidate:
        """Record a generation of the budget that was not attempted (no request, no score), with its reason."""
        claimed = self._claim(index)
        candidate = Candidate(
            prompt_id=self.prompt.prompt_id, candidate_id=self.candidate_id(claimed), parent_id=None, kind=kind,
            model=model_name, depth=depth, text=None, reward=None, reward_norm=None, prompt_tokens=0,
            completion_tokens=0, latency_s=0.0, finish_reason=None, strategy=self.strategy,
            seed=self.request_seed(claimed), error=error,
        )
        self._candidates[claimed] = candidate
        return candidate

    # --- result -------------------------------------------------------------------------------------------

    @property
    def round_trips(self) -> int:
        """The longest chain of generations that waited on each other so far (see `_clock`)."""
        return self._clock

    def result(self, tree: list[dict[str, Any]] | None = None, search: dict[str, Any] | None = None) -> PromptResult:
        """All candidates in index order. Every claimed index must have produced a candidate.
        `search` adds to the result's search record (generations and round_trips are always filled in)."""
        pending = sorted(i for i, c in self._candidates.items() if c is None)
        if pending:
            raise RuntimeError(f"prompt {self.prompt.prompt_id}: generations {pending} were claimed but never run")
        candidates = [self._candidates[i] for i in sorted(self._candidates)]
        record = {"strategy": self.strategy, "generations": len(candidates), "round_trips": self._clock,
                  **(search or {})}
        return PromptResult(prompt=self.prompt, candidates=candidates, tree=tree, retries=self._retries,
                            search=record)


def refine_depth(parent: Candidate | None) -> int:
    """Depth of a candidate built on `parent`: 1 for a fresh answer, parent's depth + 1 otherwise."""
    return 1 if parent is None else parent.depth + 1


class Strategy(abc.ABC):
    """A search strategy: spends `ctx.search.budget` generations on one prompt and returns every candidate."""
    name: ClassVar[str]

    @abc.abstractmethod
    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        """Search one prompt. Returns exactly `ctx.search.budget` candidates (failed ones included)."""
