"""Reward scoring: pairs scored per second with batching across concurrent trees vs one at a time.

`trees` concurrent searches each score `pairs_per_tree` (question, response) pairs one after another, as TOA
trees do. Two ways, same reward model, same pairs, same run:

- batched: through toa_core.rewards.batching.BatchingReward (concurrent single scores gathered into batches of
  `batch_size`, waiting at most `batch_wait_ms`), as the synthesis run wires it (factory.build_reward);
- one at a time: the same model's `score()` called directly (one forward pass per pair).

Models: the tiny random reward model (builtin:tiny-reward, HF sequence classifier) and the SmolLM2-135M yes/no
judge (builtin:smollm2, llm_judge; skipped in --quick). The scores of both ways are compared: batching must not
change them (beyond float noise from padding).

    python bench/bench_reward.py           # tiny reward model and SmolLM2 judge
    python bench/bench_reward.py --quick   # tiny reward model only, seconds
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, table  # noqa: E402

WORDS = ("the quick answer explains why water boils at lower temperature on a mountain because air pressure "
         "drops and molecules escape more easily so cooking takes longer than at sea level").split()


def make_pairs(n: int, seed: int = 0, answer_words: int = 60) -> list[tuple[list[dict], str]]:
    """Deterministic (messages, response) pairs of mixed length (so batches need padding, as in real runs)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        question = f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(8, 20))) + "?"
        answer = " ".join(rng.choices(WORDS, k=rng.randint(answer_words // 2, answer_words)))
        pairs.append(([{"role": "user", "content": question}], answer))
    return pairs


async def score_as_trees(reward, pairs, trees: int) -> tuple[list[float], float]:
    """`trees` concurrent workers, each scoring its share of the pairs sequentially; returns (scores, seconds)."""
    scores: list[float | None] = [None] * len(pairs)

    async def tree(worker: int) -> None:
        for index in range(worker, len(pairs), trees):
            messages, response = pairs[index]
            scores[index] = await reward.score(messages, response)

    started = time.perf_counter()
    await asyncio.gather(*(tree(w) for w in range(trees)))
    return scores, time.perf_counter() - started


def build_inner(kind: str, batch_size: int):
    if kind == "tiny-reward":
        from toa_core.rewards.hf_classifier import HFClassifierReward

        return HFClassifierReward("builtin:tiny-reward", batch_size=batch_size, max_length=1024)
    from toa_core.rewards.llm_judge import LLMJudgeReward

    return LLMJudgeReward("builtin:smollm2", batch_size=batch_size, max_length=1024)


async def measure(kind: str, n_pairs: int, trees: int, batch_size: int, batch_wait_ms: float) -> dict:
    from toa_core.rewards.batching import BatchingReward

    pairs = make_pairs(n_pairs)
    inner = build_inner(kind, batch_size)
    await inner.score(*pairs[0])  # load the model outside the measured window
    single_scores, single_s = await score_as_trees(inner, pairs, trees)
    batched = BatchingReward(inner, batch_size=batch_size, batch_wait_ms=batch_wait_ms)
    batched_scores, batched_s = await score_as_trees(batched, pairs, trees)
    await inner.aclose()
    max_diff = max(abs(a - b) for a, b in zip(single_scores, batched_scores))
    return {"model": kind, "pairs": n_pairs, "trees": trees, "batch_size": batch_size,
            "single_pps": n_pairs / single_s, "batched_pps": n_pairs / batched_s,
            "speedup": single_s / batched_s, "batches": batched.batches_sent, "max_score_diff": max_diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny reward model only, fewer pairs")
    parser.add_argument("--trees", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=512, help="pairs per measurement (tiny reward model)")
    parser.add_argument("--judge-pairs", type=int, default=64, help="pairs per measurement (SmolLM2 judge)")
    args = parser.parse_args(argv)
    header("reward scoring (pairs/s, batched across trees vs one at a time)", sys.argv)
    runs = [("tiny-reward", args.pairs if not args.quick else min(args.pairs, 64))]
    if not args.quick:
        runs.append(("smollm2-judge", args.judge_pairs))
    trees = args.trees if not args.quick else [16]
    rows, results = [], []
    for kind, n_pairs in runs:
        for n_trees in trees:
            result = asyncio.run(measure(kind, n_pairs, n_trees, args.batch_size, args.batch_wait_ms))
            results.append(result)
            rows.append([kind, n_trees, n_pairs, result["single_pps"], result["batched_pps"], result["speedup"],
                         result["batches"], result["max_score_diff"]])
            print(f"  {kind} trees={n_trees}: {result['single_pps']:.1f} -> {result['batched_pps']:.1f} pairs/s "
                  f"(x{result['speedup']:.2f}, {result['batches']} batches)", flush=True)
    print()
    print(table(["model", "trees", "pairs", "one_at_a_time/s", "batched/s", "speedup", "batches", "max|diff|"],
                rows))
    parts = [f"{r['model']} x{r['speedup']:.2f} at {r['trees']} trees ({r['batched_pps']:.3g} pairs/s)"
             for r in results]
    print(f"\nSUMMARY reward: batched vs one at a time: {'; '.join(parts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
