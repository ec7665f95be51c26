"""TOA: Monte Carlo Tree Search over "which model answers, or improves which answer, next".

Faithful to the reference implementation as described in toa_method.md section 1, with its faults fixed.

Tree. Levels alternate: the root (the question, depth 0) -> model nodes ("call model k", odd depths) -> response
nodes (one generated response each, even depths) -> model nodes -> ... Under the root: one fresh model node per
model. Under a response R: K refine arms ("model k improves R") followed by K fresh arms ("model k answers from
scratch"). The fresh arms start with a SNAPSHOT of the matching root-level model node's statistics (visits and
backed-up values) taken the first time selection passes through R, exactly as in the reference; they are not
kept in sync afterwards. (The reference creates the refine arms eagerly under every response; we create both
sets lazily on that first pass. Behaviour is identical: nothing can reach an arm before selection passes R.)

One play = selection -> one generation -> backup. Exactly `search.budget` plays, no early stop (unless
`search.adaptive` is on).
- Selection from the root: response nodes pass through. A model node at depth L is expanded (selection stops
  there) while fewer than `width` responses exist at depth L+1 in the whole tree (a per-depth counter), and
  after that until one of its responses beats its parent response's reward strictly. A root-level model node
  counts as fully explored once its layer is full; a model node with no responses is never fully explored.
  The width cap is soft: a layer can hold more than `width` responses (toa_method.md 1.11).
- Below a model node only the `topk_child` best responses (by reward; ties: the older one) are candidates.
- Score of a node: +inf while it has never been backed up (visits == 1, no values), else
  mean(values) + alpha * sqrt(2 * ln(t) / visits), t = play index + 1 (global play count), visits start at 1.
  Ties go to the earlier child: configured model order, refine arms before fresh arms. So the first K plays try
  each model once, in configured order.
- Expansion: a fresh arm sends the prompt (or, for translation, the translate template); a refine arm sends the
  refine template with (question, R's text). Reward = RM(original prompt, response), value = sigmoid(reward/tau).
- Backup: from the expanded model node to the root, visits += 1 and append the value; a node's value is the mean.

Fault fixes:
- No BFS per check (per-depth counter); "beats the parent" compares raw rewards, which orders exactly like the
  sigmoid values but does not saturate in floating point.
- A failed generation consumes its play (so exactly `budget` generations are attempted and recorded), adds no
  response node and no value; the model node's visits still += 1, so a node that only failed stops scoring +inf
  (its exploitation term is then 0, the lowest value). After `search.max_model_failures` failed generations of
  one model in one tree, all of that model's arms are excluded from selection in that tree. If every model is
  excluded, each remaining play is recorded as an error candidate without sending any request.
- A response whose reward failed (RewardError) is recorded with its text but cannot join the tree (it has no
  value): the play is spent like a failed generation, without counting against the model.

Parallel rollouts (`search.rollouts_per_tree` = R > 1, a deviation from the paper, which is sequential): up to R
plays are in flight in one tree. A selected model node is pending until its generation comes back; meanwhile it
and every node on its path to the root carry a virtual loss: one extra visit with a pessimistic value, the lowest
value ever backed up through the selected node (for a node never backed up: the lowest in the tree, 0 before
any; bench_search compared it with 0 and with the node's mean). So the next selections spread over other arms
instead of piling onto the same one. Pending generations also count toward their layer's `width`, and a
root-level arm whose first answer is in flight counts as tried. When the reward comes back the virtual loss is
removed and the real backup happens. With R = 1 nothing is ever pending at selection time, so the search is
exactly the sequential one. Adaptive budgets (`search.adaptive`) stop a tree early; without an explicit
`search.width` its width is then a third of `adaptive.min_generations` (toa_core/adaptive.py: toa_width).
The play loop itself is toa_core/strategies/rollouts.py.

Aggregate move (`search.aggregate.enabled`, off by default, a deviation from the paper): the tree gets a third kind
of arm, "model a aggregates the tree's top-k answers" (k = search.aggregate.k, by raw reward, ties: the older; a =
each model of search.aggregate.models). One aggregate arm per aggregator under the root, after the fresh arms, and
under every response after its refine and fresh arms, with a snapshot of the root-level aggregate arm's
statistics (exactly as fresh arms are warm-started). An aggregate arm can be selected only once the tree holds k
scored answers; then it follows the same rules as every model node (+inf until tried, UCB, width, beat-the-parent).
Its prompt is the aggregate template (as MoA's) over the k answers in an order shuffled per play with a seeded
RNG (no position bias); the answer is a response node under that arm, so the tree can refine an aggregate. One
aggregation = one play = one generation. Candidate: kind "aggregate", parent_id = the best of the k answers,
depth = its depth + 1; the response node's `sources` lists all k candidate ids (the full lineage). With the
move off, no aggregate arm exists and the trees are exactly the paper's.

Records. Candidates: kind fresh (parent_id None, depth 1) or refine (parent_id = the refined response,
depth = its depth + 1); `reward_norm` = the tree value sigmoid(reward/tau). The tree comes back as
PromptResult.tree: node dicts for the root, every response and every model node that was expanded at least once
(arms never chosen are left out), see `_Node.to_dict`. `render_tree` prints it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Literal

from toa_core.adaptive import PromptBudget, toa_width
from toa_core.interfaces import ChatModel
from toa_core.records import Candidate, Prompt, PromptResult
from toa_core.strategies.base import (PromptSession, SearchContext, Strategy, derive_seed, refine_depth,
                                      stable_sigmoid)
from toa_core.strategies.rollouts import Pending, run_plays

NodeType = Literal["root", "model", "response"]
Arm = Literal["fresh", "refine", "aggregate"]


@dataclass(eq=False)
class _Node:
    node_id: int
    type: NodeType
    depth: int
    parent: "_Node | None"
    model_index: int | None = None  # model nodes: which agent; response nodes: the agent that wrote it
    arm: Arm | None = None
    visits: int = 1
    value_sum: float = 0.0
    value_count: int = 0
    children: list["_Node"] = field(default_factory=list)
    candidate: Candidate | None = None  # response nodes
    arms_created: bool = False  # response nodes: refine + fresh arms exist
    expansions: int = 0  # model nodes: generations attempted here
    # Virtual loss of the plays in flight below this node (parallel rollouts only; kept apart from the real
    # statistics so that removing it restores them exactly).
    value_min: float | None = None  # the lowest value backed up through this node (the virtual loss charged)
    pending: int = 0  # model nodes: generations in flight here
    virtual_visits: int = 0
    virtual_value_sum: float = 0.0
    sources: list[Candidate] | None = None  # aggregate responses: the k answers it combined (best first)

    @property
    def value_mean(self) -> float | None:
        return self.value_sum / self.value_count if self.value_count else None

    def to_dict(self, model_names: list[str]) -> dict[str, Any]:
        extra = {"sources": [c.candidate_id for c in self.sources]} if self.sources is not None else {}
        return {
            "node_id": self.node_id,
            "parent_id": self.parent.node_id if self.parent is not None else None,
            "type": self.type,
            "model": model_names[self.model_index] if self.model_index is not None else None,
            "arm": self.arm,
            "depth": self.depth,
            "visits": self.visits,
            "value_mean": self.value_mean,
            "expansions": self.expansions if self.type == "model" else None,
            "candidate_id": self.candidate.candidate_id if self.candidate is not None else None,
            "reward": self.candidate.reward if self.candidate is not None else None,
            **extra,
        }


class _Tree:
    """One prompt's search tree and its selection / backup rules."""

    def __init__(self, n_models: int, width: int, topk_child: int, alpha: float,
                 aggregators: list[int] | None = None, aggregate_k: int = 3):
        self.n_models = n_models
        self.aggregators = aggregators or []  # model indices with an aggregate arm (empty: the paper's tree)
        self.aggregate_k = aggregate_k
        self.answers: list[_Node] = []  # every response node, in creation order (aggregation's pool)
        self.width = width
        self.topk_child = topk_child
        self.alpha = alpha
        self.nodes: list[_Node] = []
        self.responses_at_depth: dict[int, int] = {}
        self.pending_at_depth: dict[int, int] = {}  # generations in flight per response depth
        self.lowest_value: float | None = None  # the virtual loss's pessimistic value
        self.excluded: set[int] = set()
        self.root = self._new("root", 0, None)
        self.root_arms = [self._new("model", 1, self.root, model_index=k, arm="fresh") for k in range(n_models)]
        self.root_aggregate_arms = [self._new("model", 1, self.root, model_index=k, arm="aggregate")
                                    for k in self.aggregators]

    def _new(self, type_: NodeType, depth: int, parent: _Node | None, **fields: Any) -> _Node:
        node = _Node(node_id=len(self.nodes), type=type_, depth=depth, parent=parent, **fields)
        self.nodes.append(node)
        if parent is not None:
            parent.children.append(node)
        return node

    # --- selection ----------------------------------------------------------------------------------------

    def select(self, t: int) -> _Node | None:
        """The model node to expand at play count t, or None when every model is excluded."""
        node = self.root
        while True:
            if node.type == "response" and not node.arms_created:
                self._create_arms(node)
            if node.type == "model" and not self._fully_explored(node):
                return node
            if node.type == "model":
                # Only the topk best responses (by raw reward; stable sort keeps the older one on ties).
                children = sorted(node.children, key=lambda c: c.candidate.reward, reverse=True)[: self.topk_child]
            else:
                children = [c for c in node.children if c.model_index not in self.excluded
                            and (c.arm != "aggregate" or self.can_aggregate)]
            if not children:
                return None
            node = self._best(children, t)

    def _create_arms(self, response: _Node) -> None:
        for k in range(self.n_models):
            self._new("model", response.depth + 1, response, model_index=k, arm="refine")
        for k in range(self.n_models):
            source = self.root_arms[k]  # snapshot of the model's global statistics, as in the reference
            self._new("model", response.depth + 1, response, model_index=k, arm="fresh",
                      visits=source.visits, value_sum=source.value_sum, value_count=source.value_count)
        for source in self.root_aggregate_arms:  # the same snapshot rule for the aggregate move
            self._new("model", response.depth + 1, response, model_index=source.model_index, arm="aggregate",
                      visits=source.visits, value_sum=source.value_sum, value_count=source.value_count)
        response.arms_created = True

    @property
    def can_aggregate(self) -> bool:
        return len(self.answers) >= self.aggregate_k

    def top_answers(self) -> list[Candidate]:
        """The tree's k best answers by raw reward (stable sort: the older first on ties), best first."""
        ranked = sorted(self.answers, key=lambda n: n.candidate.reward, reverse=True)
        return [n.candidate for n in ranked[: self.aggregate_k]]

    def _fully_explored(self, node: _Node) -> bool:
        layer = node.depth + 1
        if self.responses_at_depth.get(layer, 0) + self.pending_at_depth.get(layer, 0) < self.width:
            return False
        if not node.children:
            # A root-level arm whose only answer is still in flight counts like one that has it (R > 1 only).
            return node.parent is self.root and node.pending > 0
        if node.parent is self.root:
            return True
        best_child = max(c.candidate.reward for c in node.children)
        return best_child > node.parent.candidate.reward

    def score(self, node: _Node, t: int) -> float:
        if node.virtual_visits:
            visits = node.visits + node.virtual_visits
            count = node.value_count + node.virtual_visits
            exploit = (node.value_sum + node.virtual_value_sum) / count
            return exploit + self.alpha * math.sqrt(2.0 * math.log(t) / visits)
        if node.visits == 1 and node.value_count == 0:
            return math.inf
        exploit = node.value_mean if node.value_count else 0.0  # a node that only ever failed
        return exploit + self.alpha * math.sqrt(2.0 * math.log(t) / node.visits)

    def _best(self, children: list[_Node], t: int) -> _Node:
        best, best_score = children[0], self.score(children[0], t)
        for child in children[1:]:
            child_score = self.score(child, t)
            if child_score > best_score:  # strict: ties keep the earlier child
                best, best_score = child, child_score
        return best

    # --- expansion and backup -----------------------------------------------------------------------------

    def add_response(self, model_node: _Node, candidate: Candidate,
                     sources: list[Candidate] | None = None) -> _Node:
        depth = model_node.depth + 1
        self.responses_at_depth[depth] = self.responses_at_depth.get(depth, 0) + 1
        node = self._new("response", depth, model_node, model_index=model_node.model_index, candidate=candidate,
                         sources=sources)
        self.answers.append(node)
        return node

    def backup(self, model_node: _Node, value: float) -> None:
        node: _Node | None = model_node
        while node is not None:
            node.visits += 1
            node.value_sum += value
            node.value_count += 1
            node.value_min = value if node.value_min is None else min(node.value_min, value)
            node = node.parent
        self.lowest_value = value if self.lowest_value is None else min(self.lowest_value, value)

    def add_pending(self, model_node: _Node, virtual_loss: bool) -> float:
        """Mark a play in flight below `model_node`; returns the virtual value charged (to remove it later)."""
        layer = model_node.depth + 1
        self.pending_at_depth[layer] = self.pending_at_depth.get(layer, 0) + 1
        model_node.pending += 1
        if not virtual_loss:
            return 0.0
        if model_node.value_min is not None:
            value = model_node.value_min
        else:
            value = self.lowest_value if self.lowest_value is not None else 0.0
        node: _Node | None = model_node
        while node is not None:
            node.virtual_visits += 1
            node.virtual_value_sum += value
            node = node.parent
        return value

    def remove_pending(self, model_node: _Node, virtual_value: float, virtual_loss: bool) -> None:
        self.pending_at_depth[model_node.depth + 1] -= 1
        model_node.pending -= 1
        if not virtual_loss:
            return
        node: _Node | None = model_node
        while node is not None:
            node.virtual_visits -= 1
            node.virtual_value_sum = node.virtual_value_sum - virtual_value if node.virtual_visits else 0.0
            node = node.parent

    def export(self, model_names: list[str]) -> list[dict[str, Any]]:
        """Root, responses and model nodes that were expanded at least once, in creation order."""
        return [n.to_dict(model_names) for n in self.nodes
                if n.type != "model" or n.expansions > 0]


