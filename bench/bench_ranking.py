"""Ranking at scale: time and peak memory of building SFT/DPO datasets from candidate files, 100k to 1M rows.

Synthetic candidate shards are written first (256 prompts x 160 candidates per shard file, as a synthesis run
writes them; texts of ~`text_chars` characters, ~2% failed candidates). Then, for each size, a fresh child
process runs `toa_core.ranking.build_datasets` on the shard files and reports its wall time, CPU time and
peak memory: peak RSS (ru_maxrss) above the child's RSS before ranking, Arrow's memory pool peak, and the
Python heap peak (tracemalloc). The table shows how each grows from the smallest size to the largest.

    python bench/bench_ranking.py            # 100k, 250k, 500k, 1M rows (1M = 6,250 prompts x 160)
    python bench/bench_ranking.py --quick    # 16k and 48k rows, seconds
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_result, header, peak_rss_mib, run_child, table  # noqa: E402

PER_PROMPT = 160
PROMPTS_PER_SHARD = 256


def write_candidates(folder: Path, n_prompts: int, text_chars: int, seed: int = 0) -> list[str]:
    """Write shard files of synthetic candidates; return their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toa_core.candidate_table import candidates_to_table  # noqa: F401  (schema owner; columns below match it)
    from toa_core.records import CANDIDATE_COLUMNS

    rng = random.Random(seed)
    base_texts = ["".join(rng.choices("abcdefghij klmnopqrstuvwxyz", k=text_chars)) for _ in range(64)]
    paths = []
    for shard, first in enumerate(range(0, n_prompts, PROMPTS_PER_SHARD)):
        prompts = range(first, min(n_prompts, first + PROMPTS_PER_SHARD))
        n = len(prompts) * PER_PROMPT
        prompt_ids = [f"p{p:07d}" for p in prompts for _ in range(PER_PROMPT)]
        indices = list(range(PER_PROMPT)) * len(prompts)
        failed = [rng.random() < 0.02 for _ in range(n)]
        rewards = [None if f else rng.gauss(0.0, 1.0) for f in failed]
        columns = {
            "prompt_id": prompt_ids,
            "candidate_id": [f"{pid}-{i:04d}" for pid, i in zip(prompt_ids, indices)],
            "parent_id": [None] * n,
            "kind": ["fresh"] * n,
            "model": [f"model-{i % 3}" for i in indices],
            "depth": [1] * n,
            "text": [None if f else f"{base_texts[i % 64]} #{i}" for f, i in zip(failed, indices)],
            "reward": rewards,
            "reward_norm": rewards,
            "prompt_tokens": [40] * n,
            "completion_tokens": [text_chars // 4] * n,
            "latency_s": [1.0] * n,
            "finish_reason": [None if f else "stop" for f in failed],
            "strategy": ["toa"] * n,
            "seed": indices,
            "error": ["HTTP 500 after 4 attempts" if f else None for f in failed],
        }
        assert tuple(columns) == tuple(CANDIDATE_COLUMNS)
        path = folder / f"shard-{shard:05d}.parquet"
        pq.write_table(pa.table(columns), path)
        paths.append(str(path))
    return paths


def child(args: argparse.Namespace) -> None:
    import tracemalloc

    import pyarrow as pa

    from toa_core.ranking import RankingConfig, build_datasets

    paths = sorted(str(p) for p in Path(args.child).glob("shard-*.parquet"))
    n_prompts = args.child_prompts
    prompts = {f"p{p:07d}": [{"role": "user", "content": f"Prompt number {p}: write something useful."}]
               for p in range(n_prompts)}
    base_rss = peak_rss_mib()
    tracemalloc.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    sft_train, sft_test, dpo_train, dpo_test, stats = build_datasets(paths, prompts, RankingConfig(), "bench")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    emit_result({"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base_rss,
                 "arrow_peak_mib": pa.default_memory_pool().max_memory() / 2**20,
                 "heap_peak_mib": heap_peak / 2**20, "candidates": stats.candidates,
                 "sft": sft_train.num_rows + sft_test.num_rows, "dpo": dpo_train.num_rows + dpo_test.num_rows})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16k and 48k rows")
    parser.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")],
                        default=[100_000, 250_000, 500_000, 1_000_000], help="candidate rows per size")
    parser.add_argument("--text-chars", type=int, default=600, help="characters per candidate text")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-prompts", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.rows, args.text_chars = [16_000, 48_000], min(args.text_chars, 200)
    header("ranking at scale (build SFT/DPO datasets from candidate files)", sys.argv)
    here = str(Path(__file__).resolve())
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="toaflow-bench-ranking-") as scratch:
        for n_rows in args.rows:
            n_prompts = -(-n_rows // PER_PROMPT)
            folder = Path(scratch) / f"rows-{n_rows}"
            folder.mkdir()
            write_started = time.perf_counter()
            paths = write_candidates(folder, n_prompts, args.text_chars)
            size_mib = sum(Path(p).stat().st_size for p in paths) / 2**20
            write_s = time.perf_counter() - write_started
            result = run_child([here, "--child", str(folder), "--child-prompts", str(n_prompts)])
            if result["candidates"] != n_prompts * PER_PROMPT:
                raise AssertionError(f"ranked {result['candidates']} candidates, wrote {n_prompts * PER_PROMPT}")
            result.update(rows=n_prompts * PER_PROMPT, prompts=n_prompts, files_mib=size_mib)
            results.append(result)
            rss_growth = result["peak_rss_mib"] - result["base_rss_mib"]
            rows.append([result["rows"], n_prompts, len(paths), size_mib, result["wall_s"], result["cpu_s"],
                         rss_growth, result["arrow_peak_mib"], result["heap_peak_mib"],
                         1e6 * result["wall_s"] / result["rows"], result["sft"], result["dpo"]])
            print(f"  {result['rows']} rows: written in {write_s:.1f} s ({size_mib:.0f} MiB); ranked in "
                  f"{result['wall_s']:.2f} s, peak RSS +{rss_growth:.0f} MiB", flush=True)
            for path in paths:
                Path(path).unlink()
    print()
    print(table(["rows", "prompts", "files", "files_MiB", "wall_s", "cpu_s", "rss_MiB", "arrow_MiB", "heap_MiB",
                 "us/row", "sft", "dpo"], rows))
    small, large = results[0], results[-1]
    scale = large["rows"] / small["rows"]
    time_growth = large["wall_s"] / small["wall_s"]
    mem_small = max(1e-9, small["peak_rss_mib"] - small["base_rss_mib"])
    mem_growth = (large["peak_rss_mib"] - large["base_rss_mib"]) / mem_small
    print(f"\nSUMMARY ranking: {large['rows']} rows in {large['wall_s']:.2f} s with peak RSS "
          f"+{large['peak_rss_mib'] - large['base_rss_mib']:.0f} MiB; from {small['rows']} rows (x{scale:.0f}) "
          f"time grew x{time_growth:.1f}, memory x{mem_growth:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
