"""Every benchmark runs in --quick mode and reports what it measured, so the benchmarks cannot rot.

These check behaviour (the scripts run, every cell completes without errors, the summary line is printed and the
numbers in it are sane), never timing.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(REPO / "bench" / name), "--quick", *args], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = [line for line in result.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert len(summary) == 1, result.stdout[-3000:]
    assert result.stdout.splitlines()[-1].startswith("SUMMARY "), "the summary line comes last"
    return result.stdout


def test_orchestration_quick():
    out = run_bench("bench_orchestration.py", "--strategy", "toa,ab_mcts")
    cells = re.findall(r"^\s+slots=(\d+)\s+in_flight=(\d+)\s+(\S+)\s+(\S+)\s+([\d.]+) gen/s = ([\d.]+) of capacity, "
                       r"([\d.]+) ms CPU/gen \(search (\S+), collector ([\d.]+)\)"
                       r".*run-queue wait [\d.]+ s/s, errors (\d+)$", out, re.MULTILINE)
    assert {c[2] for c in cells} == {"toaflow", "toaflow-2proc", "toaflow-httpx", "reference"}
    # three toaflow drivers per strategy, the reference (no strategy: "-") once, at 2 prompts-in-flight settings
    assert sorted({(c[2], c[3]) for c in cells if c[2] != "reference"}) == sorted(
        (driver, strategy) for driver in ("toaflow", "toaflow-2proc", "toaflow-httpx") for strategy in ("toa", "ab_mcts"))
    assert {c[3] for c in cells if c[2] == "reference"} == {"-"}
    assert len(cells) == 14
    for _slots, in_flight, driver, _strategy, rate, ratio, cpu_ms, search_ms, collector_ms, errors in cells:
        assert int(errors) == 0 and float(rate) > 0
        assert float(ratio) <= 1.2  # nothing beats the server's capacity (small slack for timer granularity)
        if driver != "reference":
            assert float(search_ms) > 0  # the search logic's CPU is measured
        assert float(collector_ms) <= float(cpu_ms) + 0.01  # the collector's part of the CPU (rounded)
    assert re.search(r"toa_search\s+toa2p_search\s+httpx_search\s+toa_gc\s+toa2p_gc\s+httpx_gc\s+ref_gc", out)
    assert "strategy toa:" in out and "strategy ab_mcts:" in out
    assert "capacity target 0.9" in out and "CPU target 0.5 ms/generation in one process: toa " in out
    assert "; ab_mcts MET" in out or "; ab_mcts MISSED" in out


def test_search_quick():
    out = run_bench("bench_search.py")
    variants = ("random", "ensemble", "prs", "seq_refine", "moa", "self_moa", "toa", "toa+agg", "toa-r4",
                "toa-adaptive", "ab_mcts", "ab_mcts+agg", "ab_mcts-r4", "ab_mcts-adaptive", "oracle")
    blocks = out.split("\nbudget ")[0].split(", budget 40:\n")[1:]
    assert len(blocks) == 6  # one table per environment
    for block in blocks:
        rows = {m.group(1): m.groups()[1:] for m in re.finditer(
            r"^\s*([\w+-]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s+([\d.]+|nan)\s+(\S+)",
            block, re.MULTILINE)}
        assert set(variants) <= set(rows), block
        assert rows["toa"][1] == "1"  # picked relative to TOA
        for name, (picked, _rel, best, gens, trips, _cpu, pairs_ok, _gap) in rows.items():
            assert 0 <= float(picked) <= float(best) <= 1
            assert float(gens) <= 40 and (name.endswith("adaptive") or float(gens) == 40)
        assert float(rows["toa"][4]) == 40 and float(rows["toa-r4"][4]) == 10  # round trips per prompt
        assert float(rows["ensemble"][4]) == 1
        assert float(rows["ab_mcts"][5]) > 0  # search CPU per generation is measured
    assert "TARGETS (issues 13 and 25):" in out and "ab_mcts vs toa" in out
    assert sum("toa+ens" in block for block in blocks) == 1  # the reward ensemble runs on biased-reward only
    assert "PAPER ORDERING" in out and "paper-pool N=40" in out


def test_reward_quick():
    out = run_bench("bench_reward.py")
    match = re.search(r"tiny-reward\s+16\s+64\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\S+)", out)
    assert match, out
    batches, max_diff = int(match.group(4)), float(match.group(5))
    assert 4 <= batches < 64  # 64 pairs from 16 trees really went in batches
    assert max_diff < 1e-3  # batching does not change the scores


def test_ranking_quick():
    out = run_bench("bench_ranking.py")
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)\s+(\d+)$",
                      out, re.MULTILINE)
    assert [int(r[0]) for r in rows] == [16_000, 48_000]
    for n_rows, prompts, sft, dpo in rows:
        assert int(sft) == int(prompts)  # every prompt has usable candidates: one SFT row each
        assert 0 < int(dpo) <= int(prompts)


def test_decontamination_quick():
    out = run_bench("bench_decontamination.py")
    cells = re.findall(r"^\s*(toaflow|toaflow-small|reference)\s+5000\s+\d+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\d+)/(\d+)\s+(\d+)$",
                       out, re.MULTILINE)
    assert [c[0] for c in cells] == ["toaflow", "toaflow-small", "reference"]
    for _cell, found, seeded, false_positives in cells:
        assert found == seeded and int(seeded) == 50 and int(false_positives) == 0
    assert "target < 60 s, < 1024 MiB" in out


def test_routing_quick():
    out = run_bench("bench_routing.py")
    cells = re.findall(r"^\s+(chat|reward)\s+(\S+)\s+([\d.]+)/s\s+hit refine ([\d.]+) all ([\d.]+)\s+busiest ([\d.]+)x"
                       r".*errors (\d+)", out, re.MULTILINE)
    routings = {(part, routing) for part, routing, *_ in cells}
    assert {("chat", "round_robin"), ("chat", "affinity"), ("reward", "round_robin"), ("reward", "affinity")} <= routings
    for part, routing, rate, hit_refine, hit_all, busiest, errors in cells:
        assert int(errors) == 0 and float(rate) > 0, (part, routing)
        assert 0 <= float(hit_refine) <= 1 and 0 <= float(hit_all) <= 1 and float(busiest) >= 1
        if part == "chat":
            assert float(hit_refine) > 0  # refinements repeat the template and the question: some prefix is cached
    assert "SUMMARY routing: chat: affinity refine hit" in out


def test_lc_quick():
    bench_lc = pytest.importorskip("bench.bench_lc")
    if bench_lc.default_data_dir() is None:
        pytest.skip("the shared AlpacaEval calibration set (shared/data/alpaca_eval_lc) is not beside the repository")
    out = run_bench("bench_lc.py")
    summary = out.splitlines()[-1]
    assert "raw_win_rate_exact=True" in summary
    values = dict(re.findall(r"(mean_abs_diff|max_abs_diff|spearman)=([0-9.]+)", summary))
    assert float(values["mean_abs_diff"]) < 3.0 and float(values["spearman"]) > 0.8


def test_reports_quick():
    out = run_bench("bench_reports.py")
    cells = dict(re.findall(r"^\s+(free|locked)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE))
    assert set(cells) == {"free", "locked"}, out
    share = float(re.search(r"publish_share=([\d.]+)", out).group(1))
    assert 0 <= share <= 1
    assert re.search(r"publish_wait_over_lock_left=[\d.]+", out)


def test_arena_hard_quick():
    out = run_bench("bench_arena_hard.py")
    rows = re.findall(r"^(hard_prompt|creative_writing)\s+(\w+)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)\s+([\d.]+)$",
                      out, re.MULTILINE)
    assert {(c, m) for c, m, *_ in rows} == {(c, m) for c in ("hard_prompt", "creative_writing")
                                              for m in ("balanced", "verbose", "terse")}
    for _category, _model, exact, official, diff, _worst in rows:
        assert 0 < float(exact) < 100 and 0 < float(official) < 100
        assert abs(float(exact) - float(official) - float(diff)) < 0.02
        assert abs(float(diff)) < 5  # the official fit stops short of the optimum, not somewhere else
    summary = out.splitlines()[-1]
    assert re.search(r"hard_prompt=[\d.]+ \(\w+\) creative_writing=[\d.]+ \(\w+\)", summary), summary


@pytest.mark.slow  # starts four `transformers serve` processes: about 30 s
def test_cpu_generation_quick():
    out = run_bench("bench_cpu_generation.py")
    cells = re.findall(r"^\s+(serve 1x1|serve cb 1x|serve cb 2x|local greedy 1|local greedy 8): 8 answers in "
                       r"[\d.]+ s = ([\d.]+) answers/s, [\d.]+ tokens/s, errors (\d+)$", out, re.MULTILINE)
    assert [c[0] for c in cells] == ["serve 1x1", "serve cb 1x", "serve cb 2x", "local greedy 1", "local greedy 8"]
    assert all(float(rate) > 0 and errors == "0" for _name, rate, errors in cells)
    assert "same answers 8/8; errors 0" in out.splitlines()[-1]  # batched greedy answers = one at a time
