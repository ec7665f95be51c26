"""Arena-Hard scoring on hand-made judgments: verdict parsing, 3x strong verdicts, anchoring at 50, the 90%
bootstrap interval, style control, a three-player leaderboard whose Bradley-Terry scores move away from the
raw win rates in the direction style control should move them; v2.0's two categories, each with its own baseline;
the official solver's settings checked against a fit worked out by hand."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from evaluation.benchmarks import BenchmarkError, load_benchmark
from evaluation.config import BenchmarkConfig, EvaluationConfig
from evaluation.judges.llm_judge import JudgeReply
from evaluation.metrics.arena_hard import (STYLE_FEATURES, Game, arena_scores, fit_official, games_from_judgment,
                                           parse_arena_verdict, style_of, without_code)
from evaluation.metrics.logistic import fit_logistic
from evaluation.scoring import arena_metric, score_benchmark


@pytest.mark.parametrize("reply, label", [
    ("Long reasoning about both answers.\nMy final verdict is: [[A>>B]]", "A>>B"),
    ("First I thought [[A>B]] but on reflection [[B>A]]", "B>A"),       # the last verdict counts
    ("verdict: [[b>>a]]", "B>>A"),                                    # read upper-cased
    ("Final verdict [A=B]", "A=B"),                                   # single brackets as the fallback pattern
    ("Assistant B is worse: [[A<<B]]", "A<<B"),                       # mirrored spelling
    ("[[AB]]", None), ("no label at all", None), ("", None), (None, None),
    ("Clearly [[A>>>B]]", None),  # unknown label: no verdict, the question is dropped (the official loader crashes)
])
def test_verdict_parsing(reply, label):
    assert parse_arena_verdict(reply) == label


def test_strong_verdicts_count_three_times_and_both_orders_are_read_from_the_models_side():
    # game 1: the model is B and wins strongly (3 games); game 2: the model is A and loses slightly (1 game)
    games = games_from_judgment("m", {"labels": ["B>>A", "B>A"]})
    assert [g.outcome for g in games] == [1.0, 1.0, 1.0, 0.0]
    assert [g.outcome for g in games_from_judgment("m", {"labels": ["A=B", "A>B"]})] == [0.5, 1.0]
    assert games_from_judgment("m", {"labels": ["B>A", None]}) == []  # a game without verdict drops the question
    assert games_from_judgment("m", {"labels": ["A>>>B", "A>B"]}) == []  # so does an unknown label
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


# ----------------------------------------------------------------------------------------------- markdown counts

def test_code_blocks_inner_text_is_removed_wherever_it_appears_as_the_official_counter_does():
    # the block's inner text "\n- shared\n" also sits in the prose: the official counter deletes both copies,
    # newlines included, so "- own" no longer starts a line
    repeated = "Steps:\n- shared\n- own\n```\n- shared\n```"
    assert without_code(repeated) == "Steps:- own\n``````"
    assert style_of(repeated)["lists"] == 0   # removing the block alone would have left 2 list items
    # a block holding just a newline removes every newline: the answer becomes one line, one list item at most
    newline_block = "- a\n- b\n- c\n```\n```"
    assert style_of(newline_block)["lists"] == 1
    # an empty block removes nothing (the official replace of "" is a no-op), and the fences stay
    assert without_code("# Title\n``````\n- x") == "# Title\n``````\n- x"


# ----------------------------------------------------------------------------------------------- two categories

QUESTIONS = [{"uid": "h1", "category": "hard_prompt", "subcategory": "coding", "prompt": "Reverse a string in Rust."},
             {"uid": "h2", "category": "hard_prompt", "subcategory": "math", "prompt": "Integrate x^2."},
             {"uid": "c1", "category": "creative_writing", "prompt": "A poem about fog."},
             {"uid": "c2", "category": "creative_writing", "prompt": "A story about a lighthouse."}]


def _answer(uid: str, model: str, text: str) -> dict:
    return {"uid": uid, "model": model, "messages": [{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": {"answer": text}}]}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def two_categories(tmp_path):
    """question.jsonl with two categories and one baseline file per category, as the benchmark ships them."""
    questions = _write_jsonl(tmp_path / "question.jsonl", QUESTIONS)
    hard = _write_jsonl(tmp_path / "o3-mini.jsonl", [_answer(u, "o3-mini-2025-01-31", f"HARD BASELINE {u}")
                                                      for u in ("h1", "h2")])
    creative = _write_jsonl(tmp_path / "gemini.jsonl", [_answer(u, "gemini-2.0-flash-001", f"CREATIVE BASELINE {u}")
                                                         for u in ("c1", "c2")])
    return questions, hard, creative


def _arena_bench(questions, baseline) -> BenchmarkConfig:
    return BenchmarkConfig(name="ah2", kind="arena_hard", version="v2.0", source=questions, baseline=baseline)


class BaselineAwareJudge:
    """Prefers the model's answer to the hard-prompt baseline's, and the creative baseline's to the model's:
    only a model judged against each category's own baseline can win one category and lose the other."""

    def __init__(self):
        self.seen_baselines: set[str] = set()

    async def complete(self, messages, *, max_tokens, temperature, logprobs):
        user = messages[-1]["content"]
        a = user.split("[Answer of assistant A: begin]", 1)[1].split("[Answer of assistant A: end]", 1)[0]
        baseline_is_a = "BASELINE" in a
        baseline = "HARD" if "HARD BASELINE" in user else "CREATIVE" if "CREATIVE BASELINE" in user else "?"
        self.seen_baselines.add(baseline)
        model_wins = baseline == "HARD"
        a_wins = model_wins != baseline_is_a
        return JudgeReply(text="Reasoning first. " + ("[[A>>B]]" if a_wins else "[[B>>A]]"))

    async def aclose(self):
        pass


