"""The nightly alert: a real Prefect server, a Custom Webhook notification block pointed at a local HTTP receiver on
127.0.0.1, the automation `toa deploy --alert-block` installs, and pipeline runs that fail or end blocked.

The pipeline's stage flows are the stand-ins of tests/flows/test_pipeline.py (the alert is about how a run ends,
not about what its stages compute); the runs go to the real server from a subprocess, as a worker's would.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from infra.alerts import ALERT_AUTOMATION_NAME, AlertSetupError, alert_automation, parse_block_slug
from tests.fixtures.prefect import api_client, free_port, prefect_cli_env

REPO = Path(__file__).resolve().parents[2]
DELIVERY_TIMEOUT_S = 90.0

NIGHTS = """
import sys
from prefect import flow
import flows.pipeline as pipeline_module
from tests.flows.test_pipeline import StageStubs

class Patch:  # what StageStubs.install expects of pytest's monkeypatch
    setattr = staticmethod(setattr)

config, root = sys.argv[1], sys.argv[2]
stubs = StageStubs(root)
stubs.install(Patch())
stubs.source = ["p1"]
stubs.next_win_rate = 0.6
pipeline_module.pipeline(config=config, run_id="alert-ok")          # first run: promoted, nobody is told
stubs.source = ["p1", "p2"]
stubs.next_win_rate = 0.2
pipeline_module.pipeline(config=config, run_id="alert-blocked")     # a regression: blocked by the gate

@flow(name="synthesize")
def broken_synthesize(config, run_id, incremental=False, overrides=None):
    raise RuntimeError("the reward server refused every request")

pipeline_module.synthesize = broken_synthesize
try:
    pipeline_module.pipeline(config=config, run_id="alert-failed")  # synthesis fails: the run fails
except RuntimeError:
    print("failed as expected")
"""


class Receiver:
    """A local HTTP endpoint that records every JSON body POSTed to it (the stand-in for Slack or a mail relay)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                receiver.messages.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_block_slug_and_automation_shape():
    assert parse_block_slug("slack-webhook/nightly") == ("slack-webhook", "nightly")
    for bad in ("nightly", "a/b/c", "/x", ""):
        with pytest.raises(AlertSetupError, match="BLOCK-TYPE/BLOCK-NAME"):
            parse_block_slug(bad)
    automation = alert_automation("00000000-0000-0000-0000-000000000001")
    assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                                         "prefect.flow-run.Blocked"}
    assert automation.trigger.match_related.model_dump() == {"prefect.resource.role": "flow", "prefect.resource.name": "pipeline"}


@pytest.mark.timeout(600)
def test_failed_and_blocked_nightlies_reach_the_local_receiver(prefect_server, prefect_server_home, tmp_path):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from toaflow.cli import UserError
    from toaflow.commands.deploy import install_alert_channel

    root = tmp_path / "artifacts"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "alerts", "store": {"root": str(root)},
        "models": [{"name": "a", "backend": "transformers", "model": "builtin:tiny-llama"}],
        "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
        "evaluation": {"gate": {"metrics": ["mini.rm_win_rate"]}}}))
    with Receiver() as receiver:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            CustomWebhookNotificationBlock(name="ops", url=receiver.url,
                                           json_data={"text": "{{subject}}\n{{body}}"}).save("ops", overwrite=True)
        # What `toa deploy --alert-block` does once the server answers.
        with pytest.raises(UserError, match="no notification block 'custom-webhook/missing'"):
            install_alert_channel(prefect_server, "custom-webhook/missing")
        first = install_alert_channel(prefect_server, "custom-webhook/ops")
        assert install_alert_channel(prefect_server, "custom-webhook/ops") != first  # replaced, never duplicated
        with api_client(prefect_server) as client:
            assert len(client.read_automations_by_name(ALERT_AUTOMATION_NAME)) == 1

        nights = subprocess.run([sys.executable, "-c", NIGHTS, str(config), str(root)], cwd=REPO, text=True,
                                capture_output=True, timeout=400, env=prefect_cli_env(prefect_server, prefect_server_home))
        assert nights.returncode == 0 and "failed as expected" in nights.stdout, nights.stdout[-2000:] + nights.stderr[-4000:]

        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while len(receiver.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)  # a message about the promoted run would have arrived by now too
    texts = [message["text"] for message in receiver.messages]
    assert len(texts) == 2, texts
    blocked = next(text for text in texts if "alert-blocked" in text)
    assert "toaflow pipeline run alert-blocked: Blocked" in blocked
    assert "NOT promoted (latest unchanged): blocked by mini.rm_win_rate" in blocked  # the gate's reason
    failed = next(text for text in texts if "alert-failed" in text)
    assert "toaflow pipeline run alert-failed: Failed" in failed
    assert "the reward server refused every request" in failed  # the reason
    assert not any("alert-ok" in text for text in texts)
    assert all(re.search(r"\nPrefect flow run [0-9a-f-]{36}", text) and "None" not in text for text in texts)
