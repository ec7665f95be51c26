"""`toa sample`: run the search engine on a prompt file without Prefect and write the candidate rows."""
from __future__ import annotations

import argparse

from toaflow.commands.common import add_config_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample", help="run one search strategy on a prompt file and write candidates (no Prefect)",
        description="Search every prompt with the configured models and reward, and write one row per generated "
                    "candidate to a parquet file (schema: docs/data_formats.md).")
    add_config_option(parser)
    parser.add_argument("--prompts", required=True, metavar="FILE",
                        help="JSONL with `instruction`, `prompt` or `messages` per line (any ingest source works)")
    from toa_core.config import STRATEGIES

    parser.add_argument("--strategy", choices=STRATEGIES, help="override search.strategy")
    parser.add_argument("--budget", type=int, help="override search.budget (generations per prompt)")
    parser.add_argument("--out", required=True, metavar="FILE.parquet", help="where to write the candidate rows")
    parser.add_argument("--limit", type=int, help="use a seeded sample of at most M prompts")
    parser.add_argument("--seed", type=int, help="override search.seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq
    from tqdm import tqdm

    from infra.runtime import model_servers, open_backends
    from infra.run_ids import new_run_id
    from toa_core.candidate_table import candidates_to_table, trees_to_jsonl
    from toa_core.engine import run_search
    from toa_core.ingest import IngestConfig, load_prompts
    from toa_core.strategies import SearchContext
    from runconfig import load_config

    overrides = {f"search.{key}": value for key, value in
                 (("strategy", args.strategy), ("budget", args.budget), ("seed", args.seed)) if value is not None}
    cfg = load_config(args.config, overrides)
    # The config's column mapping and checks (synthesis.prompts.*) apply to --prompts too; hints name those keys.
    mapping = cfg.synthesis.prompts.model_dump(exclude={"source", "format", "limit", "seed"}) \
        if cfg.synthesis.prompts else {}
    report = load_prompts(IngestConfig(**mapping, source=args.prompts, limit=args.limit, seed=cfg.search.seed))
    if report.quarantined:
        first = report.quarantined[0]
        print(f"warning: {len(report.quarantined)} bad prompt rows skipped (first: {first['source']} line "
              f"{first['line']}, field {first['field']}: {first['reason']})", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    async def search(endpoints):
        async with open_backends(cfg, endpoints) as (agents, reward):
            ctx = SearchContext(agents=agents, reward=reward, search=cfg.search)
            with tqdm(total=len(report.prompts), unit="prompt", disable=not sys.stderr.isatty()) as bar:
                return await run_search(report.prompts, ctx, progress=lambda done: bar.update(done - bar.n))

    with model_servers(cfg, new_run_id(f"sample-{cfg.name}")) as endpoints:
        results = asyncio.run(search(endpoints))
    candidates = [c for result in results for c in result.candidates]
    table = candidates_to_table(candidates)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    trees = [(r.prompt.prompt_id, r.tree, r.search) for r in results if r.tree is not None]
    if trees:
        out.with_suffix(".trees.jsonl").write_text(trees_to_jsonl(trees), encoding="utf-8")
    failed = sum(1 for c in candidates if c.error)
    retries = sum(r.retries for r in results)
    best = [r.best for r in results if r.best is not None]
    print(f"wrote {table.num_rows} candidates for {len(results)} prompts to {out}")
    if trees:
        print(f"search trees: {out.with_suffix('.trees.jsonl')}")
    if best:
        print(json.dumps({"example_prompt": results[0].prompt.question[:200],
                          "best_answer": (results[0].best.text or "")[:400] if results[0].best else None},
                         ensure_ascii=False, indent=2))
    print(f"summary: {table.num_rows} rows, {failed} errors, {retries} retries "
          f"({len(results)} prompts, {len(report.quarantined)} prompt rows skipped)")
    return 0
