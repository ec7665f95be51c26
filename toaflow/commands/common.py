"""Pieces shared by the subcommands: common options and the environment Prefect needs offline."""
from __future__ import annotations

import argparse
import logging
import os
import re


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="YAML",
                        help="run config, e.g. configs/tiny.yaml (seconds) or configs/demo.yaml (SmolLM2)")


def check_run_id_options(args: argparse.Namespace) -> None:
    """Check --run-id / --data-run-id (when given) before any flow starts: a bad one is one `error:` line. The run
    a command writes (--run-id) may not take a suffix toaflow reserves (`-accumulated`); a run it reads may."""
    from infra.run_ids import check_new_run_id, check_run_id

    for option, check in (("run_id", check_new_run_id), ("data_run_id", check_run_id)):
        value = getattr(args, option, None)
        if value is not None:
            check(value, "--" + option.replace("_", "-"))


def quiet_prefect_defaults() -> None:
    """Defaults for every `toa` command (each can be overridden in the environment): no telemetry from the local
    Prefect API, a patient start for it on a busy host, no tokenizer thread warnings in forked workers.

    Without PREFECT_API_URL, Prefect starts a temporary local API (SQLite) for the flow run: nothing to set up.
    The Hugging Face hub stays reachable (a cluster's first run downloads its models); `make` targets run offline.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_facing_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already names the file / key / endpoint and the fix: shown without a traceback."""
    from evaluation.benchmarks import BenchmarkError
    from evaluation.generation import ModelSourceError
    from evaluation.judges.translation import CometUnavailable
    from infra.registry import RegistryError
    from infra.run_ids import InvalidRunId
    from infra.servers import ServerError
    from infra.store import StoreError
    from runconfig.parameters import ConfigParameterError
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
    from flows.evaluate import ForeignRunError
    from tasks.synthesis import ShardPlanMismatch

    return (InvalidRunId, IngestError, StoreError, RankingError, FactoryError, AssetError, PromptTemplateError,
            ServerError, RegistryError, TrainingConfigError, TrainingSetupError, StageFailed, BenchmarkError,
            ModelSourceError, CometUnavailable, DecontaminationError, LeakageError, ConfigParameterError,
            ForeignRunError, ShardPlanMismatch)


class _UserErrorOnce(logging.Filter):
    """On Prefect's flow-run and task-run loggers in the `toa` process: a user-facing error (one whose message
    already says what to fix) would otherwise reach the terminal four times before `toa` prints it as its one
    `error:` line: "Task run failed with exception", the task's "Finished in state Failed(...)", the flow's
    "Encountered exception during execution" and its own "Finished in state Failed(...)".

    Those records keep going to Prefect's API (the UI's log shows them, without traceback); only the console handler
    skips them (`_SkipOnConsole`, attached to it the first time such a record shows up).
    """

    def __init__(self, errors: tuple[type[BaseException], ...]):
        super().__init__()
        self.errors = errors
        self.names = {error.__name__ for error in errors}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.errors):
            record.exc_info = None  # the message says what to fix; a traceback only buries it
            record.exc_text = None
            record.toaflow_repeats_user_error = True
        elif (named := _FAILED_WITH.search(record.getMessage())) and named.group(1) in self.names:
            record.toaflow_repeats_user_error = True  # a state line quoting the error
        if getattr(record, "toaflow_repeats_user_error", False):
            _skip_on_console()
        return True


class _SkipOnConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "toaflow_repeats_user_error", False)


# "...encountered an exception IngestError: ..." / "...encountered an exception: IngestError: ..."
_FAILED_WITH = re.compile(r"encountered an exception:? ([A-Za-z_][A-Za-z0-9_]*)[:(]")


def _skip_on_console() -> None:
    """Attach `_SkipOnConsole` to Prefect's console handler(s) on the root logger (configured lazily by Prefect)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, _SkipOnConsole) for f in handler.filters):
            handler.addFilter(_SkipOnConsole())


def hide_prefect_tracebacks(errors: tuple[type[BaseException], ...]) -> None:
    """Print each user-facing error once: drop Prefect's tracebacks for `errors` and keep Prefect's records that
    repeat their message off the console (see _UserErrorOnce); `toa` prints the error itself."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UserErrorOnce) for f in logger.filters):
            logger.addFilter(_UserErrorOnce(errors))
