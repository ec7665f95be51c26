"""Arena-Hard v2.0 with style control: toaflow's exact fit next to the official solver's settings, per category.

    .venv/bin/python bench/bench_arena_hard.py [--seeds N] [--quick]

Synthetic judgments, two categories as v2.0 has them (hard_prompt against o3-mini-2025-01-31: 500 questions;
creative_writing against gemini-2.0-flash-001: 250), five models answering every question, two games per question
with the positions swapped, ~1% unreadable verdicts, and a judge swayed by length and markdown as well as quality.
Each category is fitted on its own (its games, its baseline), with both solvers on the same bootstrap resamples:
`exact` (toaflow's Newton fit, to the optimum) and `official` (arena-hard-auto's torch L-BFGS: lr 0.1, 50
iterations, float32, start 0.5). Prints one row per category and model (mean over seeds) and ends with a
`SUMMARY` line: the largest |exact - official| per category. --quick: 100 + 50 questions, 3 models, 20 rounds,
one seed (a smoke run).

--official-code DIR (a checkout of lmarena/arena-hard-auto, e.g. at commit 196f6b8; needs pandas and tqdm) also
runs its own show_result.print_leaderboard_with_style_features on the same battles with the same bootstrap
indices (np.random.seed(seed) then np.random.randint, as it draws them) and compares its printed scores (0.1
precision) with toaflow's `official` solver: the check that `solver: official` is the leaderboard's fit.
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

# name, quality (logit against the baseline), mean answer tokens, markdown per 100 tokens (headers, lists, bold)
MODELS = [
    ("balanced", 0.3, 600, (1.0, 3.0, 2.0)),
    ("verbose", 0.2, 1400, (2.0, 6.0, 4.0)),
    ("terse", 0.4, 250, (0.0, 0.5, 0.2)),
    ("weak", -0.8, 500, (0.5, 2.0, 1.0)),
    ("strong", 1.2, 800, (1.5, 4.0, 3.0)),
]
CATEGORIES = {"hard_prompt": (500, 700, (1.0, 4.0, 2.0)), "creative_writing": (250, 450, (0.0, 0.5, 0.5))}
LENGTH_EFFECT, MARKDOWN_EFFECT = 1.6, 0.5  # the judge's taste for long, formatted answers (logit units)


def synthetic_judgments(category: str, questions: int, models, rng) -> dict[str, list[dict]]:
    """{model: judgments} for one category: labels of both games and both answers' style counts."""
    import numpy as np

    _, baseline_tokens, baseline_markdown = CATEGORIES[category]
    by_model: dict[str, list[dict]] = {}
    for name, quality, tokens, markdown in models:
        rows = []
        for q in range(questions):
            difficulty = rng.normal(0, 0.5)
            def answer(mean_tokens, per_100):
                n = max(int(rng.lognormal(np.log(mean_tokens), 0.35)), 5)
                return {"tokens": n, **{k: int(rng.poisson(r * n / 100)) for k, r in zip(("headers", "lists", "bold"), per_100)}}
            model, base = answer(tokens, markdown), answer(baseline_tokens, baseline_markdown)
            length = (model["tokens"] - base["tokens"]) / (model["tokens"] + base["tokens"])
            md = sum(model[k] / (model["tokens"] + 1) - base[k] / (base["tokens"] + 1) for k in ("headers", "lists", "bold"))
            logit = quality + difficulty + LENGTH_EFFECT * length + MARKDOWN_EFFECT * 10 * md
            labels = []
            for model_position in ("B", "A"):
                margin = logit + rng.normal(0, 0.8)
                if rng.random() < 0.01:
                    labels.append(None)  # the judge wrote no readable verdict
                    continue
                won = "strong_win" if margin > 1.5 else "win" if margin > 0.3 else "tie" if margin > -0.3 else \
                    "loss" if margin > -1.5 else "strong_loss"
                a_view = {"strong_win": ">>", "win": ">", "tie": "=", "loss": "<", "strong_loss": "<<"}[won]
                if model_position == "A":
                    labels.append({">>": "A>>B", ">": "A>B", "=": "A=B", "<": "B>A", "<<": "B>>A"}[a_view])
                else:
                    labels.append({">>": "B>>A", ">": "B>A", "=": "A=B", "<": "A>B", "<<": "A>>B"}[a_view])
            rows.append({"item_id": f"{category}-{q}", "labels": labels, "style": {"model": model, "baseline": base}})
        by_model[name] = rows
    return by_model


