"""`toa scaling`: reuse of generations across budgets, curve statistics, and the flow on the tiny config
(table + PNG in the store, resume without new generations)."""
from __future__ import annotations

import asyncio
import csv
import io
import math
from pathlib import Path

import pytest

from tests.fixtures.models import tiny_config_file
from toa_core.config import SearchConfig
from toa_core.engine import run_search
from toa_core.records import Prompt
from toa_core.scaling import (REUSE, candidates_at_budget, mean_interval, parse_budgets, parse_strategies,
                              planned_runs, prompt_point, prompt_points, source_run, summarize, top_k_for)
from toa_core.simulated import SimulatedAgent, SimulatedReward
from toa_core.strategies import SearchContext
from toa_core.strategies.ensemble import per_model_counts

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [Prompt.from_messages([{"role": "user", "content": f"Question number {i}?"}]) for i in range(3)]
AGENTS = ("a", "b", "c")


def search_rows(strategy: str, budget: int) -> list[dict]:
    """Every candidate row of a seeded simulated search (3 agents, noisy, refinement helps a little)."""
    agents = [SimulatedAgent(name, skill, refine_delta=0.05, noise=0.1, seed=7)
              for name, skill in zip(AGENTS, (0.2, 0.5, 0.4))]
    search = SearchConfig(strategy=strategy, budget=budget, moa_layers=2, tau=1.0, alpha=0.05)
    ctx = SearchContext(agents=agents, reward=SimulatedReward(noise=0.02, seed=3), search=search)
    results = asyncio.run(run_search(PROMPTS, ctx))
    return [c.to_row() for r in results for c in r.candidates]


def by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["prompt_id"], []).append(row)
    return grouped


SAME = ("candidate_id", "parent_id", "kind", "model", "depth", "text", "reward", "seed")


@pytest.mark.parametrize("strategy", ["random", "seq_refine", "moa", "self_moa"])
def test_prefix_strategies_reproduce_the_smaller_search_exactly(strategy):
    """Budget 7 (not a multiple of K=3 nor of K*L=6) cut out of a run at 12 is the run at 7, generation for generation."""
    assert REUSE[strategy] == "prefix"
    large, small = by_prompt(search_rows(strategy, 12)), by_prompt(search_rows(strategy, 7))
    for prompt in PROMPTS:
        cut = candidates_at_budget(strategy, large[prompt.prompt_id], 7, AGENTS)
        assert [{k: r[k] for k in SAME} for r in cut] == [{k: r[k] for k in SAME} for r in small[prompt.prompt_id]]


def test_ensemble_cut_keeps_the_per_model_split_of_the_smaller_budget():
    large = by_prompt(search_rows("ensemble", 12))
    for prompt in PROMPTS:
        cut = candidates_at_budget("ensemble", large[prompt.prompt_id], 7, AGENTS)
        assert len(cut) == 7
        counts = [sum(1 for r in cut if r["model"] == name) for name in AGENTS]
        assert counts == per_model_counts(7, 3) == [3, 2, 2]
        assert all(r["kind"] == "fresh" for r in cut)


@pytest.mark.parametrize("strategy", ["toa", "prs"])
def test_budget_dependent_strategies_are_never_cut(strategy):
    rows = by_prompt(search_rows(strategy, 9))[PROMPTS[0].prompt_id]
    with pytest.raises(ValueError, match="not reusable"):
        candidates_at_budget(strategy, rows, 6, AGENTS)
    assert candidates_at_budget(strategy, rows, 9, AGENTS) == sorted(rows, key=lambda r: r["candidate_id"])
    assert planned_runs(strategy, [16, 4, 8]) == [4, 8, 16]
    with pytest.raises(ValueError, match="needs its own search"):
        source_run(strategy, 8, [4, 16])


def test_planned_runs_reuse_the_smallest_finished_run_that_covers_every_budget():
    assert planned_runs("random", [4, 16, 8]) == [16]
    assert planned_runs("moa", [4, 8], existing=[6, 12, 40]) == [12]  # 6 is too small, 12 covers 8
    assert source_run("ensemble", 5, [8, 16]) == 8
    with pytest.raises(ValueError, match="no run"):
        source_run("random", 20, [16])


def test_prompt_point_excludes_failures_and_averages_the_top_ten():
    rows = [{"reward": float(r), "error": None, "prompt_tokens": 10, "completion_tokens": 5} for r in range(12)]
    rows.append({"reward": None, "error": "timeout", "prompt_tokens": 10, "completion_tokens": 0})
    point = prompt_point("random", 13, "p", rows)
    assert point.best_reward == 11.0
    assert point.topk_reward == pytest.approx(sum(range(2, 12)) / 10)  # the 10 best: 2..11
    assert (point.scored, point.failed, point.tokens) == (12, 1, 13 * 10 + 12 * 5)
    failed = prompt_point("random", 2, "q", [{"reward": None, "error": "x", "prompt_tokens": 3, "completion_tokens": 0}] * 2)
    assert failed.best_reward is None and failed.topk_reward is None  # a failure is not a low score


