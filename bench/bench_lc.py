"""toaflow's AlpacaEval 2 LC win rate against the official leaderboard, model by model.

    .venv/bin/python bench/bench_lc.py [--data DIR] [--difficulty CSV] [--quick]

Data: the shared calibration set (`shared/data/alpaca_eval_lc/`: 40 models' official preferences and lengths and
the leaderboard; found beside the repository, or pass --data). The instruction difficulty is estimated by toaflow
from those same annotation files (AlpacaEval's joint GLM, `toa lc-difficulty`), unless --difficulty names a CSV
(e.g. the official instruction_difficulty.csv). df_gamed.csv is not available offline, so the LC uses the
documented length prior. Prints one row per model (raw win rate ours/official, LC ours/official, difference) and
a closing `SUMMARY` line: mean absolute LC difference, max, Spearman rank correlation with the official LC, and
whether the raw win rates agree exactly. --quick: 8 models and a fixed regularisation (a smoke run).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LEADERBOARD = "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"


def default_data_dir() -> Path | None:
    """The shared calibration set: $TOAFLOW_ALPACA_EVAL_LC, else shared/ beside the repository or its parent."""
    candidates = [os.environ.get("TOAFLOW_ALPACA_EVAL_LC")] + [
        str(base / "shared" / "data" / "alpaca_eval_lc") for base in (REPO.parent, REPO.parents[1])]
    for candidate in candidates:
        if candidate and (Path(candidate) / LEADERBOARD).is_file():
            return Path(candidate)
    return None


def compare(data: Path, *, difficulty: dict[int, float] | None = None, quick: bool = False):
    """(table rows, summary dict): toaflow's raw and LC win rates next to the leaderboard's, per model."""
    import numpy as np
    import pandas as pd
    from scipy.stats import spearmanr

    from evaluation.metrics.difficulty import estimate_instruction_difficulty, read_annotation_folder
    from evaluation.metrics.length_control import fit_length_controlled

    leaderboard = pd.read_csv(data / LEADERBOARD, index_col=0)
    annotations = read_annotation_folder(data)
    models = sorted(annotations["generator_2"].unique())
    if quick:
        models = models[::5]
        annotations = annotations[annotations["generator_2"].isin(models)]
    started = time.process_time()
    source = "given CSV"
    if difficulty is None:
        series = estimate_instruction_difficulty(annotations, C=2.78 if quick else None)
        difficulty = series.to_dict()
        source = f"estimated by toaflow from {series.attrs['models']} models (C={series.attrs['C']:.3g})"
    difficulty_cpu = time.process_time() - started
    rows = []
    started = time.process_time()
    for model in models:
        mine = annotations[(annotations["generator_2"] == model) & annotations["preference"].notna()]
        preference = mine["preference"].to_numpy(dtype=float)
        fit = fit_length_controlled(preference, mine["len_output_2"].to_numpy(), mine["len_output_1"].to_numpy(),
                                    [difficulty.get(int(i), 0.0) for i in mine["index"]])
        official = leaderboard.loc[model]
        rows.append({"model": model, "raw": 100 * preference.mean(), "raw_official": official["win_rate"],
                     "lc": fit.value, "lc_official": official["length_controlled_winrate"],
                     "se": fit.standard_error, "se_official": official["lc_standard_error"]})
    fit_cpu = time.process_time() - started
    frame = pd.DataFrame(rows)
    diff = (frame["lc"] - frame["lc_official"]).abs()
    summary = {"models": len(frame), "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
               "worst": frame.loc[diff.idxmax(), "model"],
               "spearman": float(spearmanr(frame["lc"], frame["lc_official"]).statistic),
               "spearman_raw": float(spearmanr(frame["raw"], frame["lc_official"]).statistic),
               "raw_max_abs_diff": float((frame["raw"] - frame["raw_official"]).abs().max()),
               "difficulty": source, "difficulty_cpu_s": difficulty_cpu, "lc_cpu_s_per_model": fit_cpu / len(frame)}
    summary["raw_exact"] = bool(summary["raw_max_abs_diff"] < 1e-6)
    return frame, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="the alpaca_eval_lc folder (default: shared/ nearby)")
    parser.add_argument("--difficulty", type=Path, default=None, help="instruction difficulty CSV to use instead")
    parser.add_argument("--quick", action="store_true", help="8 models, fixed regularisation")
    args = parser.parse_args(argv)
    data = args.data or default_data_dir()
    if data is None or not (data / LEADERBOARD).is_file():
        print("error: the AlpacaEval calibration set was not found; pass --data DIR (shared/data/alpaca_eval_lc)",
              file=sys.stderr)
        return 2
    import warnings

    warnings.filterwarnings("ignore")
    difficulty = None
    if args.difficulty:
        from evaluation.metrics.difficulty import read_difficulty

        difficulty = read_difficulty(args.difficulty)
    frame, summary = compare(data, difficulty=difficulty, quick=args.quick)
    os.system("uptime")  # noqa: S605 - the load next to the figures (the machine is shared)
    print(f"difficulty: {summary['difficulty']} ({summary['difficulty_cpu_s']:.1f} s CPU); "
          f"LC fit: {summary['lc_cpu_s_per_model']:.2f} s CPU per model")
    print(f"{'model':38s} {'raw':>7s} {'raw off':>7s} {'LC':>7s} {'LC off':>7s} {'diff':>6s} {'SE':>5s} {'SE off':>6s}")
    for row in frame.itertuples():
        print(f"{row.model:38s} {row.raw:7.2f} {row.raw_official:7.2f} {row.lc:7.2f} {row.lc_official:7.2f} "
              f"{row.lc - row.lc_official:+6.2f} {row.se:5.2f} {row.se_official:6.2f}")
    print(f"SUMMARY models={summary['models']} mean_abs_diff={summary['mean_abs_diff']:.2f} "
          f"max_abs_diff={summary['max_abs_diff']:.2f} ({summary['worst']}) spearman={summary['spearman']:.4f} "
          f"(raw win rate vs official LC: {summary['spearman_raw']:.4f}) raw_win_rate_exact={summary['raw_exact']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
