"""Arena-Hard-Auto's score: verdict labels -> battles -> Bradley-Terry against one baseline per category, bootstrapped.

As arena-hard-auto computes it (lmarena/arena-hard-auto at commit 196f6b8: gen_judgment.py, show_result.py,
utils/math_utils.py, utils/add_markdown_info.py, utils/judge_utils.py):
- a judgment's label is the last match of `[[X]]`, else of `[X]`, in the upper-cased reply, X made of A, B, <, >, =;
  the labels A>>B, A>B, A=B, B>A, B>>A (and their mirrored spellings A<<B, A<B, B=A, B<A, B<<A) are read,
  anything else is no verdict. A question counts only when both games have a verdict (the official loader
  crashes on an unknown label such as A>>>B; we drop the question instead);
- each question is judged twice (baseline as A, then the model as A); a game gives the model 1, 0.5 or 0, and a
  strong verdict (>> or <<) counts as `strong_weight` (3) identical games;
- every category has its own baseline (CATEGORY_BASELINES) and is scored on its own: its games, its fit, its
  leaderboard. The headline is the hard_prompt category (show_result.py's default), v0.1's single category;
- without style control the score of a player is its mean game outcome against the baseline, averaged over
  `rounds` (100) bootstrap resamples of its games; the interval is the 5%..95% quantiles (90%);
- with style control (v2.0's `-f length markdown`), one logistic Bradley-Terry model is fitted per category over
  every player's games: a column per player, and four style columns per game (length: (model - baseline) /
  (model + baseline) tokens; header, list and bold densities per token: (model - baseline) / (model + baseline
  + 1)), each standardised over the category's games. The score is the median over the bootstrap rounds of the
  player's win probability against the baseline, its interval the 5%..95% quantiles;
- the baseline's score is 50 by construction.

Two solvers fit that model (`solver`):
- "exact" (default): our damped Newton fit (evaluation.metrics.logistic) run to the optimum, baseline fixed at 0;
- "official": the leaderboard's own numbers. show_result.py fits with torch L-BFGS, learning rate 0.1, at most 50
  iterations, no line search, float32, every coefficient (the baseline has its own, at -1 in every row) starting
  at 0.5, summed binary cross-entropy. 50 damped steps stop short of the optimum, so its scores sit a little
  closer to the starting point than the exact fit's (docs/evaluation.md has the measured differences).
Differences, documented in docs/evaluation.md: tokens are counted with a regex word/punctuation split (arena-hard
uses tiktoken's gpt-4o encoding, a download); a constant style column (or an answer pair with no tokens) is left
at zero where the official code stops on a NaN.
"""
from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from evaluation.metrics.logistic import fit_logistic, sigmoid

VERDICT_PATTERNS = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))
# label -> (outcome for answer A, strong)
LABELS = {
    "A>>B": (1.0, True), "A>B": (1.0, False), "A=B": (0.5, False), "B>A": (0.0, False), "B>>A": (0.0, True),
    "A<<B": (0.0, True), "A<B": (0.0, False), "B=A": (0.5, False), "B<A": (1.0, False), "B<<A": (1.0, True),
}
STYLE_FEATURES = ("length", "headers", "lists", "bold")
# The baseline model of each category, as arena-hard-auto's utils/judge_utils.py (JUDGE_SETTINGS) sets it.
CATEGORY_BASELINES = {
    "hard_prompt": "o3-mini-2025-01-31", "coding": "o3-mini-2025-01-31", "math": "o3-mini-2025-01-31",
    "creative_writing": "gemini-2.0-flash-001", "arena-hard-v0.1": "gpt-4-0314",
}
# The category a leaderboard headline reports (show_result.py scores hard_prompt unless told otherwise).
HEADLINE_CATEGORIES = ("hard_prompt", "arena-hard-v0.1")
Solver = Literal["exact", "official"]
SOLVERS = ("exact", "official")
# show_result.py -> utils/math_utils.py: fit_pairwise_model's defaults and BTModel's initial value.
OFFICIAL_LR = 0.1
OFFICIAL_MAX_ITER = 50
OFFICIAL_TOLERANCE = 1e-9
OFFICIAL_START = 0.5

