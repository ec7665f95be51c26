"""`toa synthesize`: run the synthesis flow (prompts -> sharded search -> ranked SFT/DPO datasets)."""
from __future__ import annotations

import argparse

from toaflow.commands.common import add_config_option, check_run_id_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthesize", help="synthesize SFT/DPO datasets with the configured search (Prefect flow)",
        description="Ingest prompts, sample them shard by shard with the configured strategy, rank the candidates "
                    "into SFT and DPO datasets in the store. Re-running a run id resumes it.")
    add_config_option(parser)
    parser.add_argument("--run-id", help="run id to create or resume (default: <config name>-<time>)")
    parser.add_argument("--limit", type=int, help="use a seeded sample of at most N prompts")
    parser.add_argument("--prompts", metavar="SOURCE", help="prompt source overriding synthesis.prompts.source")
    parser.add_argument("--incremental", action="store_true",
                        help="skip prompts that earlier runs in this store already synthesized")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_run_id_options(args)
    from runconfig import load_config

    load_config(args.config)  # fail fast, before Prefect starts, on a bad config
    from flows.synthesize import synthesize

    result = synthesize(config=args.config, run_id=args.run_id, limit=args.limit, prompts=args.prompts,
                        incremental=args.incremental)
    counts = result["counts"]
    print(f"run folder: {result['run_uri']}")
    print(f"datasets: SFT {counts['sft_train']} train / {counts['sft_test']} test, "
          f"DPO {counts['dpo_train']} train / {counts['dpo_test']} test")
    print(f"summary: {result['report']}")
    print(f"dataset card: {result['card']}")
    return 0
