"""Rank scored candidates into TRL-ready SFT and DPO datasets.

Per prompt, the usable candidates (no error, a finite reward, non-blank text) are ordered by raw reward,
best first; equal rewards are ordered by candidate_id, so the ranking is the same on every run.
The target is the best candidate that may be one (toa_core.screening, and `target_min_reward` when set): not truncated (finish_reason "length",
unless `allow_truncated`), not inseparable refinement leakage (toa_core.leakage), not excluded by id (e.g. a
chosen answer that overlaps an evaluation set); refine/aggregate answers with a separable preamble/postscript
enter the datasets stripped. A prompt whose usable candidates are all ruled out gives no SFT row and no pair.
- SFT: the target becomes the assistant turn: `messages` = prompt messages + [assistant].
- DPO: chosen = the target, rejected = rank `dpo_rejected_rank` (k, 1-based, among all usable candidates),
  or the rank given by `dpo_rejected_quantile`; eligibility rules (`rejected_min_spread`, on by default, and
  `rejected_lineage`) can move it further down: toa_core/pair_selection.py has the exact rules.
  The paper's README says the rejected response is "the 30th-ranked", while its model names say `ni=30`,
  which would be the 31st best if that index is 0-based. We read the README: k=30 means the 30th best
  (29 candidates rank between chosen and rejected). A prompt with fewer than k usable candidates gets the
  worst one as rejected (`short_policy: worst`) or no pair (`skip`); one usable candidate never gives a pair.
  The rejected must rank below the chosen (when the target is not rank 1 and k is not below it, the worst is
  taken with `short_policy: worst`). A pair is dropped when chosen and rejected are near-duplicates (the same
  text after whitespace/case normalisation) or when the reward margin chosen - rejected is not above
  `min_margin` (so the default 0.0 drops exact ties only).
  Default (not the paper's): `rejected_min_spread: 4.0` moves the rejected further down until it is at least
  four standard deviations of the prompt's rewards below the chosen, or is the worst candidate when none lies
  that far (so the rule never costs a pair). bench/bench_search.py measured it (bench/README.md, "DPO pairs"):
  the paper's 30th-of-160 is often a near-copy of the best in a TOA tree, or truly better than a chosen the
  reward model over-rated. Two standard deviations (the first default) fixed that in plain trees; the aggregate
  move bunches a tree's rewards near the top, so two and then three of its (smaller) standard deviations stayed
  inside a reward model's style bonus, and pairs whose chosen was only the favoured style came back (down to
  0.78 truly correct). Four kept every strategy's pairs >= 0.91 correct on every environment, budget and seed
  measured (768 cells, three seeds). Among 160 answers the rejected then lands a median 1.7-2.5 standard
  deviations below the mean, the very worst for fewer than one prompt in ten: near the mean - 2 sd that Xiao et
  al. 2025 (arXiv 2502.16825) found to train better than the minimum.
  Pairs get wider (easier) in exchange. The paper configs set it to 0.
- Train/test split by prompt: a prompt is in test when a seeded hash of its id falls below `test_fraction`,
  so the same prompt is never on both sides, SFT and DPO agree, and a prompt keeps its side across runs. When
  the hash puts no prompt in test although `test_fraction > 0` and there are two prompts or more, the prompt
  with the smallest hash goes to test (trainers need a non-empty eval set).

Scale: the work per candidate is done with pyarrow compute (filter, sort, take); Python touches only the
selected rows (at most two per prompt). Texts are read in a second pass only for the selected rows, shard by
shard, so memory holds the key columns of all candidates plus one shard's texts at a time.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from toa_core.config import Section
from toa_core.leakage import LeakageConfig
from toa_core.pair_selection import choose_pairs
from toa_core.records import Message, Prompt
from toa_core.screening import SCREEN_COLUMNS, Screen, apply_span, same_answer

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)

SFT_SCHEMA = pa.schema([
    ("messages", MESSAGES_TYPE),
    ("prompt_id", pa.string()),
    ("candidate_id", pa.string()),
    ("model", pa.string()),
    ("reward", pa.float64()),
    ("strategy", pa.string()),
    ("run_id", pa.string()),
])
DPO_SCHEMA = pa.schema([
    ("prompt", MESSAGES_TYPE),
    ("chosen", MESSAGES_TYPE),
    ("rejected", MESSAGES_TYPE),
    ("prompt_id", pa.string()),
    ("chosen_candidate_id", pa.string()),
    ("rejected_candidate_id", pa.string()),
    ("chosen_model", pa.string()),
    ("rejected_model", pa.string()),
    ("chosen_reward", pa.float64()),
    ("rejected_reward", pa.float64()),
    ("chosen_rank", pa.int32()),
    ("rejected_rank", pa.int32()),
    ("strategy", pa.string()),
    ("run_id", pa.string()),
])
_KEY_COLUMNS = ["prompt_id", "candidate_id", "model", "reward", "strategy"]

CandidateSource = Union[pa.Table, str, Path]


class RankingError(ValueError):
    """Candidates cannot be ranked (missing columns, unreadable shard); the message names the source."""


class RankingConfig(Section):
    """How scored candidates become SFT targets and DPO pairs (see toa_core.ranking and toa_core.pair_selection
    for the exact rules). `dpo_rejected_rank` and `dpo_rejected_quantile` are two ways to say the same thing:
    set at most one (setting both is an error)."""
    dpo_rejected_rank: int = Field(30, ge=2, description="1-based rank of the rejected response (30 = 30th best)")
    dpo_rejected_quantile: float | None = Field(
        None, gt=0, lt=1, description="the rejected's quantile from the bottom, rank = round((1 - q) x usable "
                                      "candidates); the paper's 30th of 160 is 0.8125")
    short_policy: Literal["worst", "skip"] = Field(
        "worst", description="fewer than dpo_rejected_rank usable candidates: pair with the worst, or no pair")
    rejected_lineage: Literal["any", "other"] = Field(
        "any", description="other: the rejected is never an ancestor or descendant (refinement) of the chosen")
    rejected_min_spread: float = Field(
        4.0, ge=0, description="the rejected's reward is at least this many standard deviations of the prompt's "
                               "rewards below the chosen's, or is the worst when none is that far (0 = off: the "
                               "paper's rule, kept by configs/paper/)")
    min_margin: float = Field(0.0, ge=0, description="keep a pair only if chosen_reward - rejected_reward > this")
    test_fraction: float = Field(0.01, ge=0, lt=1, description="share of prompts held out (SFT and DPO alike)")
    seed: int = Field(0, description="seed of the train/test split")
    target_min_reward: float | None = Field(
        None, description="a target (SFT row, DPO chosen) needs at least this raw reward; a prompt whose answers "
                          "all score below it gives no SFT row and no pair (off by default: the best answer is "
                          "the target whatever it scored). With a verifier reward, 1.0 keeps passing answers only")
    allow_truncated: bool = Field(False, description="let answers cut off at max_tokens (finish_reason length) "
                                                     "be SFT targets and DPO chosen")
    leakage: LeakageConfig = Field(default_factory=LeakageConfig,
                                   description="refinement-leakage rules (toa_core/rules/leakage.yaml + extras)")

    @model_validator(mode="after")
    def _one_way_to_place_the_rejected(self) -> "RankingConfig":
        if self.dpo_rejected_quantile is not None and "dpo_rejected_rank" in self.model_fields_set:
            raise ValueError("dpo_rejected_rank and dpo_rejected_quantile are both set; keep one (rank: a fixed "
                             "position such as the paper's 30; quantile: a share of each prompt's candidates)")
        return self


@dataclass
class RankingStats:
    """What ranking kept and dropped, and why (written next to the datasets and into the manifest)."""
    candidates: int = 0
    candidates_failed: int = 0  # error set
    candidates_unscored: int = 0  # no error but no finite reward
    candidates_blank: int = 0  # scored but empty text
    candidates_unknown_prompt: int = 0  # prompt_id not among the prompts given
    candidates_repeated: int = 0  # same prompt_id and candidate_id seen again (e.g. a shard given twice)
    prompts: int = 0  # prompts with at least one usable candidate
    prompts_train: int = 0  # prompts with a target, by split
    prompts_test: int = 0
    sft_train: int = 0
    sft_test: int = 0
    dpo_pairs_at_rank: int = 0  # rejected is the k-th best
    dpo_pairs_worst: int = 0  # fewer than k usable: rejected is the worst
    dpo_pairs_moved: int = 0  # rejected moved off the target rank by rejected_min_spread / rejected_lineage
    dpo_skipped_ineligible: int = 0  # no candidate below the chosen passes rejected_min_spread / rejected_lineage
    dpo_skipped_short: int = 0  # fewer than k usable and short_policy skip
    dpo_skipped_single: int = 0  # only one usable candidate
    dpo_dropped_identical: int = 0
    dpo_dropped_margin: int = 0
    dpo_train: int = 0
    dpo_test: int = 0
    candidates_truncated: int = 0  # usable, finish_reason "length"
    candidates_leak_checked: int = 0  # refine/aggregate answers checked for leakage
    candidates_leak_stripped: int = 0  # separable preamble/postscript: datasets hold the stripped text
    candidates_leak_inseparable: int = 0  # never a target
    candidates_excluded: int = 0  # ruled out as target by id (e.g. decontamination of chosen answers)
    prompts_no_eligible_target: int = 0  # usable candidates, none may be a target: no SFT row, no pair
    prompts_below_min_reward: int = 0  # of those: some passed screening but scored below target_min_reward
    targets_below_top: int = 0  # the target is not the top-reward candidate (better ones were ruled out)
    dpo_skipped_no_lower: int = 0  # no usable candidate ranks below the target
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)  # screening counts by model

    def to_dict(self) -> dict[str, int]:
        """The flat counts (manifest, reports); `per_model` is left out."""
        return {key: value for key, value in asdict(self).items() if key != "per_model"}


# ----------------------------------------------------------------------------------------------------------
# Entry point


def build_datasets(
    candidates: Iterable[CandidateSource],
    prompts: Mapping[str, list[Message]] | Sequence[Prompt],
    cfg: RankingConfig,
    run_id: str,
    excluded_ids: Iterable[str] = (),
) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table, RankingStats]:
    """Rank candidate rows (tables or parquet paths) into (sft_train, sft_test, dpo_train, dpo_test, stats).

    `prompts` maps prompt_id to the prompt's messages (or is a list of Prompt). Tables follow SFT_SCHEMA and
    DPO_SCHEMA, sorted by prompt_id. `excluded_ids` are candidate ids that must not be a target.
    """
    prompt_messages = _prompt_map(prompts)
    sources = list(candidates)
    stats = RankingStats()
    screen = Screen(cfg.allow_truncated, cfg.leakage, excluded_ids)

    keys = _usable_keys(sources, prompt_messages, stats, screen, lineage=cfg.rejected_lineage == "other")
    keys = keys.sort_by([("prompt_id", "ascending"), ("reward", "descending"), ("candidate_id", "ascending")])
    keys = _drop_repeated_candidates(keys, stats)

    pid = keys["prompt_id"].combine_chunks()
    n = len(pid)
    if n:
        change = pc.not_equal(pid.slice(1), pid.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
    else:
        starts = np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.append(starts, n))
    stats.prompts = len(starts)
    _add_screening_counts(stats, screen)

    # -- targets: the best candidate of each prompt that may be one --
    eligible = keys["chosen_ok"].to_numpy(zero_copy_only=False) if n else np.zeros(0, dtype=bool)
    if cfg.target_min_reward is not None and n:
        screened_ok = eligible
        eligible = eligible & (keys["reward"].to_numpy() >= cfg.target_min_reward)
        had_screened = np.add.reduceat(screened_ok.astype(np.int64), starts) > 0
        has_rewarded = np.add.reduceat(eligible.astype(np.int64), starts) > 0
        stats.prompts_below_min_reward = int(np.sum(had_screened & ~has_rewarded))
    first_eligible = np.minimum.reduceat(np.where(eligible, np.arange(n), n), starts) if n else starts
    has_target = first_eligible < np.append(starts[1:], n)
    stats.prompts_no_eligible_target = int(np.sum(~has_target))
    target_offset = np.where(has_target, first_eligible - starts, -1)  # 0 = the top-reward candidate
    stats.targets_below_top = int(np.sum(target_offset > 0))
    groups = np.flatnonzero(has_target)  # prompts with a target, in prompt order
    target_pos = first_eligible[groups]

    # -- DPO pair selection (positions in the sorted key table): toa_core/pair_selection.py --
    rewards = keys["reward"].to_numpy()
    pairs = choose_pairs(starts, sizes, rewards, rank=cfg.dpo_rejected_rank, quantile=cfg.dpo_rejected_quantile,
                         short_policy=cfg.short_policy, offsets=target_offset, min_spread=cfg.rejected_min_spread,
                         parent_pos=_parent_positions(keys) if cfg.rejected_lineage == "other" else None)
    stats.dpo_skipped_single, stats.dpo_skipped_short = pairs.skipped_single, pairs.skipped_short
    stats.dpo_skipped_no_lower, stats.dpo_skipped_ineligible = pairs.skipped_no_lower, pairs.skipped_ineligible
    chosen_pos, rejected_pos = pairs.chosen, pairs.rejected
    margin_ok = (rewards[chosen_pos] - rewards[rejected_pos]) > cfg.min_margin
    stats.dpo_dropped_margin = int(np.sum(~margin_ok))
    pair_at_rank, pair_moved = pairs.at_target[margin_ok], pairs.moved[margin_ok]
    chosen_pos, rejected_pos = chosen_pos[margin_ok], rejected_pos[margin_ok]
    pair_rejected_rank = pairs.rejected_rank[margin_ok]
    chosen_rank = pairs.chosen_rank[margin_ok]

    # -- texts for the selected rows only --
    texts = _texts_at(sources, keys, np.concatenate([target_pos, rejected_pos]))  # one read of each shard
    best_texts, rejected_texts = texts[:len(target_pos)], texts[len(target_pos):]
    position_of_target = {int(p): i for i, p in enumerate(target_pos)}
    chosen_texts = [best_texts[position_of_target[int(p)]] for p in chosen_pos]
    identical = np.array([same_answer(c, r) for c, r in zip(chosen_texts, rejected_texts)], dtype=bool)
    stats.dpo_dropped_identical = int(np.sum(identical))
    keep = ~identical
    chosen_pos, rejected_pos = chosen_pos[keep], rejected_pos[keep]
    pair_rejected_rank, pair_at_rank, pair_moved = pair_rejected_rank[keep], pair_at_rank[keep], pair_moved[keep]
    chosen_rank = chosen_rank[keep]
    chosen_texts = [t for t, kept in zip(chosen_texts, keep) if kept]
    rejected_texts = [t for t, kept in zip(rejected_texts, keep) if kept]
    stats.dpo_pairs_at_rank = int(np.sum(pair_at_rank))
    stats.dpo_pairs_moved = int(np.sum(pair_moved))
    stats.dpo_pairs_worst = int(np.sum(~pair_at_rank & ~pair_moved))

    # -- split by prompt (among prompts that have a target, so neither side is empty for want of one) --
    prompt_ids = pid.take(pa.array(starts[groups])).to_pylist()
    test_ids = split_test_prompts(prompt_ids, cfg.test_fraction, cfg.seed)
    stats.prompts_test = len(test_ids)
    stats.prompts_train = len(prompt_ids) - len(test_ids)

    sft = _sft_table(keys, target_pos, best_texts, prompt_messages, run_id)
    dpo = _dpo_table(keys, chosen_pos, rejected_pos, chosen_rank, pair_rejected_rank, chosen_texts,
                     rejected_texts, prompt_messages, run_id)
    sft_train, sft_test = _split(sft, test_ids)
    dpo_train, dpo_test = _split(dpo, test_ids)
    stats.sft_train, stats.sft_test = sft_train.num_rows, sft_test.num_rows
    stats.dpo_train, stats.dpo_test = dpo_train.num_rows, dpo_test.num_rows
    return sft_train, sft_test, dpo_train, dpo_test, stats


PAIR_MODES = ("all", "on_policy", "mixed")


def build_datasets_with_policy(
    candidates: Iterable[CandidateSource],
    prompts: Mapping[str, list[Message]] | Sequence[Prompt],
    cfg: RankingConfig,
    run_id: str,
    excluded_ids: Iterable[str] = (),
    *,
    policy_model: str | None = None,
    pairs: Literal["all", "on_policy", "mixed"] = "all",
) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table, RankingStats]:
    """`build_datasets`, with DPO pairs restricted to the policy agent's answers (`policy_model`, the agent name).

    SFT is unchanged: the best answer of any agent. DPO pairs:
    - on_policy: the ranking run over the policy's candidates only: chosen = its best eligible answer, rejected =
      its k-th (or worst) by the usual rules; both sides are the policy's own samples (on-policy DPO).
    - mixed: the ranking run over the policy's candidates plus each prompt's overall target: chosen = the best
      answer of any agent (the SFT target), rejected = a policy answer below it by the usual rules.
    The rejected rank k then counts among those candidates. The split follows the SFT split (by prompt), and the
    DPO counts of the returned stats are those of the restricted ranking.
    """
    excluded = list(excluded_ids)
    sources = list(candidates)
    sft_train, sft_test, dpo_train, dpo_test, stats = build_datasets(sources, prompts, cfg, run_id, excluded)
    if pairs == "all" or policy_model is None:
        return sft_train, sft_test, dpo_train, dpo_test, stats
    if pairs not in PAIR_MODES:
        raise ValueError(f"pairs must be one of {', '.join(PAIR_MODES)}, got {pairs!r}")
    targets = set()
    if pairs == "mixed":
        for table in (sft_train, sft_test):
            targets.update(zip(table["prompt_id"].to_pylist(), table["candidate_id"].to_pylist()))
    restricted = []
    for source in sources:
        table = source if isinstance(source, pa.Table) else _read_source(source, pq.read_schema(source).names)
        keep = pc.equal(table["model"], policy_model)
        if targets:
            is_target = pa.array([(p, c) in targets for p, c in zip(table["prompt_id"].to_pylist(),
                                                                     table["candidate_id"].to_pylist())], pa.bool_())
            keep = pc.or_(keep, is_target)
        restricted.append(table.filter(keep))
    _, _, policy_train, policy_test, policy_stats = build_datasets(restricted, prompts, cfg, run_id, excluded)
    test_ids = set(sft_test["prompt_id"].to_pylist())
    policy_train, policy_test = _split(pa.concat_tables([policy_train, policy_test]), test_ids)
    for name in RankingStats.__dataclass_fields__:
        if name.startswith("dpo_"):
            setattr(stats, name, getattr(policy_stats, name))
    stats.dpo_train, stats.dpo_test = policy_train.num_rows, policy_test.num_rows
    return sft_train, sft_test, policy_train, policy_test, stats


def split_test_prompts(prompt_ids: Sequence[str], test_fraction: float, seed: int) -> set[str]:
    """The prompt ids held out for test: those whose seeded hash falls below `test_fraction` (see module doc)."""
    if test_fraction <= 0 or not prompt_ids:
        return set()
    scores = {pid: int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:8], "big") / 2.0 ** 64
              for pid in prompt_ids}
    test = {pid for pid, score in scores.items() if score < test_fraction}
    if not test and len(scores) >= 2:
        test = {min(scores, key=scores.get)}
    return test


# ----------------------------------------------------------------------------------------------------------
# Pass 1: the key columns of usable candidates


def _prompt_map(prompts: Mapping[str, list[Message]] | Sequence[Prompt]) -> dict[str, list[Message]]:
    if isinstance(prompts, Mapping):
        return dict(prompts)
    return {p.prompt_id: p.messages for p in prompts}


def _read_source(source: CandidateSource, columns: list[str]) -> pa.Table:
    if isinstance(source, pa.Table):
        missing = [c for c in columns if c not in source.column_names]
        if missing:
            raise RankingError(f"candidate table lacks column(s) {missing}; expected the candidate row layout "
                               "(toa_core.records.CANDIDATE_COLUMNS)")
        return source.select(columns)
    try:
        schema = pq.read_schema(source)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise RankingError(f"{source}: not a readable parquet file ({error})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise RankingError(f"{source}: lacks candidate column(s) {missing}")
    return pq.read_table(source, columns=columns)


def _add_screening_counts(stats: RankingStats, screen: Screen) -> None:
    counts = screen.counts
    stats.candidates_truncated = counts.truncated
    stats.candidates_leak_checked = counts.leak_checked
    stats.candidates_leak_stripped = counts.leak_stripped
    stats.candidates_leak_inseparable = counts.leak_inseparable
    stats.candidates_excluded = counts.excluded_by_id
    stats.per_model = {model: dict(values) for model, values in sorted(counts.per_model.items())}


def _usable_keys(sources: list[CandidateSource], prompt_messages: dict[str, list[Message]],
                 stats: RankingStats, screen: Screen, lineage: bool = False) -> pa.Table:
    """Key columns (plus source, row index and screening columns; parent_id for the lineage rule) of every
    candidate that may enter a dataset."""
    known = pa.array(list(prompt_messages), pa.string())
    columns = _KEY_COLUMNS + (["parent_id"] if lineage else [])
    parts = []
    for index, source in enumerate(sources):
        table = _read_source(source, columns + ["error"] + [c for c in SCREEN_COLUMNS if c not in columns])
        table = table.append_column("source_index", pa.array(np.full(table.num_rows, index, dtype=np.int32)))
        table = table.append_column("row_index", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        stats.candidates += table.num_rows
        failed = pc.is_valid(table["error"])
        reward = pc.cast(table["reward"], pa.float64())
        scored = pc.and_(pc.is_valid(reward), pc.invert(pc.fill_null(pc.is_nan(reward), True)))
        scored = pc.and_(scored, pc.invert(pc.fill_null(pc.is_inf(reward), True)))
        has_text = pc.fill_null(pc.match_substring_regex(table["text"], r"\S"), False)
        ok = pc.invert(failed)
        stats.candidates_failed += pc.sum(pc.cast(failed, pa.int64())).as_py() or 0
        stats.candidates_unscored += pc.sum(pc.cast(pc.and_(ok, pc.invert(scored)), pa.int64())).as_py() or 0
        ok = pc.and_(ok, scored)
        stats.candidates_blank += pc.sum(pc.cast(pc.and_(ok, pc.invert(has_text)), pa.int64())).as_py() or 0
        ok = pc.and_(ok, has_text)
        table = table.set_column(table.schema.get_field_index("reward"), "reward", reward)
        table = table.filter(ok)
        known_prompt = pc.is_in(table["prompt_id"], value_set=known)
        stats.candidates_unknown_prompt += table.num_rows - (pc.sum(pc.cast(known_prompt, pa.int64())).as_py() or 0)
        table = table.filter(known_prompt)
        chosen_ok, text_start, text_end = screen.screen(table)
        table = table.drop_columns(["error"] + SCREEN_COLUMNS)  # texts are read again for selected rows only
        for name, values in (("chosen_ok", chosen_ok), ("text_start", text_start), ("text_end", text_end)):
            table = table.append_column(name, pa.array(values))
        parts.append(table)
    if not parts:
        schema = pa.schema([("prompt_id", pa.string()), ("candidate_id", pa.string()), ("model", pa.string()),
                            ("reward", pa.float64()), ("strategy", pa.string())]
                           + ([("parent_id", pa.string())] if lineage else [])
                           + [("source_index", pa.int32()), ("row_index", pa.int64()), ("chosen_ok", pa.bool_()),
                              ("text_start", pa.int32()), ("text_end", pa.int32())])
        return schema.empty_table()
    return pa.concat_tables(parts, promote_options="permissive")


def _parent_positions(keys: pa.Table) -> np.ndarray:
    """Each row's parent row in the sorted key table (-1: fresh, or a parent that is not usable)."""
    prompt_ids = keys["prompt_id"].to_pylist()  # candidate ids are unique within a prompt only
    position_of = {key: i for i, key in enumerate(zip(prompt_ids, keys["candidate_id"].to_pylist()))}
    return np.array([position_of.get((pid, parent), -1) if parent is not None else -1
                     for pid, parent in zip(prompt_ids, keys["parent_id"].to_pylist())], dtype=np.int64)


