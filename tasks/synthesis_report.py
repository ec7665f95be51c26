"""What a synthesis run shows people: per-model table, markdown summary, reward distribution plot."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def per_model_table(samples: pa.Table) -> list[dict[str, Any]]:
    """One row per model: share of prompts where it wrote the best response, reward stats, tokens, errors."""
    rows = []
    scored = samples.filter(pc.is_valid(samples["reward"]))
    best_by_prompt: dict[str, tuple[float, str]] = {}
    for prompt_id, model, reward in zip(scored["prompt_id"].to_pylist(), scored["model"].to_pylist(),
                                        scored["reward"].to_pylist()):
        if prompt_id not in best_by_prompt or reward > best_by_prompt[prompt_id][0]:
            best_by_prompt[prompt_id] = (reward, model)
    best_counts: dict[str, int] = {}
    for _, model in best_by_prompt.values():
        best_counts[model] = best_counts.get(model, 0) + 1
    n_prompts = max(len(best_by_prompt), 1)
    for model in sorted(set(samples["model"].to_pylist())):
        mine = samples.filter(pc.equal(samples["model"], model))
        rewards = np.array([r for r in mine["reward"].to_pylist() if r is not None], dtype=float)
        rows.append({
            "model": model,
            "generations": mine.num_rows,
            "best_share": round(best_counts.get(model, 0) / n_prompts, 4),
            "mean_reward": round(float(rewards.mean()), 4) if rewards.size else None,
            "max_reward": round(float(rewards.max()), 4) if rewards.size else None,
            "prompt_tokens": int(pc.sum(mine["prompt_tokens"]).as_py() or 0),
            "completion_tokens": int(pc.sum(mine["completion_tokens"]).as_py() or 0),
            "errors": mine.num_rows - mine["error"].null_count,
        })
    return rows


def reward_distribution_figure(samples: pa.Table):
    """Box plots of raw reward by model and by tree depth (errors excluded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = samples.filter(pc.is_valid(samples["reward"]))
    models = sorted(set(scored["model"].to_pylist()))
    depths = sorted(set(scored["depth"].to_pylist()))
    rewards = np.array(scored["reward"].to_pylist(), dtype=float)
    model_col = np.array(scored["model"].to_pylist(), dtype=object)
    depth_col = np.array(scored["depth"].to_pylist())
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.boxplot([rewards[model_col == m] for m in models] or [[]], tick_labels=models or ["-"])
    left.set_title("reward by model")
    left.set_ylabel("raw reward")
    left.tick_params(axis="x", rotation=20)
    right.boxplot([rewards[depth_col == d] for d in depths] or [[]], tick_labels=[str(d) for d in depths] or ["-"])
    right.set_title("reward by tree depth")
    right.set_xlabel("depth (1 = fresh answer, +1 per refinement/aggregation)")
    figure.suptitle(f"{scored.num_rows} scored candidates over {len(set(scored['prompt_id'].to_pylist()))} prompts")
    return figure


def summary_markdown(run_id: str, run_uri: str, ingest: dict[str, Any], shards: list[dict[str, Any]],
                     ranking: dict[str, Any], model_rows: list[dict[str, Any]], datasets: dict[str, str],
                     retries_total: int | None = None) -> str:
    """The run summary shown as a Prefect markdown artifact and saved as reports/synthesis.md.

    Generation counts cover every attempt of the run (a resume that skipped finished shards still reports them),
    with what this attempt did in parentheses; `retries_total` is the manifest's cumulative retry count.
    """
    attempt_retries = sum(s["retries"] for s in shards)
    lines = [
        f"# Synthesis run `{run_id}`",
        "",
        f"Run folder: `{run_uri}`",
        "",
        "| what | count |", "|---|---|",
        f"| prompts ingested | {ingest.get('prompts', 0)} |",
        f"| rows quarantined | {ingest.get('quarantined', 0)} |",
        f"| duplicate prompts dropped | {ingest.get('duplicates', 0)} |",
        f"| prompts searched in this run | {sum(s['prompts'] for s in shards)} |",
        f"| shards | {len(shards)} ({sum(1 for s in shards if s['skipped'])} already complete) |",
        f"| candidates generated | {sum(s['candidates'] for s in shards)} "
        f"({sum(s.get('new_candidates', 0) for s in shards)} in this attempt) |",
        f"| failed generations | {sum(s['errors'] for s in shards)} "
        f"({sum(s.get('new_errors', 0) for s in shards)} in this attempt) |",
        f"| request retries | {attempt_retries if retries_total is None else retries_total} "
        f"({attempt_retries} in this attempt) |",
    ]
    lines += [f"| {key.replace('_', ' ')} | {value} |" for key, value in ranking.items()]
    lines += ["", "## Models", "", "| model | generations | best share | mean reward | max reward | errors |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['generations']} | {r['best_share']:.1%} | {r['mean_reward']} | {r['max_reward']} "
              f"| {r['errors']} |" for r in model_rows]
    lines += ["", "## Datasets", ""] + [f"- {name}: `{uri}`" for name, uri in datasets.items()]
    return "\n".join(lines) + "\n"