def test_each_category_is_scored_against_its_own_baseline(two_categories):
    questions, hard, creative = two_categories
    for baseline in ([hard, creative], [creative, hard], {"hard_prompt": hard, "creative_writing": creative}):
        benchmark = load_benchmark(_arena_bench(questions, baseline))
        by_id = {item.item_id: item for item in benchmark.items}
        assert by_id["h2"].baseline_output == "HARD BASELINE h2"  # whatever the order the files are listed in
        assert by_id["c1"].baseline_output == "CREATIVE BASELINE c1"
        assert by_id["c1"].metadata["baseline_generator"] == "gemini-2.0-flash-001"
    judge = BaselineAwareJudge()
    config = EvaluationConfig(benchmarks=[_arena_bench(questions, [hard, creative])], bootstrap_samples=50,
                              arena_hard={"bootstrap_rounds": 20})
    rows = [{"item_id": item.item_id, "output": f"model answer to {item.item_id}"} for item in benchmark.items]
    metrics, judgments, diagnostics = asyncio.run(score_benchmark(benchmark, rows, config, judge=judge, version="v2.0"))
    assert diagnostics["arena_hard"]["fit"] == "style control, exact solver"  # the report says which fit was used
    assert diagnostics["arena_hard"]["baselines"] == "creative_writing: gemini-2.0-flash-001; hard_prompt: o3-mini-2025-01-31"
    assert judge.seen_baselines == {"HARD", "CREATIVE"}
    assert {j["category"] for j in judgments["arena_hard"]} == {"hard_prompt", "creative_writing"}
    hard_score, creative_score = metrics["judge_bt_score_hard_prompt"], metrics["judge_bt_score_creative_writing"]
    # every hard game won, every creative game lost (style control is on, v2.0; all wins push the logistic fit
    # to the edge, where the solver's tiny ridge stops it)
    assert hard_score.value > 99.9 and hard_score.n == 2
    assert creative_score.value < 0.1 and creative_score.n == 2
    assert hard_score.extra["baseline_model"] == "o3-mini-2025-01-31"
    assert creative_score.extra["baseline_model"] == "gemini-2.0-flash-001"
    assert hard_score.extra["solver"] == "exact"
    # the headline is the hard_prompt category, as the leaderboard reports it; no pooled fit of both (it would be 50)
    headline = metrics["judge_bt_score"]
    assert headline.value == hard_score.value and headline.extra["headline_category"] == "hard_prompt"
    assert set(headline.extra["categories"]) == {"hard_prompt", "creative_writing"}
    assert metrics["judge_win_rate"].value == pytest.approx(100.0)
    assert metrics["judge_win_rate_creative_writing"].value == pytest.approx(0.0)
    official = config.model_copy(update={"arena_hard": config.arena_hard.model_copy(update={"solver": "official"})})
    metrics, _, diagnostics = asyncio.run(score_benchmark(benchmark, rows, official, judge=judge, version="v2.0"))
    assert diagnostics["arena_hard"]["fit"] == "style control, official solver"
    assert metrics["judge_bt_score_creative_writing"].extra["solver"] == "official"
    assert metrics["judge_bt_score_hard_prompt"].value > 90 > 10 > metrics["judge_bt_score_creative_writing"].value


def test_a_baseline_file_answering_a_question_of_another_category_is_refused(two_categories, tmp_path):
    questions, hard, creative = two_categories
    # o3-mini's file also answers c1 (the official o3-mini file answers all 750 questions)
    leaky = _write_jsonl(tmp_path / "o3-mini-all.jsonl", [_answer(u, "o3-mini-2025-01-31", "x") for u in ("h1", "h2", "c1")])
    with pytest.raises(BenchmarkError, match=r"o3-mini-all.jsonl: line 3: baseline file for hard_prompt answers "
                                             r"question c1, which is creative_writing"):
        load_benchmark(_arena_bench(questions, [leaky, creative]))
    with pytest.raises(BenchmarkError, match="baseline file for creative_writing answers question h1, which is hard_prompt"):
        load_benchmark(_arena_bench(questions, {"hard_prompt": hard, "creative_writing": hard}))
    stranger = _write_jsonl(tmp_path / "mine.jsonl", [_answer(u, "my-model", "x") for u in ("h1", "h2")])
    with pytest.raises(BenchmarkError, match=r"mine.jsonl: written by my-model, which is not the baseline .*"
                                             r"creative_writing: gemini-2.0-flash-001, hard_prompt: o3-mini"):
        load_benchmark(_arena_bench(questions, [stranger, creative]))
    # named explicitly, any model can be a category's baseline
    benchmark = load_benchmark(_arena_bench(questions, {"hard_prompt": stranger, "creative_writing": creative}))
    assert {i.metadata["baseline_generator"] for i in benchmark.items} == {"my-model", "gemini-2.0-flash-001"}
    with pytest.raises(BenchmarkError, match="no baseline answer for 2 question.* of creative_writing"):
        load_benchmark(_arena_bench(questions, [hard]))


