"""`toa train --config C --run-id R [--data-run-id D] [--force]`: the train flow (SFT then DPO)."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune with TRL: SFT, then DPO from the SFT policy (LoRA by default)",
        description="Train SFT then DPO on a run's synthesized datasets; each stage runs as its own process. "
                    "Re-running the same run id skips finished stages and resumes an interrupted one.")
    parser.add_argument("--config", required=True, help="run config YAML (its store and training sections are used)")
    parser.add_argument("--run-id", required=True, help="run whose models/ folder receives the trained models")
    parser.add_argument("--data-run-id", default=None,
                        help="run holding datasets/{sft,dpo}/ (default: the same run id)")
    parser.add_argument("--force", action="store_true", help="retrain stages that are already published")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from toaflow.cli import UserError
    from toaflow.commands.common import check_run_id_options

    check_run_id_options(args)
    from training.config import TrainingConfigError, load_stage_settings

    try:
        load_stage_settings(args.config)  # fail on a bad config before Prefect starts
    except TrainingConfigError as error:
        raise UserError(str(error)) from None

    from flows.train import train
    from training.launch import StageFailed

    try:
        result = train(args.config, run_id=args.run_id, data_run_id=args.data_run_id, force=args.force)
    except StageFailed as error:
        raise UserError(str(error)) from None
    summary = {stage: {"uri": value["uri"], **{k: value["metrics"].get(k) for k in ("global_step", "final_loss")}}
               for stage, value in result.items() if stage != "report"}
    summary["report"] = result.get("report")
    print(json.dumps(summary, indent=2, default=str))
    return 0
