"""ab_mcts_core makes treequest's choices: the same sums, the same posterior parameters, the same draws and the same
(node, model) at every ask of a seeded ask/tell sequence, for Gaussian and Beta posteriors."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from treequest import ABMCTSA
from treequest.algos.ab_mcts_a.prob_state import (BetaPrior, GaussianPrior, NodeProbState, PriorConfig,
                                                  ProbabilisticDist)

from toa_core.strategies.ab_mcts_core import AbMctsA, Posterior, Prior, Thompson, numpy_sum


def treequest_prior(prior: Prior) -> PriorConfig:
    if prior.dist_type == "beta":
        return PriorConfig(dist_type="beta", prior=BetaPrior(a=prior.a, b=prior.b))
    return PriorConfig(dist_type="gaussian", prior=GaussianPrior(m=prior.m, kappa=prior.kappa, nu=prior.nu,
                                                                 tau_square=prior.tau_square))


PRIORS = [Prior("gaussian", m=0.5), Prior("gaussian"), Prior("beta")]


@pytest.fixture(autouse=True)
def _restore_numpy_global_state():
    saved = np.random.get_state()
    yield
    np.random.set_state(saved)


def test_numpy_sum_rounds_exactly_like_numpy():
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.choice([rng.randint(0, 20), rng.randint(0, 700)])
        values = [rng.uniform(-1, 1) * rng.choice([1e-6, 1.0, 1e6]) for _ in range(n)]
        assert numpy_sum(values) == float(np.add.reduce(np.asarray(values, dtype=np.float64)))
    assert numpy_sum([]) == 0.0


@pytest.mark.parametrize("prior", PRIORS, ids=lambda p: f"{p.dist_type}-m{p.m}")
def test_posterior_parameters_are_treequests_bit_for_bit(prior):
    rng = random.Random(1)
    ours, theirs = Posterior(prior), ProbabilisticDist(treequest_prior(prior))
    assert ours.params() == {k: float(v) for k, v in theirs.params.items()}
    for _ in range(300):
        score = rng.random() if rng.random() < 0.9 else rng.choice([0.0, 1.0, 0.5])
        ours.observe(score)
        theirs.tell_observation(score)
        assert ours.params() == {k: float(v) for k, v in theirs.params.items()}


@pytest.mark.parametrize("prior", PRIORS, ids=lambda p: f"{p.dist_type}-m{p.m}")
def test_thompson_picks_what_treequest_picks_and_leaves_the_generator_where_it_does(prior):
    rng = random.Random(2)
    for trial in range(150):
        n_options = rng.choice([1, 2, 3, 5, 8, 20, 40])
        ours = [Posterior(prior) for _ in range(n_options)]
        theirs = {i: ProbabilisticDist(treequest_prior(prior)) for i in range(n_options)}
        for i in range(n_options):
            for _ in range(rng.randint(0, 12)):
                score = rng.random()
                ours[i].observe(score)
                theirs[i].tell_observation(score)
        np.random.seed(trial)
        expected = NodeProbState(["x"], treequest_prior(prior)).thompson_sampling(theirs)
        expected_next = np.random.random_sample()
        generator = np.random.RandomState(trial)
        assert Thompson(generator, prior.dist_type).pick(ours) == expected
        assert generator.random_sample() == expected_next


def _score(path: str) -> float:
    """A fixed score in [0, 1] for a node, from its path of models."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:6], "big") / 2**48


def _drive_treequest(prior: Prior, n_models: int, seed: int, schedule: list[tuple[int, bool]]) -> list[tuple[int, int]]:
    names = [f"m{k}" for k in range(n_models)]
    algo = ABMCTSA(dist_type=prior.dist_type, prior_config=treequest_prior(prior))
    state = algo.init_tree()
    for name in names:
        _ = state.all_rewards_store[name]
    np.random.seed(seed)
    paths = {-1: ""}
    choices = []
    for asks, drop_first in schedule:
        _, trials = algo.ask_batch(state, asks, names)
        choices += [(t.node_to_expand, names.index(t.action)) for t in trials]
        for i, trial in enumerate(trials):
            if drop_first and i == 0:
                state.trial_store.running_trials.pop(trial.trial_id)
                continue
            path = f"{paths[trial.node_to_expand]}/{trial.action}"
            algo.tell(state, trial.trial_id, (path, _score(path)))
            paths[len(paths) - 1] = path
    return choices


def _drive_core(prior: Prior, n_models: int, seed: int, schedule: list[tuple[int, bool]]) -> list[tuple[int, int]]:
    tree = AbMctsA(n_models, prior, seed)
    choices = []
    for asks, drop_first in schedule:
        asked = [tree.ask() for _ in range(asks)]
        choices += [(node.expand_idx, model) for node, model in asked]
        for i, (node, model) in enumerate(asked):
            if drop_first and i == 0:
                continue
            path = f"{node.payload or ''}/m{model}"
            tree.tell(node, model, path, _score(path))
    return choices


@pytest.mark.parametrize("prior", PRIORS, ids=lambda p: f"{p.dist_type}-m{p.m}")
@pytest.mark.parametrize("n_models", [1, 3, 4])
def test_asks_make_treequests_choices_on_fixed_seeds(prior, n_models):
    for seed in range(3):
        rng = random.Random(seed)
        # Batches of 1-4 asks before their tells (parallel rollouts), sometimes one ask never told (a failure).
        schedule = [(rng.choice([1, 1, 2, 4]), rng.random() < 0.15) for _ in range(40)]
        expected = _drive_treequest(prior, n_models, seed, schedule)
        assert _drive_core(prior, n_models, seed, schedule) == expected
        assert len({node for node, _ in expected}) > 5  # the trees really branch and deepen


def test_scores_outside_zero_one_are_refused():
    tree = AbMctsA(2, Prior("gaussian", m=0.5), seed=0)
    node, model = tree.ask()
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        tree.tell(node, model, "x", 1.5)


def test_a_recycled_generator_draws_exactly_what_a_new_one_does():
    def asks(tree: AbMctsA) -> list[tuple[int, int]]:
        out = []
        for step in range(30):
            node, model = tree.ask()
            out.append((node.expand_idx, model))
            tree.tell(node, model, f"{node.payload or ''}/{model}", _score(f"{step}"))
        return out

    first = AbMctsA(3, Prior("gaussian", m=0.5), seed=11)
    asks(first)
    first.rng.standard_normal()  # leaves a cached Gaussian variate behind
    used = first.rng
    first.close()
    second = AbMctsA(3, Prior("gaussian", m=0.5), seed=12)
    assert second.rng is used
    recycled = asks(second)
    second.close()
    fresh = AbMctsA(3, Prior("gaussian", m=0.5), seed=12)
    fresh.rng = fresh.thompson.rng = np.random.RandomState(12)
    assert asks(fresh) == recycled