# A fenced block; the group is its inner text, which is what add_markdown_info.py removes (see style_of).
_CODE_BLOCK = re.compile(r"```([^`]*)```")
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


def without_code(text: str) -> str:
    """The text markdown elements are counted in, as add_markdown_info.py makes it: the inner text of every
    fenced block is deleted wherever it occurs in the answer (not just inside the block), and the fences stay.

    So a block whose inner text also appears in the prose removes that prose too, and a block holding only a
    newline ("```\\n```") removes every newline, joining the answer into one line (one header or list item at
    most). We reproduce this so the style features are the leaderboard's."""
    for inner in _CODE_BLOCK.findall(text):
        text = text.replace(inner, "")
    return text


def style_of(text: str | None) -> dict[str, int]:
    """Token count of the answer and markdown element counts (headers, list items, bold spans) outside code."""
    text = text or ""
    prose = without_code(text)
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


def headline_category(categories: Sequence[str]) -> str:
    """The category a benchmark's headline score reports: hard_prompt (v2.0) or v0.1's only category when
    present, else the first in sorted order."""
    for category in HEADLINE_CATEGORIES:
        if category in categories:
            return category
    return sorted(categories)[0]


def _style_matrix(games: Sequence[Game], dtype=np.float64) -> np.ndarray:
    """The four style features of every game, standardised over the games (sample standard deviation)."""
    def counts(style: Mapping[str, int]) -> list[int]:
        return [style.get("tokens", 0), style.get("headers", 0), style.get("lists", 0), style.get("bold", 0)]

    model = np.array([counts(g.style) for g in games], dtype=dtype).reshape(-1, 4)
    base = np.array([counts(g.baseline_style) for g in games], dtype=dtype).reshape(-1, 4)
    features = np.zeros_like(model)
    total = model[:, 0] + base[:, 0]
    features[:, 0] = np.divide(model[:, 0] - base[:, 0], total, out=np.zeros_like(total), where=total > 0)
    model_density = model[:, 1:] / (model[:, :1] + 1)
    base_density = base[:, 1:] / (base[:, :1] + 1)
    features[:, 1:] = (model_density - base_density) / (model_density + base_density + 1)
    sd = features.std(axis=0, ddof=1) if len(games) > 1 else np.ones(4, dtype=dtype)
    sd = np.where(sd > 0, sd, 1).astype(dtype)  # a constant feature carries no information: leave it at zero
    return ((features - features.mean(axis=0)) / sd).astype(dtype)


def fit_official(features: np.ndarray, outcomes: np.ndarray, *, lr: float = OFFICIAL_LR,
                 max_iter: int = OFFICIAL_MAX_ITER) -> np.ndarray:
    """Logistic coefficients as arena-hard-auto's fit_pairwise_model finds them (float32 result).

    torch.optim.LBFGS with `lr`, `max_iter` iterations and gradient/change tolerances of 1e-9, no line search,
    minimising the summed binary cross-entropy of sigmoid(features @ coef) against the outcomes, every
    coefficient starting at 0.5; one call of `step`, as the official code makes."""
    import torch

    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(outcomes, dtype=np.float32))
    coef = torch.full((x.shape[1],), OFFICIAL_START, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([coef], lr=lr, max_iter=max_iter, tolerance_grad=OFFICIAL_TOLERANCE,
                                  tolerance_change=OFFICIAL_TOLERANCE)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ coef, y, reduction="sum")
        loss.backward()
        return loss

    with one_torch_thread():
        optimizer.step(closure)
    return coef.detach().numpy().copy()


