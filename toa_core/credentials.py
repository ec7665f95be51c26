"""Credentials written inside URLs: `https://user:password@host/...`, `?api_key=...&sig=...`.

Endpoints and sources are URLs taken from configs, and a URL may carry a secret in its user-info part or in a
query parameter. `mask_url_credentials` hides both wherever such a URL appears in a text (an error message, a log
line, a config value), keeping the rest readable:

    https://u:p@host:8000/v1?api_key=abc&model=x  ->  https://***@host:8000/v1?api_key=***&model=x

The clients in toa_core call it on every error they return; infra.secrets.redact_text (logs, manifests, artifacts,
error lines) applies it on top of the secret environment values.
"""
from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@ ; the user-info part cannot contain '/', whitespace, quotes or a second '@'
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@?#'\"<>]+)@")
# ?name=value / &name=value / ;name=value
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&#;\s'\"<>]*)")
# whole name parts (split at '_', '-', '.') that mark a query parameter as secret
_SECRET_PARAM_PARTS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "pass", "sig", "signature",
                       "credential", "credentials", "auth", "authorization"}


def is_secret_param(name: str) -> bool:
    """True for query parameter names that carry a secret: api_key, key, token, X-Amz-Signature, sig, ..."""
    return any(part in _SECRET_PARAM_PARTS for part in re.split(r"[_\-.]", name.lower()))


def mask_url_credentials(text: str) -> str:
    """`text` with the user-info of every URL and the values of secret-looking query parameters masked."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _QUERY_PARAM.sub(
        lambda m: f"{m.group('lead')}{m.group('name')}={MASK}"
        if m.group("value") and m.group("value") != MASK and is_secret_param(m.group("name")) else m.group(0),
        text)
