"""The one redaction of toaflow: secrets out of logs, state messages, manifests, lineage, artifacts and outputs.

Secrets live only in environment variables (a config names the variable, e.g. `api_key_env: OPENAI_API_KEY`,
never the value) and, against advice, inside URLs. `redact_text` (strings) and `redact` (JSON-like objects)
mask, as "***":
- by key: mapping keys that say they hold a secret (api_key, secret, token, password, credential, and any name
  whose last part is `key`: openai_key, hf_key, ...); `*_env` keys are kept because they hold a variable's name,
  counters such as `max_tokens` are kept because only whole name parts count ("token", not "tokens"), and a few
  names of ordinary keys (`arena_key`, `cache_key`, ...) are kept;
- by value: any string containing the value of a secret environment variable: every variable a loaded config
  names in an `*api_key_env` key (`remember_secret_env_names`, called by the config loader, and those in the
  object being redacted), the well-known ones (AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...) and any variable whose name
  looks secret (…_API_KEY, …_TOKEN, …_SECRET, …_PASSWORD, …_KEY);
- inside URLs: the user-info part, parsed so that a password holding '@', '/', '#' or '?' (written raw, not
  percent-encoded) is masked whole (`https://user:p@ss/w#rd@host/v1` -> `https://***@host/v1`), and the values
  of secret-looking query parameters (`?api_key=`, `&sig=`, `X-Amz-Signature=`, ...).

Here, in toa_core, so the clients (their error messages), the evaluation (outputs.jsonl, model_outputs.json,
scores.json) and infra (manifests, artifacts, the dataset card, state messages, log records: infra.secrets) all
use this same code.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable

MASK = "***"
_MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would mask ordinary text everywhere

# -- URLs -------------------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://")
# Where a URL written in text ends: whitespace, quotes, angle brackets, backslash.
_URL_END = re.compile(r"[\s'\"<>\\`]")
# host[:port] then the end, a path, a query or a fragment: what must follow the user-info's last '@'
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%]+)(:\d*)?(?=$|[/?#,;)\]}])")
# ?name=value / &name=value / ;name=value
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&#;\s'\"<>]*)")
# whole name parts (split at '_', '-', '.') that mark a query parameter as secret
_SECRET_PARAM_PARTS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "pass", "sig", "signature",
                       "credential", "credentials", "auth", "authorization"}


def is_secret_param(name: str) -> bool:
    """True for query parameter names that carry a secret: api_key, key, token, X-Amz-Signature, sig, ..."""
    return any(part in _SECRET_PARAM_PARTS for part in re.split(r"[_\-.]", name.lower()))


def _userinfo_end(url: str) -> int:
    """Length of the user-info part of `url` (the text after `scheme://`), 0 when there is none.

    The user-info ends at the LAST '@' that is followed by a host: a password may hold '@', '/', '#' or '?' when
    someone wrote it raw. A '@' further on in a path (`https://host/@user`) is not user-info: what comes before
    it must be free of '/', '?' and '#' or hold a ':' (user:password) before the first of them.
    """
    for at in reversed([m.start() for m in re.finditer("@", url)]):
        if not _HOST.match(url, at + 1):
            continue
        candidate = url[:at]
        cut = min((candidate.find(c) for c in "/?#" if c in candidate), default=-1)
        if cut == -1 or ":" in candidate[:cut]:
            return at
    return 0


def mask_url_credentials(text: str) -> str:
    """`text` with the user-info of every URL and the values of secret-looking query parameters masked."""
    if "://" not in text and "=" not in text:
        return text
    out, position = [], 0
    for scheme in _SCHEME.finditer(text):
        if scheme.start() < position:
            continue  # inside a URL already handled (a scheme-like text in its password)
        start = scheme.end()
        end_match = _URL_END.search(text, start)
        end = end_match.start() if end_match else len(text)
        following = _SCHEME.search(text, start, end)  # two URLs glued together ("u1,https://u2")
        if following and "@" in text[start:following.start()]:
            end = following.start()
        userinfo = _userinfo_end(text[start:end])
        if userinfo:
            out.append(text[position:start] + MASK)
            position = start + userinfo
    text = "".join(out) + text[position:]
    return _QUERY_PARAM.sub(
        lambda m: f"{m.group('lead')}{m.group('name')}={MASK}"
        if m.group("value") and m.group("value") != MASK and is_secret_param(m.group("name")) else m.group(0),
        text)


# -- secret names and values ------------------------------------------------------------------------------------

_SECRET_KEY_PARTS = {"secret", "token", "password", "passwd", "credential", "credentials", "apikey", "authorization"}
_SECRET_KEY_PHRASES = ("api_key", "access_key", "private_key", "session_key", "auth_key")
# Keys whose last part is "key" but that hold no secret: names of store keys, cache and grouping keys.
_ORDINARY_KEY_NAMES = {"key", "arena_key", "cache_key", "sort_key", "group_key", "partition_key", "idempotency_key",
                       "index_key", "prompt_key", "row_key", "base_key", "plan_key", "store_key", "table_key",
                       "primary_key", "foreign_key", "dedup_key", "lookup_key", "hash_key", "id_key"}
_SECRET_ENV_NAME = re.compile(
    r"(^|_)(API_KEY|APIKEY|KEY|TOKEN|SECRET|SECRET_KEY|SECRET_ACCESS_KEY|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE_KEY)$",
    re.IGNORECASE,
)
_WELL_KNOWN_ENV = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY",
    "PREFECT_API_KEY", "WANDB_API_KEY", "ANTHROPIC_API_KEY", "VLLM_API_KEY",
)
_REMEMBERED_ENV_NAMES: set[str] = set()


def is_secret_key(key: str) -> bool:
    """True for mapping keys that name a secret value (but not `*_env` keys, which name a variable)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower().replace("-", "_")
    if name.endswith("_env") or name.endswith("_file") or name.endswith("_path"):
        return False
    if any(phrase in name for phrase in _SECRET_KEY_PHRASES):
        return True
    parts = name.split("_")
    if parts[-1] == "key" and name not in _ORDINARY_KEY_NAMES:
        return True  # openai_key, hf_key, private-key, ...
    return any(part in _SECRET_KEY_PARTS for part in parts)


