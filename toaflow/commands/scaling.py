"""`toa scaling`: every strategy at every budget on the same prompts; the table and the paper's scaling figure."""
from __future__ import annotations

import argparse

from toaflow.commands.common import add_config_option, check_run_id_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scaling", help="reward-vs-compute curves: each strategy at each budget on the same prompts (Prefect flow)",
        description="Search the same prompts with each strategy at each budget (generations per prompt), reusing "
                    "the generations of a larger budget where the strategy allows it, and write the table "
                    "(CSV/JSON) and the figure (PNG) to runs/<id>/scaling/ in the store. Re-running a run id "
                    "resumes the sweep.")
    add_config_option(parser)
    parser.add_argument("--budgets", default="16,40,80,160", metavar="N,N,...",
                        help="generations per prompt (default: 16,40,80,160)")
    parser.add_argument("--strategies", default="toa,random,ensemble,prs,seq_refine,moa", metavar="S,S,...",
                        help="strategies to compare (default: all six)")
    parser.add_argument("--limit", type=int, help="use a seeded sample of at most N prompts")
    parser.add_argument("--run-id", help="run id to create or resume (default: scaling-<config name>-<time>)")
    parser.add_argument("--prompts", metavar="SOURCE", help="prompt source overriding synthesis.prompts.source")
    parser.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples per 95%% interval")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_run_id_options(args)
    from toa_core.scaling import parse_budgets, parse_strategies
    from toaflow.cli import UserError
    from runconfig import load_config

    try:  # fail fast, before Prefect starts, on bad arguments or a bad config
        budgets, strategies = parse_budgets(args.budgets), parse_strategies(args.strategies)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.bootstrap_samples < 50:
        raise UserError("--bootstrap-samples must be at least 50 for a usable 95% interval")
    cfg = load_config(args.config)
    if cfg.synthesis.prompts is None and not args.prompts:
        raise UserError(f"{args.config}: no prompts: set synthesis.prompts.source or pass --prompts")
    from flows.scaling import scaling

    result = scaling(config=args.config, budgets=budgets, strategies=strategies, limit=args.limit,
                     run_id=args.run_id, prompts=args.prompts, bootstrap_samples=args.bootstrap_samples)
    print(f"run folder: {result['run_uri']}")
    top_k = result["rows"][0]["top_k"] if result["rows"] else 10
    print(f"{'strategy':<11} {'budget':>6} {'best':>9} {'top-' + str(top_k):>9} {'tokens':>10} {'failed':>6}")
    for row in result["rows"]:
        print(f"{row['strategy']:<11} {row['budget']:>6} {_fmt(row['mean_best_reward']):>9} "
              f"{_fmt(row['mean_topk_reward']):>9} {row['mean_tokens']:>10.0f} {row['generations_failed']:>6}")
    print(f"table: {result['table_csv']}")
    print(f"figure: {result['figure']}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