# ----------------------------------------------------------------------------------------------- official solver

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def damped_secant(outcomes: np.ndarray, *, iterations: int = 50, lr: float = 0.1) -> float:
    """The official fit's answer for one player against the baseline, without style columns, from first principles.

    The coefficients (player, baseline) both start at 0.5 and enter only as delta = player - baseline, so every
    gradient lies on one line and L-BFGS's two-loop recursion reduces to the secant step -g * (last step) /
    (last change of g). torch's rules: the first step is -g scaled by lr * min(1, 1 / |g|_1) (|g|_1 counts both
    coefficients: 2 |dL/d player|), later steps use the step length lr; no line search; `iterations` steps."""
    gradient = lambda delta: float(np.sum(_sigmoid(delta) - outcomes))  # d(summed cross-entropy)/d player
    delta, g = 0.0, gradient(0.0)
    step = -2 * lr * min(1.0, 1.0 / (2 * abs(g))) * g  # the player moves -t g, the baseline +t g
    for _ in range(iterations - 1):
        moved = delta + step
        g_moved = gradient(moved)
        step = -lr * g_moved * step / (g_moved - g)
        delta, g = moved, g_moved
    return delta + step


def test_official_solver_settings_lbfgs_lr_01_50_iterations_float32_start_05():
    outcomes = np.array([1.0] * 7 + [0.5] * 2 + [0.0])
    X = np.tile([-1.0, 1.0], (outcomes.size, 1))  # columns in sorted name order: the baseline (-1), the player (+1)
    coef = fit_official(X, outcomes)
    assert coef.dtype == np.float32
    # the sum of the two coefficients never moves (every gradient is along (+1, -1)): both started at 0.5
    assert coef.sum() == pytest.approx(1.0, abs=1e-6)
    expected = damped_secant(outcomes)
    assert coef[1] - coef[0] == pytest.approx(expected, abs=2e-5)
    # the settings are what the numbers pin: one iteration more or less, or another learning rate, is far off
    for other in (damped_secant(outcomes, iterations=49), damped_secant(outcomes, iterations=51),
                  damped_secant(outcomes, lr=0.11)):
        assert abs(other - expected) > 50 * 2e-5
    # and 50 damped steps stop short of the optimum, logit(mean outcome), which the exact fit reaches
    optimum = np.log(outcomes.mean() / (1 - outcomes.mean()))
    assert abs(expected - optimum) > 5e-3
    exact = fit_logistic(X[:, 1:], outcomes)
    assert exact[0] == pytest.approx(optimum, abs=1e-6)


def test_official_solver_first_step_from_05_with_style_columns():
    """One iteration: every coefficient, style columns included, starts at 0.5 and moves by -g scaled by
    lr * min(1, 1/|g|_1), g the gradient of the summed binary cross-entropy there."""
    rng = np.random.default_rng(5)
    X = np.hstack([np.tile([-1.0, 1.0], (12, 1)), rng.normal(size=(12, 4))]).astype(np.float32).astype(float)
    outcomes = np.array([1, 0, 1, 1, 0.5, 0, 1, 1, 0, 1, 0.5, 1], dtype=float)
    start = np.full(6, 0.5)
    g = X.T @ (_sigmoid(X @ start) - outcomes)
    expected = start - 0.1 * min(1.0, 1.0 / np.abs(g).sum()) * g
    assert fit_official(X, outcomes, max_iter=1) == pytest.approx(expected, abs=1e-6)


def test_official_solver_in_arena_scores_replays_the_bootstrap():
    """arena_scores(solver="official") with one player and constant style: each round is the damped secant on
    the resampled games, the style coefficients never leave their start of 0.5, the score is the median."""
    outcomes = [1.0] * 14 + [0.5] * 3 + [0.0] * 5
    games = [Game("model", o, {"tokens": 10}, {"tokens": 10}) for o in outcomes]
    score = arena_scores({"model": games}, style_control=True, rounds=15, seed=4, solver="official",
                         baseline="o3-mini-2025-01-31")["model"]
    replay = np.random.default_rng(4)
    y = np.array(outcomes)
    boot = [100 * _sigmoid(damped_secant(y[replay.integers(0, y.size, size=y.size)])) for _ in range(15)]
    assert score.solver == "official"
    assert score.score == pytest.approx(np.median(boot), abs=1e-3)
    assert score.style_coefficients == {name: 0.5 for name in STYLE_FEATURES}
    exact = arena_scores({"model": games}, style_control=True, rounds=15, seed=4)["model"]
    assert exact.solver == "exact" and exact.score > score.score  # closer to the optimum, away from 50
