"""Pieces shared by the subcommands: common options and the environment Prefect needs offline."""
from __future__ import annotations

import argparse
import os


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="YAML",
                        help="run config, e.g. configs/tiny.yaml (seconds) or configs/demo.yaml (SmolLM2)")


def quiet_prefect_defaults() -> None:
    """Prefect defaults that suit a laptop with no network: no telemetry, a patient ephemeral API.

    Without PREFECT_API_URL, Prefect starts a temporary local API (SQLite) for the flow run: nothing to set up.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
