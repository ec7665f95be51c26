"""Pieces shared by the subcommands: common options and the environment Prefect needs offline."""
from __future__ import annotations

import argparse
import logging
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


def user_facing_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already names the file / key / endpoint and the fix: shown without a traceback."""
    from evaluation.benchmarks import BenchmarkError
    from evaluation.generation import ModelSourceError
    from evaluation.judges.translation import CometUnavailable
    from infra.registry import RegistryError
    from infra.servers import ServerError
    from infra.store import StoreError
    from toa_core.backends.assets import AssetError
    from toa_core.backends.factory import FactoryError
    from toa_core.decontamination import DecontaminationError
    from toa_core.ingest import IngestError
    from toa_core.leakage import LeakageError
    from toa_core.prompts import PromptTemplateError
    from toa_core.ranking import RankingError
    from training.config import TrainingConfigError
    from training.launch import StageFailed
    from training.modeling import TrainingSetupError

    return (IngestError, StoreError, RankingError, FactoryError, AssetError, PromptTemplateError, ServerError,
            RegistryError, TrainingConfigError, TrainingSetupError, StageFailed, BenchmarkError, ModelSourceError,
            CometUnavailable, DecontaminationError, LeakageError)


class _DropTraceback(logging.Filter):
    """Prefect logs a failed task's or flow's exception with its traceback; for user-facing errors, drop it."""

    def __init__(self, errors: tuple[type[BaseException], ...]):
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.errors):
            record.exc_info = None
            record.exc_text = None
        return True


def hide_prefect_tracebacks(errors: tuple[type[BaseException], ...]) -> None:
    """Keep Prefect's one-line failure messages for `errors` but not their tracebacks (see _DropTraceback)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTraceback) for f in logger.filters):
            logger.addFilter(_DropTraceback(errors))
