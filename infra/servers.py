"""Model servers a run starts, watches and stops itself: `vllm serve` (chat or pooling/reward) on GPU hosts,
`transformers serve` on CPU, and `vllm-router` in front of a model's replicas.

Each server runs in its own process group (so stopping it also stops the workers it forks), logs to
`<run_dir>/servers/<name>.log`, and is healthy when `GET /health` answers 200 before its deadline (otherwise the
error quotes the log tail). A watcher thread restarts a server that exits during the run, on the same port, up to
`max_restarts` times. Stopping signals only the process groups this module started, by their ids.

    with managed_servers(config.servers, run_dir) as endpoints:   # {name: ServedEndpoint}
        agents = build_agents(config.models, endpoints)

vLLM lives in its own environment (it pins its own torch and fastapi): point `executable` at that environment's
`vllm`. Its command line is built by the pure function `server_command` and tested without a GPU.

A router (kind `router`) starts after the servers it fronts are healthy (it checks them itself too), and clients
reach the model through it: `served_by: <router name>`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from infra.config import ServerSpec, ServersConfig
from infra.processes import die_with_parent, exited_unreaped, stop_process_group
from toa_core.backends.assets import resolve_model
from toa_core.backends.factory import ServedEndpoint

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.5
ROUTER_PROCTITLE = "vllm::router"  # what vllm-router's process calls itself once running
STOP_GRACE_S = 15.0


class ServerError(RuntimeError):
    """A managed server failed to start, stay up, or stop; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _default_executable(name: str, hint: str = "") -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if not found:
        raise ServerError(f"cannot find the `{name}` executable; set `executable:` in the server spec"
                          + (f" or {hint}" if hint else ""))
    return found


def model_argument(spec: ServerSpec) -> str | None:
    """What the server is told to load: builtins and local folders become paths; hub ids pass through (vLLM
    downloads them itself on hosts with access; `transformers serve` needs a folder). A router loads nothing."""
    if spec.kind == "router" or spec.model is None:
        return spec.model
    if spec.model.startswith("builtin:") or spec.kind == "transformers" or Path(spec.model).expanduser().exists():
        return str(resolve_model(spec.model))
    return spec.model


@dataclass(frozen=True)
class ServerCommand:
    argv: list[str]
    env: dict[str, str]  # only the variables this server adds to the inherited environment
    model_id: str  # the `model` clients must send


def server_command(spec: ServerSpec, port: int, model: str | None = None,
                   workers: list[str] | None = None) -> ServerCommand:
    """The command line, extra environment and served model id for `spec` on `port` (pure; `model` is the
    already-resolved model argument, see `model_argument`; for a router, the model id its replicas serve, and
    `workers` their root URLs)."""
    model = model if model is not None else spec.model
    env: dict[str, str] = {}
    if spec.kind == "router":
        return router_command(spec, port, model, workers if workers is not None else list(spec.worker_urls))
    if spec.kind == "transformers":
        argv = [spec.executable or _default_executable("transformers"), "serve", model,
                "--host", spec.host, "--port", str(port), "--device", "cpu"]
        if spec.cpu_threads is not None:
            # torch's default (one thread per core) slowed generation ~10x when the cores were shared with the
            # orchestrator's in-process judge (measured: 57 s vs 6 s for 63 tokens of SmolLM2 at load 7).
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec.cpu_threads)
        if spec.continuous_batching:
            argv += ["--continuous-batching", "--cb-num-blocks", str(spec.continuous_batching_blocks),
                     "--cb-max-batch-tokens", str(spec.continuous_batching_batch_tokens)]
        return ServerCommand(argv + list(spec.extra_args), env, model_id=model)  # requests must name the path
    served_name = spec.served_model_name or spec.model
    argv = [spec.executable or "vllm", "serve", model, "--host", spec.host, "--port", str(port),
            "--served-model-name", served_name,
            "--tensor-parallel-size", str(spec.tensor_parallel_size),
            "--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}"]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.kind == "vllm_reward":
        argv += ["--runner", "pooling"]
    elif spec.generation_config == "vllm":
        # Without it, vLLM fills top_k / min_p / repetition_penalty a request leaves out from the model's
        # generation_config.json: each agent would sample with its publisher's defaults, not the config's.
        argv += ["--generation-config", "vllm"]
    if spec.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpus)
    if spec.api_key_env:
        # through the environment, not argv: a command line is visible to every user of the host
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise ServerError(f"server '{spec.name}': api_key_env names ${spec.api_key_env}, which is not set")
        env["VLLM_API_KEY"] = key
    return ServerCommand(argv + list(spec.extra_args), env, model_id=served_name)


