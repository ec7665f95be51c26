"""An API key given through `api_key_env` never appears in any log, manifest or artifact of a run: not in the
CLI's output, not in any file of the run folder, not in the server logs folder, not in Prefect's database, and
not even when the server echoes a wrong key back in its error message."""
from __future__ import annotations

from pathlib import Path

from tests.faults.helpers import run_toa, samples_table, toa_env, write_config, write_prompts
from tests.fixtures.prefect import prefect_cli_env
from infra.store import open_store

GOOD_KEY = "sk-toaflow-fault-test-GOOD-8c1f2e9a7b"
WRONG_KEY = "sk-toaflow-fault-test-WRONG-41d0b7ce55"


def files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {needle[:18]}..." for needle in needles if needle.encode() in data]
    return hits


def test_api_keys_never_leak(tmp_path, load_servers, prefect_server, prefect_server_home):
    server = load_servers(api_key=GOOD_KEY, seed=6)  # echoes a wrong key in its 401 message, like some APIs
    workdir = tmp_path / "work"
    config = write_config(tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", 3),
                          store={"root": str(tmp_path / "store")}, budget=4,
                          agents=[{"name": "keyed", "url": server.base_url, "api_key_env": "TOAFLOW_TEST_GOOD_KEY"},
                                  {"name": "wrong", "url": server.base_url, "api_key_env": "TOAFLOW_TEST_WRONG_KEY"}])
    env = toa_env(**prefect_cli_env(prefect_server, prefect_server_home), TOAFLOW_TEST_GOOD_KEY=GOOD_KEY,
                  TOAFLOW_TEST_WRONG_KEY=WRONG_KEY, TOAFLOW_WORKDIR=str(workdir))

    result = run_toa(["synthesize", "--config", str(config), "--run-id", "secret"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    store = open_store(str(tmp_path / "store"))
    rows = samples_table(store, "secret")
    wrong_rows = [row for row in rows if row["model"] == "wrong"]
    assert wrong_rows and all(row["error"] and "401" in row["error"] for row in wrong_rows)  # the key was refused
    assert any(row["model"] == "keyed" and row["error"] is None for row in rows)  # the good key was sent
    assert server.stats()["unauthorized"] >= len(wrong_rows)

    keys = [GOOD_KEY, WRONG_KEY]
    assert not [k for k in keys if k in result.stdout or k in result.stderr]
    assert "TOAFLOW_TEST_GOOD_KEY" in store.read_text("runs/secret/manifest.json")  # the variable's name is kept
    leaks = files_containing(tmp_path / "store", keys) + files_containing(prefect_server_home, keys)
    if workdir.exists():
        leaks += files_containing(workdir, keys)
    assert leaks == []
