"""Decontamination at scale: checking 100k prompts against the shipped evaluation-set index (time, peak memory).

Synthetic prompts (Zipf-distributed words from a 30k-word vocabulary, log-normal lengths: median ~80 tokens, mean
~120, up to 2,000) stand in for a prompt set; 1% of them carry a copy of an item of a synthetic benchmark (1,000
items of 20-60 tokens) that is merged into the shipped index, inside some unrelated text and with other case
and spacing. Each cell runs in its own child process and reports wall time, CPU time and peak RSS above the
child's peak RSS before checking (the prompts are made before that, so a cell needing less memory than making
them did shows 0):
- toaflow:   toa_core.decontamination over the shipped index + the synthetic benchmark (what a run does);
- toaflow-small: the same code over the synthetic benchmark alone;
- reference: the plain approach, a Python set of the normalised 13-gram tuples of the synthetic benchmark and a
  loop over every prompt's 13-grams (the same normalisation, the same rule for items of 13 tokens or more).
toaflow-small vs reference is the side-by-side ratio (same index content); the toaflow cell is the target.

    python bench/bench_decontamination.py            # 100k prompts (target: < 60 s, < 1 GB)
    python bench/bench_decontamination.py --quick    # 5k prompts, seconds
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_result, header, peak_rss_mib, run_child, table  # noqa: E402

SEEDED_SHARE = 0.01
BENCH_ITEMS = 1000


def make_data(n_prompts: int, seed: int = 0) -> tuple[list[str], list[tuple[str, str]], list[int]]:
    """(prompts, synthetic benchmark items, indexes of the prompts that carry an item)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = rng.integers(97, 123, size=(30_000, 9), dtype=np.uint8)
    vocabulary = [bytes(row[:size]).decode() for row, size in zip(codes, rng.integers(2, 10, size=30_000))]
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()

    def words(count: int) -> list[str]:
        return [vocabulary[i] for i in rng.choice(len(vocabulary), size=count, p=weights)]

    items = [(f"item-{i}", " ".join(words(int(rng.integers(20, 61))))) for i in range(BENCH_ITEMS)]
    lengths = np.clip(rng.lognormal(np.log(80), 0.9, size=n_prompts), 3, 2000).astype(int)
    stream = words(int(lengths.sum()))  # one draw for all prompts
    punctuation = [",", ".", "?", ""]
    prompts, offset = [], 0
    for length in lengths:
        tokens = stream[offset:offset + length]
        offset += length
        for position in range(7, len(tokens), 11):
            tokens[position] += punctuation[position % 4]
        prompts.append(" ".join(tokens).capitalize())
    seeded = sorted(rng.choice(n_prompts, size=max(1, int(n_prompts * SEEDED_SHARE)), replace=False).tolist())
    for number, prompt_index in enumerate(seeded):
        _, text = items[number % BENCH_ITEMS]
        prompts[prompt_index] = f"{prompts[prompt_index][:200]} {text.upper().replace(' ', '  ')} thanks"
    return prompts, items, seeded


def child(args: argparse.Namespace) -> None:
    import pyarrow.compute  # noqa: F401  (imports are not part of the checking cost)

    import toa_core.decontamination  # noqa: F401

    prompts, items, seeded = make_data(args.prompts)
    base_rss = peak_rss_mib()
    started, cpu_started = time.perf_counter(), time.process_time()
    if args.child == "reference":
        from toa_core.decontamination import normalise

        grams: dict[tuple[str, ...], str] = {}
        for item_id, text in items:
            tokens = normalise(text)
            for i in range(len(tokens) - 12):
                grams.setdefault(tuple(tokens[i:i + 13]), item_id)
        found = []
        for prompt in prompts:
            tokens = normalise(prompt)
            found.append(next((grams[g] for g in (tuple(tokens[i:i + 13]) for i in range(len(tokens) - 12))
                               if g in grams), None))
    else:
        from toa_core.decontamination import DecontaminationIndex, load_indexes

        index = load_indexes([], shipped=args.child == "toaflow")
        extra = DecontaminationIndex(index.ngram, index.min_tokens, index.stride, index.max_items_per_ngram)
        extra.add_benchmark("synthetic", items)
        index.merge(extra)
        found = [m.item_id if m else None for m in index.check(prompts)]
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    seeded_set = set(seeded)
    emit_result({"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base_rss,
                 "found_seeded": sum(1 for i in seeded if found[i] is not None), "seeded": len(seeded),
                 "false_positives": sum(1 for i, f in enumerate(found) if f is not None and i not in seeded_set),
                 "tokens": sum(len(p.split()) for p in prompts)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5k prompts")
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--child", choices=["toaflow", "toaflow-small", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts = min(args.prompts, 5_000)
    if args.child:
        child(args)
        return 0
    header(f"decontamination of {args.prompts} prompts against the shipped index", sys.argv)
    here = str(Path(__file__).resolve())
    results = {}
    for cell in ("toaflow", "toaflow-small", "reference"):
        results[cell] = run_child([here, "--child", cell, "--prompts", str(args.prompts)])
        r = results[cell]
        print(f"  {cell}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, peak RSS "
              f"+{r['peak_rss_mib'] - r['base_rss_mib']:.0f} MiB", flush=True)
    print()
    print(table(["cell", "prompts", "tokens", "wall_s", "cpu_s", "prompts/s", "rss_MiB", "seeded found",
                 "false pos."],
                [[cell, args.prompts, r["tokens"], r["wall_s"], r["cpu_s"], args.prompts / r["wall_s"],
                  r["peak_rss_mib"] - r["base_rss_mib"], f"{r['found_seeded']}/{r['seeded']}", r["false_positives"]]
                 for cell, r in results.items()]))
    main_cell, small, reference = results["toaflow"], results["toaflow-small"], results["reference"]
    for cell, r in results.items():
        if r["found_seeded"] != r["seeded"]:
            raise AssertionError(f"{cell} found {r['found_seeded']} of {r['seeded']} seeded prompts")
    rss = main_cell["peak_rss_mib"] - main_cell["base_rss_mib"]
    print(f"\nSUMMARY decontamination: {args.prompts} prompts in {main_cell['wall_s']:.1f} s "
          f"({main_cell['cpu_s']:.1f} s CPU), peak RSS +{rss:.0f} MiB (target < 60 s, < 1024 MiB); "
          f"CPU time {small['cpu_s'] / max(reference['cpu_s'], 1e-9):.2f}x a plain Python set's on the same index; "
          f"seeded found {main_cell['found_seeded']}/{main_cell['seeded']}, "
          f"false positives {main_cell['false_positives']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