def router_command(spec: ServerSpec, port: int, model: str | None, workers: list[str]) -> ServerCommand:
    """`vllm-router` in front of `workers` (root URLs, no /v1). It waits for them itself (checked every second) up to
    the spec's startup deadline; per-request routing logs stay off (`--log-level warning`): at thousands of
    requests per second they would cost more than the routing."""
    if not workers:
        raise ServerError(f"server '{spec.name}': a router needs at least one replica")
    if not model:
        raise ServerError(f"server '{spec.name}': set `model` (the model id its replicas serve)")
    executable = spec.executable or _default_executable("vllm-router", hint="pip install 'toaflow[router]'")
    argv = [executable, "--host", spec.host, "--port", str(port), "--worker-urls", *[w.rstrip("/") for w in workers],
            "--policy", spec.policy, "--worker-startup-timeout-secs", str(max(1, int(spec.startup_timeout_s))),
            "--worker-startup-check-interval", "1", "--log-level", "warning",
            # toaflow's clients retry with backoff and record what still fails; the router's own retries (5 by
            # default in 0.1.17) would multiply them and hide a failing replica behind minutes of attempts.
            "--disable-retries"]
    return ServerCommand(argv + list(spec.extra_args), env={}, model_id=model)


def check_context_length(spec: ServerSpec) -> None:
    """ServerError when `spec.max_model_len` exceeds the positions in the model's config.json (read from the local
    folder or hub cache; a model not on this machine is checked by vLLM itself, see `start_failure_hint`). vLLM
    refuses such a length at start-up unless VLLM_ALLOW_LONG_MAX_MODEL_LEN is set, and then scores past the trained
    length are unreliable (reward models have returned NaN)."""
    if spec.kind == "router" or spec.model is None or spec.max_model_len is None:
        return
    from infra.model_metadata import local_metadata

    metadata = local_metadata(spec.model)
    positions = metadata.positions if metadata else None
    if positions is not None and spec.max_model_len > positions:
        raise ServerError(f"server '{spec.name}': max_model_len {spec.max_model_len} exceeds the {positions} positions "
                          f"in {metadata.folder / 'config.json'}; set servers.servers[{spec.name}].max_model_len to "
                          f"at most {positions} (or leave it out: vLLM derives it from the model's config)")


