"""AB-MCTS-A's selection and backup, written for speed: the same choices as treequest 0.3.3's ABMCTSA.

What it reproduces: treequest's ABMCTSA with model_selection_strategy="multiarm_bandit_thompson" (the mode
toa_core/strategies/ab_mcts.py uses), Gaussian or Beta posteriors, one shared prior. From the root down, each
node draws from its GEN and CONT posteriors (in that order); CONT at a node with children goes into the child
whose posterior draw is highest; GEN (or a node without children) picks the action (in ab_mcts.py: a model) whose
draw from a posterior over all of this tree's scores of that action is highest (no draw with one action). A told
score updates the new child's posterior at its parent, the parent's GEN posterior, the action's posterior, and
for every ancestor A above the parent: the posterior of A's child on the path and A's CONT posterior.

Why it is cheaper than treequest, decision for decision (profiled in bench/README.md):
- posteriors are kept per node and per action between plays and updated by the scores they see, where treequest
  rebuilds every action's posterior from all of its scores on every GEN decision (deep copies of priors,
  one np.mean + np.var per score told);
- draws go straight to the tree's numpy RandomState (one uniform and one standard normal per Gaussian posterior,
  the inverse-gamma quantile from scipy.special's C function), where treequest calls scipy.stats'
  rv_continuous.rvs per draw (argument checks and broadcasting around the same C function), and no global
  generator state is swapped in and out (np.random.get_state + set_state per ask cost ~0.1 ms);
- a tree's RandomState is a recycled one re-seeded (6 us) rather than a new one (0.3 ms: a new MT19937 first
  seeds itself from the OS through SeedSequence), see `_generator`;
- nodes are found by reference, not by sorting the whole tree per lookup.
What costs remain: about 4 us per option drawn (2 us of them the inverse-gamma quantile itself), i.e. per node
on the path its GEN/CONT pair plus its children or the actions; and recomputing a changed Gaussian posterior from
its scores (O(scores), which keeps the parameters bit for bit treequest's).
Same choices: treequest draws from numpy's global RandomState; this module draws the same variates from the
tree's own RandomState in the same order (scipy's invgamma.rvs is 1 / gammainccinv(a, uniform) x scale; numpy's
normal(m, s) is m + s x standard_normal), and computes each Gaussian posterior from the same sums with numpy's
summation order (`numpy_sum`), so the posterior parameters are bit for bit treequest's. Checked against treequest
itself on seeded ask/tell sequences (tests/toa_core/test_ab_mcts_core.py) and against plays recorded from the
treequest-backed strategy (tests/toa_core/data/ab_mcts_plays.json).

Adding a move (say, "a model aggregates the top k answers"): in treequest's terms, one more action name; here one
more action index (AbMctsA(n_actions)), which the caller maps to what it generates, as ab_mcts.py maps an index
to a model. The GEN draw then covers it like any other action, and its scores update its own posterior.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
# The inverse-gamma quantile scipy.stats' invgamma.rvs uses (its ufunc, scipy.special.gammainccinv, runs the same
# C function with 1.5 us more of call overhead).
from scipy.special.cython_special import gammainccinv

DistType = Literal["gaussian", "beta"]

_FREE_GENERATORS: list[np.random.RandomState] = []  # RandomStates of finished trees, for reuse


def _generator(seed: int) -> np.random.RandomState:
    """np.random.RandomState(seed), recycled when one is free: seed() resets the whole state (the Mersenne
    Twister's and the cached Gaussian), so the stream is exactly a new one's."""
    try:
        generator = _FREE_GENERATORS.pop()  # atomic: safe when trees run in several threads
    except IndexError:
        return np.random.RandomState(seed)
    generator.seed(seed)
    return generator


@dataclass(frozen=True)
class Prior:
    """treequest's GaussianPrior (m, kappa, nu, tau_square) or BetaPrior (a, b), for every posterior of a tree."""
    dist_type: DistType = "gaussian"
    m: float = 0.0
    kappa: float = 1.0
    nu: float = 1.0
    tau_square: float = 0.1
    a: float = 0.5
    b: float = 0.5


def _sequential_sum(values: list[float], start: float) -> float:
    total = start
    for value in values:
        total += value
    return total


if sys.version_info < (3, 12):
    _sequential_sum = sum  # noqa: F811  (plain left-to-right double additions in C; 3.12 compensates, so no)


def _pairwise_sum(values: list[float], start: int, n: int) -> float:
    """numpy's pairwise summation of values[start:start + n] (numpy/_core/src/umath/loops_utils.h.src)."""
    if n < 8:
        return _sequential_sum(values[start:start + n], -0.0)
    if n <= 128:
        stop = start + n - n % 8
        # eight running sums over the whole blocks of eight, combined pairwise, then the rest one by one
        r = [_sequential_sum(values[start + j:stop:8], -0.0) for j in range(8)]
        total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        return _sequential_sum(values[stop:start + n], total)
    half = n // 2
    half -= half % 8
    return _pairwise_sum(values, start, half) + _pairwise_sum(values, start + half, n - half)


def numpy_sum(values: list[float]) -> float:
    """float(np.add.reduce(np.asarray(values, dtype=float64))) without numpy: the same rounding, bit for bit
    (for lists shorter than numpy's 8192-element buffer, far more than a tree's scores)."""
    return 0.0 + _pairwise_sum(values, 0, len(values))


class Posterior:
    """One of treequest's ProbabilisticDist: the posterior of the scores told to it, under `prior`.

    Gaussian: normal-inverse-chi-squared (Murphy, PML2 3.4.3.3), parameters recomputed lazily from the scores, the
    way treequest does (np.mean, np.var) so that they are the same floats. Beta: a += score, b += 1 - score.
    """
    __slots__ = ("prior", "scores", "a", "b", "_params")

    def __init__(self, prior: Prior):
        self.prior = prior
        self.scores: list[float] = []
        self.a, self.b = prior.a, prior.b
        self._params: tuple[float, float, float, float] | None = None

    def observe(self, score: float) -> None:
        if self.prior.dist_type == "beta":
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"a Beta posterior needs scores in [0, 1], got {score}")
            self.a += score
            self.b += 1 - score
        else:
            self.scores.append(score)
            self._params = None

    @property
    def gaussian_params(self) -> tuple[float, float, float, float]:
        """(m, kappa, nu, tau_square) after the scores told so far."""
        if self._params is None:
            p = self.prior
            n = len(self.scores)
            if n == 0:
                self._params = (p.m, p.kappa, p.nu, p.tau_square)
            else:
                mean = numpy_sum(self.scores) / n
                spread = numpy_sum([(x - mean) * (x - mean) for x in self.scores]) / n * n  # float(np.var(x)) * n
                kappa, nu = p.kappa + n, p.nu + n
                m = (p.kappa * p.m + n * mean) / kappa
                tau_square = (p.nu * p.tau_square + spread
                              + n * p.kappa * (p.m - mean) * (p.m - mean) / (p.kappa + n)) / nu
                self._params = (m, kappa, nu, tau_square)
        return self._params

    def params(self) -> dict[str, float]:
        """treequest's parameter dict (for the exported tree)."""
        if self.prior.dist_type == "beta":
            return {"a": self.a, "b": self.b}
        return dict(zip(("m", "kappa", "nu", "tau_square"), self.gaussian_params))


