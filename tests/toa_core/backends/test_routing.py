"""Replica choice: session affinity under a load bound, failover, round robin as before; the chat and reward clients
use it against real load-server replicas."""
from __future__ import annotations

import asyncio
import math
from collections import Counter

import pytest

from toa_core.backends.openai_http import OpenAIChatModel
from toa_core.backends.routing import ReplicaRouter, resolve_policy, session_key
from toa_core.config import ModelConfig, RetryConfig
from toa_core.interfaces import SamplingParams
from toa_core.rewards.http import HTTPReward
from tests.fixtures.servers import load_server_fleet

REPLICAS = [f"http://replica-{i}:8000/v1" for i in range(4)]
FAST_RETRY = RetryConfig(max_attempts=4, backoff_initial_s=0.01, backoff_max_s=0.05, connect_timeout_s=10,
                         read_timeout_s=10)
QUESTION = [{"role": "user", "content": "Explain prefix caching in two sentences."}]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_policy_defaults_to_affinity_only_with_several_replicas():
    assert resolve_policy(None, 1) == "round_robin" and resolve_policy(None, 3) == "affinity"
    assert resolve_policy("round_robin", 3) == "round_robin"
    with pytest.raises(ValueError, match="unknown routing policy"):
        resolve_policy("sticky", 2)
    assert session_key("m", "p1") == session_key("m", "p1") != session_key("m", "p2")
    assert session_key("m", "p1").isascii()


def test_one_session_stays_on_one_replica_and_sessions_spread():
    router = ReplicaRouter(REPLICAS, "affinity")
    for session in ("tree-a", "tree-b"):
        firsts = {router.plan(session)[0] for _ in range(20)}
        assert len(firsts) == 1
        plan = router.plan(session)
        assert sorted(plan) == sorted(REPLICAS)  # every replica once: the failover order
    spread = Counter(router.plan(f"tree-{i}")[0] for i in range(400))
    assert set(spread) == set(REPLICAS) and min(spread.values()) > 50
    # the same key ranks replicas the same way in another process (no per-process hash seed)
    assert ReplicaRouter(REPLICAS).plan("tree-a") == router.plan("tree-a")


def test_overflow_moves_to_the_next_replica_and_no_replica_exceeds_the_bound():
    router = ReplicaRouter(REPLICAS, "affinity", load_factor=1.25)
    home = router.plan("hot-tree")[0]
    held, placed = [], []
    for _ in range(40):  # one hot tree sends 40 requests at once
        endpoint = router.plan("hot-tree")[0]
        attempt = router.attempt(endpoint)
        attempt.__enter__()
        held.append(attempt)
        placed.append(endpoint)
        assert max(router.in_flight.values()) <= math.ceil(1.25 * sum(router.in_flight.values()) / len(REPLICAS))
    counts = Counter(placed)
    assert counts[home] == max(counts.values()) and len(counts) == len(REPLICAS)
    assert max(counts.values()) <= math.ceil(1.25 * 40 / 4)
    for attempt in held:
        attempt.__exit__(None, None, None)
    assert sum(router.in_flight.values()) == 0 and router.plan("hot-tree")[0] == home  # back home once it drains


def test_a_failing_replica_cools_down_then_comes_back():
    clock = FakeClock()
    router = ReplicaRouter(REPLICAS, "affinity", clock=clock)
    home, second = router.plan("tree")[:2]
    with router.attempt(home) as attempt:
        attempt.fail()  # e.g. HTTP 503
    assert router.plan("tree")[0] == second and router.plan("tree")[-1] == home
    clock.now += 1.5  # the first cool-down is 1 s
    assert router.plan("tree")[0] == home
    with pytest.raises(ConnectionError):
        with router.attempt(home, faults=(ConnectionError,)):
            raise ConnectionError("refused")
    clock.now += 1.5  # two failures in a row: 2 s
    assert router.plan("tree")[0] == second
    clock.now += 1.0
    with router.attempt(home):
        pass  # a success resets the count
    assert router.plan("tree")[0] == home and not router.is_cooling_down(home)


def test_round_robin_is_unchanged_and_sessionless_affinity_takes_the_least_loaded():
    rr = ReplicaRouter(REPLICAS, "round_robin")
    assert [rr.plan("same")[0] for _ in range(5)] == REPLICAS + REPLICAS[:1]
    assert rr.plan()[1:] == REPLICAS[2:] + REPLICAS[:1]  # retries move on in turn
    router = ReplicaRouter(REPLICAS, "affinity")
    with router.attempt(REPLICAS[0]), router.attempt(REPLICAS[1]):
        assert {router.plan(None)[0] for _ in range(4)} == {REPLICAS[2], REPLICAS[3]}