def start_failure_hint(log_tail: str) -> str:
    """A line that names the fix for start-up failures whose vLLM message is easy to misread ('' when none)."""
    if "max_model_len" in log_tail and ("greater than" in log_tail or "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in log_tail):
        return ("hint: the configured max_model_len is longer than the model's config.json allows; lower "
                "`max_model_len` to the model's max_position_embeddings (toa preflight shows it when the model's "
                "files are on the machine)\n")
    return ""


class ManagedServer:
    """One server process (group) we started: start, wait healthy, watch/restart, stop."""

    def __init__(self, spec: ServerSpec, log_dir: Path, *, max_restarts: int = 3, detached: bool = False):
        self.spec = spec
        self.detached = detached  # `toa servers up`: the server outlives this process (else it dies with it)
        self.log_path = Path(log_dir) / f"{spec.name}.log"
        self.max_restarts = max_restarts
        self.restarts = 0
        self.port = spec.port or free_port(spec.host)
        self.process: subprocess.Popen | None = None
        self.failed: str | None = None  # set by the watcher when restarts are exhausted
        self._command: ServerCommand | None = None
        self.fronted: list[ManagedServer] = []  # a router's replicas among the servers started with it
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ManagedServer({self.spec.name!r}, kind={self.spec.kind!r}, port={self.port}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def root_url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def endpoint(self) -> ServedEndpoint:
        """What clients use: base URL ending in /v1 and the model id the server answers to."""
        assert self._command is not None, "start() first"
        return ServedEndpoint(base_url=f"{self.root_url}/v1", model_id=self._command.model_id)

    def start(self) -> "ManagedServer":
        """Launch the process (its own session/process group). Does not wait: see wait_healthy()."""
        if self._command is None and self.spec.kind == "router":
            workers = [replica.root_url for replica in self.fronted] + list(self.spec.worker_urls)
            model = self.spec.model or (self.fronted[0].endpoint.model_id if self.fronted else None)
            self._command = server_command(self.spec, self.port, model, workers)
        elif self._command is None:
            check_context_length(self.spec)
            self._command = server_command(self.spec, self.port, model_argument(self.spec))
        env = {**os.environ, **self._command.env}
        if self.spec.kind == "transformers":
            # `transformers serve` answers 500 on /v1/models unless the hub cache folder exists
            hf_home = Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
            (hf_home / "hub").mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.log_path, "ab") as log_file:
            log_file.write(f"\n=== start {time.strftime('%Y-%m-%dT%H:%M:%S')} (restart {self.restarts}) ===\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(self._command.argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=None if self.detached else die_with_parent)
        log.info("server %s: started pid %d on port %d", self.spec.name, self.process.pid, self.port)
        return self

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no log)"

    def is_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.root_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        """Poll /health until 200; raise ServerError with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + (timeout_s or self.spec.startup_timeout_s)
        while time.monotonic() < deadline:
            process = self.process
            if process is None or exited_unreaped(process.pid):
                code = self._reap(process)
                tail = self.log_tail()
                raise ServerError(f"server '{self.spec.name}' exited with code {code} while starting; "
                                  f"{start_failure_hint(tail)}log {self.log_path}:\n{tail}")
            if self.is_healthy():
                return
            time.sleep(HEALTH_POLL_S)
        raise ServerError(f"server '{self.spec.name}' not healthy within {timeout_s or self.spec.startup_timeout_s:g}s; "
                          f"log {self.log_path}:\n{self.log_tail()}")

    def watch(self, interval_s: float = 1.0) -> None:
        """Start a daemon thread that restarts the server (same port) if it exits before stop()."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_loop, args=(interval_s,), daemon=True,
                                             name=f"watch-{self.spec.name}")
            self._watcher.start()

    def _watch_loop(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            process = self.process
            if process is None or not exited_unreaped(process.pid):
                continue
            code = self._reap(process)
            if self.restarts >= self.max_restarts:
                self.failed = (f"server '{self.spec.name}' exited with code {code} and "
                               f"{self.restarts} restarts are used up; log {self.log_path}")
                log.error("%s:\n%s", self.failed, self.log_tail())
                return
            self.restarts += 1
            log.warning("server %s exited with code %s; restart %d/%d", self.spec.name, code,
                        self.restarts, self.max_restarts)
            try:
                self.start()
                self.wait_healthy()
            except ServerError as exc:
                log.error("server %s: restart failed: %s", self.spec.name, exc)

    def _reap(self, process: subprocess.Popen | None) -> int | None:
        """Sweep what is left of a dead server's process group (it must not hold the port), then reap it."""
        if process is None:
            return None
        with self._lock:
            stop_process_group(process, STOP_GRACE_S)
        return process.returncode

    def stop(self) -> None:
        """Stop the process group this object started (SIGTERM, then SIGKILL after a grace period)."""
        self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=STOP_GRACE_S + 10)
        with self._lock:
            if self.process is not None:
                stop_process_group(self.process, STOP_GRACE_S)


class RunningServers(dict):
    """{name: ServedEndpoint} (what build_agents/build_reward take), plus `.servers` {name: ManagedServer} for
    pids, restart counts and log paths."""

    def __init__(self, servers: list[ManagedServer] = ()):  # type: ignore[assignment]
        super().__init__({server.spec.name: server.endpoint for server in servers})
        self.servers = {server.spec.name: server for server in servers}

    def check(self) -> None:
        """Raise ServerError if a server died for good (its restarts are used up)."""
        for server in self.servers.values():
            if server.failed:
                raise ServerError(server.failed)


