"""`toa servers up|status|down`: start, inspect and stop by hand the model servers a config names."""
from __future__ import annotations

import argparse

from toaflow.commands.common import add_config_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "servers", help="start, check or stop the model servers a config names (vLLM on GPU, transformers on CPU)",
        description="Flows start and stop the servers of `servers:` themselves when `servers.managed: true`. "
                    "These commands do it by hand, for debugging or for servers shared by several runs: `up` "
                    "starts them and returns once all are healthy, `status` shows them, `down` stops them. "
                    "Only processes `up` started are ever stopped.")
    parser.add_argument("action", choices=("up", "status", "down"))
    add_config_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from infra.runtime import detached_servers_folder
    from infra.servers import detached_status, start_detached, stop_detached
    from toaflow.cli import UserError
    from runconfig import load_config

    cfg = load_config(args.config)
    if not cfg.servers.servers:
        raise UserError(f"{args.config}: `servers.servers` is empty; there is nothing to start")
    folder = detached_servers_folder(cfg)
    state = folder / "state.json"
    if args.action == "up":
        for record in start_detached(cfg.servers, state, folder / "servers"):
            print(f"{record['name']}: {record['base_url']} (model '{record['model_id']}', pid {record['pid']}, "
                  f"log {record['log']})")
        print(f"stop them with: toa servers down --config {args.config}")
    elif args.action == "status":
        records = detached_status(state)
        if not records:
            print("no servers started by `toa servers up` for this config")
        for record in records:
            state_word = "healthy" if record["healthy"] else ("running, not healthy" if record["running"] else "stopped")
            print(f"{record['name']}: {state_word} at {record['base_url']} (pid {record['pid']}, log {record['log']})")
    else:
        stopped = stop_detached(state)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")
    return 0
