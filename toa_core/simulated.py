"""Test doubles for chat and reward models: simulated agents with a known ground truth, and scripted ones.

SimulatedAgent / SimulatedReward model a pool of agents of different skill. Every response carries its hidden
quality in its text (a marker `<<q=0.123456>>`) and its length in tokens (`<<len=412>>`, also its
completion_tokens); the simulated reward reads the quality back (plus optional seeded noise). A fresh answer has
quality ~ skill + noise; a refinement or an aggregation builds on ONE of the answers quoted in its prompt and
adds `refine_delta` (positive: refinement helps, negative: it hurts).

Perception (issue 25). An agent never knows the true quality of what it is shown: asked to aggregate several
answers it judges each through its own noise (perceived = q + N(0, judgement_noise), one draw per quoted answer)
and builds on the one it perceives as best, as a real LLM does; with one quoted answer there is nothing to choose.
`oracle=True` restores the old behaviour (build on max(quoted), the true best): an oracle no real model has, kept
only to show what it does to the bench's conclusions. Aggregating makes the answer longer (`aggregate_growth`),
so a length-biased reward (StyledReward.length_bias) can be modelled.
Everything is seeded from (agent seed, request seed, prompt), so a search with a fixed seed is reproducible.
The bench uses these to compare strategies against the ground truth.

ENVIRONMENTS (bottom of this file) are the bench's worlds: ProfileAgent pools (a steady generalist next to a
high-variance specialist, a reward model biased toward one agent's style, ...) judged by a StyledReward.

ScriptedChatModel / ScriptedReward return exactly what a test scripts, count and record their calls, and fail
on demand, to pin the strategies' semantics.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from toa_core.interfaces import RewardError, SamplingParams
from toa_core.records import Generation, Message

_QUALITY_MARK = re.compile(r"<<q=(-?\d+(?:\.\d+)?)>>")
_LENGTH_MARK = re.compile(r"<<len=(\d+)>>")
_SEEDED_LENGTH = re.compile(r" ?<<len=\d+>>")
FRESH_LENGTH = 400  # tokens of a typical fresh simulated answer
REFINE_GROWTH = 0.03  # a refinement is ~3% longer than what it refines
AGGREGATE_GROWTH = 0.15  # an aggregate is ~15% longer than the longest answer it combines


def quality_marker(quality: float) -> str:
    return f"<<q={quality:.6f}>>"


def length_marker(tokens: int) -> str:
    return f"<<len={tokens}>>"


def read_lengths(text: str) -> list[int]:
    """Every length marker in `text`, in order."""
    return [int(n) for n in _LENGTH_MARK.findall(text)]


def hidden_length(text: str | None) -> int | None:
    """The length in tokens a simulated response carries (its last marker), or None."""
    lengths = read_lengths(text) if text else []
    return lengths[-1] if lengths else None


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


class _SimulatedWriter(_CallTracking):
    """What every simulated chat model shares: seeded per request, fails for good at `failure_rate` (the first draw
    of every request), and writes an answer carrying the quality `_quality` gives it and a length.

    Perception: `_build_on(quoted, rng)` is the one place where an agent looks at the answers it is shown; it
    returns the index of the answer it builds on. Without `oracle` it sees each quality through its own
    judgement noise (it never reads a true quality to decide), with `oracle` it takes the true best."""

    name: str
    seed: int
    latency_s: float
    failure_rate: float
    judgement_noise: float = 0.0
    oracle: bool = False
    writes_length: bool = True  # False: no length marker (SimulatedAgent: the tests' golden texts predate lengths)
    aggregate_growth: float = AGGREGATE_GROWTH
    fresh_length: int = FRESH_LENGTH

    def _quality(self, prompt_text: str, quoted: list[float], rng: random.Random) -> float:
        """The hidden quality of this answer; `quoted` holds the qualities of the answers the prompt quotes
        (build on `quoted[self._build_on(quoted, rng)]`, never on max(quoted) directly)."""
        raise NotImplementedError

    def _build_on(self, quoted: list[float], rng: random.Random) -> int:
        """Which quoted answer this agent builds on: the one it PERCEIVES as best (ties: the first)."""
        if len(quoted) == 1:
            return 0  # nothing to choose (and no draw, so single-answer refinements keep their random stream)
        if self.oracle:
            return max(range(len(quoted)), key=lambda i: (quoted[i], -i))
        perceived = [q + rng.gauss(0.0, self.judgement_noise) if self.judgement_noise else q for q in quoted]
        return max(range(len(quoted)), key=lambda i: (perceived[i], -i))

    def _length(self, prompt_text: str, rng: random.Random) -> int:
        lengths = read_lengths(prompt_text)
        if not lengths:
            return max(1, round(self.fresh_length * (1.0 + rng.gauss(0.0, 0.1))))
        growth = self.aggregate_growth if len(lengths) > 1 else REFINE_GROWTH
        return max(1, round(max(lengths) * (1.0 + growth)))

    async def generate(self, messages: list[Message], params: SamplingParams) -> Generation:
        call_index = self._enter()
        try:
            await asyncio.sleep(self.latency_s)
            prompt_text = "\n".join(m["content"] for m in messages)
            request_seed = params.seed if params.seed is not None else call_index
            # Seeded without the length markers: lengths were added later, and the qualities (golden trees in the
            # tests) must not change with them.
            rng = random.Random(_stable_seed(self.seed, self.name, request_seed, _SEEDED_LENGTH.sub("", prompt_text)))
            if rng.random() < self.failure_rate:
                return Generation(text=None, error=f"{self.name}: simulated failure", latency_s=self.latency_s)
            quality = self._quality(prompt_text, read_qualities(prompt_text), rng)
            text = f"Answer from {self.name} {quality_marker(quality)}"
            completion_tokens = len(text.split())
            if self.writes_length:
                # Its own generator, so lengths do not change any quality drawn.
                completion_tokens = self._length(prompt_text, random.Random(
                    _stable_seed("length", self.seed, self.name, request_seed, prompt_text)))
                text += f" {length_marker(completion_tokens)}"
            return Generation(text=text, prompt_tokens=_words(messages), completion_tokens=completion_tokens,
                              latency_s=self.latency_s, finish_reason="stop")
        finally:
            self._exit()

    async def aclose(self) -> None:
        return None


class SimulatedAgent(_SimulatedWriter):
    """A ChatModel with a hidden skill. See the module docstring.

    failure_rate: probability (seeded) that a request fails for good (Generation.error set).
    latency_s: awaited per request (asyncio.sleep); 0 still yields once to the event loop, so concurrent
    searches really interleave.
    judgement_noise: the sd of this agent's noise when it judges the answers it aggregates (see _build_on);
    oracle: build on the true best quoted answer instead (the old, unrealistic behaviour).
    writes_length: add a length marker (off by default: the tests' golden texts and rewards predate lengths).
    """

    def __init__(self, name: str, skill: float, *, refine_delta: float = 0.0, noise: float = 0.0,
                 seed: int = 0, failure_rate: float = 0.0, latency_s: float = 0.0,
                 judgement_noise: float = 0.1, oracle: bool = False, writes_length: bool = False):
        self.name = name
        self.writes_length = writes_length
        self.judgement_noise = judgement_noise
        self.oracle = oracle
        self.skill = skill
        self.refine_delta = refine_delta
        self.noise = noise
        self.seed = seed
        self.failure_rate = failure_rate
        self.latency_s = latency_s
        self._init_tracking()

    def _quality(self, prompt_text: str, quoted: list[float], rng: random.Random) -> float:
        base = quoted[self._build_on(quoted, rng)] + self.refine_delta if quoted else self.skill
        return base + (rng.gauss(0.0, self.noise) if self.noise else 0.0)


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


# ----------------------------------------------------------------------------------------------------------
# Environments: pools of agents with a known ground truth, and reward models that see it imperfectly.
#
# Qualities are on a 0..1 scale (1 = a perfect answer) and capped there. A ProfileAgent writes a fresh answer
# with a quality drawn from its profile; asked to refine (or aggregate) it builds on the quoted answer it
# PERCEIVES as best (its judgement noise), applies its profile's refine rule and then loses a rewrite loss drawn
# from its own distribution (a rewrite can drop what made the answer good). A StyledReward observes quality +
# seeded noise + a bias for the style of the agent that wrote the text (its name is in the text) + a bias for
# length. Each environment comes with its agents' expected fresh quality and expected refinement, for the bench's
# greedy oracle.

# Defaults for every environment (issue 25), from the bench's calibration grid (bench_search.py --calibrate, on
# paper-pool at N=160: judgement noise x rewrite loss x length bias, 36 points): the point whose orderings of the
# paper's five strategies (by the picked answer's true quality and by its reward) are closest to the paper's
# AlpacaEval table (TOA > Seq. Refine > PRS > MoA > Ensemble), by the sum of the two Kendall taus, ties to the
# reward's. It reproduces the order on reward but for one swap (PRS above Seq. Refine). bench/README.md has the grid.
DEFAULT_JUDGEMENT_NOISE = 0.30  # an aggregator tells a 0.1 quality gap apart ~59% of the time
DEFAULT_REWRITE_LOSS = (0.0, 0.0)  # mean, sd of a normal draw, clipped at 0; the grid preferred no extra loss
DEFAULT_LENGTH_BIAS = 0.0  # reward per 1000 tokens above FRESH_LENGTH; the grid preferred none


@dataclass(frozen=True)
class AgentProfile:
    """How one simulated agent writes.

    fresh(rng) -> quality of a fresh answer; refine(q, rng) -> quality after refining an answer of quality q.
    expected_fresh / expected_refine(q): their means (what an oracle that knows the agent would expect).
    judgement_noise: sd of this agent's noise when it judges quoted answers (None: the environment's);
    rewrite_loss: (mean, sd) of the quality a rewrite loses, a normal clipped at 0 (None: the environment's).
    Each rule draws `rng.random()` at most once and `rng.gauss` as it needs; the first draw of every request is
    the failure draw (`failure_rate`).
    """
    name: str
    fresh: Callable[[random.Random], float]
    refine: Callable[[float, random.Random], float]
    expected_fresh: float
    expected_refine: Callable[[float], float]
    failure_rate: float = 0.0
    judgement_noise: float | None = None
    rewrite_loss: tuple[float, float] | None = None


def _clip(quality: float) -> float:
    return min(1.0, max(0.0, quality))


EASY_TAG = "[easy]"


class ProfileAgent(_SimulatedWriter):
    """A ChatModel that writes according to an AgentProfile; qualities are capped to [0, 1].

    On a prompt tagged EASY_TAG every answer is lifted: it keeps only `easy_gap` of its distance to a perfect
    answer (a question every agent handles well, where more search has little left to find).
    Refining / aggregating: builds on the quoted answer it perceives as best (judgement_noise), applies the
    profile's refine rule, then subtracts max(0, N(rewrite_loss)). `oracle`: the true best, and no rewrite loss.
    """

    def __init__(self, profile: AgentProfile, *, seed: int = 0, latency_s: float = 0.0, easy_gap: float = 1.0,
                 judgement_noise: float = DEFAULT_JUDGEMENT_NOISE,
                 rewrite_loss: tuple[float, float] = DEFAULT_REWRITE_LOSS, oracle: bool = False):
        self.profile = profile
        self.name = profile.name
        self.seed = seed
        self.latency_s = latency_s
        self.easy_gap = easy_gap
        self.judgement_noise = profile.judgement_noise if profile.judgement_noise is not None else judgement_noise
        self.rewrite_loss = profile.rewrite_loss if profile.rewrite_loss is not None else rewrite_loss
        self.oracle = oracle
        self._init_tracking()

    @property
    def failure_rate(self) -> float:
        return self.profile.failure_rate

    def _quality(self, prompt_text: str, quoted: list[float], rng: random.Random) -> float:
        if not quoted:
            quality = _clip(self.profile.fresh(rng))
            if EASY_TAG in prompt_text:
                quality = 1.0 - self.easy_gap * (1.0 - quality)
            return _clip(quality)
        quality = self.profile.refine(quoted[self._build_on(quoted, rng)], rng)
        if not self.oracle:
            mean, sd = self.rewrite_loss
            quality -= max(0.0, rng.gauss(mean, sd) if sd else mean)
        return _clip(quality)


_AUTHOR = re.compile(r"Answer from (\S+)")


class StyledReward(SimulatedReward):
    """A SimulatedReward that also adds `style_bias[author]` to the answers written by that agent (times
    1 + N(0, style_spread) per answer: how much of the style a text shows varies) and
    `length_bias` x (length - FRESH_LENGTH) / 1000 for the answer's length."""

    def __init__(self, *, noise: float = 0.0, seed: int = 0, style_bias: Mapping[str, float] | None = None,
                 length_bias: float = 0.0, style_spread: float = 0.0, name: str = "styled-reward"):
        super().__init__(noise=noise, seed=seed, name=name)
        self.style_bias = dict(style_bias or {})
        self.length_bias = length_bias
        self.style_spread = style_spread

    async def score(self, messages: list[Message], response: str) -> float:
        observed = await super().score(messages, response)
        author = _AUTHOR.search(response)
        bias = self.style_bias.get(author.group(1), 0.0) if author else 0.0
        if bias and self.style_spread:
            bias *= 1.0 + random.Random(_stable_seed("style", self.seed, response)).gauss(0.0, self.style_spread)
        length = hidden_length(response)
        if self.length_bias and length is not None:
            bias += self.length_bias * (length - FRESH_LENGTH) / 1000.0
        return observed + bias


@dataclass(frozen=True)
class Environment:
    """A pool of agent profiles and the reward model that judges them.

    judgement_noise / rewrite_loss: the agents' perception defaults (a profile may override them); oracle: the
    agents build on the true best quoted answer without loss (the old simulator, for comparison only; with
    writes_length=False its texts, and so its rewards, are the old ones exactly).
    ensemble_biases: the style biases of the members of `reward_ensemble` (each member has its own noise seed;
    the first is usually `style_bias`, the single reward model's).
    """
    name: str
    description: str
    profiles: tuple[AgentProfile, ...]
    reward_noise: float
    style_bias: Mapping[str, float] = field(default_factory=dict)
    easy_share: float = 0.0  # share of prompts tagged EASY_TAG (every 1/easy_share-th one)
    easy_gap: float = 1.0  # on an easy prompt a fresh answer keeps this share of its distance to 1
    judgement_noise: float = DEFAULT_JUDGEMENT_NOISE
    rewrite_loss: tuple[float, float] = DEFAULT_REWRITE_LOSS
    length_bias: float = DEFAULT_LENGTH_BIAS
    style_spread: float = 0.0
    oracle: bool = False
    ensemble_biases: tuple[Mapping[str, float], ...] = ()
    writes_length: bool = True  # False + oracle: the texts and rewards of the simulator before issue 25

    def agents(self, seed: int = 0) -> list[ProfileAgent]:
        agents = [ProfileAgent(profile, seed=seed, easy_gap=self.easy_gap, judgement_noise=self.judgement_noise,
                               rewrite_loss=self.rewrite_loss, oracle=self.oracle) for profile in self.profiles]
        for agent in agents:
            agent.writes_length = self.writes_length
        return agents

    def prompt_texts(self, n: int) -> list[str]:
        """The bench's n task texts; with `easy_share`, an evenly spread share of them is tagged easy."""
        texts = []
        for i in range(n):
            easy = self.easy_share > 0 and int((i + 1) * self.easy_share) > int(i * self.easy_share)
            texts.append(f"Simulated task {i}{' ' + EASY_TAG if easy else ''}: do the thing well.")
        return texts

    def reward(self, seed: int = 0) -> StyledReward:
        return StyledReward(noise=self.reward_noise, seed=seed, style_bias=self.style_bias,
                            length_bias=self.length_bias, style_spread=self.style_spread)

    def reward_ensemble(self, seed: int = 0, combine: str = "mean_std", std_weight: float = 1.0):
        """Several reward models (one per `ensemble_biases` entry, default: the single one plus two unbiased),
        each with its own noise, combined by toa_core.rewards.ensemble.EnsembleReward."""
        from toa_core.rewards.ensemble import EnsembleReward

        biases = self.ensemble_biases or (self.style_bias, {}, {})
        members = [StyledReward(noise=self.reward_noise, seed=seed + 7919 * i, style_bias=bias,
                                length_bias=self.length_bias, style_spread=self.style_spread, name=f"member{i}")
                   for i, bias in enumerate(biases)]
        return EnsembleReward(members, combine, std_weight)

    def with_perception(self, **changes: object) -> "Environment":
        """A copy with other perception / reward settings (the calibration grid, the oracle comparison)."""
        return dataclasses.replace(self, **changes)


def _gap_closer(skill: float, delta: float, noise: float) -> AgentProfile:
    """Fresh ~ N(skill, noise); a refinement closes `delta` of the gap to 1 (delta < 0: loses -delta of q), with
    half the noise. The bench's original three agents."""
    def refine_mean(q: float) -> float:
        return q + delta * ((1.0 - q) if delta >= 0 else q)
    return AgentProfile(
        name="", fresh=lambda rng: skill + rng.gauss(0.0, noise),
        refine=lambda q, rng: refine_mean(q) + rng.gauss(0.0, noise) / 2,
        expected_fresh=skill, expected_refine=refine_mean)


def _named(profile: AgentProfile, name: str) -> AgentProfile:
    return dataclasses.replace(profile, name=name)


def _specialist_fresh(rng: random.Random) -> float:
    return rng.gauss(0.90, 0.03) if rng.random() < 0.12 else rng.gauss(0.30, 0.10)


def _editor_refine_mean(q: float) -> float:
    return q + 0.5 * (1.0 - q) if q >= 0.7 else q - 0.05


ENVIRONMENTS: dict[str, Environment] = {
    "three-agents": Environment(
        "three-agents",
        "a strong solver (fresh ~0.55, refining helps it a little), a good editor (~0.40 alone, closes 30% of the "
        "gap when it refines) and a sloppy agent (~0.30, its refinements lose 20%); reward = quality + N(0, 0.05)",
        (_named(_gap_closer(0.55, 0.05, 0.12), "strong-solver"),
         _named(_gap_closer(0.40, 0.30, 0.10), "good-editor"),
         _named(_gap_closer(0.30, -0.20, 0.20), "sloppy")),
        reward_noise=0.05),
    "specialist": Environment(
        "specialist",
        "a steady generalist (~0.55, refinements close 10% of the gap), a specialist whose fresh answers are "
        "usually poor (~0.30) but 12% of the time the best of all (~0.90; it rewrites from scratch when asked to "
        "refine), an editor (~0.40) that improves only strong answers (q >= 0.7: closes half the gap; else -0.05); "
        "reward = quality + N(0, 0.06) + 0.06 for the generalist's style",
        (AgentProfile("generalist", lambda rng: rng.gauss(0.55, 0.07),
                      lambda q, rng: q + 0.10 * (1.0 - q) + rng.gauss(0.0, 0.03),
                      0.55, lambda q: q + 0.10 * (1.0 - q)),
         AgentProfile("specialist", _specialist_fresh, lambda q, rng: _specialist_fresh(rng),
                      0.12 * 0.90 + 0.88 * 0.30, lambda q: 0.12 * 0.90 + 0.88 * 0.30),
         AgentProfile("editor", lambda rng: rng.gauss(0.40, 0.08),
                      lambda q, rng: _editor_refine_mean(q) + rng.gauss(0.0, 0.02 if q >= 0.7 else 0.03),
                      0.40, _editor_refine_mean)),
        reward_noise=0.06, style_bias={"generalist": 0.06}),
    "biased-judge": Environment(
        "biased-judge",
        "an expert (~0.62, refinements close 15% of the gap), a charmer (~0.50) whose refinements restyle an "
        "answer and lose a little (-0.03), an editor (~0.42, closes 30% of the gap); reward = quality + "
        "N(0, 0.04) + 0.10 for the charmer's style",
        (AgentProfile("expert", lambda rng: rng.gauss(0.62, 0.08),
                      lambda q, rng: q + 0.15 * (1.0 - q) + rng.gauss(0.0, 0.03),
                      0.62, lambda q: q + 0.15 * (1.0 - q)),
         AgentProfile("charmer", lambda rng: rng.gauss(0.50, 0.08),
                      lambda q, rng: q - 0.03 + rng.gauss(0.0, 0.03),
                      0.50, lambda q: q - 0.03),
         AgentProfile("editor", lambda rng: rng.gauss(0.42, 0.10),
                      lambda q, rng: q + 0.30 * (1.0 - q) + rng.gauss(0.0, 0.04),
                      0.42, lambda q: q + 0.30 * (1.0 - q))),
        reward_noise=0.04, style_bias={"charmer": 0.10}),
}
ENVIRONMENTS["mixed-difficulty"] = Environment(
    "mixed-difficulty",
    "the three-agents pool on prompts of mixed difficulty: on 40% of them (easy) every fresh answer keeps only "
    "a fifth of its distance to a perfect answer (~0.9, where search has little left to find); reward = quality + "
    "N(0, 0.05)",
    ENVIRONMENTS["three-agents"].profiles, reward_noise=0.05, easy_share=0.4, easy_gap=0.2)
def _closing(name: str, skill: float, spread: float, closes: float, refine_spread: float) -> AgentProfile:
    """Fresh ~ N(skill, spread); a refinement closes `closes` of the gap to 1, plus N(0, refine_spread)."""
    return AgentProfile(name, lambda rng: rng.gauss(skill, spread),
                        lambda q, rng: q + closes * (1.0 - q) + rng.gauss(0.0, refine_spread),
                        skill, lambda q: q + closes * (1.0 - q))


ENVIRONMENTS["biased-reward"] = Environment(
    "biased-reward",
    "an expert (~0.62, refinements close 15% of the gap), an editor (~0.42, closes 30%) and a weak flatterer "
    "(~0.35 with a wide spread, its rewrites lose 0.02) whose style the reward model loves: +0.20 x (1 + N(0, 0.5)) "
    "per answer; reward = quality + N(0, 0.04) + that bonus. The reward ensemble adds two members with their own "
    "noise and no taste for the flatterer",
    (_closing("expert", 0.62, 0.08, 0.15, 0.03),
     _closing("editor", 0.42, 0.10, 0.30, 0.04),
     AgentProfile("flatterer", lambda rng: rng.gauss(0.35, 0.12),
                  lambda q, rng: q - 0.02 + rng.gauss(0.0, 0.05),
                  0.35, lambda q: q - 0.02)),
    reward_noise=0.04, style_bias={"flatterer": 0.20}, style_spread=0.5)
ENVIRONMENTS["paper-pool"] = Environment(
    "paper-pool",
    "five large models modelled on the paper's AlpacaEval pool: a strong one (~0.60, refinements close 15% of the "
    "gap; Mistral-Large's role), a verbose one (~0.50) whose style the reward model likes (+0.06), and three "
    "middling ones (~0.42-0.48, refinements close 10%); reward = quality + N(0, 0.04) + the style bonus + the length "
    "bias. The calibration setting: the paper's Par. Ensemble losing to the strong model alone says the reward model "
    "favours another model's style",
    (_closing("strong", 0.60, 0.08, 0.15, 0.03),
     _closing("verbose", 0.50, 0.10, 0.05, 0.04),
     *(_closing(name, skill, 0.08, 0.10, 0.03)
       for name, skill in (("middle-a", 0.48), ("middle-b", 0.45), ("middle-c", 0.42)))),
    reward_noise=0.04, style_bias={"verbose": 0.06})