class TOAStrategy(Strategy):
    """Tree Search-based Orchestrated Agents (see the module docstring for the exact rules)."""
    name = "toa"

    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        search = ctx.search
        tau = search.tau
        session = ctx.start(prompt, self.name, normalize=lambda reward: stable_sigmoid(reward / tau))
        names = ctx.agent_names
        aggregators = search.aggregate.aggregators(names) if search.aggregate.enabled else []
        tree = _Tree(len(ctx.agents), toa_width(search, len(ctx.agents)), search.topk_child, search.alpha,
                     aggregators=aggregators, aggregate_k=search.aggregate.k)
        failures = [0] * len(ctx.agents)
        budget = PromptBudget.for_search(search, len(ctx.agents), ctx.budget_pool)
        virtual_loss = search.rollouts_per_tree > 1

        def select(play: int) -> Pending | Candidate | None:
            node = tree.select(t=play + 1)
            if node is None:
                if budget.adaptive is not None:
                    return None  # the budget gives up and returns the rest to the pool
                return session.record_skipped(
                    "", "fresh", 1, index=play,
                    error=f"not attempted: every model failed {search.max_model_failures} times in this tree",
                )
            charged = tree.add_pending(node, virtual_loss)
            sources = tree.top_answers() if node.arm == "aggregate" else None
            return Pending((node, charged, sources), self._expand(session, ctx, node, play, sources))

        def take(token: tuple[_Node, float, list[Candidate] | None], candidate: Candidate) -> None:
            node, charged, sources = token
            tree.remove_pending(node, charged, virtual_loss)
            node.expansions += 1
            if candidate.error is None:
                tree.add_response(node, candidate, sources)
                tree.backup(node, candidate.reward_norm)
                return
            node.visits += 1  # spent a play: no longer "never tried", so it cannot hold +inf forever
            if candidate.text is None:  # the model failed (a reward failure is not the model's fault)
                failures[node.model_index] += 1
                if failures[node.model_index] >= search.max_model_failures:
                    tree.excluded.add(node.model_index)

        stats = await run_plays(budget, search.rollouts_per_tree, select, take)
        return session.result(tree=tree.export(names), search={
            **budget.summary(), **stats.as_dict(), "rollouts_per_tree": search.rollouts_per_tree})

    @staticmethod
    def _expand(session: PromptSession, ctx: SearchContext, node: _Node, play: int,
                sources: list[Candidate] | None = None) -> Awaitable[Candidate]:
        model = ctx.agents[node.model_index]
        if node.arm == "aggregate":
            return aggregate_answers(session, ctx, model, sources, play, "toa")
        if node.arm == "refine":
            parent = node.parent.candidate
            messages = ctx.templates.refine_messages(session.prompt, parent.text)
            return session.generate_and_score(model, messages, "refine", parent, refine_depth(parent), index=play)
        messages = ctx.templates.fresh_messages(session.prompt)
        return session.generate_and_score(model, messages, "fresh", None, 1, index=play)


