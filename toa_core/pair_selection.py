"""Which candidate is the rejected side of a prompt's DPO pair (the chosen one is the prompt's SFT target).

Input: the usable candidates of every prompt, sorted by reward (best first) and grouped by prompt, and where each
prompt's chosen candidate (its SFT target: the best one that may be a target, toa_core.screening) sits
(toa_core.ranking does all that); output: the chosen and rejected positions of each prompt that gets a pair.
The rejected always ranks below the chosen.

1. The target rank k of the prompt, with n usable candidates:
   - `dpo_rejected_rank` k (the paper: 30, the 30th best of 160); a prompt with n < k, or whose rank k is not
     below its chosen, pairs with its worst (`short_policy: worst`) or gets no pair (`skip`);
   - or `dpo_rejected_quantile` q, the rejected's quantile counted from the bottom: k = round((1 - q) x n),
     at least 2 and at most n. The paper's 30th of 160 is q = 0.8125 (= 1 - 30/160; 0.81 rounds to the same).
     Trees that end at different sizes (adaptive budgets) then give comparable pairs.
   Setting both keys is an error (RankingConfig says so).
2. Eligibility (the spread rule is on by default with m = 4; configs/paper/ turn it off for the paper's rule):
   - `rejected_lineage: other`: the rejected must not be an ancestor or a descendant of the chosen (parent_id
     links among the prompt's usable candidates). A refinement of the chosen, or the draft the chosen was refined
     from, differs from it mostly by reward noise; a pair across lineages compares two different answers.
   - `rejected_min_spread` m > 0: the rejected's reward must be at least min(m x sd, chosen - worst) below the
     chosen's, where sd is the standard deviation of the rewards of the chosen and every candidate below it (all
     of the prompt's when the chosen is the top one) and worst the lowest of them: m standard deviations, or as
     far down as the prompt's answers go. So the pair is not decided by the reward model's noise or by a style
     bias the size of the tree's spread, and the worst candidate always qualifies (no prompt loses its pair to
     this rule). With m <= 2 the cap never binds (the worst is always at least 2 sd below the top of a set),
     so m = 2 places the rejected exactly as the uncapped rule did; the default is m = 4 (toa_core.ranking).
3. The rejected is the first eligible candidate at rank k or below (same or lower reward). If there is none, the
   lowest-ranked eligible candidate above rank k is taken instead (closest to the target); if no candidate is
   eligible at all, the prompt gets no pair (counted in `dpo_skipped_ineligible`).

Everything is numpy over all rows at once (one pass per level of the deepest lineage), no Python loop per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PairChoice:
    """Positions (in the sorted key table) of each pair's chosen and rejected candidates, and their ranks."""
    chosen: np.ndarray
    rejected: np.ndarray
    chosen_rank: np.ndarray  # 1-based (1 unless better candidates could not be the target)
    rejected_rank: np.ndarray  # 1-based
    at_target: np.ndarray  # bool: the rejected is at the configured rank (the paper's "at rank" case)
    moved: np.ndarray  # bool: the eligibility rules moved the rejected off its target rank
    skipped_single: int = 0
    skipped_short: int = 0
    skipped_no_lower: int = 0
    skipped_ineligible: int = 0


def target_ranks(sizes: np.ndarray, rank: int | None, quantile: float | None) -> np.ndarray:
    """The configured 1-based rank of each prompt's rejected candidate (before the short and target rules)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if quantile is not None:
        k = np.floor((1.0 - quantile) * sizes + 0.5).astype(np.int64)
        return np.clip(k, 2, np.maximum(sizes, 2))
    return np.full(len(sizes), rank, dtype=np.int64)


def lineage_mask(parent_pos: np.ndarray, prompt_of_row: np.ndarray, chosen_of_prompt: np.ndarray) -> np.ndarray:
    """True for each row that is the chosen candidate of its prompt, one of its ancestors, or one of its
    descendants. `parent_pos` holds each row's parent position (-1: none among the usable rows)."""
    n = len(parent_pos)
    rows = np.arange(n)
    chosen = chosen_of_prompt[prompt_of_row]
    in_lineage = rows == chosen
    # Descendants: walk every row's ancestor chain and look for its prompt's chosen candidate.
    current = parent_pos.copy()
    active = np.flatnonzero(current >= 0)
    for _ in range(n):  # a chain is at most n long; the bound only guards against corrupt (cyclic) parent ids
        if not active.size:
            break
        hit = current[active] == chosen[active]
        in_lineage[active[hit]] = True
        active = active[~hit]
        current[active] = parent_pos[current[active]]
        active = active[current[active] >= 0]
    # Ancestors: walk up from each chosen candidate.
    current = parent_pos[chosen_of_prompt]
    for _ in range(n):
        live = current >= 0
        if not live.any():
            break
        in_lineage[current[live]] = True
        current = np.where(live, parent_pos[np.maximum(current, 0)], -1)
    return in_lineage


