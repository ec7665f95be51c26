"""Retake the Prefect UI screenshots in README.md from a real Prefect server, driven by headless Chromium.

    apt-get install chromium                      # Debian's package; any Chromium/Chrome with DevTools works
    .venv/bin/python tools/ui_screenshots.py      # writes docs/figures/ui-*.png (5-15 minutes on 2 cores)

What it does, start to finish, on loopback only and in a temporary folder (nothing of yours is touched):
1. starts `prefect server start` on a free port (its own PREFECT_HOME), `toa deploy`s the project's deployments
   and starts a process worker per work pool in the project folder;
2. runs `synthesize/on-demand` on the tiny config (40 prompts, 2 per shard) and, once a fifth of it is done,
   captures its flow run page: the graph of shard tasks and the progress artifact (prompts, generations/s, ETA)
                                                -> ui-synthesis-running.png
3. runs `pipeline/nightly` (3 prompts, 2 training steps) to the end (the gate blocks the tiny random models: the
   run ends Completed, tagged `blocked`, "Blocked: ...") and captures its flow run page with the graph of subflows
   and artifacts, newest log first (the final state and its message)   -> ui-pipeline-run.png
4. captures the `pipeline/nightly` deployment page (schedule label, runs: the blocked run listed with its tag)
                                                -> ui-nightly-deployment.png
5. captures that pipeline run's dataset card artifact (the datasets' README.md)  -> ui-dataset-card.png
6. stops the workers, Chromium and the server (each by its own process id).

Chromium runs with --headless --no-sandbox --disable-gpu and no network features (no QUIC, background networking,
component updates or sync) on a fresh profile; pages are driven over the DevTools protocol (websockets, already a
Prefect dependency) so a capture waits for the text it needs instead of a fixed delay.
"""
from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-port=0"]


def wait_for(check: Callable[[], Any], what: str, timeout_s: float, every_s: float = 1.0) -> Any:
    """Poll `check` until it returns something truthy; RuntimeError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop(process: subprocess.Popen | None) -> None:
    """Stop a process started in its own session: SIGTERM to its group, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    from infra.processes import stop_process_group

    stop_process_group(process, grace_s=20.0)


