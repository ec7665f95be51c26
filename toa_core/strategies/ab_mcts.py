"""AB-MCTS: Adaptive Branching MCTS (Sakana AI, arXiv 2503.04412), AB-MCTS-A as treequest 0.3.3 implements it.

The search is treequest's ABMCTSA ("multiarm_bandit_thompson" model selection), run by ab_mcts_core.AbMctsA: the
same choices as treequest on the same seed (tested against treequest itself), at a fraction of its CPU (see
ab_mcts_core's docstring and bench/README.md). We ask it which node to expand with which action, run that
generation, and tell it the score. One action per agent: "this model writes or refines". Expanding the root with
model k is a fresh answer from k (widen); expanding a response R with model k is k's refinement of R (deepen).
At every node the search decides by Thompson sampling whether to generate a new child there (GEN) or to continue
into an existing child (CONT), and, for GEN, which model acts (a Thompson draw over every model's scores in this
tree: treequest's "multiarm_bandit_thompson" model selection).

Scores in [0, 1]: treequest's posteriors expect scores in [0, 1] and raw rewards have any scale (ArmoRM 0.05..0.2,
Skywork logits, Kiwi 0..1), and a prompt's rewards sit in a narrow band that differs from prompt to prompt. So
each prompt starts with a warm-up of one fresh answer per model (in configured order), and every reward r is then
told as score = sigmoid((r - c) / s), with c the mean of the warm-up rewards and s = 2 x their standard deviation
(at least search.tau / 10, for a warm-up whose rewards are all equal). The mapping is frozen after the warm-up, so
every score in a tree is on the same scale: 0.5 = a typical first draft, 0.73 = two warm-up spreads better,
0.88 = four. The warm-up results are told once the mapping is known. `reward_norm` of a candidate is its score.
The posteriors' prior mean is 0.5 to match (treequest's default Gaussian prior is centred on 0).

Exploration floor (`search.ab_mcts.exploration_floor`): a model that has written fewer than floor x (plays so far)
of this tree's generations writes the next one, as a fresh answer, whatever the posteriors say; this keeps weak
models contributing (the rejected side of DPO pairs needs them, and a high-variance model gets the draws it needs
to show its rare best answer). Forced generations go into the tree like the others and update its statistics.

Aggregate move (`search.aggregate.enabled`, off by default): one more action per aggregator model a (actions
K, K+1, ... after the K models' own), "a aggregates the tree's top-k answers (by raw reward) with the aggregate
template" (toa.aggregate_answers: seeded shuffled order, kind "aggregate", parent_id = the best of the k, depth =
its depth + 1). The search treats it as any other action (its Thompson draw over all actions' scores decides when
it pays); the answer becomes a child of the node the search chose. It is allowed once the tree holds k scored
answers: before that, an aggregate draw is asked again like an excluded model's. Exported nodes of aggregates
carry `sources` (the k candidate ids).

Failures: a failed generation consumes its play and is told nothing (a failure is not a low score); after
`search.max_model_failures` failures a model is excluded from the tree: when treequest picks it, we ask again, and
after a few refusals the same node is expanded by the non-excluded model with the best mean score. A response
whose reward failed is recorded and left out of the tree.

Parallel rollouts (`search.rollouts_per_tree` = R): R asks in flight (treequest's batch ask, one at a time as
slots free up). Thompson sampling is randomised, so concurrent asks spread over nodes and models by themselves;
AB-MCTS-A has no visit counts to charge a virtual loss to, so none is added (TOA's deterministic UCB needs it).

Randomness: every tree draws from its own numpy RandomState, seeded from search.seed and the prompt id (the
stream the treequest-backed version swapped into numpy's global generator), so a run is reproducible, trees
searched concurrently do not disturb each other and numpy's global generator is never touched.

Tree export (PromptResult.tree): the root and one node per response with its treequest statistics: `decision`
(warmup, floor, thompson or redirected), `arm` (fresh = widen at the root, refine = deepen), `score`, `visits` (scores
observed in its subtree), `posterior` (its Gaussian/Beta parameters as seen from its parent) and, for a node the
search has visited, its GEN/CONT posteriors; the root also holds each model's score count and mean. Node ids are
the expansion order + 1 (the root is 0), as in treequest.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toa_core.adaptive import PromptBudget
from toa_core.records import Candidate, Prompt, PromptResult
from toa_core.strategies.base import PromptSession, SearchContext, Strategy, derive_seed, refine_depth, stable_sigmoid
from toa_core.strategies.rollouts import Pending, run_plays
from toa_core.strategies.toa import aggregate_answers

if TYPE_CHECKING:
    from toa_core.strategies.ab_mcts_core import Posterior, TreeNode

_REASKS = 4  # asks before an excluded model's turn is redirected


@dataclass
class _Play:
    parent: "TreeNode"
    model_index: int  # the model that writes
    decision: str
    action: int  # the search's action told with the result: k < K "model k writes or refines", else an aggregation
    sources: list[Candidate] | None = None  # the aggregate move: the k answers to combine (best first)


class _ABTree:
    """One prompt's AB-MCTS-A tree (ab_mcts_core), with our warm-up, floor, exclusions and score mapping."""

    def __init__(self, names: list[str], floors: list[float], dist_type: str, seed: int, scale_floor: float,
                 aggregators: list[int] | None = None, aggregate_k: int = 3):
        # imported here: scipy.special is only needed by this strategy (ab_mcts_core's docstring says why)
        from toa_core.strategies.ab_mcts_core import AbMctsA, Prior

        self.names = names
        self.floors = floors
        # Priors centred on 0.5, which our mapping makes "a typical first draft": an option nobody has tried yet
        # is assumed to be as good as a first draft. (treequest's Gaussian default centres on 0, which suits
        # scores like "share of tests passed" but, on our scale, makes every untried CONT look bad, so the tree
        # mostly widens; Jeffreys' Beta prior is centred on 0.5 already.)
        prior = Prior("gaussian", m=0.5) if dist_type == "gaussian" else Prior("beta")
        # Action k < K = model k writes or refines; action K + j = aggregator j (model aggregators[j]) aggregates.
        self.aggregators = list(aggregators or [])
        self.aggregate_k = aggregate_k
        self.answers: list[Candidate] = []  # scored answers, in the order they came back (aggregation's pool)
        self.sources: dict[str, list[str]] = {}  # candidate_id of an aggregate -> its sources' ids
        self.search = AbMctsA(len(names) + len(self.aggregators), prior, seed)
        self.scale_floor = scale_floor
        self.excluded: set[int] = set()
        self.written = [0] * len(names)  # plays issued per model (pending ones included)
        self.warmup_issued = 0
        self.warmup_rewards: list[float] = []
        self.warmup_pending = 0
        self.center: float | None = None
        self.scale: float | None = None
        self.held: list[tuple[_Play, Candidate]] = []  # scored before the mapping was known
        self.decisions: dict[str, str] = {}  # candidate_id -> decision

    # --- choosing the next play ---------------------------------------------------------------------------

    @property
    def mapped(self) -> bool:
        return self.center is not None

    def next_play(self, play: int) -> _Play | None:
        live = [k for k in range(len(self.names)) if k not in self.excluded]
        if not live:
            return None
        root = self.search.root
        if self.warmup_issued < len(self.names) or (not self.mapped and not self.warmup_pending
                                                   and not self.warmup_rewards):
            # Warm-up: one fresh answer per model in configured order (more, round robin, if all failed).
            k = self.warmup_issued % len(self.names)
            if k in self.excluded:
                k = live[self.warmup_issued % len(live)]
            self.warmup_issued += 1
            self.warmup_pending += 1
            return self._force(root, k, "warmup")
        for k in live:
            if self.floors[k] > 0 and self.written[k] < self.floors[k] * (play + 1):
                return self._force(root, k, "floor")
        for _ in range(_REASKS):
            node, action = self.search.ask()  # an ask that is never told changes nothing but the random stream
            aggregate = action >= len(self.names)
            k = self.aggregators[action - len(self.names)] if aggregate else action
            if k not in self.excluded and (not aggregate or len(self.answers) >= self.aggregate_k):
                self.written[k] += 1
                return _Play(node, k, "thompson", action=action,
                             sources=self.top_answers() if aggregate else None)
        best = max(live, key=lambda i: (self._mean_score(i), -i))
        return self._force(node, best, "redirected")

    def _force(self, node: "TreeNode", k: int, decision: str) -> _Play:
        """A play the search did not choose (warm-up, floor, redirect)."""
        node.visited = True
        self.written[k] += 1
        return _Play(node, k, decision, action=k)

    def top_answers(self) -> list[Candidate]:
        """The tree's k best scored answers by raw reward (the older first on ties), best first."""
        return sorted(self.answers, key=lambda c: c.reward, reverse=True)[: self.aggregate_k]

    def _mean_score(self, k: int) -> float:
        scores = self.search.action_scores[k]
        return statistics.fmean(scores) if scores else 0.5

    # --- results ------------------------------------------------------------------------------------------

    def take(self, play: _Play, candidate: Candidate) -> None:
        scored = candidate.reward is not None and candidate.text is not None
        if play.decision == "warmup":
            self.warmup_pending -= 1
            if scored:
                self.warmup_rewards.append(candidate.reward)
        if scored:  # a failure is never told
            self.decisions[candidate.candidate_id] = play.decision
            self.answers.append(candidate)
            if play.sources is not None:
                self.sources[candidate.candidate_id] = [c.candidate_id for c in play.sources]
            if self.mapped:
                self._tell(play, candidate)
            else:
                self.held.append((play, candidate))
        if (not self.mapped and self.warmup_issued >= len(self.names) and not self.warmup_pending
                and self.warmup_rewards):
            self._freeze_mapping(self.warmup_rewards)

    def finish(self) -> None:
        """At the end of the search: a tree smaller than its warm-up still gets its scores (from what it has)."""
        if not self.mapped and self.held:
            self._freeze_mapping(self.warmup_rewards or [c.reward for _, c in self.held])

    def _freeze_mapping(self, reference: list[float]) -> None:
        self.center = statistics.fmean(reference)
        spread = statistics.pstdev(reference) if len(reference) > 1 else 0.0
        self.scale = max(2.0 * spread, self.scale_floor)
        held, self.held = self.held, []
        for play, candidate in held:  # in the order they came back
            self._tell(play, candidate)

    def score(self, reward: float) -> float:
        return stable_sigmoid((reward - self.center) / self.scale)

    def _tell(self, play: _Play, candidate: Candidate) -> None:
        candidate.reward_norm = self.score(candidate.reward)
        self.search.tell(play.parent, play.action, candidate, candidate.reward_norm)

    # --- export -------------------------------------------------------------------------------------------

    def export(self) -> list[dict[str, Any]]:
        search = self.search
        root = search.root
        models = {name: {"n": len(scores), "mean": statistics.fmean(scores) if scores else None}
                  for name, scores in zip(self.names + [f"aggregate:{self.names[k]}" for k in self.aggregators],
                                          search.action_scores)}
        all_scores = [s for scores in search.action_scores for s in scores]
        nodes: list[dict[str, Any]] = [{
            "node_id": 0, "parent_id": None, "type": "root", "model": None, "arm": None, "depth": 0,
            "visits": 1 + len(all_scores), "value_mean": statistics.fmean(all_scores) if all_scores else None,
            "expansions": len(root.children), "candidate_id": None, "reward": None,
            "models": models, "score_center": self.center, "score_scale": self.scale,
            **(_gen_cont(root) if root.visited else {}),
        }]
        subtree: dict[int, list[float]] = {}  # expand_idx -> scores in its subtree (itself included)
        for node in reversed(search.nodes):  # children are expanded after their parent: post-order by expand_idx
            if node.is_root():
                continue
            scores = subtree.setdefault(node.expand_idx, [])
            scores.append(node.score)
            if not node.parent.is_root():
                subtree.setdefault(node.parent.expand_idx, []).extend(scores)
        for node in search.nodes[1:]:
            candidate: Candidate = node.payload
            scores = subtree[node.expand_idx]
            nodes.append({
                "node_id": node.expand_idx + 1, "parent_id": node.parent.expand_idx + 1, "type": "response",
                "model": candidate.model, "arm": candidate.kind, "depth": node.depth, "visits": len(scores),
                "value_mean": statistics.fmean(scores), "expansions": len(node.children),
                "candidate_id": candidate.candidate_id, "reward": candidate.reward, "score": node.score,
                "decision": self.decisions.get(candidate.candidate_id),
                **({"sources": self.sources[candidate.candidate_id]}
                   if candidate.candidate_id in self.sources else {}),
                "posterior": _floats(node.parent.child_posteriors[node.index]),
                **(_gen_cont(node) if node.visited else {}),
            })
        return nodes


