"""Arena-Hard scoring on hand-made judgments: verdict parsing, 3x strong verdicts, anchoring at 50, the 90%
bootstrap interval, style control, and a three-player leaderboard whose Bradley-Terry scores move away from the
raw win rates in the direction style control should move them."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics.arena_hard import Game, arena_scores, games_from_judgment, parse_arena_verdict, style_of
from evaluation.scoring import arena_metric


@pytest.mark.parametrize("reply, label", [
    ("Long reasoning about both answers.\nMy final verdict is: [[A>>B]]", "A>>B"),
    ("First I thought [[A>B]] but on reflection [[B>A]]", "B>A"),       # the last verdict counts
    ("verdict: [[b>>a]]", "B>>A"),                                    # read upper-cased
    ("Final verdict [A=B]", "A=B"),                                   # single brackets as the fallback pattern
    ("Assistant B is worse: [[A<<B]]", "A<<B"),                       # mirrored spelling
    ("[[AB]]", None), ("no label at all", None), ("", None), (None, None),
])
def test_verdict_parsing(reply, label):
    assert parse_arena_verdict(reply) == label


def test_strong_verdicts_count_three_times_and_both_orders_are_read_from_the_models_side():
    # game 1: the model is B and wins strongly (3 games); game 2: the model is A and loses slightly (1 game)
    games = games_from_judgment("m", {"labels": ["B>>A", "B>A"]})
    assert [g.outcome for g in games] == [1.0, 1.0, 1.0, 0.0]
    assert [g.outcome for g in games_from_judgment("m", {"labels": ["A=B", "A>B"]})] == [0.5, 1.0]
    assert games_from_judgment("m", {"labels": ["B>A", None]}) == []  # a game without verdict drops the question
    score = arena_scores({"m": games * 10}, style_control=False, rounds=100)["m"]
    assert score.score == pytest.approx(75.0, abs=3)                # 3 strong wins + 1 loss per question


def test_ties_score_fifty_the_baseline_anchor():
    ties = [Game("m", 0.5)] * 40
    for style_control in (False, True):
        score = arena_scores({"m": ties}, style_control=style_control, rounds=20)["m"]
        assert score.score == pytest.approx(50.0, abs=1e-6)


def test_interval_is_the_5_to_95_percent_quantiles_of_100_bootstrap_means():
    rng = np.random.default_rng(3)
    outcomes = (rng.random(60) < 0.7).astype(float)
    score = arena_scores({"m": [Game("m", float(o)) for o in outcomes]}, style_control=False, rounds=100, seed=9)["m"]
    replay = np.random.default_rng(9)
    boot = outcomes[replay.integers(0, 60, size=(100, 60))].mean(axis=1) * 100
    assert score.score == pytest.approx(boot.mean())
    assert (score.ci_low, score.ci_high) == pytest.approx((np.quantile(boot, 0.05), np.quantile(boot, 0.95)))
    assert score.ci_low < score.score < score.ci_high


def test_style_counts_ignore_code_blocks():
    text = "# Title\n\n- one\n- two\n1. first\n**bold** and __also__\n```\n# not a header\n- not a list\n```"
    assert style_of(text) == {"tokens": style_of(text)["tokens"], "headers": 1, "lists": 3, "bold": 2}


def _long_and_short_world(seed: int = 0):
    """The candidate wins by writing long answers; the previous model wins as often with short ones."""
    rng = np.random.default_rng(seed)
    baseline = {"tokens": 300, "headers": 0, "lists": 0, "bold": 0}
    players = {}
    for name, mean_tokens, length_drives_wins in (("candidate", 700, True), ("previous", 200, False)):
        games = []
        for _ in range(300):
            tokens = int(rng.normal(mean_tokens, 150))
            if length_drives_wins:
                p = 1 / (1 + np.exp(-(tokens - 550) / 60))
            else:
                p = 0.6
            games.append(Game(name, float(rng.random() < p), {"tokens": max(tokens, 1), "headers": 0, "lists": 0,
                                                                "bold": 0}, baseline))
        players[name] = games
    return players


def test_three_players_style_control_moves_scores_in_the_expected_direction():
    players = _long_and_short_world()
    raw = {name: 100 * np.mean([g.outcome for g in games]) for name, games in players.items()}
    plain = arena_scores(players, style_control=False, rounds=50)
    styled = arena_scores(players, style_control=True, rounds=50)
    # without style control the Bradley-Terry score against one baseline is the (weighted) win rate
    for name in players:
        assert plain[name].score == pytest.approx(raw[name], abs=2)
    # with it, the wins bought by length are discounted and the short model is credited
    assert styled["candidate"].score < raw["candidate"] - 5
    assert styled["previous"].score > raw["previous"] + 2
    assert styled["candidate"].style_coefficients["length"] > 0
    assert styled["candidate"].ci_low < styled["candidate"].score < styled["candidate"].ci_high


def test_arena_metric_reports_this_model_with_other_players_and_the_baseline_at_50():
    mine = [{"labels": ["B>A", "A>B"], "style": {"model": {"tokens": 100}, "baseline": {"tokens": 90}}}] * 6 + \
           [{"labels": ["A>>B", "B>>A"], "style": {"model": {"tokens": 80}, "baseline": {"tokens": 90}}}] * 2 + \
           [{"labels": [None, "A>B"]}]
    others = {"run r0": [{"labels": ["A=B", "A=B"], "style": {}}] * 5}
    settings = {"strong_weight": 3, "rounds": 100, "style_control": False}
    metric, _ = arena_metric(mine, others, settings, n_failed=0, seed=0)
    assert metric.ci_level == 0.90 and metric.n == 8 and metric.n_excluded == 1
    assert metric.extra["players"]["baseline"] == 50.0 and metric.extra["players"]["run r0"] == pytest.approx(50.0)
    assert metric.value == pytest.approx(100 * 12 / 24, abs=6)  # 12 wins of 12 + 12 strong losses