class Thompson:
    """Thompson sampling over posteriors with a numpy RandomState: the draws treequest would make from the global
    one, in the same order."""

    def __init__(self, rng: np.random.RandomState, dist_type: DistType):
        self.rng = rng
        self.gaussian = dist_type == "gaussian"

    def pick(self, options: list[Posterior] | tuple[Posterior, ...]) -> int:
        """The index of the option with the highest draw (the first on a tie, as treequest's strict >)."""
        if self.gaussian:
            return self._pick_gaussian(options)
        rng = self.rng
        best, best_value = 0, None
        for i, option in enumerate(options):
            value = rng.beta(option.a, option.b)
            if best_value is None or value > best_value:
                best, best_value = i, value
        return best

    def _pick_gaussian(self, options: list[Posterior] | tuple[Posterior, ...]) -> int:
        # Per option treequest draws sigma^2 ~ InvGamma(nu/2, scale=nu tau^2/2) by inverse CDF (one uniform: scipy's
        # invgamma.rvs is 1 / gammainccinv(a, u) x scale), then mu ~ N(m, sqrt(sigma^2/kappa)) (numpy's normal(m, s)
        # is m + s x one standard normal). The same variates in the same order, the same float operations; but a
        # draw whose normal variate is negative is at most its posterior mean m, so when a draw already computed is
        # above m it cannot win and its inverse-gamma quantile (half of the cost) is never computed.
        uniform, normal = self.rng.random_sample, self.rng.standard_normal
        variates = [(uniform(), normal()) for _ in options]  # uniform, then normal, option by option
        best, best_value = -1, -math.inf
        for upward in (True, False):
            for i, (u, z) in enumerate(variates):
                if (z >= 0.0) is not upward:
                    continue
                m, kappa, nu, tau_square = options[i]._params or options[i].gaussian_params
                if not upward and m < best_value:
                    continue  # its draw is <= m < the best so far
                value = m + math.sqrt((1.0 / gammainccinv(nu / 2, u)) * ((nu * tau_square) / 2) / kappa) * z
                if value != value:  # NaN (an infinite variance times 0): treequest's order decides, replay it
                    return self._first_maximum(options, variates)
                if value > best_value or (value == best_value and i < best) or best < 0:
                    best, best_value = i, value
        return best

    @staticmethod
    def _first_maximum(options: list[Posterior] | tuple[Posterior, ...], variates: list[tuple[float, float]]) -> int:
        """treequest's loop over the same variates: the first option whose draw is above every earlier one."""
        best, best_value = 0, None
        for i, (option, (u, z)) in enumerate(zip(options, variates)):
            m, kappa, nu, tau_square = option.gaussian_params
            value = m + math.sqrt((1.0 / gammainccinv(nu / 2, u)) * ((nu * tau_square) / 2) / kappa) * z
            if best_value is None or value > best_value:
                best, best_value = i, value
        return best

    def burn(self, options: list[Posterior] | tuple[Posterior, ...]) -> None:
        """Consume the variates `pick(options)` would, when its result does not matter."""
        if self.gaussian:
            uniform, normal = self.rng.random_sample, self.rng.standard_normal
            for _ in options:
                uniform()
                normal()
        else:
            for option in options:
                self.rng.beta(option.a, option.b)  # how many uniforms a beta variate takes depends on (a, b)


