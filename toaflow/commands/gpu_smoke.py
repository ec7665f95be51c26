"""`toa gpu-smoke`: the first run on a machine with a GPU, from local weights (infra/gpu_smoke.py)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gpu-smoke", help="on a GPU host: vLLM chat + reward servers, TOA sampling, 10 SFT + 10 DPO steps, evaluation",
        description="Runs, from local model folders: toa preflight; toa sample of 8 prompts with TOA over a vLLM chat "
                    "server scored by a vLLM reward server; toa synthesize of those prompts; 10 LoRA SFT + 10 LoRA DPO "
                    "steps of the policy; toa evaluate on 16 prompts. Writes OUT/report.md and OUT/report.json (what "
                    "ran, times, throughput, warnings). About 10 minutes on one H100 with a 1B-class policy.")
    parser.add_argument("--chat-model", required=True, metavar="DIR", help="local folder of a small chat model")
    parser.add_argument("--reward-model", required=True, metavar="DIR",
                        help="local folder of a sequence-classification reward model")
    parser.add_argument("--policy-model", metavar="DIR", help="local folder of the model to train (default: the chat model)")
    parser.add_argument("--vllm", default="vllm", help="the `vllm` executable of vLLM's environment (default: on PATH)")
    parser.add_argument("--gpu", type=int, default=0, help="GPU id of the chat server (default 0)")
    parser.add_argument("--reward-gpu", type=int, help="GPU id of the reward server (default: the same GPU)")
    parser.add_argument("--prompts", help="prompt file (default: data/prompts/mixed_instructions.jsonl)")
    parser.add_argument("--out", default="gpu-smoke", help="output folder: config, logs, store, report (default gpu-smoke)")
    parser.add_argument("--run-id", default="gpu-smoke", help="run id of the synthesis/training/evaluation (default gpu-smoke)")
    parser.add_argument("--dry-run", action="store_true", help="write the config and print the steps; run nothing")
    parser.set_defaults(func=run)


def options_from(args: argparse.Namespace):
    from infra.gpu_smoke import SmokeOptions
    from toaflow.commands.common import check_run_id_options

    check_run_id_options(args)
    extra = {"prompts": args.prompts} if args.prompts else {}
    return SmokeOptions(chat_model=args.chat_model, reward_model=args.reward_model, policy_model=args.policy_model,
                        out=args.out, vllm=args.vllm, gpu=args.gpu, reward_gpu=args.reward_gpu, run_id=args.run_id,
                        **extra)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from infra.gpu_smoke import SmokeError, run_smoke, smoke_config, smoke_steps
    from toaflow.cli import UserError

    options = options_from(args)
    try:
        if args.dry_run:
            out = Path(options.out).expanduser().resolve()
            out.mkdir(parents=True, exist_ok=True)
            config_path = out / "smoke.yaml"
            config_path.write_text(yaml.safe_dump(smoke_config(options), sort_keys=False))
            print(f"config: {config_path}")
            for name, argv in smoke_steps(options, config_path):
                print(f"{name}: {' '.join(argv)}")
            return 0
        report = run_smoke(options)
    except SmokeError as error:
        raise UserError(str(error)) from None
    print(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['minutes']} min; report: "
          f"{Path(options.out).expanduser().resolve() / 'report.md'}")
    return 0 if report["passed"] else 1