def official_check(code_dir: str, category: str, players, seed: int) -> float:
    """Largest |toaflow official solver - arena-hard-auto's show_result.py| over the players, both on the same
    battles and bootstrap indices; the official scores are printed to 0.1, so 0.0 means they agree."""
    import contextlib
    import io
    import re

    import numpy as np
    import pandas as pd

    from evaluation.metrics import arena_hard

    sys.path.insert(0, code_dir)
    try:
        import show_result  # arena-hard-auto's own module, read from the checkout
    finally:
        sys.path.remove(code_dir)
    baseline = arena_hard.CATEGORY_BASELINES[category]
    games = [(name, k, g) for name, rows in players.items() for k, g in enumerate(rows)]
    uids = [f"{name}|{k}" for name, k, _ in games]  # one metadata entry per game: the style of that game's answers
    battles = pd.DataFrame({"uid": uids, "model": [n for n, _, _ in games], "category": category,
                            "scores": [g.outcome for _, _, g in games]})

    def metadata(style):
        return {"token_len": style.get("tokens", 0), "header_count": {"h": style.get("headers", 0)},
                "list_count": {"l": style.get("lists", 0)}, "bold_count": {"b": style.get("bold", 0)}}

    styles = {name: {} for name in [*players, baseline]}
    for uid, (name, _, game) in zip(uids, games):
        styles[name][uid], styles[baseline][uid] = metadata(game.style), metadata(game.baseline_style)
    show_result.get_model_style_metadata = lambda benchmark: styles
    np.random.seed(seed)
    indices = np.random.randint(low=0, high=len(games), size=(100, len(games)))
    np.random.seed(seed)  # show_result draws the same indices
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()), arena_hard.one_torch_thread():
        show_result.print_leaderboard_with_style_features(battles, "synthetic", category, ["length", "markdown"])
    theirs = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s*\d+\s+(\S+)\s+([\d.]+)\s", printed.getvalue(), re.M)}

    class SameIndices:  # stands in for toaflow's generator: round r resamples indices[r]
        def __init__(self):
            self.round = 0

        def integers(self, low, high, size):
            self.round += 1
            return indices[self.round - 1]

    generator = arena_hard.np.random.default_rng
    arena_hard.np.random.default_rng = lambda seed: SameIndices()
    try:
        ours = arena_hard.arena_scores(players, style_control=True, rounds=100, solver="official", baseline=baseline)
    finally:
        arena_hard.np.random.default_rng = generator
    return max(abs(float(f"{ours[name].score:.1f}") - theirs[name]) for name in players)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="synthetic worlds to average over")
    parser.add_argument("--rounds", type=int, default=100, help="bootstrap rounds (arena-hard: 100)")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--official-code", help="a checkout of lmarena/arena-hard-auto: also compare with its "
                                                "show_result.py on the same battles and bootstrap indices")
    args = parser.parse_args()
    import numpy as np
    import torch  # noqa: F401 - imported before the clock starts, so the official fit's timing is the fit's

    from bench._common import machine
    from evaluation.metrics.arena_hard import CATEGORY_BASELINES, arena_scores, games_from_judgment

    seeds, rounds, models, scale = (1, 20, MODELS[:3], 0.2) if args.quick else (args.seeds, args.rounds, MODELS, 1.0)
    print("# arena-hard v2.0 per category, style control (length + markdown): exact vs official solver")
    print(f"# machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print(f"# {len(models)} models; questions " + ", ".join(f"{c} {int(n * scale)}" for c, (n, _, _) in CATEGORIES.items())
          + f"; {rounds} bootstrap rounds; {seeds} seed(s)")
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    seconds = {"exact": 0.0, "official": 0.0}
    against_official: dict[str, float] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        for category, (questions, _, _) in CATEGORIES.items():
            judgments = synthetic_judgments(category, int(questions * scale), models, rng)
            players = {name: [g for j in rows for g in games_from_judgment(name, j)] for name, rows in judgments.items()}
            for solver in ("exact", "official"):
                start = time.perf_counter()
                scores = arena_scores(players, style_control=True, rounds=rounds, seed=seed, solver=solver,
                                      baseline=CATEGORY_BASELINES[category])
                seconds[solver] += time.perf_counter() - start
                for name, score in scores.items():
                    results.setdefault((category, name), {}).setdefault(solver, []).append(score.score)
            if args.official_code:
                gap = official_check(args.official_code, category, players, seed)
                against_official[category] = max(gap, against_official.get(category, 0.0))
    print(f"\n{'category':<18}{'model':<10}{'exact':>8}{'official':>10}{'diff':>8}{'max|diff|':>11}")
    worst: dict[str, tuple[float, str]] = {}
    for (category, name), by_solver in results.items():
        exact, official = np.array(by_solver["exact"]), np.array(by_solver["official"])
        diff = exact - official
        print(f"{category:<18}{name:<10}{exact.mean():8.2f}{official.mean():10.2f}{diff.mean():+8.2f}{np.abs(diff).max():11.2f}")
        if np.abs(diff).max() > worst.get(category, (-1.0, ""))[0]:
            worst[category] = (float(np.abs(diff).max()), name)
    fits = seeds * len(CATEGORIES) * rounds
    print(f"\nwall time: exact {seconds['exact'] / fits * 1000:.1f} ms per fit, official {seconds['official'] / fits * 1000:.1f} ms "
          f"per fit (torch, one thread)")
    if against_official:
        print("toaflow's official solver vs arena-hard-auto's show_result.py (same battles and bootstrap indices, "
              "scores printed to 0.1): max |difference| " + ", ".join(f"{c} {v:.1f}" for c, v in against_official.items()))
    print("SUMMARY arena_hard max_abs_diff exact-vs-official: "
          + " ".join(f"{category}={value:.2f} ({name})" for category, (value, name) in worst.items())
          + f" seeds={seeds} rounds={rounds}")


if __name__ == "__main__":
    main()