@contextmanager
def one_torch_thread():
    """Run torch on one thread inside the block (then restore its setting).

    The official fit is a few thousand rows by a dozen columns: on a busy machine torch's thread pool costs up to
    30x more than the arithmetic. The bootstrap loop enters this once, so the pool is not resized per fit."""
    import torch

    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _bootstrap_fits(X, y, rng, rounds, solver, player_columns, baseline_column, boot, style_boot) -> None:
    """Fill `boot` (win probability x 100 per round and player) and `style_boot` (style coefficients)."""
    for r in range(rounds):
        rows = rng.integers(0, len(y), size=len(y))  # the same resamples whichever the solver
        if solver == "exact":
            coef = fit_logistic(X[rows], y[rows])
            boot[r] = sigmoid(coef[player_columns]) * 100
        else:
            coef = fit_official(X[rows], y[rows]).astype(np.float32)
            strength = np.exp(coef[player_columns])  # to_winrate_probabilities: float32, as the official code
            boot[r] = strength / (strength + np.exp(coef[baseline_column])) * 100
        style_boot[r] = coef[-len(STYLE_FEATURES):]


@dataclass
class ArenaScore:
    """A player's score (%) against the baseline, its 90% interval, and how many games stood behind it."""
    score: float
    ci_low: float
    ci_high: float
    games: int
    questions: int = 0
    style_coefficients: dict[str, float] | None = None
    solver: str | None = None  # with style control: which fit produced the score


def _official_design(games: Sequence[Game], players: Sequence[str], baseline: str) -> tuple[np.ndarray, list[str]]:
    """show_result.py's feature matrix (float32): one column per player and one for the baseline, in sorted
    name order, +1 for the game's player and -1 for the baseline, then the standardised style columns."""
    columns = sorted(set(players) | {baseline})
    if baseline in players:
        raise ValueError(f"a player is named like the baseline ({baseline!r}); rename the player")
    index = {name: k for k, name in enumerate(columns)}
    X = np.zeros((len(games), len(columns) + len(STYLE_FEATURES)), dtype=np.float32)
    X[np.arange(len(games)), [index[g.player] for g in games]] = 1.0
    X[:, index[baseline]] = -1.0
    X[:, len(columns):] = _style_matrix(games, dtype=np.float32)
    return X, columns


def arena_scores(games_by_player: Mapping[str, Sequence[Game]], *, style_control: bool, rounds: int = 100,
                 seed: int = 0, level: float = 0.90, solver: Solver = "exact",
                 baseline: str = "baseline") -> dict[str, ArenaScore]:
    """Scores of every player against the common baseline (which scores 50), for one category's games.

    `solver` chooses the style-controlled fit ("exact" optimum or the "official" L-BFGS settings); `baseline`
    names the baseline's column in the official design (its place in the sorted column order)."""
    if solver not in SOLVERS:
        raise ValueError(f"arena_hard solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
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
    y = np.array([g.outcome for g in games], dtype=float)
    boot = np.empty((rounds, len(players)))
    style_boot = np.empty((rounds, len(STYLE_FEATURES)))
    baseline_column = None  # the exact fit fixes the baseline at 0; the official one gives it a column
    if solver == "exact":
        index = {p: k for k, p in enumerate(players)}
        X = np.zeros((len(games), len(players) + len(STYLE_FEATURES)))
        X[np.arange(len(games)), [index[g.player] for g in games]] = 1.0
        X[:, len(players):] = _style_matrix(games)
    else:
        X, columns = _official_design(games, players, baseline)
        index = {p: columns.index(p) for p in players}
        baseline_column = columns.index(baseline)
    player_columns = [index[p] for p in players]
    with one_torch_thread() if solver == "official" else nullcontext():
        _bootstrap_fits(X, y, rng, rounds, solver, player_columns, baseline_column, boot, style_boot)
    style = {name: float(np.median(style_boot[:, k])) for k, name in enumerate(STYLE_FEATURES)}
    for k, player in enumerate(players):
        result[player] = ArenaScore(float(np.median(boot[:, k])), float(np.quantile(boot[:, k], tail)),
                                    float(np.quantile(boot[:, k], 1 - tail)), len(games_by_player[player]),
                                    style_coefficients=style, solver=solver)
    return result
