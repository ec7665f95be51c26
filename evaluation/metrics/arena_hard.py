"""Arena-Hard-Auto's score: verdict labels -> battles -> Bradley-Terry against one baseline, bootstrapped.

As arena-hard-auto computes it (gen_judgment.py, show_result.py, utils/math_utils.py, utils/add_markdown_info.py):
- a judgment's label is the last match of `[[X]]`, else of `[X]`, in the upper-cased reply, X made of A, B, <, >, =;
  the labels A>>B, A>B, A=B, B>A, B>>A (and their mirrored spellings A<<B, A<B, B=A, B<A, B<<A) are read,
  anything else is no verdict. A question counts only when both games have a verdict;
- each question is judged twice (baseline as A, then the model as A); a game gives the model 1, 0.5 or 0, and a
  strong verdict (>> or <<) counts as `strong_weight` (3) identical games;
- without style control the score of a player is its mean game outcome against the baseline, averaged over
  `rounds` (100) bootstrap resamples of its games; the interval is the 5%..95% quantiles (90%);
- with style control (v2.0's `-f length markdown`), one logistic Bradley-Terry model is fitted over every
  player's games: a +1 column for the player, the baseline fixed at 0, and four style columns per game
  (length: (model - baseline) / (model + baseline) tokens; header, list and bold densities per token:
  (model - baseline) / (model + baseline + 1)), each standardised over all games. The score is the median over
  the bootstrap rounds of sigmoid(player coefficient), its interval the 5%..95% quantiles;
- the baseline's score is 50 by construction.
Differences, documented in docs/evaluation.md: tokens are counted with a regex word/punctuation split (arena-hard
uses tiktoken's gpt-4o encoding, a download); the fit is our Newton solver rather than torch L-BFGS (same
likelihood, same optimum).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from evaluation.metrics.logistic import fit_logistic, sigmoid

VERDICT_PATTERNS = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))
# label -> (outcome for answer A, strong)
LABELS = {
    "A>>B": (1.0, True), "A>B": (1.0, False), "A=B": (0.5, False), "B>A": (0.0, False), "B>>A": (0.0, True),
    "A<<B": (0.0, True), "A<B": (0.0, False), "B=A": (0.5, False), "B<A": (1.0, False), "B<<A": (1.0, True),
}
STYLE_FEATURES = ("length", "headers", "lists", "bold")
_CODE_BLOCK = re.compile(r"```[^`]*```")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def parse_arena_verdict(reply: str | None) -> str | None:
    """The verdict label of a judge reply (arena-hard's regexes, last match wins), or None."""
    if not reply:
        return None
    text = reply.upper()
    for pattern in VERDICT_PATTERNS:
        matches = [m for m in pattern.findall(text) if m]
        if matches:
            label = matches[-1].strip()
            return label if label in LABELS else None
    return None


def style_of(text: str | None) -> dict[str, int]:
    """Token count and markdown element counts (headers, list items, bold spans) outside code blocks."""
    text = text or ""
    prose = _CODE_BLOCK.sub("", text)
    return {
        "tokens": len(_TOKEN.findall(text)),
        "headers": len(re.findall(r"^#{1,6}\s", prose, re.MULTILINE)),
        "lists": len(re.findall(r"^\s*\d+\.\s", prose, re.MULTILINE)) + len(re.findall(r"^\s*[-*+]\s", prose, re.MULTILINE)),
        "bold": len(re.findall(r"\*\*[^*\n]+\*\*", prose)) + len(re.findall(r"__[^_\n]+__", prose)),
    }


@dataclass
class Game:
    """One counted game of a player against the baseline (a strong verdict appears `strong_weight` times)."""
    player: str
    outcome: float  # 1 the player won, 0.5 tie, 0 lost
    style: dict[str, int] = field(default_factory=dict)
    baseline_style: dict[str, int] = field(default_factory=dict)


def games_from_judgment(player: str, judgment: Mapping, strong_weight: int = 3) -> list[Game]:
    """The counted games of one judged question: {"labels": [game 1 label (model is B), game 2 label (model
    is A)], "style": {"model": ..., "baseline": ...}}. Empty when a game has no verdict (arena-hard drops it)."""
    labels = judgment.get("labels") or [None, None]
    if any(label not in LABELS for label in labels):
        return []
    style = judgment.get("style") or {}
    games = []
    for position, label in zip(("B", "A"), labels):
        outcome_a, strong = LABELS[label]
        outcome = outcome_a if position == "A" else 1.0 - outcome_a
        games += [Game(player, outcome, style.get("model", {}), style.get("baseline", {}))] * (strong_weight if strong else 1)
    return games


def _style_matrix(games: Sequence[Game]) -> np.ndarray:
    model = np.array([[g.style.get("tokens", 0), g.style.get("headers", 0), g.style.get("lists", 0),
                       g.style.get("bold", 0)] for g in games], dtype=float)
    base = np.array([[g.baseline_style.get("tokens", 0), g.baseline_style.get("headers", 0),
                      g.baseline_style.get("lists", 0), g.baseline_style.get("bold", 0)] for g in games], dtype=float)
    features = np.zeros_like(model)
    total = model[:, 0] + base[:, 0]
    features[:, 0] = np.divide(model[:, 0] - base[:, 0], total, out=np.zeros_like(total), where=total > 0)
    model_density = model[:, 1:] / (model[:, :1] + 1)
    base_density = base[:, 1:] / (base[:, :1] + 1)
    features[:, 1:] = (model_density - base_density) / (model_density + base_density + 1)
    sd = features.std(axis=0, ddof=1) if len(games) > 1 else np.ones(4)
    sd = np.where(sd > 0, sd, 1.0)  # a constant feature carries no information: leave it at zero
    return (features - features.mean(axis=0)) / sd


@dataclass
class ArenaScore:
    """A player's score (%) against the baseline, its 90% interval, and how many games stood behind it."""
    score: float
    ci_low: float
    ci_high: float
    games: int
    questions: int = 0
    style_coefficients: dict[str, float] | None = None


def arena_scores(games_by_player: Mapping[str, Sequence[Game]], *, style_control: bool, rounds: int = 100,
                 seed: int = 0, level: float = 0.90) -> dict[str, ArenaScore]:
    """Scores of every player against the common baseline (which scores 50)."""
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2
    players = [p for p, games in games_by_player.items() if games]
    result: dict[str, ArenaScore] = {}
    if not style_control:
        for player in players:
            outcomes = np.array([g.outcome for g in games_by_player[player]], dtype=float)
            boot = outcomes[rng.integers(0, outcomes.size, size=(rounds, outcomes.size))].mean(axis=1) * 100
            result[player] = ArenaScore(float(boot.mean()), float(np.quantile(boot, tail)),
                                        float(np.quantile(boot, 1 - tail)), int(outcomes.size))
        return result
    games = [g for p in players for g in games_by_player[p]]
    index = {p: k for k, p in enumerate(players)}
    X = np.zeros((len(games), len(players) + len(STYLE_FEATURES)))
    X[np.arange(len(games)), [index[g.player] for g in games]] = 1.0
    X[:, len(players):] = _style_matrix(games)
    y = np.array([g.outcome for g in games], dtype=float)
    boot = np.empty((rounds, len(players)))
    style_boot = np.empty((rounds, len(STYLE_FEATURES)))
    for r in range(rounds):
        rows = rng.integers(0, len(games), size=len(games))
        coef = fit_logistic(X[rows], y[rows])
        boot[r] = sigmoid(coef[:len(players)]) * 100
        style_boot[r] = coef[len(players):]
    style = {name: float(np.median(style_boot[:, k])) for k, name in enumerate(STYLE_FEATURES)}
    for player, k in index.items():
        result[player] = ArenaScore(float(np.median(boot[:, k])), float(np.quantile(boot[:, k], tail)),
                                    float(np.quantile(boot[:, k], 1 - tail)), len(games_by_player[player]),
                                    style_coefficients=style)
    return result
