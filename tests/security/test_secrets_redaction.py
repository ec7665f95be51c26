"""Secrets never leave a run (issue 21): one redaction for logs, state messages, manifests, lineage, artifacts,
evaluation outputs and the dataset card; URL user-info parsed even when the password holds '@', '/', '#', '?';
every `api_key_env` a config names is masked, and names like openai_key / hf_key are secret."""
from __future__ import annotations

import logging

import pytest
import yaml

from toa_core.credentials import MASK, is_secret_key, redact, redact_text
from tests.faults.test_secrets import files_containing
from toa_core.credentials import mask_url_credentials

PASSWORD = "p@ss/w#rd-planted-3c9e"           # written raw into the URL, as people do
MARKER = "rd-planted-3c9e"                     # the part after '#': what a naive parser leaves behind
JUDGE_KEY = "judge-cred-value-9f3e1a77"        # the value of a variable whose name does not look secret
JUDGE_ENV = "TOAFLOW_SEC_JUDGE_CRED"


@pytest.mark.parametrize("url, masked", [
    (f"https://user:{PASSWORD}@host/v1", "https://***@host/v1"),
    ("http://u:a?b@127.0.0.1:8000/v1?api_key=abc&model=x", "http://***@127.0.0.1:8000/v1?api_key=***&model=x"),
    ("https://user:pa@ss@host:9/v1", "https://***@host:9/v1"),
    ("'https://u:p/1@h1/v1','https://u2:p#2@h2/v1'", "'https://***@h1/v1','https://***@h2/v1'"),
])
def test_url_user_info_is_masked_whole(url, masked):
    assert mask_url_credentials(url) == masked
    assert mask_url_credentials("https://host/@user/profile") == "https://host/@user/profile"  # no user-info


@pytest.mark.parametrize("key", ["openai_key", "hf_key", "OPENAI_KEY", "private-key"])
def test_key_names_are_secret(key):
    assert is_secret_key(key)
    assert redact({key: "value-123456"}) == {key: MASK}


def test_ordinary_key_names_survive():
    assert not is_secret_key("arena_key") and not is_secret_key("key") and not is_secret_key("api_key_env")


def test_api_key_env_names_of_a_loaded_config_are_masked_in_logs(tmp_path, monkeypatch, caplog):
    from infra.secrets import SecretsFilter
    from runconfig import load_config

    monkeypatch.setenv(JUDGE_ENV, JUDGE_KEY)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "c", "models": [{"name": "a", "backend": "transformers", "model": "builtin:tiny-llama"}],
        "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
        "evaluation": {"judges": {"llm_judge": {"endpoint": "http://127.0.0.1:9/v1", "model": "j",
                                                "api_key_env": JUDGE_ENV}}}}))
    assert redact_text(f"sent {JUDGE_KEY}") == f"sent {JUDGE_KEY}"  # unknown name: nothing says it is secret
    load_config(config)
    assert redact_text(f"sent {JUDGE_KEY}") == f"sent {MASK}"  # the config named it: masked from now on
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "server said: bad key %s", (JUDGE_KEY,), None)
    SecretsFilter().filter(record)
    assert JUDGE_KEY not in record.getMessage()


def test_an_evaluation_run_leaks_neither_url_credentials_nor_keys(tmp_path, monkeypatch, prefect_harness):
    """The model under test is an endpoint whose URL holds a raw password (it cannot be reached: every generation
    fails, which the run records); the base model's server refuses the planted key and echoes it back in its
    401 message, as some hosted APIs do."""
    from bench.loadserver import LoadServer
    from flows.evaluate import evaluate

    monkeypatch.setenv(JUDGE_ENV, JUDGE_KEY)
    workdir = tmp_path / "work"
    monkeypatch.setenv("TOAFLOW_WORKDIR", str(workdir))
    store_root = tmp_path / "store"
    config = tmp_path / "eval.yaml"
    with LoadServer(api_key="the-right-key-0000") as base_server:
        config.write_text(yaml.safe_dump({
            "name": "sectest", "store": {"root": str(store_root)},
            "models": [{"name": "tiny", "backend": "transformers", "model": "builtin:tiny-llama"}],
            "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
            "evaluation": {
                "benchmarks": [{"name": "mini", "kind": "toaflow_mini", "limit": 4, "seed": 0}],
                "generation": {"max_tokens": 4, "temperature": 0.0, "served_model": "policy",
                               "api_key_env": JUDGE_ENV},
                "base_model": f"{base_server.base_url}#policy",
                "bootstrap_samples": 50}}))
        model = f"http://planted-user:{PASSWORD}@127.0.0.1:9/v1"
        state = evaluate(config=str(config), run_id="sec", model=model, return_state=True)
        assert base_server.stats()["unauthorized"] >= 1  # the planted key was sent, refused and echoed
    assert state.is_completed(), state.message
    needles = [PASSWORD, MARKER, JUDGE_KEY]
    message = state.message or ""
    result = repr(state.result())
    assert not [n for n in needles if n in message or n in result]
    assert "planted-user" not in result and "***@127.0.0.1:9/v1" in result  # readable URL, masked user-info

    scores = (store_root / "runs/sec/eval/mini/scores.json").read_text()
    assert "***@127.0.0.1:9/v1" in scores
    assert (store_root / "runs/sec/eval/mini/outputs.jsonl").is_file()
    manifest = (store_root / "runs/sec/manifest.json").read_text()
    assert "***@127.0.0.1:9/v1" in manifest  # the lineage names the model, masked
    base_outputs = list((store_root / "eval_cache").rglob("outputs.jsonl"))
    assert base_outputs and "401" in base_outputs[0].read_text()  # the echo happened and was recorded, masked
    leaks = files_containing(store_root, needles) + (files_containing(workdir, needles) if workdir.exists() else [])
    assert leaks == []


def test_a_refused_model_uri_is_masked_in_the_error_a_failed_run_shows():
    from evaluation.config import GenerationConfig
    from evaluation.generation import ModelSourceError, resolve_model_under_test

    with pytest.raises(ModelSourceError) as error:  # no served model name: refused, naming the URI
        resolve_model_under_test(f"http://planted-user:{PASSWORD}@127.0.0.1:9/v1", GenerationConfig())
    assert PASSWORD not in str(error.value) and MARKER not in str(error.value)
    assert "http://***@127.0.0.1:9/v1" in str(error.value)