@pytest.fixture(scope="module")
def replicas():
    with load_server_fleet(3, slots=64, response_tokens=4, token_delay_ms=5) as servers:
        yield servers


@pytest.fixture(autouse=True)
def _healthy(request):
    if "replicas" in request.fixturenames:
        for server in request.getfixturevalue("replicas"):
            server.set_faults(dead_rate=0.0, error_rate=0.0)


def _received(servers) -> list[int]:
    return [server.stats().get("received", 0) for server in servers]


def _agent(servers, **overrides) -> OpenAIChatModel:
    overrides.setdefault("retry", FAST_RETRY)
    return OpenAIChatModel(ModelConfig(name="a", model="m", endpoints=[s.base_url for s in servers], **overrides))


def test_chat_client_keeps_a_prompt_on_one_replica_and_fails_over(replicas):
    agent = _agent(replicas)
    params = SamplingParams(max_tokens=4, session_id="prompt-1")

    async def sequential(n):
        return [await agent.generate(QUESTION, params) for _ in range(n)]

    async def run():
        try:
            before = _received(replicas)
            first = await sequential(6)
            after = _received(replicas)
            home = max(range(3), key=lambda i: after[i] - before[i])
            assert [a - b for a, b in zip(after, before)].count(0) == 2, "all six went to one replica"
            replicas[home].set_faults(dead_rate=1.0)  # the home replica goes down
            second = await sequential(4)
            return first, second, home
        finally:
            await agent.aclose()

    first, second, home = asyncio.run(run())
    assert all(g.ok for g in first + second)
    assert [g.retries for g in second] == [1, 0, 0, 0]  # one failed attempt, then straight to the next replica
    assert replicas[home].stats()["fault_dead"] == 1


def test_chat_client_spreads_a_burst_within_the_load_bound(replicas):
    # generous timeouts: on a loaded machine a connect timeout would (rightly) fail over and move a request
    agent = _agent(replicas, retry=RetryConfig(max_attempts=4, backoff_initial_s=0.01, backoff_max_s=0.05,
                                               connect_timeout_s=30, read_timeout_s=30))

    async def run():
        try:
            return await asyncio.gather(*[agent.generate(QUESTION, SamplingParams(max_tokens=4, session_id="hot"))
                                          for _ in range(24)])
        finally:
            await agent.aclose()

    before = _received(replicas)
    generations = asyncio.run(run())
    assert all(g.ok for g in generations)
    placed = [a - b for a, b in zip(_received(replicas), before)]
    retried = sum(g.retries for g in generations)  # a failed-over attempt lands beyond the plan's first choice
    assert sum(placed) >= 24 and max(placed) <= math.ceil(1.25 * 24 / 3) + retried and min(placed) > 0


def test_round_robin_config_uses_replicas_in_turn(replicas):
    agent = _agent(replicas, routing="round_robin")

    async def run():
        try:
            for _ in range(6):
                assert (await agent.generate(QUESTION, SamplingParams(max_tokens=4, session_id="p"))).ok
        finally:
            await agent.aclose()

    before = _received(replicas)
    asyncio.run(run())
    assert [a - b for a, b in zip(_received(replicas), before)] == [2, 2, 2]


def test_reward_pairs_of_one_question_share_a_replica(replicas):
    reward = HTTPReward([s.base_url for s in replicas], "rm", retry=FAST_RETRY)
    questions = [[{"role": "user", "content": f"question {q}"}] for q in range(12)]

    async def run():
        try:
            placements = []
            for messages in questions:
                before = _received(replicas)
                # one tree scores one response at a time (concurrent pairs would be spread by the load bound)
                scores = [await reward.score(messages, f"answer {k} " * k) for k in range(1, 5)]
                assert scores == [float(2 * k) for k in range(1, 5)]  # the load server scores by word count
                placements.append(tuple(a - b for a, b in zip(_received(replicas), before)))
            return placements
        finally:
            await reward.aclose()

    placements = asyncio.run(run())
    assert all(sorted(p) == [0, 0, 4] for p in placements), placements  # 4 pairs of a question: one replica
    assert len({p.index(4) for p in placements}) > 1  # different questions use different replicas
