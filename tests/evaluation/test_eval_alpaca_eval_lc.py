"""toaflow's LC win rate against AlpacaEval 2's leaderboard on the shared calibration set (40 real models).

The quick checks run in the default tier (with tests/bench/test_bench_quick.py::test_lc_quick, 8 models); the
full comparison (a joint difficulty fit over 40 models and 40 cross-validated GLM fits, about a minute of CPU) is
`slow`; bench/bench_lc.py prints the same table.
"""
from __future__ import annotations

import json

import pytest

from bench.bench_lc import compare, default_data_dir
from evaluation.metrics.difficulty import annotation_rows, read_annotation_folder
from evaluation.metrics.win_rate import win_rate

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data/alpaca_eval_lc is not beside the repository")


@needs_data
def test_raw_win_rate_equals_the_leaderboard_for_every_model():
    import pandas as pd

    leaderboard = pd.read_csv(DATA / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv", index_col=0)
    annotations = read_annotation_folder(DATA)
    assert annotations["generator_2"].nunique() == 40
    for model, rows in annotations.groupby("generator_2"):
        preferences = rows["preference"].dropna().tolist()
        assert win_rate(preferences, samples=50).value == pytest.approx(leaderboard.loc[model, "win_rate"], abs=1e-9)


def test_annotation_files_in_both_layouts(tmp_path):
    reduced = tmp_path / "m.jsonl"
    reduced.write_text(json.dumps({"index": 3, "generator_2": "m", "len_output_1": 10, "len_output_2": 4,
                                   "preference": 2.0}) + "\n")
    official = tmp_path / "annotations.json"
    official.write_text(json.dumps([{"output_1": "abc", "output_2": "abcdef", "preference": 0.0, "generator_2": "n"},
                                    {"output_1": "x", "output_2": "y", "preference": None, "generator_2": "n"}]))
    (tmp_path / "instructions.jsonl").write_text(json.dumps({"index": 0, "instruction": "hi"}) + "\n")
    assert annotation_rows(reduced) == [{"generator_2": "m", "index": 3, "len_output_1": 10, "len_output_2": 4,
                                         "preference": 1.0}]
    rows = annotation_rows(official)
    assert rows[0] == {"generator_2": "n", "index": 0, "len_output_1": 3, "len_output_2": 6, "preference": 0.5}
    assert rows[1]["preference"] is None
    assert annotation_rows(tmp_path / "instructions.jsonl") is None  # not annotations: skipped
    assert sorted(read_annotation_folder(tmp_path)["generator_2"].unique()) == ["m", "n"]


@pytest.mark.slow
@needs_data
def test_lc_matches_the_leaderboard_with_a_difficulty_toaflow_estimates_from_the_40_files():
    frame, summary = compare(DATA)
    assert summary["models"] == 40 and summary["raw_exact"]
    assert summary["mean_abs_diff"] <= 1.0, summary
    assert summary["max_abs_diff"] <= 3.0, summary


def test_toa_lc_difficulty_writes_a_csv_the_evaluation_reads(tmp_path, capsys):
    import numpy as np

    from evaluation.metrics.difficulty import read_difficulty
    from toaflow.cli import main

    rng = np.random.default_rng(0)
    easiness = rng.normal(0, 1.5, 60)
    folder = tmp_path / "annotations"
    folder.mkdir()
    for model, strength in (("weak", -1.5), ("mid", 0.0), ("strong", 1.5)):
        lines = []
        for index in range(60):
            p = 1 / (1 + np.exp(-(strength + easiness[index])))
            lines.append(json.dumps({"index": index, "generator_2": model, "len_output_1": int(rng.integers(500, 900)),
                                     "len_output_2": int(rng.integers(300, 1200)),
                                     "preference": 1.0 + float(rng.random() < p)}))
        (folder / f"{model}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "difficulty.csv"
    assert main(["lc-difficulty", "--annotations", str(folder), "--out", str(out), "--quick"]) == 0
    assert "60 instructions from 3 models" in capsys.readouterr().out
    difficulty = read_difficulty(out)
    assert len(difficulty) == 60 and difficulty[0] == 0.0
    values = np.array([difficulty[i] for i in range(60)])
    assert np.corrcoef(values, easiness)[0, 1] > 0.6  # the joint fit recovers which instructions are easy
    assert main(["lc-difficulty", "--annotations", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
