"""Arena-Hard-style Bradley-Terry scores with bootstrap 95% intervals.

Each judged game is a battle (player_a, player_b, outcome) with outcome 1 (a wins), 0 (b wins) or 0.5 (tie) and a
weight (Arena-Hard counts a strong verdict "A>>B" as three games). Ratings are on the Elo scale
(P(a beats b) = 1 / (1 + 10^((r_b - r_a) / 400))) with the anchor player fixed at 1000; a player's *score* is its
predicted win rate (%) against the anchor. Intervals come from refitting on battles resampled with replacement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from evaluation.metrics.logistic import fit_logistic

ELO_SCALE = 400.0 / math.log(10.0)
ANCHOR_RATING = 1000.0


@dataclass(frozen=True)
class Battle:
    player_a: str
    player_b: str
    outcome: float  # 1: a wins, 0: b wins, 0.5: tie
    weight: float = 1.0


def _fit(battles: Sequence[Battle], players: list[str], anchor: str) -> dict[str, float]:
    free = [p for p in players if p != anchor]
    column = {p: i for i, p in enumerate(free)}
    X = np.zeros((len(battles), len(free)))
    for row, battle in enumerate(battles):
        if battle.player_a in column:
            X[row, column[battle.player_a]] += 1.0
        if battle.player_b in column:
            X[row, column[battle.player_b]] -= 1.0
    y = np.array([b.outcome for b in battles], dtype=float)
    w = np.array([b.weight for b in battles], dtype=float)
    coef = fit_logistic(X, y, weights=w, l2=1e-4)  # the tiny ridge keeps an undefeated player finite
    ratings = {anchor: ANCHOR_RATING}
    ratings.update({p: ANCHOR_RATING + ELO_SCALE * coef[column[p]] for p in free})
    return ratings


def _score(rating: float, anchor_rating: float = ANCHOR_RATING) -> float:
    return 100.0 / (1.0 + 10.0 ** ((anchor_rating - rating) / 400.0))


def bradley_terry(battles: Sequence[Battle], *, anchor: str, samples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """{player: {rating, score, ci95, n_battles}}; score = predicted win rate (%) against `anchor`."""
    battles = list(battles)
    players = sorted({b.player_a for b in battles} | {b.player_b for b in battles})
    if anchor not in players:
        raise ValueError(f"anchor '{anchor}' plays in none of the {len(battles)} battles")
    ratings = _fit(battles, players, anchor)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {p: [] for p in players}
    for _ in range(samples):
        resampled = [battles[i] for i in rng.integers(0, len(battles), size=len(battles))]
        present = sorted({b.player_a for b in resampled} | {b.player_b for b in resampled})
        if anchor not in present:
            continue
        for player, rating in _fit(resampled, present, anchor).items():
            boot[player].append(_score(rating))
    result = {}
    for player in players:
        values = boot[player]
        ci = (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if len(values) > 1 else None
        result[player] = {
            "rating": float(ratings[player]), "score": float(_score(ratings[player])), "ci95": list(ci) if ci else None,
            "n_battles": sum(1 for b in battles if player in (b.player_a, b.player_b)),
        }
    return result
