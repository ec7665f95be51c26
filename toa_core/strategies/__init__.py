"""Search strategies: TOA, AB-MCTS and the baselines (five from the paper, plus Self-MoA), behind one interface (`Strategy.run(prompt, ctx)`)."""
from __future__ import annotations

from toa_core.strategies.ab_mcts import ABMCTSStrategy
from toa_core.strategies.base import PromptSession, SearchContext, Strategy, derive_seed
from toa_core.strategies.ensemble import EnsembleStrategy
from toa_core.strategies.moa import MoAStrategy, SelfMoAStrategy
from toa_core.strategies.prs import PRSStrategy
from toa_core.strategies.random_sampling import RandomSamplingStrategy
from toa_core.strategies.seq_refine import SeqRefineStrategy
from toa_core.strategies.toa import TOAStrategy, render_tree

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (TOAStrategy, ABMCTSStrategy, RandomSamplingStrategy, EnsembleStrategy, PRSStrategy, SeqRefineStrategy, MoAStrategy,
                SelfMoAStrategy)
}


def get_strategy(name: str) -> Strategy:
    """A new strategy instance by its config name (search.strategy)."""
    try:
        return STRATEGY_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown search strategy '{name}'; known: {', '.join(STRATEGY_CLASSES)}") from None


__all__ = [
    "STRATEGY_CLASSES", "PromptSession", "SearchContext", "Strategy", "derive_seed", "get_strategy", "render_tree",
    "TOAStrategy", "ABMCTSStrategy", "RandomSamplingStrategy", "EnsembleStrategy", "PRSStrategy", "SeqRefineStrategy", "MoAStrategy",
    "SelfMoAStrategy",
]
