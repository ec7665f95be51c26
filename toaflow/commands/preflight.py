"""`toa preflight --config C`: check on this (CPU) host what would break the run on GPUs, before any are reserved."""
from __future__ import annotations

import argparse

from toaflow.commands.common import add_config_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preflight", help="check a config against the installed packages and the models' own files (no GPU, offline)",
        description="One line per check: ok, problem (with the fix), or note (not checkable here). Checks installed "
                    "versions against the pins; each model's config.json (local folder or hub cache, never "
                    "downloaded): architecture, context vs max_model_len/max_tokens, chat template and its "
                    "assistant markers, pad token, remote code imports; server flags against the installed vLLM / "
                    "vllm-router; GPU memory per server; reward batch shapes. Exit code 1 when a problem is found.")
    add_config_option(parser)
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0,
                        help="memory of one GPU on the target hosts (default 80: H100/A100 80 GB)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from infra.preflight import problems, report, run_preflight

    checks = run_preflight(args.config, gpu_memory_gb=args.gpu_memory_gb)
    print(report(checks))
    return 1 if problems(checks) else 0
