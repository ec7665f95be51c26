"""`toa`: the command line. Each subcommand lives in toaflow/commands/<name>.py."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from runconfig import ConfigError

# In the order a user meets them.
COMMANDS = ("preflight", "sample", "synthesize", "train", "evaluate", "pipeline", "scaling", "index", "servers",
            "decontam", "deploy", "lc-difficulty", "gpu-smoke")


class UserError(Exception):
    """A problem the user can fix (bad input, missing file, unreachable endpoint): printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toa",
        description="toaflow: multi-agent data synthesis with tree search, TRL training and evaluation.",
        epilog="Run `toa COMMAND --help` for a command's options. `make demo` runs `toa pipeline --config configs/demo.yaml`.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"toaflow.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as error:
            if error.name == f"toaflow.commands.{name.replace('-', '_')}":
                continue  # a command not built yet
            raise
        module.register(subparsers)
    return parser


def _interrupt_on_sigterm(signum, frame) -> None:
    # A scheduler, a Prefect cancellation or `timeout` sends SIGTERM: unwind like Ctrl-C, so context managers
    # stop the model servers this run started and finished work stays published.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from infra.secrets import redact_log_records
    from toa_core.credentials import redact_text
    from toaflow.commands.common import hide_prefect_tracebacks, quiet_prefect_defaults, user_facing_errors

    quiet_prefect_defaults()
    redact_log_records()
    user_errors = (ConfigError, UserError) + user_facing_errors()
    hide_prefect_tracebacks(user_errors)
    try:
        return int(args.func(args) or 0)
    except user_errors as error:  # bad input, unreachable endpoint, ...: the message says what to fix
        print(f"error: {redact_text(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept in the store, re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
