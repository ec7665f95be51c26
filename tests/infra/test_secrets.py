"""Secrets never reach config dumps, manifests or logs."""
from __future__ import annotations

import io
import logging

import pytest

from infra.secrets import SecretsFilter, install_log_redaction
from toa_core.credentials import MASK, is_secret_key, redact, redact_text
from runconfig import parse_config


@pytest.mark.parametrize("key", ["api_key", "apiKey", "OPENAI_API_KEY", "secret", "aws_secret_access_key",
                                 "hf_token", "token", "password", "db-password", "credentials", "access_key_id"])
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["api_key_env", "max_tokens", "prompt_tokens", "completion_tokens", "tokenizer",
                                 "model", "endpoints", "password_file", "name"])
def test_ordinary_keys(key):
    assert not is_secret_key(key)


def test_redact_by_key_and_by_env_value(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-live-abcdef123456")  # not secret-looking by name: only found via *_env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-987654321")
    config = {
        "models": [{"name": "a", "api_key_env": "MY_LLM_KEY", "max_tokens": 128,
                    "endpoints": ["http://h:8000/v1?key=sk-live-abcdef123456"]}],
        "store": {"root": "s3://b/p", "note": "aws-secret-987654321"},
        "hf_token": "hf_xxxxxxxxxxxx",
        "password": None,
        "nested": [["sk-live-abcdef123456"]],
    }
    out = redact(config)
    assert out["models"][0]["api_key_env"] == "MY_LLM_KEY"  # the variable's name is kept
    assert out["models"][0]["max_tokens"] == 128
    assert out["models"][0]["endpoints"] == [f"http://h:8000/v1?key={MASK}"]
    assert out["store"] == {"root": "s3://b/p", "note": MASK}
    assert out["hf_token"] == MASK
    assert out["password"] is None  # nothing to hide
    assert out["nested"] == [[MASK]]
    assert config["hf_token"] == "hf_xxxxxxxxxxxx"  # the input is not modified
    assert "sk-live" not in str(out) and "aws-secret" not in str(out)


def test_redact_a_run_config_keeps_everything_else(monkeypatch):
    monkeypatch.setenv("AGENT_KEY", "sk-agent-key-000111")
    cfg = parse_config({
        "models": [{"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:1/v1"], "api_key_env": "AGENT_KEY",
                    "system_prompt": "uses sk-agent-key-000111 by mistake"}],
        "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
    })
    out = redact(cfg)
    assert out["models"][0]["system_prompt"] == f"uses {MASK} by mistake"
    plain = cfg.model_dump(mode="json")
    plain["models"][0]["system_prompt"] = out["models"][0]["system_prompt"]
    assert out == plain  # nothing else changed (no false positives on the real config keys)


def test_short_values_are_not_treated_as_secrets(monkeypatch):
    monkeypatch.setenv("SOME_TOKEN", "1")
    assert redact_text("version 1.2.1") == "version 1.2.1"


def test_log_filter_masks_messages_args_and_tracebacks(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-zzzz9999")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("toaflow.test.secrets")
    logger.propagate = False
    logger.addHandler(handler)
    filt = install_log_redaction(logger)
    assert install_log_redaction(logger) is not None and handler.filters == [filt]  # idempotent
    try:
        logger.warning("calling with key %s", "sk-openai-zzzz9999")
        try:
            raise RuntimeError("auth failed for sk-openai-zzzz9999")
        except RuntimeError:
            logger.exception("request failed")
        logger.info("nothing to hide")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "sk-openai-zzzz9999" not in text
    assert f"calling with key {MASK}" in text
    assert f"auth failed for {MASK}" in text and "Traceback" in text


def test_filter_extra_secrets():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value=%s", ("extra-secret-42",), None)
    SecretsFilter(extra_secrets=["extra-secret-42"]).filter(record)
    assert record.getMessage() == f"value={MASK}"
