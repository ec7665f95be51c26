"""Keep secrets out of config dumps, manifests, artifacts and logs.

Secrets live only in environment variables (a config names the variable, e.g. `api_key_env: OPENAI_API_KEY`,
never the value). Two things are masked as "***":
- by key: mapping keys that say they hold a secret (api_key, secret, token, password, credential, ...);
  `*_env` keys are kept because they hold a variable's name, and counters such as `max_tokens` are kept
  because only whole name parts count ("token", not "tokens").
- by value: any string equal to, or containing, the value of a secret environment variable: those named by
  `*api_key_env` keys in the object being redacted, the well-known ones (AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...)
  and any variable whose name looks secret (…_API_KEY, …_TOKEN, …_SECRET, …_PASSWORD).
- inside URLs: the user-info part (`https://user:pass@host` -> `https://***@host`) and the values of secret-looking
  query parameters (`?api_key=`, `&sig=`, `X-Amz-Signature=`, ...), see toa_core.credentials.

Where it is applied: run configs in manifests and model cards (`redact`), stage errors in manifests, the `error:`
line of every `toa` command, and every log record of a process that called `redact_log_records()` (the CLI, the
flows' module import, the training stage processes), whichever handler prints or ships it.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable

from toa_core.credentials import mask_url_credentials

MASK = "***"
_MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would mask ordinary text everywhere

_SECRET_KEY_PARTS = {"secret", "token", "password", "passwd", "credential", "credentials", "apikey", "authorization"}
_SECRET_KEY_PHRASES = ("api_key", "access_key", "private_key", "session_key", "auth_key")
_SECRET_ENV_NAME = re.compile(
    r"(^|_)(API_KEY|APIKEY|TOKEN|SECRET|SECRET_KEY|SECRET_ACCESS_KEY|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE_KEY)$",
    re.IGNORECASE,
)
_WELL_KNOWN_ENV = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY",
    "PREFECT_API_KEY", "WANDB_API_KEY", "ANTHROPIC_API_KEY", "VLLM_API_KEY",
)


def is_secret_key(key: str) -> bool:
    """True for mapping keys that name a secret value (but not `*_env` keys, which name a variable)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower().replace("-", "_")
    if name.endswith("_env") or name.endswith("_file") or name.endswith("_path"):
        return False
    if any(phrase in name for phrase in _SECRET_KEY_PHRASES):
        return True
    return any(part in _SECRET_KEY_PARTS for part in name.split("_"))


def secret_values(env_names: Iterable[str] = (), environ: dict[str, str] | None = None) -> set[str]:
    """Values of the secret environment variables: `env_names`, the well-known ones, and secret-looking names."""
    environ = os.environ if environ is None else environ
    names = set(env_names) | set(_WELL_KNOWN_ENV) | {n for n in environ if _SECRET_ENV_NAME.search(n)}
    return {environ[n] for n in names if len(environ.get(n) or "") >= _MIN_SECRET_LENGTH}


def _env_names_in(obj: Any, found: set[str]) -> set[str]:
    """Collect the variable names that `*api_key_env`-style keys point at."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if str(key).lower().endswith("_env") and isinstance(value, str) and is_secret_key(str(key)[:-4]):
                found.add(value)
            _env_names_in(value, found)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _env_names_in(item, found)
    return found


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """Replace every occurrence of a known secret value in `text` with "***", and mask credentials in URLs."""
    values = secret_values() if secrets is None else secrets
    for value in sorted(values, key=len, reverse=True):  # longest first: one secret may contain another
        if value and value in text:
            text = text.replace(value, MASK)
    return mask_url_credentials(text)


def redact(obj: Any, extra_secrets: Iterable[str] = ()) -> Any:
    """A copy of `obj` (dicts, lists, scalars or a pydantic model) with secret keys and values masked."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    secrets = secret_values(_env_names_in(obj, set())) | {s for s in extra_secrets if s}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: (MASK if is_secret_key(str(key)) and node[key] not in (None, "") else walk(node[key]))
                    for key in node}
        if isinstance(node, (list, tuple)):
            return [walk(item) for item in node]
        if isinstance(node, str):
            return redact_text(node, secrets)
        return node

    return walk(obj)


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
