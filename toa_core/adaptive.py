"""Per-prompt budgets: exactly N generations (the paper), or adaptive (`search.adaptive`).

`PromptBudget` answers one question for a tree search, "may I start another generation?", and records why the
prompt stopped. `BudgetPool` is shared by the prompts of one `run_search` call: prompts that stop early put their
unspent generations in, prompts still improving at their budget take them out, one at a time. So the run never
spends more than budget x prompts, and a prompt never more than `max_budget_factor` x budget.

Stop reasons (PromptResult.search["stop_reason"]):
- "budget":        spent search.budget (always, when adaptive is off) and was not improving, or adaptive is off;
- "plateau":       adaptive: the best reward improved by at most margin x spread over the last `patience`
                   generations, after at least `min_generations`; the unspent rest went to the pool;
- "pool_empty":    adaptive: still improving at its allowance, but no saved generation was left;
- "budget_cap":    adaptive: still improving, but it reached max_budget_factor x budget;
- "models_failed": adaptive: every model was excluded after repeated failures (the rest went to the pool).
Prompts are searched concurrently and streamed, so which prompt gets saved generations depends on the order in
which prompts finish: early prompts can only give, later ones can also take.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from toa_core.config import AdaptiveConfig, SearchConfig
from toa_core.records import Candidate


@dataclass
class BudgetPool:
    """Generations saved by prompts that stopped early, for the prompts of one run that are still improving."""
    available: int = 0
    deposited: int = 0
    withdrawn: int = 0

    def deposit(self, generations: int) -> None:
        if generations > 0:
            self.available += generations
            self.deposited += generations

    def withdraw(self) -> bool:
        """Take one generation; False when none is left."""
        if self.available <= 0:
            return False
        self.available -= 1
        self.withdrawn += 1
        return True


def resolved_adaptive(search: SearchConfig, n_models: int) -> tuple[int, int]:
    """(min_generations, patience) with their budget-relative defaults filled in: budget // 2 and budget // 4
    (at least models + 1 and models). TOA fills each tree layer with `width` responses before it descends, so an
    improvement can take a whole layer to show: its default patience is at least its width + 1."""
    adaptive = search.adaptive
    minimum = adaptive.min_generations
    if minimum is None:
        minimum = max(n_models + 1, search.budget // 2)
    patience = adaptive.patience
    if patience is None:
        patience = max(n_models, search.budget // 4)
        if search.strategy == "toa":
            patience = max(patience, toa_width(search, n_models) + 1)
    return minimum, patience


def toa_width(search: SearchConfig, n_models: int) -> int:
    """TOA's layer width. With a fixed budget: search.width, default floor(N/3) (the paper). With an adaptive
    budget and no explicit width: a third of min_generations, the part of the budget the prompt is sure to spend,
    so that TOA's layers (fresh answers first, then refinements) fit before the first moment it may stop;
    planning them for the whole budget would spend most of an early-stopped prompt on its first layer."""
    if search.width is not None or not search.adaptive.enabled:
        return search.effective_width(n_models)
    minimum = search.adaptive.min_generations
    if minimum is None:
        minimum = max(n_models + 1, search.budget // 2)
    return max(n_models, minimum // 3)


@dataclass
class PromptBudget:
    """One prompt's budget (see the module docstring). A strategy calls `may_start()` before every generation,
    `started += 1` when it starts one (via `start()`), and `finished(candidate)` when one comes back."""
    budget: int
    adaptive: AdaptiveConfig | None = None  # None: exactly `budget` generations
    pool: BudgetPool | None = None
    min_generations: int = 0
    patience: int = 1
    started: int = 0
    stop_reason: str | None = None
    allowance: int = field(init=False)
    _best: list[float] = field(default_factory=list)  # best reward after each finished generation
    _rewards: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.allowance = self.budget

    @classmethod
    def for_search(cls, search: SearchConfig, n_models: int, pool: BudgetPool | None) -> "PromptBudget":
        if not search.adaptive.enabled:
            return cls(search.budget)
        minimum, patience = resolved_adaptive(search, n_models)
        return cls(search.budget, search.adaptive, pool if pool is not None else BudgetPool(),
                   min_generations=minimum, patience=patience)

    @property
    def cap(self) -> int:
        if self.adaptive is None:
            return self.budget
        return max(self.budget, math.floor(self.adaptive.max_budget_factor * self.budget))

    @property
    def finished_count(self) -> int:
        return len(self._best)

    def may_start(self) -> bool:
        """True when one more generation may start now (an adaptive prompt at its allowance asks the pool)."""
        if self.stop_reason is not None:
            return False
        if self.started < self.allowance:
            return True
        if self.adaptive is None:
            self.stop_reason = "budget"
            return False
        if self.started > self.finished_count:
            return False  # generations still in flight may change the verdict: ask again when they are back
        if not self._improving(ignore_minimum=True):
            self._stop("budget")
            return False
        if self.allowance >= self.cap:
            self._stop("budget_cap")
            return False
        if not self.pool.withdraw():
            self._stop("pool_empty")
            return False
        self.allowance += 1
        return True

    def start(self) -> None:
        self.started += 1

    def finished(self, candidate: Candidate) -> None:
        """Account one generation that came back (failed ones too: they spent budget)."""
        best = self._best[-1] if self._best else -math.inf
        if candidate.reward is not None:
            self._rewards.append(candidate.reward)
            best = max(best, candidate.reward)
        self._best.append(best)
        if self.adaptive is not None and self.stop_reason is None and not self._improving(ignore_minimum=False):
            self._stop("plateau")

    def give_up(self, reason: str) -> None:
        """Stop now (e.g. every model failed); an adaptive prompt returns its unspent generations to the pool."""
        if self.stop_reason is None:
            self._stop(reason)

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        if self.pool is not None:
            self.pool.deposit(self.allowance - self.started)
            self.allowance = self.started

    def _improving(self, *, ignore_minimum: bool) -> bool:
        """False when the stop rule says the prompt has plateaued."""
        done = self.finished_count
        if (not ignore_minimum and done < self.min_generations) or done <= self.patience:
            return True
        then = self._best[done - 1 - self.patience]
        now = self._best[-1]
        if then == -math.inf:
            return now > then
        spread = statistics.pstdev(self._rewards) if len(self._rewards) > 1 else 0.0
        return now - then > self.adaptive.margin * spread

    def summary(self) -> dict[str, object]:
        return {"budget": self.budget, "allowance": self.allowance, "generations": self.started,
                "stop_reason": self.stop_reason or "budget"}