def remember_secret_env_names(names: Iterable[str]) -> None:
    """Add variable names a config gave in `*api_key_env` keys: their values are masked from now on, in every
    text this process redacts (log records included), whatever the names look like."""
    _REMEMBERED_ENV_NAMES.update(name for name in names if isinstance(name, str) and name)


def secret_env_names_in(obj: Any, found: set[str] | None = None) -> set[str]:
    """The variable names that `*api_key_env`-style keys (any `<secret name>_env`) of `obj` point at."""
    found = set() if found is None else found
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if str(key).lower().endswith("_env") and isinstance(value, str) and is_secret_key(str(key)[:-4]):
                found.add(value)
            secret_env_names_in(value, found)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            secret_env_names_in(item, found)
    return found


def secret_values(env_names: Iterable[str] = (), environ: dict[str, str] | None = None) -> set[str]:
    """Values of the secret environment variables: `env_names`, the remembered and well-known names, and every
    secret-looking name."""
    environ = os.environ if environ is None else environ
    names = set(env_names) | _REMEMBERED_ENV_NAMES | set(_WELL_KNOWN_ENV) | {
        n for n in environ if _SECRET_ENV_NAME.search(n)}
    return {environ[n] for n in names if len(environ.get(n) or "") >= _MIN_SECRET_LENGTH}


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every known secret value replaced by "***" and credentials in URLs masked. `secrets`: the
    values to mask (default: `secret_values()`)."""
    values = secret_values() if secrets is None else secrets
    for value in sorted(values, key=len, reverse=True):  # longest first: one secret may contain another
        if value and value in text:
            text = text.replace(value, MASK)
    return mask_url_credentials(text)


def redact(obj: Any, extra_secrets: Iterable[str] = ()) -> Any:
    """A copy of `obj` (dicts, lists, scalars or a pydantic model) with secret keys and values masked: mapping
    keys that name a secret lose their value, every string goes through `redact_text`."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    secrets = secret_values(secret_env_names_in(obj)) | {s for s in extra_secrets if s}

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