class TreeNode:
    """A node of the search tree. `payload` is the caller's object (a Candidate); the root has none.

    At a node with children: `gen` = posterior of the scores of its children (a new child here), `cont` = of the
    scores below its children (going into one), `child_posteriors[i]` = of the scores in child i's subtree."""
    __slots__ = ("parent", "index", "children", "payload", "score", "expand_idx", "action", "depth", "gen", "cont",
                 "child_posteriors", "visited", "prior")

    def __init__(self, parent: "TreeNode | None", payload: Any, score: float | None, expand_idx: int,
                 action: int | None, prior: Prior):
        self.parent = parent
        self.index = len(parent.children) if parent is not None else 0  # position among its parent's children
        self.children: list[TreeNode] = []
        self.payload = payload
        self.score = score
        self.expand_idx = expand_idx  # order of the tells: the root is -1, then 0, 1, 2, ... (treequest's)
        self.action = action
        self.prior = prior
        self.depth = 0 if parent is None else parent.depth + 1
        # GEN/CONT posteriors exist once the search has drawn at the node or it has children (most leaves never
        # need them: fewer objects per generation).
        self.gen: Posterior | None = None
        self.cont: Posterior | None = None
        self.child_posteriors: list[Posterior] = []
        self.visited = False  # an ask has drawn at this node (treequest's "has a thompson state"); callers may set it

    def is_root(self) -> bool:
        return self.parent is None

    def gen_cont(self) -> tuple[Posterior, Posterior]:
        """The GEN and CONT posteriors (created at first use)."""
        if self.gen is None:
            self.gen, self.cont = Posterior(self.prior), Posterior(self.prior)
        return self.gen, self.cont


class AbMctsA:
    """One tree of AB-MCTS-A over `n_actions` actions (0..n-1, in the order treequest was given its action names;
    ab_mcts.py has one per model: "this model writes or refines").

    `ask()` -> (node to expand, action); `tell(node, action, payload, score)` adds the result as a child.
    Asks are independent: one that is never told (a failed generation, a refused model) changes nothing but the
    random stream, as in treequest."""

    def __init__(self, n_actions: int, prior: Prior, seed: int):
        if n_actions < 1:
            raise ValueError("AB-MCTS needs at least one action")
        self.prior = prior
        self.n_actions = n_actions
        self.rng = _generator(seed)
        self.thompson = Thompson(self.rng, prior.dist_type)
        self.root = TreeNode(None, None, None, -1, None, prior)
        self.nodes: list[TreeNode] = [self.root]  # in expansion order
        self.action_posteriors = [Posterior(prior) for _ in range(n_actions)]
        self.action_scores: list[list[float]] = [[] for _ in range(n_actions)]

    def close(self) -> None:
        """The search is over: its generator may serve the next tree (no ask after this)."""
        if self.rng is not None:
            _FREE_GENERATORS.append(self.rng)
            self.rng = self.thompson.rng = None

    def ask(self) -> tuple[TreeNode, int]:
        """Where to expand next and with which action (treequest's _get_expand_node_and_action)."""
        node = self.root
        while True:
            node.visited = True
            # Every visited node draws GEN vs CONT, even one without children, which then generates anyway: there
            # only the variates are consumed.
            if not node.children:
                self.thompson.burn(node.gen_cont())
                return node, self._pick_action()
            if self.thompson.pick(node.gen_cont()) == 0:
                return node, self._pick_action()
            node = node.children[self.thompson.pick(node.child_posteriors)]

    def _pick_action(self) -> int:
        if self.n_actions == 1:
            return 0
        return self.thompson.pick(self.action_posteriors)

    def tell(self, parent: TreeNode, action: int, payload: Any, score: float) -> TreeNode:
        """Add `payload` (scored `score` in [0, 1]) as `action`'s new child of `parent` and back the score up."""
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            raise ValueError(f"AB-MCTS scores must be in [0, 1], got {score}")
        child = TreeNode(parent, payload, score, len(self.nodes) - 1, action, self.prior)
        parent.children.append(child)
        own = Posterior(self.prior)
        own.observe(score)
        parent.child_posteriors.append(own)
        self.nodes.append(child)
        self.action_scores[action].append(score)
        self.action_posteriors[action].observe(score)
        parent.gen_cont()[0].observe(score)
        below = parent
        while below.parent is not None:
            above = below.parent
            above.child_posteriors[below.index].observe(score)
            above.gen_cont()[1].observe(score)
            below = above
        return child