class Browser:
    """One headless Chromium tab driven over the DevTools protocol."""

    def __init__(self, executable: str, profile: Path, width: int, height: int):
        self.process = subprocess.Popen([executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        url = wait_for(self._devtools_url, "Chromium's DevTools endpoint", 60, every_s=0.1)
        port = url.split(":")[2].split("/")[0]
        target = httpx.put(f"http://127.0.0.1:{port}/json/new?about:blank", timeout=10).json()
        from websockets.sync.client import connect

        self.socket = connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _devtools_url(self) -> str | None:
        line = self.process.stderr.readline()
        match = re.search(r"DevTools listening on (ws://\S+)", line or "")
        return match.group(1) if match else None

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv(timeout=60))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def open(self, url: str, *texts: str, timeout_s: float = 60) -> None:
        """Load `url` and wait until the page shows every one of `texts`."""
        self.call("Page.navigate", url=url)
        self.wait_for_text(*texts, timeout_s=timeout_s)

    def wait_for_text(self, *texts: str, timeout_s: float = 60) -> None:
        probe = " && ".join(f"document.body.innerText.includes({json.dumps(text)})" for text in texts) or "true"
        try:
            wait_for(lambda: self.evaluate(f"!!document.body && {probe}"), f"{texts} on the page", timeout_s, 0.5)
        except RuntimeError:
            print("the page shows:\n" + str(self.evaluate("document.body && document.body.innerText"))[:3000],
                  file=sys.stderr)
            raise
        time.sleep(3.0)  # the run graph is drawn on a canvas after the text: let it settle

    def click_text(self, text: str) -> None:
        """Click the innermost visible element whose text is exactly `text` (a tab, a button)."""
        clicked = self.evaluate(
            "(() => { const nodes = [...document.querySelectorAll('body *')]"
            f".filter(n => n.innerText && n.innerText.trim() === {json.dumps(text)} && n.offsetParent);"
            " if (!nodes.length) return false; nodes[nodes.length - 1].click(); return true; })()")
        if not clicked:
            raise RuntimeError(f"nothing to click labelled {text!r}")

    def choose(self, select_css: str, value: str) -> None:
        """Set the native <select> under `select_css` (one of the UI's drop-downs) to `value`."""
        chosen = self.evaluate(
            f"(() => {{ const select = document.querySelector({json.dumps(select_css + ' select')}); "
            f"if (!select) return false; select.value = {json.dumps(value)}; "
            "select.dispatchEvent(new Event('change', {bubbles: true})); return true; })()")
        if not chosen:
            raise RuntimeError(f"no drop-down {select_css!r} on the page")

    def capture(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path}")

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            stop(self.process)


def tiny_config(folder: Path, *, prompts: int | None, steps: int, budget: int, shard_size: int = 4) -> Path:
    """configs/tiny.yaml with a private store, a prompt file of `prompts` lines, and short training."""
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    source = REPO / "data" / "prompts" / "mixed_instructions.jsonl"
    if prompts is not None:
        lines = source.read_text().splitlines(keepends=True)[:prompts]
        source = folder / f"prompts-{prompts}.jsonl"
        source.write_text("".join(lines))
    config["store"] = {"root": str(folder / "store")}
    config["synthesis"]["prompts"] = {"source": str(source)}
    config["search"]["budget"] = budget
    config["synthesis"]["shard_size"] = shard_size
    config["synthesis"]["ranking"]["dpo_rejected_rank"] = min(3, budget)
    config["training"]["sft"]["max_steps"] = config["training"]["dpo"]["max_steps"] = steps
    # tiny.yaml's gate stays: its random models mostly answer nothing, so the gate (failing closed) blocks the
    # candidate and the pipeline run ends Completed, tagged `blocked`, as tests/flows/test_deployments.py expects.
    path = folder / "configs" / f"tiny-{prompts or 'all'}.yaml"  # the workers' TOAFLOW_CONFIG_DIR
    path.parent.mkdir(exist_ok=True)
    path.write_text("# tiny config for the UI screenshots (tools/ui_screenshots.py)\n" + yaml.safe_dump(config))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures", help="folder for the PNG files")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                        help="Chromium executable (default: chromium on PATH)")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=950)
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from infra.servers import free_port

    scratch = Path(tempfile.mkdtemp(prefix="toaflow-ui-shots-"))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(scratch / "prefect"), PREFECT_API_URL=api_url,
               PREFECT_UI_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_CLI_PROMPT="false",
               PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="2", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TOAFLOW_CONFIG_DIR=str(scratch / "configs"))  # runs name a config in the operator's folder
    server_env = {key: value for key, value in env.items() if key != "PREFECT_API_URL"}
    processes: list[subprocess.Popen] = []
    browser = None
    finished = False

    def spawn(argv: list[str], log: str, process_env: dict[str, str]) -> subprocess.Popen:
        with open(scratch / log, "wb") as out:
            process = subprocess.Popen(argv, env=process_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        processes.append(process)
        return process

    def flow_run(name: str) -> dict[str, Any] | None:
        runs = httpx.post(f"{api_url}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}}).json()
        return next((run for run in runs if run.get("parent_task_run_id") is None), None)

    def progress_of(flow_run_id: str) -> float:
        artifacts = httpx.post(f"{api_url}/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "type": {"any_": ["progress"]}}}).json()
        return max((float(a.get("data") or 0) for a in artifacts), default=0.0)

    def deploy_run(deployment: str, config: Path, run_id: str) -> None:
        subprocess.run([str(BIN / "prefect"), "deployment", "run", deployment, "-p", f"config={config.name}",
                        "-p", f"run_id={run_id}"], env=env, cwd=REPO, check=True, capture_output=True)

    try:
        spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], "server.log",
              server_env)
        wait_for(lambda: _healthy(api_url), "the Prefect server", 120)
        subprocess.run([str(BIN / "toa"), "deploy", "--api-url", api_url], env=env, cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        for pool in ("toa-cpu", "toa-gpu"):
            spawn([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"], f"{pool}.log", env)
        browser = Browser(args.chromium, scratch / "chromium", args.width, args.height)
        ui = f"http://127.0.0.1:{port}"

        # 1. A synthesis run, captured while it runs with its progress artifact.
        deploy_run("synthesize/on-demand", tiny_config(scratch, prompts=None, steps=2, budget=12, shard_size=2),
                   "synthesis-demo")
        run = wait_for(lambda: (r := flow_run("synthesis-demo")) and r["state_type"] == "RUNNING" and r,
                       "the synthesis run to start", 300)
        wait_for(lambda: progress_of(run["id"]) >= 20.0, "synthesis progress", 600)
        browser.open(f"{ui}/runs/flow-run/{run['id']}", "synthesis-demo", "Running", "Artifacts")
        browser.click_text("Artifacts")  # the progress artifact: prompts done, generations/s, ETA
        browser.wait_for_text("synthesis-progress", "prompts")
        browser.evaluate("document.querySelectorAll('.p-button-group__button')[1].click()")  # list view: full text
        browser.wait_for_text("generations/s")
        browser.capture(args.out / "ui-synthesis-running.png")
        wait_for(lambda: flow_run("synthesis-demo")["state_type"] == "COMPLETED", "the synthesis run to finish", 900)

        # 2. A pipeline run from the nightly deployment, to the end.
        deploy_run("pipeline/nightly", tiny_config(scratch, prompts=3, steps=2, budget=6), "nightly-demo")
        wait_for(lambda: (r := flow_run("nightly-demo")) and r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")
                 and r, "the pipeline run", 1200, every_s=3)
        run = flow_run("nightly-demo")
        if run["state_type"] != "COMPLETED" or "blocked" not in run["tags"]:
            raise RuntimeError(f"the pipeline run ended {run['state_name']} ({run['state'].get('message')}, tags "
                               f"{run['tags']}), not blocked by the gate; see {scratch}/toa-gpu.log")
        browser.open(f"{ui}/runs/flow-run/{run['id']}", "nightly-demo", "Completed", "blocked")
        browser.choose(".logs-sort", "TIMESTAMP_DESC")  # newest log first: the final state with its message
        browser.wait_for_text("Finished in state Completed('Blocked: NOT promoted")
        browser.capture(args.out / "ui-pipeline-run.png")
        pipeline_synthesis = httpx.post(f"{api_url}/flow_runs/filter", json={"flow_runs": {
            "name": {"any_": ["nightly-demo"]}, "parent_task_run_id": {"is_null_": False}}}).json()
        pipeline_synthesis = next(r for r in pipeline_synthesis if r["flow_id"] == httpx.get(
            f"{api_url}/flows/name/synthesize").json()["id"])

        # 3. The nightly deployment: its schedule (with its time zone) and its runs, the blocked one with its tag.
        deployment = httpx.get(f"{api_url}/deployments/name/pipeline/nightly").json()
        browser.open(f"{ui}/deployments/deployment/{deployment['id']}", "every day at 02:00 UTC", "nightly-demo",
                     "blocked")
        browser.capture(args.out / "ui-nightly-deployment.png")

        # 4. The nightly run's dataset card (the datasets' README.md) as its artifact page renders it.
        [card] = httpx.post(f"{api_url}/artifacts/filter", json={
            "artifacts": {"key": {"any_": ["dataset-card"]}, "flow_run_id": {"any_": [pipeline_synthesis["id"]]}},
        }).json()
        browser.open(f"{ui}/artifacts/artifact/{card['id']}", "dataset-card", "How to load", "load_dataset")
        browser.capture(args.out / "ui-dataset-card.png")
        finished = True
    finally:
        if browser is not None:
            browser.close()
        for process in reversed(processes):  # workers before the server
            stop(process)
        if finished:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"logs of the server, the workers and the runs are kept in {scratch}", file=sys.stderr)
    return 0


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
