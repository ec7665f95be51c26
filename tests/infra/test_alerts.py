"""The nightly alert: a real Prefect server, a Custom Webhook notification block pointed at a local HTTP receiver on
127.0.0.1, the automations `toa deploy --alert-block` installs, and pipeline runs that fail, end blocked (a Completed
state whose message opens "Blocked: "), end with nothing new, or get promoted: only the first two send a message.

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

from infra.alerts import (ALERT_AUTOMATION_NAMES, BLOCKED, LEGACY_ALERT_NAMES, AlertSetupError, alert_automations,
                          parse_block_slug)
from tasks import flow_runs
from tests.fixtures.prefect import api_client, flow_runs_named, free_port, prefect_cli_env

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
nothing = pipeline_module.pipeline(config=config, run_id="alert-nothing")  # nothing new: nobody is told
print("nothing new:", bool(nothing.get("skipped")))

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
    failed, blocked = alert_automations("00000000-0000-0000-0000-000000000001")
    assert (failed.name, blocked.name) == ALERT_AUTOMATION_NAMES
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert failed.trigger.match.model_dump() == {"prefect.resource.id": "prefect.flow-run.*"}
    assert blocked.trigger.expect == {"prefect.flow-run.Completed"}
    assert blocked.trigger.match.model_dump() == {"prefect.resource.id": "prefect.flow-run.*",
                                                  "prefect.state-message": "Blocked:*"}
    assert BLOCKED == flow_runs.BLOCKED  # the word the blocked alert matches is the one the pipeline writes
    for automation in (failed, blocked):
        assert automation.trigger.match_related.model_dump() == {"prefect.resource.role": "flow",
                                                                 "prefect.resource.name": "pipeline"}


def test_the_blocked_alert_matches_blocked_runs_only():
    """The blocked alert's label pattern, through the server's own matcher: a "Blocked: ..." message, never an
    ordinary or nothing-new one."""
    from prefect.server.events.schemas.events import Resource, ResourceSpecification

    _, blocked = alert_automations("00000000-0000-0000-0000-000000000001")
    spec = ResourceSpecification(blocked.trigger.match.model_dump())

    def completed_with(message: str) -> Resource:
        return Resource({"prefect.resource.id": "prefect.flow-run.5f0e7a3c-0000-0000-0000-000000000000",
                         "prefect.state-name": "Completed", "prefect.state-type": "COMPLETED",
                         "prefect.state-message": message})

    assert spec.matches(completed_with("Blocked: NOT promoted (latest unchanged): blocked by mini.rm_win_rate\n[x]"))
    for message in ("promoted to latest: first run", "Nothing new: 2 prompts already synthesized by n-1 (2)",
                    "evaluated 3 metrics; promotion off", ""):
        assert not spec.matches(completed_with(message)), message


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
        with api_client(prefect_server) as client:  # the single automation an older toaflow installed
            legacy = alert_automations(client.read_block_document_by_name("ops", "custom-webhook").id)[0]
            client.create_automation(legacy.model_copy(update={"name": LEGACY_ALERT_NAMES[0]}))
        first = install_alert_channel(prefect_server, "custom-webhook/ops")
        assert install_alert_channel(prefect_server, "custom-webhook/ops") != first  # replaced, never duplicated
        with api_client(prefect_server) as client:
            assert [len(client.read_automations_by_name(name)) for name in ALERT_AUTOMATION_NAMES] == [1, 1]
            assert client.read_automations_by_name(LEGACY_ALERT_NAMES[0]) == []

        nights = subprocess.run([sys.executable, "-c", NIGHTS, str(config), str(root)], cwd=REPO, text=True,
                                capture_output=True, timeout=400, env=prefect_cli_env(prefect_server, prefect_server_home))
        assert nights.returncode == 0 and "failed as expected" in nights.stdout, nights.stdout[-2000:] + nights.stderr[-4000:]
        assert "nothing new: True" in nights.stdout
        with api_client(prefect_server) as client:  # how the runs end: listed in the UI (Completed), tagged
            runs = {run.name: run for run in flow_runs_named(client, "alert-blocked", "alert-nothing")
                    if run.parent_task_run_id is None}
        assert {name: (run.state.name, run.state.message.split(":")[0], run.tags) for name, run in runs.items()} == {
            "alert-blocked": ("Completed", "Blocked", ["blocked"]),
            "alert-nothing": ("Completed", "Nothing new", ["nothing-new"])}

        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while len(receiver.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)  # a message about the promoted run would have arrived by now too
    texts = [message["text"] for message in receiver.messages]
    assert len(texts) == 2, texts
    blocked = next(text for text in texts if "alert-blocked" in text)
    assert "toaflow pipeline run alert-blocked: Blocked\n" in blocked
    # the state message: the word, then the gate's reason
    assert "ended Blocked: NOT promoted (latest unchanged): blocked by mini.rm_win_rate" in blocked
    failed = next(text for text in texts if "alert-failed" in text)
    assert "toaflow pipeline run alert-failed: Failed" in failed
    assert "the reward server refused every request" in failed  # the reason
    assert not any("alert-ok" in text or "alert-nothing" in text for text in texts)
    assert all(re.search(r"\nPrefect flow run [0-9a-f-]{36}", text) and "None" not in text for text in texts)
