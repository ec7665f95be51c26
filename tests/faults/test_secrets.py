"""Secrets never appear in any log, manifest, artifact or error message of a run: not in the CLI's output, not in
any file of the run folder, not in the server logs folder, not in Prefect's database. Planted: an API key given
through `api_key_env` (also when the server echoes a wrong key back in its error message), and credentials written
into URLs (`http://user:pass@host`) of a working endpoint, a dead one, and an unreachable S3 endpoint."""
from __future__ import annotations

from pathlib import Path

from tests.faults.helpers import run_toa, samples_table, toa_env, write_config, write_prompts
from tests.fixtures.prefect import prefect_cli_env
from infra.store import open_store

GOOD_KEY = "sk-toaflow-fault-test-GOOD-8c1f2e9a7b"
WRONG_KEY = "sk-toaflow-fault-test-WRONG-41d0b7ce55"
URL_PASSWORD = "planted-url-password-5f1c"
DEAD_URL_PASSWORD = "planted-dead-url-password-92ab"
S3_URL_PASSWORD = "planted-s3-url-password-77d0"


def with_credentials(url: str, password: str) -> str:
    """http://host:port/v1 -> http://planted-user:<password>@host:port/v1"""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://planted-user:{password}@{rest}"


def files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {needle[:18]}..." for needle in needles if needle.encode() in data]
    return hits


def test_api_keys_never_leak(tmp_path, load_servers, prefect_server, prefect_server_home):
    server = load_servers(api_key=GOOD_KEY, seed=6)  # echoes a wrong key in its 401 message, like some APIs
    open_server = load_servers(seed=7)  # no key: reached through a URL that carries credentials
    workdir = tmp_path / "work"
    config = write_config(tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", 3),
                          store={"root": str(tmp_path / "store")}, budget=6,
                          agents=[{"name": "keyed", "url": server.base_url, "api_key_env": "TOAFLOW_TEST_GOOD_KEY"},
                                  {"name": "wrong", "url": server.base_url, "api_key_env": "TOAFLOW_TEST_WRONG_KEY"},
                                  {"name": "url", "url": with_credentials(open_server.base_url, URL_PASSWORD)},
                                  {"name": "gone", "url": with_credentials("http://127.0.0.1:9/v1", DEAD_URL_PASSWORD),
                                   "retry": {"max_attempts": 1, "connect_timeout_s": 2, "read_timeout_s": 2}}])
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

    assert any(row["model"] == "url" and row["error"] is None for row in rows)  # credentials in the URL work
    gone_rows = [row for row in rows if row["model"] == "gone"]
    assert gone_rows and all("planted-user" not in row["error"] for row in gone_rows)

    keys = [GOOD_KEY, WRONG_KEY, URL_PASSWORD, DEAD_URL_PASSWORD]
    assert not [k for k in keys if k in result.stdout or k in result.stderr]
    manifest = store.read_text("runs/secret/manifest.json")
    assert "TOAFLOW_TEST_GOOD_KEY" in manifest  # the variable's name is kept
    assert f"http://***@127.0.0.1:{open_server.port}/v1" in manifest  # the URL stays readable, its credentials not
    leaks = files_containing(tmp_path / "store", keys) + files_containing(prefect_server_home, keys)
    if workdir.exists():
        leaks += files_containing(workdir, keys)
    assert leaks == []


def test_url_credentials_never_leak_from_a_failing_run(tmp_path, load_servers, prefect_server, prefect_server_home):
    """The store's endpoint is unreachable and carries credentials: the one `error:` line names it, masked, and
    neither the output nor Prefect's database (logs, state messages) holds the password."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = load_servers(seed=8)
    config = write_config(tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", 2),
                          store={"root": "s3://planted-bucket/prefix",
                                 "endpoint_url": with_credentials(f"http://127.0.0.1:{port}", S3_URL_PASSWORD),
                                 "retry": {"max_attempts": 1, "connect_timeout_s": 1, "read_timeout_s": 1}},
                          budget=2, agents=[{"name": "a", "url": server.base_url}])
    env = toa_env(**prefect_cli_env(prefect_server, prefect_server_home))

    result = run_toa(["synthesize", "--config", str(config), "--run-id", "unreachable"], env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"http://***@127.0.0.1:{port}" in errors[0], result.stderr[-3000:]
    assert S3_URL_PASSWORD not in result.stdout + result.stderr
    assert files_containing(prefect_server_home, [S3_URL_PASSWORD]) == []
