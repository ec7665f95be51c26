"""Keep secrets out of logs: the log-record side of toaflow's one redaction (toa_core.credentials).

What is masked, and how, is toa_core.credentials' (import `redact`, `redact_text`, ... from there; this module only
applies them to log records). Where it is applied: run configs in manifests and model
cards, the whole manifest (stage errors, lineage) on every write, flow results and state messages (`finish`),
every published artifact and the dataset card, the evaluation's outputs.jsonl / model_outputs.json / scores.json,
the `error:` line of every `toa` command, and every log record of a process that called `redact_log_records()`
(the CLI, the flows' module import, the training stage processes), whichever handler prints or ships it.
Every variable a loaded config names in an `*api_key_env` key is remembered (runconfig.load_config) and masked
from then on.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from toa_core.credentials import redact_text, secret_values


class SecretsFilter(logging.Filter):
    """A logging filter that masks known secret values in each record's message and traceback.

    Attach it to handlers (filters on a logger do not see records from its children): `install_log_redaction()`.
    """

    def __init__(self, extra_secrets: Iterable[str] = ()):
        super().__init__()
        self.extra_secrets = {s for s in extra_secrets if s}

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record, secret_values() | self.extra_secrets)
        if record.exc_text:
            record.exc_info = None  # handlers must print the masked text, not re-format the traceback
        return True


def _redact_record(record: logging.LogRecord, secrets: set[str]) -> None:
    """Mask secrets in a record's message (args merged in) and in its formatted traceback (`exc_text`)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed format string is logging's problem to report, not ours
        return
    masked = redact_text(message, secrets)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text, secrets)


_base_record_factory: Any = None


def redact_log_records() -> None:
    """Mask secrets in every log record this process creates, before any filter or handler sees it (Prefect's
    console and API handlers included, whenever they were configured). Idempotent.

    The traceback is formatted and masked into `exc_text` (which formatters print instead of formatting
    `exc_info` again); `exc_info` is kept so filters can still look at the exception's type.
    """
    global _base_record_factory
    if _base_record_factory is not None:
        return
    _base_record_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = _base_record_factory(*args, **kwargs)
        _redact_record(record, secret_values())
        return record

    logging.setLogRecordFactory(factory)


def install_log_redaction(logger: logging.Logger | None = None) -> SecretsFilter:
    """Add one SecretsFilter to every handler of `logger` (default: the root logger); idempotent."""
    logger = logger or logging.getLogger()
    secrets_filter = SecretsFilter()
    for handler in logger.handlers:
        if not any(isinstance(f, SecretsFilter) for f in handler.filters):
            handler.addFilter(secrets_filter)
    return secrets_filter