def _drop_repeated_candidates(keys: pa.Table, stats: RankingStats) -> pa.Table:
    """Keep one row per (prompt_id, candidate_id); in the sorted table repeats of a candidate are adjacent
    unless their rewards differ, in which case the first (highest) one is kept."""
    if keys.num_rows < 2 or len(pc.unique(keys["candidate_id"])) == keys.num_rows:
        return keys  # the usual case: candidate ids are unique across the run
    positions = keys.select(["prompt_id", "candidate_id"]).append_column(
        "position", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
    first = positions.group_by(["prompt_id", "candidate_id"]).aggregate([("position", "min")])["position_min"]
    stats.candidates_repeated = keys.num_rows - len(first)
    return keys.take(pa.array(np.sort(first.to_numpy())))  # keeps the sorted order


# ----------------------------------------------------------------------------------------------------------
# Pass 2: texts of the selected rows


def _texts_at(sources: list[CandidateSource], keys: pa.Table, positions: np.ndarray) -> list[str]:
    """The dataset texts at `positions` of the sorted key table (kept spans applied), read source by source."""
    if len(positions) == 0:
        return []
    positions_arr = pa.array(positions.astype(np.int64))
    source_index = keys["source_index"].take(positions_arr).to_numpy()
    row_index = keys["row_index"].take(positions_arr).to_numpy()
    span_start = keys["text_start"].take(positions_arr).to_numpy()
    span_end = keys["text_end"].take(positions_arr).to_numpy()
    texts: list[Any] = [None] * len(positions)
    for index in np.unique(source_index):
        wanted = np.flatnonzero(source_index == index)
        column = _read_source(sources[int(index)], ["text"])["text"]
        taken = column.take(pa.array(row_index[wanted])).to_pylist()
        for slot, text in zip(wanted, taken):
            texts[slot] = apply_span(text, int(span_start[slot]), int(span_end[slot]))
    return texts


# ----------------------------------------------------------------------------------------------------------
# Output tables


def _assistant(texts: list[str]) -> pa.Array:
    return pa.array([[{"role": "assistant", "content": t}] for t in texts], MESSAGES_TYPE)


def _sft_table(keys: pa.Table, target_pos: np.ndarray, texts: list[str], prompt_messages: dict[str, list[Message]],
               run_id: str) -> pa.Table:
    best = keys.take(pa.array(target_pos.astype(np.int64)))
    messages = [prompt_messages[pid] + [{"role": "assistant", "content": text}]
                for pid, text in zip(best["prompt_id"].to_pylist(), texts)]
    return pa.table({
        "messages": pa.array(messages, MESSAGES_TYPE),
        "prompt_id": best["prompt_id"],
        "candidate_id": best["candidate_id"],
        "model": best["model"],
        "reward": best["reward"],
        "strategy": best["strategy"],
        "run_id": pa.array([run_id] * best.num_rows, pa.string()),
    }, schema=SFT_SCHEMA)


def _dpo_table(keys: pa.Table, chosen_pos: np.ndarray, rejected_pos: np.ndarray, chosen_rank: np.ndarray,
               rejected_rank: np.ndarray, chosen_texts: list[str], rejected_texts: list[str],
               prompt_messages: dict[str, list[Message]], run_id: str) -> pa.Table:
    chosen = keys.take(pa.array(chosen_pos.astype(np.int64)))
    rejected = keys.take(pa.array(rejected_pos.astype(np.int64)))
    prompt_ids = chosen["prompt_id"].to_pylist()
    return pa.table({
        "prompt": pa.array([prompt_messages[pid] for pid in prompt_ids], MESSAGES_TYPE),
        "chosen": _assistant(chosen_texts),
        "rejected": _assistant(rejected_texts),
        "prompt_id": chosen["prompt_id"],
        "chosen_candidate_id": chosen["candidate_id"],
        "rejected_candidate_id": rejected["candidate_id"],
        "chosen_model": chosen["model"],
        "rejected_model": rejected["model"],
        "chosen_reward": chosen["reward"],
        "rejected_reward": rejected["reward"],
        "chosen_rank": pa.array(chosen_rank.astype(np.int32)),
        "rejected_rank": pa.array(rejected_rank.astype(np.int32)),
        "strategy": chosen["strategy"],
        "run_id": pa.array([run_id] * len(prompt_ids), pa.string()),
    }, schema=DPO_SCHEMA)


def _split(table: pa.Table, test_ids: set[str]) -> tuple[pa.Table, pa.Table]:
    in_test = pc.is_in(table["prompt_id"], value_set=pa.array(sorted(test_ids), pa.string()))
    return table.filter(pc.invert(in_test)), table.filter(in_test)


# ----------------------------------------------------------------------------------------------------------
# Writing


def dataset_key(run_id: str, kind: str, split: str) -> str:
    """runs/<run_id>/datasets/{sft,dpo}/{train,test}.parquet"""
    return f"runs/{run_id}/datasets/{kind}/{split}.parquet"


def write_datasets(store: Any, run_id: str, sft_train: pa.Table, sft_test: pa.Table, dpo_train: pa.Table,
                   dpo_test: pa.Table, stats: RankingStats | None = None) -> dict[str, str]:
    """Write the four datasets (and stats.json) through `store` (an infra.store.Store or anything with
    `write_bytes(key, data) -> uri`); returns {"sft/train": uri, ...}. Each file is published atomically."""
    uris = {}
    for kind, split, table in (("sft", "train", sft_train), ("sft", "test", sft_test),
                               ("dpo", "train", dpo_train), ("dpo", "test", dpo_test)):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        uris[f"{kind}/{split}"] = store.write_bytes(dataset_key(run_id, kind, split), buffer.getvalue())
    if stats is not None:
        payload = {**stats.to_dict(), "per_model": stats.per_model}
        uris["stats"] = store.write_bytes(f"runs/{run_id}/datasets/stats.json",
                                          (json.dumps(payload, indent=2) + "\n").encode())
    return uris
