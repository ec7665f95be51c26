"""A corpus of bad inputs given to `toa synthesize` (a subprocess, as a user runs it): each gives a clear message
naming the file / line / key, or a quarantine entry naming the line and the reason; never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from infra.store import open_store
from tests.faults.helpers import run_toa, samples_table, toa_env, write_config, write_prompts
from tests.fixtures.prefect import prefect_cli_env

BUDGET = 3


@pytest.fixture
def env(prefect_server, prefect_server_home):
    return toa_env(**prefect_cli_env(prefect_server, prefect_server_home))


@pytest.fixture
def good_config(tmp_path, load_servers):
    """Writes a working config (one load server, two agents) for a prompt file; returns its path."""
    server = load_servers(seed=5)

    def make(prompts: Path, name: str = "config.yaml") -> Path:
        return write_config(tmp_path / name, prompts=prompts, store={"root": str(tmp_path / "store")},
                            budget=BUDGET, agents=[{"name": n, "url": server.base_url} for n in "ab"])
    return make


def assert_user_error(result, *names: str) -> None:
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for name in names:
        assert name in result.stderr, f"{name!r} not in stderr:\n{result.stderr[-3000:]}"


# --- config problems: reported before any work starts ------------------------------------------------------

def test_config_with_unknown_key_names_file_and_key(tmp_path, good_config):
    config = good_config(write_prompts(tmp_path / "prompts.jsonl", 2))
    data = yaml.safe_load(config.read_text())
    data["search"]["budegt"] = 4
    config.write_text(yaml.safe_dump(data))
    result = run_toa(["synthesize", "--config", str(config), "--run-id", "r"])
    assert_user_error(result, str(config), "search.budegt", "unknown key")


def test_model_without_endpoint_names_the_model(tmp_path, good_config):
    config = good_config(write_prompts(tmp_path / "prompts.jsonl", 2))
    data = yaml.safe_load(config.read_text())
    del data["models"][1]["endpoints"]
    config.write_text(yaml.safe_dump(data))
    result = run_toa(["synthesize", "--config", str(config), "--run-id", "r"])
    assert_user_error(result, str(config), "models.1", "'b'", "endpoints")


def test_config_that_is_not_yaml_names_the_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("name: x\nmodels: [\n  {name: a\nreward: {}\n")
    result = run_toa(["synthesize", "--config", str(config), "--run-id", "r"])
    assert_user_error(result, str(config), "line")


# --- prompt files ------------------------------------------------------------------------------------------

def test_empty_prompt_file_is_a_clear_error(tmp_path, good_config, env):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = run_toa(["synthesize", "--config", str(good_config(empty)), "--run-id", "empty"], env=env)
    assert_user_error(result, str(empty), "empty")


def test_missing_prompt_file_is_a_clear_error(tmp_path, good_config, env):
    missing = tmp_path / "nowhere.jsonl"
    result = run_toa(["synthesize", "--config", str(good_config(missing)), "--run-id", "missing"], env=env)
    assert_user_error(result, str(missing))


def test_bad_rows_are_quarantined_with_line_and_reason(tmp_path, good_config, env):
    """Truncated JSON, wrong types, non-UTF-8 bytes and a 1 MB prompt among good rows: the run completes with the
    good rows, and each bad row is in quarantine.jsonl with its line number and reason."""
    corpus = tmp_path / "corpus.jsonl"
    good = [json.dumps({"instruction": f"A good prompt number {i}."}).encode() for i in range(3)]
    corpus.write_bytes(b"\n".join([
        good[0],                                                        # line 1
        b'{"instruction": "cut off in the midd',                         # line 2: truncated JSON
        json.dumps({"instruction": 42}).encode(),                        # line 3: wrong type
        b'{"instruction": "caf\xe9 au lait \xff\xfe"}',                  # line 4: not UTF-8
        json.dumps({"instruction": "x" * 1_000_000}).encode(),           # line 5: a 1 MB prompt
        good[1],                                                         # line 6
        json.dumps(["not", "an", "object"]).encode(),                    # line 7: wrong row type
        good[2],                                                         # line 8
    ]) + b"\n")
    result = run_toa(["synthesize", "--config", str(good_config(corpus)), "--run-id", "corpus"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    store = open_store(str(tmp_path / "store"))
    quarantine = [json.loads(line) for line in store.read_text("runs/corpus/quarantine.jsonl").splitlines()]
    by_line = {item["line"]: item for item in quarantine}
    assert sorted(by_line) == [2, 3, 4, 5, 7], quarantine
    for item in quarantine:
        assert item["reason"] and item["source"].endswith("corpus.jsonl")
        assert len(item.get("raw") or "") <= 1000  # the 1 MB row is not copied whole
    assert "JSON" in by_line[2]["reason"]
    assert "UTF-8" in by_line[4]["reason"] or "utf-8" in by_line[4]["reason"].lower()
    rows = samples_table(store, "corpus")
    assert len({row["prompt_id"] for row in rows}) == 3 and len(rows) == 3 * BUDGET


def test_ingest_failure_is_printed_once_and_leaves_the_stage_failed(tmp_path, good_config, env):
    """No usable row: the user reads the reason once (no Prefect log or state line repeating it), the hints name
    keys that exist (synthesis.prompts.*) and only what would help, and the manifest says why the stage failed."""
    prompts = tmp_path / "unusable.jsonl"
    prompts.write_text(json.dumps({"question": "wrong column"}) + "\n" + json.dumps({"instruction": 42}) + "\n")
    result = run_toa(["synthesize", "--config", str(good_config(prompts)), "--run-id", "unusable"], env=env)

    assert_user_error(result, "no usable prompt", "synthesis.prompts.prompt_field")
    output = result.stdout + result.stderr
    assert output.count("no usable prompt") == 1, output[-4000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == \
        [f"error: {prompts}: no usable prompt: 2 of 2 rows are unusable. First problems:"]
    assert "strict" not in output and "ingest." not in output  # strict is already off; the key is synthesis.prompts
    stage = open_store(str(tmp_path / "store")).read_json("runs/unusable/manifest.json")["stages"]["ingest"]
    assert stage["status"] == "failed" and "\n" not in stage["error"]
    assert stage["error"].startswith(f"IngestError: {prompts}: no usable prompt: 2 of 2 rows are unusable.")
    assert stage["history"][-1]["status"] == "failed"
