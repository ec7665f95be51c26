"""`toa evaluate --config C --model URI [--run-id R]`: the evaluate flow."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a model on the configured benchmarks (judges, win rates, BLEU, math accuracy)",
        description="Generate answers to every benchmark prompt with the model under test, judge them, and write "
                    "outputs, judgments, scores.json, a report and a comparison plot to runs/<R>/eval/<benchmark>/.")
    parser.add_argument("--config", required=True, help="run config YAML (its store, reward and evaluation sections)")
    parser.add_argument("--model", default=None,
                        help="runs/<id>/models/dpo (store key or URI), a local model folder, builtin:NAME, or "
                             "http://host:port/v1#served-name; default: the run's trained model")
    parser.add_argument("--run-id", default=None,
                        help="run whose eval/ folder receives the results (default: the run named in --model, "
                             "else a new id)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.evaluate import run_of_model
    from toaflow.cli import UserError
    from toaflow.commands.common import check_run_id_options
    from runconfig import load_config

    check_run_id_options(args)
    run_of_model(args.model)

    load_config(args.config)  # a bad config fails here, before Prefect starts
    if args.model is None and args.run_id is None:
        raise UserError("pass --model (what to evaluate) or --run-id (evaluate that run's trained model)")

    from evaluation.benchmarks import BenchmarkError
    from evaluation.generation import ModelSourceError
    from evaluation.judges.translation import CometUnavailable
    from flows.evaluate import evaluate
    from toa_core.backends.assets import AssetError
    from toa_core.backends.factory import FactoryError

    try:
        result = evaluate(args.config, run_id=args.run_id, model=args.model)
    except (BenchmarkError, ModelSourceError, CometUnavailable, AssetError, FactoryError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    print(json.dumps(result, indent=2, default=str))
    return 0