def _floats(posterior: "Posterior") -> dict[str, float]:
    return {key: float(value) for key, value in posterior.params().items()}


def _gen_cont(node: "TreeNode") -> dict[str, Any]:
    """The GEN (widen here) and CONT (go into a child) posteriors of a node the search has visited."""
    gen, cont = node.gen_cont()
    return {"gen_posterior": _floats(gen), "cont_posterior": _floats(cont)}


class ABMCTSStrategy(Strategy):
    """AB-MCTS-A as treequest implements it (see the module docstring)."""
    name = "ab_mcts"

    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        search = ctx.search
        names = ctx.agent_names
        floors = search.ab_mcts.floor_for(names)
        session = ctx.start(prompt, self.name)  # reward_norm is set to the tree score once the mapping is known
        aggregators = search.aggregate.aggregators(names) if search.aggregate.enabled else []
        tree = _ABTree(names, floors, search.ab_mcts.dist_type, derive_seed(ctx.seed, prompt.prompt_id, self.name),
                       scale_floor=search.tau / 10, aggregators=aggregators, aggregate_k=search.aggregate.k)
        failures = [0] * len(names)
        budget = PromptBudget.for_search(search, len(names), ctx.budget_pool)

        def select(play: int) -> Pending | Candidate | None:
            chosen = tree.next_play(play)
            if chosen is None:
                if budget.adaptive is not None:
                    return None
                return session.record_skipped(
                    "", "fresh", 1, index=play,
                    error=f"not attempted: every model failed {search.max_model_failures} times in this tree")
            return Pending(chosen, self._expand(session, ctx, chosen, play))

        def take(chosen: _Play, candidate: Candidate) -> None:
            if candidate.text is None:
                failures[chosen.model_index] += 1
                if failures[chosen.model_index] >= search.max_model_failures:
                    tree.excluded.add(chosen.model_index)
            tree.take(chosen, candidate)

        try:
            stats = await run_plays(budget, search.rollouts_per_tree, select, take)
        finally:
            tree.search.close()
        tree.finish()
        return session.result(tree=tree.export(), search={
            **budget.summary(), **stats.as_dict(), "rollouts_per_tree": search.rollouts_per_tree})

    @staticmethod
    def _expand(session: PromptSession, ctx: SearchContext, chosen: _Play, play: int):
        model = ctx.agents[chosen.model_index]
        if chosen.sources is not None:
            return aggregate_answers(session, ctx, model, chosen.sources, play, "ab_mcts")
        parent: Candidate | None = chosen.parent.payload
        if parent is None:
            messages = ctx.templates.fresh_messages(session.prompt)
            return session.generate_and_score(model, messages, "fresh", None, 1, index=play)
        messages = ctx.templates.refine_messages(session.prompt, parent.text)
        return session.generate_and_score(model, messages, "refine", parent, refine_depth(parent), index=play)