def choose_pairs(starts: np.ndarray, sizes: np.ndarray, rewards: np.ndarray, *, rank: int | None,
                 quantile: float | None, short_policy: str, offsets: np.ndarray | None = None,
                 min_spread: float = 0.0, parent_pos: np.ndarray | None = None) -> PairChoice:
    """Pick each prompt's rejected candidate (see the module docstring). Rows are sorted by prompt, then reward
    descending. `offsets`: where each prompt's chosen candidate (its SFT target) sits in its group, -1 when it has
    none (default: the top one); the rejected always ranks below it. `parent_pos` is needed for the lineage rule
    (None: lineage is not checked)."""
    n_rows, n_prompts = len(rewards), len(starts)
    offsets = np.zeros(n_prompts, dtype=np.int64) if offsets is None else np.asarray(offsets, dtype=np.int64)
    has = offsets >= 0
    k = target_ranks(sizes, rank, quantile)
    at_rank = has & (sizes >= k) & (k - 1 > offsets)
    worst = has & ~at_rank & (sizes - 1 > offsets) & (short_policy == "worst")
    skipped_single = int(np.sum(has & (sizes < 2)))
    skipped_short = int(np.sum(has & (sizes >= 2) & (sizes < k))) if short_policy == "skip" else 0
    skipped_no_lower = int(np.sum(has & (sizes >= 2) & (sizes - 1 <= offsets)))
    targets = np.where(at_rank, k, np.where(worst, sizes, 0))  # 0 = no pair
    chosen_of_prompt = starts + np.maximum(offsets, 0)
    counts = dict(skipped_single=skipped_single, skipped_short=skipped_short, skipped_no_lower=skipped_no_lower)
    if parent_pos is None and min_spread <= 0:
        paired = targets > 0
        return PairChoice(chosen_of_prompt[paired], starts[paired] + targets[paired] - 1, offsets[paired] + 1,
                          targets[paired], at_target=at_rank[paired], moved=np.zeros(int(paired.sum()), dtype=bool),
                          **counts)

    prompt_of_row = np.repeat(np.arange(n_prompts), sizes)
    position = np.arange(n_rows) - starts[prompt_of_row]
    eligible = position > offsets[prompt_of_row]  # below the chosen
    if parent_pos is not None:
        eligible &= ~lineage_mask(parent_pos, prompt_of_row, chosen_of_prompt)
    if min_spread > 0 and n_rows:
        # The spread of the rewards the pair is drawn from: the chosen and everything ranked below it (with the
        # chosen on top, as usual, all of the prompt's). Then the worst is always at least 2 std below the chosen.
        pool = (position >= offsets[prompt_of_row]).astype(np.float64)
        count = np.maximum(np.add.reduceat(pool, starts), 1.0)
        mean = np.add.reduceat(rewards * pool, starts) / count
        std = np.sqrt(np.add.reduceat(pool * (rewards - mean[prompt_of_row]) ** 2, starts) / count)
        # Capped at the worst's distance: where no answer lies m sd below (m > 2, a prompt whose rewards bunch at
        # the bottom or take two values, as a pass/fail verifier's do), the worst is still a pair.
        chosen_reward = rewards[chosen_of_prompt]
        worst = rewards[np.maximum(starts + sizes - 1, 0)] if n_prompts else rewards[:0]
        needed = np.minimum(min_spread * std, chosen_reward - worst)
        eligible &= chosen_reward[prompt_of_row] - rewards >= needed[prompt_of_row]
    target_row = targets[prompt_of_row]
    big = np.iinfo(np.int64).max
    # The first eligible candidate at or below the target rank ...
    below = eligible & (target_row > 0) & (position >= target_row - 1)
    first_below = _reduce(np.where(below, position, big), starts, n_rows, np.minimum, big)
    # ... else the last eligible one above it (still below the chosen).
    above = eligible & (target_row > 0) & (position < target_row - 1)
    last_above = _reduce(np.where(above, position, -1), starts, n_rows, np.maximum, -1)
    choice = np.where(first_below != big, first_below, last_above)
    has_pair = (targets > 0) & (choice >= 0)
    rejected_position = choice[has_pair]
    on_target = rejected_position == targets[has_pair] - 1
    return PairChoice(chosen_of_prompt[has_pair], starts[has_pair] + rejected_position, offsets[has_pair] + 1,
                      rejected_position + 1, at_target=on_target & at_rank[has_pair], moved=~on_target,
                      skipped_ineligible=int(np.sum((targets > 0) & (choice < 0))), **counts)


def _reduce(values: np.ndarray, starts: np.ndarray, n_rows: int, ufunc: np.ufunc, empty: int) -> np.ndarray:
    if n_rows == 0 or len(starts) == 0:
        return np.full(len(starts), empty, dtype=np.int64)
    return ufunc.reduceat(values.astype(np.int64), starts)
