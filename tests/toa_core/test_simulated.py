"""The simulated agents' perception: they judge quoted answers through noise, never by their true quality."""
from __future__ import annotations

import asyncio
import random

import pytest

from toa_core.interfaces import SamplingParams
from toa_core.simulated import (ENVIRONMENTS, AgentProfile, ProfileAgent, SimulatedAgent, hidden_length,
                                hidden_quality, length_marker, quality_marker)


def quoted(*qualities, length=400):
    answers = "\n".join(f"Answer from x{i} {quality_marker(q)} {length_marker(length)}"
                        for i, q in enumerate(qualities))
    return [{"role": "user", "content": f"Combine these answers:\n{answers}"}]


def write(agent, messages, seed):
    return asyncio.run(agent.generate(messages, SamplingParams(seed=seed)))


def identity_profile(**perception):
    # Refining keeps the quality: the output shows which quoted answer the agent built on.
    return AgentProfile("copier", lambda rng: 0.5, lambda q, rng: q, 0.5, lambda q: q, **perception)


def test_an_aggregating_agent_builds_on_the_answer_it_perceives_best_not_the_true_best():
    agent = ProfileAgent(identity_profile(), judgement_noise=0.2, rewrite_loss=(0.0, 0.0))
    picks = [hidden_quality(write(agent, quoted(0.50, 0.60, 0.55), seed).text) for seed in range(300)]
    assert set(picks) <= {0.50, 0.60, 0.55}
    share_best = picks.count(0.60) / len(picks)
    # With noise sd 0.2 on a gap of 0.05-0.1 the true best is often missed, but still chosen most often.
    assert 0.4 < share_best < 0.8 and picks.count(0.50) > 0 and picks.count(0.55) > 0
    assert picks.count(0.60) > picks.count(0.55) > picks.count(0.50) * 0.8


def test_the_choice_depends_on_the_agents_own_noise():
    sharp = ProfileAgent(identity_profile(judgement_noise=0.01), rewrite_loss=(0.0, 0.0))
    blurry = ProfileAgent(identity_profile(judgement_noise=0.5), rewrite_loss=(0.0, 0.0))
    sharp_best = sum(hidden_quality(write(sharp, quoted(0.5, 0.6), s).text) == 0.6 for s in range(200))
    blurry_best = sum(hidden_quality(write(blurry, quoted(0.5, 0.6), s).text) == 0.6 for s in range(200))
    assert sharp_best == 200 and 80 < blurry_best < 140


def test_oracle_setting_takes_the_true_best_without_loss():
    agent = ProfileAgent(identity_profile(), judgement_noise=0.5, rewrite_loss=(0.1, 0.05), oracle=True)
    assert {hidden_quality(write(agent, quoted(0.5, 0.7, 0.6), s).text) for s in range(50)} == {0.7}


def test_rewrites_lose_quality_from_the_agents_own_distribution():
    agent = ProfileAgent(identity_profile(), rewrite_loss=(0.05, 0.02))
    losses = [0.8 - hidden_quality(write(agent, quoted(0.8), s).text) for s in range(200)]
    assert all(loss >= 0 for loss in losses)
    assert 0.04 < sum(losses) / len(losses) < 0.06


def test_aggregates_are_longer_than_their_inputs_and_refinements_barely():
    agent = ProfileAgent(identity_profile())
    aggregate = write(agent, quoted(0.5, 0.6, length=500), 1)
    refinement = write(agent, quoted(0.5, length=500), 1)
    assert hidden_length(aggregate.text) == aggregate.completion_tokens > 560
    assert 500 < hidden_length(refinement.text) < 530


def test_the_simple_agent_also_judges_through_noise():
    agent = SimulatedAgent("m", 0.5, judgement_noise=0.3)
    picks = {hidden_quality(write(agent, quoted(0.5, 0.6), s).text) for s in range(100)}
    assert picks == {0.5, 0.6}
    assert {hidden_quality(write(SimulatedAgent("m", 0.5, oracle=True), quoted(0.5, 0.6), s).text)
            for s in range(20)} == {0.6}


def test_no_agent_reads_true_quality_to_decide():
    # Every agent of every environment: its choice among quoted answers goes through _build_on, whose only
    # exact reading of the qualities is the oracle setting.
    for env in ENVIRONMENTS.values():
        for agent in env.agents():
            assert not agent.oracle and agent.judgement_noise > 0


def test_biased_reward_ensemble_discounts_the_flatterers_bonus():
    env = ENVIRONMENTS["biased-reward"]
    text = f"Answer from flatterer {quality_marker(0.4)} {length_marker(400)}"
    single = asyncio.run(env.reward().score([], text))
    ensemble = asyncio.run(env.reward_ensemble().score([], text))
    assert single > 0.5 and ensemble < single