def aggregate_answers(session: PromptSession, ctx: SearchContext, model: ChatModel, sources: list[Candidate],
                      play: int, strategy: str) -> Awaitable[Candidate]:
    """One aggregation of `sources` (best first) by `model`, the tree strategies' aggregate move: the aggregate
    template over the answers in a seeded shuffled order (no position bias), kind "aggregate", parent = the best
    source, depth = that source's depth + 1."""
    shuffled = list(sources)
    random.Random(derive_seed(ctx.seed, session.prompt.prompt_id, strategy, "aggregate", play)).shuffle(shuffled)
    messages = ctx.templates.aggregate_messages(session.prompt, [c.text for c in shuffled])
    return session.generate_and_score(model, messages, "aggregate", sources[0], refine_depth(sources[0]),
                                      index=play)


def render_tree(tree: list[dict[str, Any]]) -> str:
    """An indented text view of `PromptResult.tree`, one node per line, children in creation order."""
    children: dict[Any, list[dict[str, Any]]] = {}
    for node in tree:
        children.setdefault(node["parent_id"], []).append(node)
    lines: list[str] = []

    def describe(node: dict[str, Any]) -> str:
        mean = "-" if node["value_mean"] is None else f"{node['value_mean']:.4f}"
        if node["type"] == "root":
            return f"root visits={node['visits']} value={mean}"
        if node["type"] == "model":
            return (f"[{node['arm']}] {node['model']} visits={node['visits']} value={mean} "
                    f"expansions={node['expansions']}")
        reward = "-" if node["reward"] is None else f"{node['reward']:.4f}"
        return f"{node['candidate_id']} by {node['model']} reward={reward} visits={node['visits']}"

    def walk(node: dict[str, Any], indent: int) -> None:
        lines.append("  " * indent + describe(node))
        for child in children.get(node["node_id"], []):
            walk(child, indent + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return "\n".join(lines)