@contextlib.contextmanager
def managed_servers(config: ServersConfig, run_dir: str | Path) -> Iterator[RunningServers]:
    """Start every server in `config` (when `config.managed`), wait until all are healthy, yield
    {name: ServedEndpoint} for build_agents/build_reward, and stop them all on exit, whatever happened."""
    if not config.managed or not config.servers:
        yield RunningServers()
        return
    log_dir = Path(run_dir) / "servers"
    servers = _servers_of(config, log_dir, max_restarts=config.max_restarts)
    try:
        _start_in_order(servers)
        if config.restart_on_crash:
            for server in servers:
                server.watch()
        yield RunningServers(servers)
    finally:
        for server in sorted(servers, key=lambda s: s.spec.kind != "router"):  # routers first, then their replicas
            server.stop()


def _servers_of(config: ServersConfig, log_dir: Path, **options) -> list[ManagedServer]:
    """One ManagedServer per spec, routers wired to the servers they front."""
    servers = [ManagedServer(spec, log_dir, **options) for spec in config.servers]
    by_name = {server.spec.name: server for server in servers}
    for server in servers:
        server.fronted = [by_name[name] for name in server.spec.replicas]
    return servers


def _start_in_order(servers: list[ManagedServer]) -> None:
    """Model servers first, all launched before any is waited for (vLLM start-ups overlap), then the routers."""
    for phase in ([s for s in servers if s.spec.kind != "router"], [s for s in servers if s.spec.kind == "router"]):
        for server in phase:
            server.start()
        for server in phase:
            server.wait_healthy()


# -- servers started by `toa servers up` and stopped by `toa servers down` ------------------------------------
# They outlive the command that started them, so what they are is recorded in a state file; `down` signals a
# recorded process group only while its leader still runs the command we recorded (never someone else's process).

def start_detached(config: ServersConfig, state_path: Path, log_dir: Path) -> list[dict]:
    """Start every server of `config`, wait until healthy, record them in `state_path`; returns the records."""
    if state_path.exists() and any(_still_ours(record) for record in json.loads(state_path.read_text())):
        raise ServerError(f"servers recorded in {state_path} are still running; `toa servers down` first")
    servers = _servers_of(config, log_dir, detached=True)
    records: list[dict] = []
    try:
        _start_in_order(servers)
        for server in servers:
            records.append({"name": server.spec.name, "pid": server.pid, "argv": server._command.argv,
                            **({"proctitle": ROUTER_PROCTITLE} if server.spec.kind == "router" else {}),
                            "base_url": server.endpoint.base_url, "model_id": server.endpoint.model_id,
                            "log": str(server.log_path), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except BaseException:
        for server in servers:
            server.stop()
        raise
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(records, indent=2))
    return records


def detached_status(state_path: Path) -> list[dict]:
    """The recorded servers with `running` (our process is alive) and `healthy` (GET /health answers 200)."""
    if not state_path.exists():
        return []
    status = []
    for record in json.loads(state_path.read_text()):
        running = _still_ours(record)
        healthy = False
        if running:
            with contextlib.suppress(httpx.HTTPError):
                healthy = httpx.get(record["base_url"].removesuffix("/v1") + "/health", timeout=5).status_code == 200
        status.append({**record, "running": running, "healthy": healthy})
    return status


def stop_detached(state_path: Path) -> list[str]:
    """Stop the recorded servers that are still ours; returns their names. Removes the state file."""
    stopped = []
    if not state_path.exists():
        return stopped
    for record in json.loads(state_path.read_text()):
        if not _still_ours(record):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and _still_ours(record):
            time.sleep(0.2)
        if _still_ours(record):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pid"], signal.SIGKILL)
        stopped.append(record["name"])
    state_path.unlink()
    return stopped


def _still_ours(record: dict) -> bool:
    """True while pid `record['pid']` is alive and runs the command line we recorded for it."""
    try:
        cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if Path(f"/proc/{record['pid']}/stat").read_text().split(") ")[-1].startswith("Z"):
        return False  # a zombie: exited, only waiting to be reaped
    if record.get("proctitle"):  # vllm-router renames itself (setproctitle), which overwrites its command line
        return cmdline[0].strip(b" ") == record["proctitle"].encode()
    recorded = [arg.encode() for arg in record["argv"][1:]]
    return cmdline[1:1 + len(recorded)] == recorded or cmdline[2:2 + len(recorded)] == recorded