def test_summary_means_intervals_and_counts():
    ids = [p.prompt_id for p in PROMPTS]
    k = top_k_for([2, 8])
    assert k == 2 and top_k_for([64, 768]) == 10  # the paper's top-10, capped by the smallest budget
    points = prompt_points("random", [2, 8], {8: search_rows("random", 8)}, ids, AGENTS, top_k=k)
    curve = summarize(points, top_k=k, bootstrap_samples=200, seed=1)
    assert [(c.strategy, c.budget, c.prompts) for c in curve] == [("random", 2, 3), ("random", 8, 3)]
    for c in curve:
        assert c.best_ci_low <= c.mean_best_reward <= c.best_ci_high
        assert c.mean_topk_reward <= c.mean_best_reward
    assert curve[1].mean_best_reward >= curve[0].mean_best_reward  # a prefix can only lose candidates
    assert curve[1].mean_topk_reward >= curve[0].mean_topk_reward  # same k at every budget: never falls
    assert all(c.top_k == 2 for c in curve)
    assert curve[1].mean_tokens > curve[0].mean_tokens
    assert summarize(points, top_k=k, bootstrap_samples=200, seed=1) == curve  # seeded: the same intervals every time


def test_mean_interval_sem_and_degenerate_cases():
    mean, low, high, sem = mean_interval([1.0, 2.0, 3.0, 4.0], samples=500)
    assert mean == 2.5 and low < 2.5 < high
    assert sem == pytest.approx(math.sqrt(5 / 3 / 4))
    assert mean_interval([]) == (None, None, None, None)
    assert mean_interval([0.3]) == (0.3, 0.3, 0.3, None)


def test_argument_parsing_names_the_bad_item():
    assert parse_budgets("16, 4,16,8") == [4, 8, 16]
    with pytest.raises(ValueError, match="'x'"):
        parse_budgets("4,x")
    with pytest.raises(ValueError, match="at least 1"):
        parse_budgets("0,4")
    assert parse_strategies("toa,random,toa") == ["toa", "random"]
    with pytest.raises(ValueError, match="unknown strategy 'mcts'"):
        parse_strategies("toa,mcts")


# -- the flow and the command on the tiny config ------------------------------------------------------------------

def test_toa_scaling_on_tiny_writes_table_and_png_and_resumes(tmp_path, prefect_harness, count_generations,
                                                              tiny_llama_dir, tiny_reward_dir, capsys):
    from infra.store import open_store
    from toaflow.cli import main

    config = tiny_config_file(tmp_path)
    argv = ["scaling", "--config", str(config), "--budgets", "4,8", "--limit", "2", "--run-id", "sc",
            "--strategies", "toa,random,ensemble,prs,seq_refine,moa", "--bootstrap-samples", "100"]
    assert main(argv) == 0
    # toa and prs search at 4 and at 8; the four reusable strategies only at 8: 2 prompts x (2x12 + 4x8).
    assert count_generations["n"] == 2 * (2 * 12 + 4 * 8)
    store = open_store(str(tmp_path / "store"))
    for key in ("scaling.csv", "scaling.json", "scaling.png", "per_prompt.csv"):
        assert store.exists(f"runs/sc/scaling/{key}"), key
    assert store.read_bytes("runs/sc/scaling/scaling.png")[:8] == b"\x89PNG\r\n\x1a\n"
    table = list(csv.DictReader(io.StringIO(store.read_text("runs/sc/scaling/scaling.csv"))))
    assert [(r["strategy"], r["budget"]) for r in table] == [
        (s, b) for s in ("toa", "random", "ensemble", "prs", "seq_refine", "moa") for b in ("4", "8")]
    assert all(r["prompts"] == "2" for r in table)
    assert sorted(k.rsplit("/", 1)[-1] for k in store.list("runs/sc/scaling/samples/")) == sorted(
        ["toa-n4.parquet", "toa-n8.parquet", "prs-n4.parquet", "prs-n8.parquet", "random-n8.parquet",
         "ensemble-n8.parquet", "seq_refine-n8.parquet", "moa-n8.parquet"])
    assert not store.list("runs/sc/scaling/checkpoints/")
    assert "figure:" in capsys.readouterr().out

    count_generations["n"] = 0
    assert main(argv) == 0  # the same run id: every search is published, nothing is generated again
    assert count_generations["n"] == 0


def test_bad_budgets_are_a_user_error_before_anything_runs(tmp_path, capsys):
    from toaflow.cli import main

    assert main(["scaling", "--config", str(tiny_config_file(tmp_path)), "--budgets", "4,-1"]) == 2
    assert "budget -1 must be at least 1" in capsys.readouterr().err


def test_an_explicit_width_keeps_its_share_of_the_budget():
    """The math configs fix width = floor(N/2) = 80 for N = 160; a scaling point at N = 16 must use 8, not 80."""
    from tasks.scaling import search_config_at
    from runconfig import load_config

    cfg = load_config(REPO / "configs" / "paper" / "math" / "math500_toa.yaml")
    assert (cfg.search.width, cfg.search.budget, len(cfg.models)) == (80, 160, 4)
    assert search_config_at(cfg, "toa", 16).width == 8
    assert search_config_at(cfg, "toa", 4).width == 4  # never below the number of models
    at_40 = search_config_at(cfg, "moa", 40)
    assert (at_40.strategy, at_40.budget, at_40.tau, at_40.alpha) == ("moa", 40, 1.0, 0.1)
