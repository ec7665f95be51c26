"""`toa servers up|status|down`: servers that outlive the command, stopped only if they are still ours."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from infra.servers import detached_status, stop_detached

REPO = Path(__file__).resolve().parents[2]


def test_up_status_down_with_transformers_serve(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("TOAFLOW_WORKDIR", str(tmp_path / "work"))
    config = tmp_path / "servers.yaml"
    config.write_text(yaml.safe_dump({
        "name": "detached",
        "servers": {"managed": True, "servers": [{"name": "tiny", "kind": "transformers",
                                                  "model": str(tiny_llama_dir), "startup_timeout_s": 120}]},
        "models": [{"name": "a", "served_by": "tiny", "model": "tiny"}],
        "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
    }))

    def toa(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "toaflow.cli", "servers", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=180, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    state = tmp_path / "work" / "runs" / "servers-detached" / "state.json"
    try:
        assert "tiny: http://127.0.0.1:" in toa("up")  # the command has exited; the server must still run
        [record] = detached_status(state)
        assert record["running"] and record["healthy"]
        assert "tiny: healthy" in toa("status")
        assert "stopped: tiny" in toa("down")
        assert not state.exists()
        assert not Path(f"/proc/{record['pid']}").exists() or "Z" in Path(f"/proc/{record['pid']}/stat").read_text()
    finally:
        stop_detached(state)


def test_down_never_signals_a_process_it_did_not_start(tmp_path):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        state = tmp_path / "state.json"
        # A stale record whose pid now belongs to another program (pid reuse): the command line does not match.
        state.write_text(json.dumps([{"name": "old", "pid": stranger.pid, "argv": ["transformers", "serve", "/m"],
                                      "base_url": "http://127.0.0.1:1/v1", "model_id": "/m", "log": "-"}]))
        assert stop_detached(state) == []
        assert stranger.poll() is None  # still alive
    finally:
        stranger.kill()
        stranger.wait()
