"""An OpenAI-compatible chat server that behaves like a continuous-batching engine, with fault injection.

It never runs a model. It serves `POST /v1/chat/completions` (and vLLM's pooling routes `/classify` and `/pooling`
for reward clients, scoring a conversation by the word count of its last message) the way a loaded vLLM replica looks from the outside:
a fixed number of concurrent *slots* (requests beyond them queue), a per-token delay, a configurable response
length, `usage` in every answer. Faults are injected by rate:

- ``error_rate``  HTTP 500 with a JSON error body
- ``throttle_rate``  HTTP 429 with ``Retry-After: <retry_after_s>``
- ``slow_rate``  the answer starts only after ``slow_s`` seconds (set it beyond the client's read timeout)
- ``drop_rate``  headers and half the body are sent, then the connection is cut
- ``dead_rate``  the connection is closed without any answer (1.0 = a dead replica)

A prefix cache like vLLM's automatic prefix caching, per server (= per replica): the prompt (the chat messages,
role markers included; words stand for tokens) is cut into blocks of ``block_tokens`` (16, as vLLM) whose hashes
chain, seeded by the model name; the leading blocks already in the cache are hits, the rest are computed and
cached, and the least recently used blocks are evicted beyond ``prefix_cache_blocks`` (0 = no cache). A request's
prefill costs ``prefill_ms_per_token`` per uncached prompt token, then decoding costs ``token_delay_ms`` per
generated token, all while it holds a slot; pooling requests (/classify, /pooling) cost their prefill only.
``GET /stats`` counts ``prefix_cache_queries`` and ``prefix_cache_hits`` in tokens, as vLLM's
``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` counters do, and the same for requests whose prompt
contains ``refine_marker`` (``refine_prefix_cache_*``), plus ``in_flight_seconds`` (the integral of requests in
flight over time: divided by a run's wall time it is the mean load the replica carried) and ``slot_seconds`` (the
modelled work done: prefill plus decode time, summed over requests).

``max_faults_per_request`` bounds how often one logical request (the ``X-Request-Id`` header the toaflow client
sends, the same on every retry) is faulted, which makes fault tests deterministic: rate 1.0 with a bound of 1 means
"every request fails exactly once, then succeeds". ``GET /stats`` reports counts; ``POST /admin/reset`` clears them
and the prefix cache; ``POST /admin/faults`` changes the fault settings of a running server; ``GET /health`` and
``GET /v1/models`` answer as vLLM's do.

It is a small HTTP/1.1 server on raw asyncio streams (keep-alive, Content-Length bodies) so it can hold thousands
of connections on one core and cut a connection exactly where a fault needs it.

Run: ``python -m bench.loadserver --port 8000 --slots 64 --token-delay-ms 5 --response-tokens 64 --error-rate 0.1``.
In Python: ``with LoadServer(slots=8, error_rate=0.2) as server: server.base_url`` (a subprocess, stopped by PID).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

FAULT_KINDS = ("error", "throttle", "slow", "drop", "dead")


@dataclass
class Faults:
    """Fault-injection settings; every rate is a probability in [0, 1] drawn per request."""
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    slow_rate: float = 0.0
    drop_rate: float = 0.0
    dead_rate: float = 0.0
    retry_after_s: float = 1.0
    slow_s: float = 30.0
    max_faults_per_request: int | None = None  # None: unlimited

    def validate(self) -> "Faults":
        rates = [getattr(self, f"{kind}_rate") for kind in FAULT_KINDS]
        if any(r < 0 or r > 1 for r in rates) or sum(rates) > 1 + 1e-9:
            raise ValueError(f"fault rates must be in [0, 1] and sum to at most 1, got {rates}")
        return self


@dataclass
class EngineSettings:
    slots: int = 64
    token_delay_ms: float = 0.0
    response_tokens: int = 32
    api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>`
    model: str | None = None  # when set, requests for another model get 404 (as vLLM does)
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    prefill_ms_per_token: float = 0.0  # time per prompt token not found in the prefix cache
    prefix_cache_blocks: int = 0  # cache capacity in blocks (0 = no prefix cache: every token is prefilled)
    block_tokens: int = 16
    refine_marker: str | None = None  # prompts containing it are also counted under refine_prefix_cache_*
    distinct_answers: bool = False  # every answer different (refinements of different parents then differ too)


class LoadEngine:
    """The request handling and bookkeeping, independent of the socket layer."""

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.settings.faults.validate()
        self.rng = random.Random(settings.seed)
        self.slots = asyncio.Semaphore(settings.slots)
        self.stats: Counter[str] = Counter()
        self.in_flight = 0
        self.busy_slots = 0
        self.faults_per_request: Counter[str] = Counter()
        self.prefix_cache: OrderedDict[int, None] = OrderedDict()  # block hash -> (LRU order)
        self._in_flight_area = 0.0
        self._in_flight_since = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        self.change_in_flight(0)
        return {
            **self.stats, "in_flight": self.in_flight, "busy_slots": self.busy_slots,
            "slots": self.settings.slots, "faults": asdict(self.settings.faults),
            "in_flight_seconds": self._in_flight_area, "prefix_cache_blocks_used": len(self.prefix_cache),
        }

    def reset(self) -> None:
        """Forget the counters and the prefix cache (an idle replica as if just started)."""
        self.stats.clear()
        self.prefix_cache.clear()
        self._in_flight_area = 0.0
        self._in_flight_since = time.monotonic()

    def change_in_flight(self, delta: int) -> None:
        """Add `delta` to the requests in flight, integrating the count over time first."""
        now = time.monotonic()
        self._in_flight_area += self.in_flight * (now - self._in_flight_since)
        self._in_flight_since = now
        self.in_flight += delta

    def prefill(self, model: str, messages: list[Any]) -> tuple[int, int]:
        """Look the prompt up in the prefix cache and cache its blocks: (prompt tokens, tokens found cached)."""
        text = " ".join(f"<|{m.get('role', 'user')}|> {m.get('content', '')}" for m in messages
                        if isinstance(m, dict))
        tokens = text.split()
        settings = self.settings
        hits = 0
        if settings.prefix_cache_blocks > 0:
            block = settings.block_tokens
            chained = hash(("model", model))
            missed = False
            for start in range(0, len(tokens) - block + 1, block):  # only full blocks are cached, as in vLLM
                chained = hash((chained, *tokens[start:start + block]))
                if not missed and chained in self.prefix_cache:
                    hits += block
                    self.prefix_cache.move_to_end(chained)
                    continue
                missed = True
                self.prefix_cache[chained] = None
                self.prefix_cache.move_to_end(chained)
            while len(self.prefix_cache) > settings.prefix_cache_blocks:
                self.prefix_cache.popitem(last=False)
        self.stats["prefix_cache_queries"] += len(tokens)
        self.stats["prefix_cache_hits"] += hits
        if settings.refine_marker and settings.refine_marker in text:
            self.stats["refine_prefix_cache_queries"] += len(tokens)
            self.stats["refine_prefix_cache_hits"] += hits
            self.stats["refine_requests"] += 1
        return len(tokens), hits

    async def _occupy_slot(self, seconds: float) -> None:
        self.stats["slot_seconds"] += seconds  # the work the request costs the replica, whatever the machine does
        async with self.slots:
            self.busy_slots += 1
            self.stats["peak_busy_slots"] = max(self.stats["peak_busy_slots"], self.busy_slots)
            try:
                if seconds > 0:
                    await asyncio.sleep(seconds)
            finally:
                self.busy_slots -= 1

    def choose_fault(self, request_id: str | None) -> str | None:
        faults = self.settings.faults
        if request_id and faults.max_faults_per_request is not None \
                and self.faults_per_request[request_id] >= faults.max_faults_per_request:
            return None
        draw = self.rng.random()
        for kind in FAULT_KINDS:
            draw -= getattr(faults, f"{kind}_rate")
            if draw < 0:
                if request_id:
                    self.faults_per_request[request_id] += 1
                return kind
        return None

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Occupy a slot for the time `response_tokens` tokens take, then answer like vLLM."""
        requested = body.get("max_tokens") or body.get("max_completion_tokens") or self.settings.response_tokens
        n_tokens = max(1, min(int(requested), self.settings.response_tokens))
        finish_reason = "length" if int(requested) <= self.settings.response_tokens else "stop"
        prompt_text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        prompt_tokens, cached = self.prefill(str(body.get("model")), body.get("messages", []))
        prefill_s = (prompt_tokens - cached) * self.settings.prefill_ms_per_token / 1000
        await self._occupy_slot(prefill_s + n_tokens * self.settings.token_delay_ms / 1000)
        serial = self.stats["received"]
        words = [f"r{serial}w{i}" if self.settings.distinct_answers else f"w{i}" for i in range(n_tokens)]
        return {
            "id": f"chatcmpl-{self.stats['received']}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "load"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": len(prompt_text.split()), "completion_tokens": n_tokens,
                      "total_tokens": len(prompt_text.split()) + n_tokens},
        }


    async def pool(self, api: str, body: dict[str, Any]) -> dict[str, Any]:
        """A fake vLLM pooling answer (/classify or /pooling) for reward clients: the score of a conversation is
        the number of words of its last message (a sigmoid of it for /classify unless use_activation is false).
        It costs the prefill of the uncached tokens, like a reward model's forward pass."""
        prompt_tokens, cached = self.prefill(str(body.get("model")), body.get("messages") or [])
        await self._occupy_slot((prompt_tokens - cached) * self.settings.prefill_ms_per_token / 1000)
        last = (body.get("messages") or [{"content": ""}])[-1].get("content", "")
        score = float(len(str(last).split()))
        if api == "classify":
            if body.get("use_activation", True):
                score = 1 / (1 + math.exp(-score))
            data = {"index": 0, "label": "LABEL_0", "probs": [score], "num_classes": 1}
        else:
            data = {"index": 0, "object": "pooling", "data": [score]}
        return {"id": f"pool-{self.stats['received']}", "object": "list", "model": body.get("model"),
                "data": [data], "usage": {"prompt_tokens": 1, "total_tokens": 1}}


# ------------------------------------------------------------------------------------------------ HTTP layer

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error"}


def _response_bytes(status: int, payload: Any, headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(payload).encode()
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _error(status: int, message: str, kind: str) -> bytes:
    return _response_bytes(status, {"error": {"message": message, "type": kind, "code": status}})


class LoadHTTPServer:
    def __init__(self, engine: LoadEngine):
        self.engine = engine
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle_connection, host, port, backlog=4096)
        return self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                keep_open = await self._route(*request, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes,
                     writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return False when the connection must be closed (a fault cut it)."""
        engine = self.engine
        if path == "/stats" and method == "GET":
            writer.write(_response_bytes(200, engine.snapshot()))
        elif path == "/health" and method == "GET":
            writer.write(_response_bytes(200, {"status": "ok"}))
        elif path == "/v1/models" and method == "GET":
            writer.write(_response_bytes(200, {"object": "list", "data": [
                {"id": engine.settings.model or "load", "object": "model", "owned_by": "toaflow-loadserver"}]}))
        elif path == "/admin/reset" and method == "POST":
            if engine.in_flight:
                writer.write(_error(409, f"{engine.in_flight} requests in flight", "conflict"))
            else:
                engine.reset()
                writer.write(_response_bytes(200, {"reset": True}))
        elif path == "/admin/faults" and method == "POST":
            try:
                update = json.loads(body or b"{}")
                known = {f.name for f in fields(Faults)}
                if set(update) - known:
                    raise ValueError(f"unknown fault keys {sorted(set(update) - known)}")
                engine.settings.faults = Faults(**{**asdict(engine.settings.faults), **update}).validate()
                engine.faults_per_request.clear()
                writer.write(_response_bytes(200, asdict(engine.settings.faults)))
            except (ValueError, TypeError) as exc:
                writer.write(_error(400, str(exc), "invalid_request_error"))
        elif path in ("/v1/chat/completions", "/classify", "/pooling"):
            if method != "POST":
                writer.write(_error(405, "use POST", "invalid_request_error"))
            else:
                return await self._chat(headers, body, writer, api=path.rsplit("/", 1)[-1])
        else:
            writer.write(_error(404, f"no route {method} {path}", "not_found"))
        await writer.drain()
        return True

    async def _chat(self, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter,
                    api: str = "completions") -> bool:
        engine = self.engine
        engine.stats["received"] += 1
        engine.change_in_flight(+1)
        engine.stats["peak_in_flight"] = max(engine.stats["peak_in_flight"], engine.in_flight)
        try:
            settings = engine.settings
            if settings.api_key is not None and headers.get("authorization") != f"Bearer {settings.api_key}":
                # Like some hosted APIs, echo what was sent: the client must scrub its key from errors.
                sent = headers.get("authorization", "").removeprefix("Bearer ")
                engine.stats["unauthorized"] += 1
                writer.write(_error(401, f"Incorrect API key provided: {sent}", "authentication_error"))
                await writer.drain()
                return True
            try:
                payload = json.loads(body)
                if not isinstance(payload.get("messages"), list) or not payload["messages"]:
                    raise ValueError("`messages` must be a non-empty list")
            except ValueError as exc:
                engine.stats["bad_request"] += 1
                writer.write(_error(400, f"invalid request: {exc}", "invalid_request_error"))
                await writer.drain()
                return True
            if settings.model is not None and payload.get("model") != settings.model:
                engine.stats["bad_model"] += 1
                writer.write(_error(404, f"The model `{payload.get('model')}` does not exist.", "NotFoundError"))
                await writer.drain()
                return True
            fault = engine.choose_fault(headers.get("x-request-id"))
            if fault:
                engine.stats[f"fault_{fault}"] += 1
            if fault == "dead":
                writer.transport.abort()
                return False
            if fault == "error":
                writer.write(_error(500, "injected internal error", "InternalServerError"))
                await writer.drain()
                return True
            if fault == "throttle":
                writer.write(_response_bytes(429, {"error": {"message": "injected throttle", "code": 429}},
                                             {"Retry-After": f"{settings.faults.retry_after_s:g}"}))
                await writer.drain()
                return True
            if fault == "slow":
                await asyncio.sleep(settings.faults.slow_s)
            answer = await engine.complete(payload) if api == "completions" else await engine.pool(api, payload)
            data = _response_bytes(200, answer)
            if fault == "drop":
                writer.write(data[: len(data) - len(data) // 3])  # headers and part of the body
                await writer.drain()
                writer.transport.abort()
                return False
            writer.write(data)
            await writer.drain()
            engine.stats["served"] += 1
            return True
        finally:
            engine.change_in_flight(-1)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    request_line = await reader.readline()
    if not request_line:
        return None
    method, path, _version = request_line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return method, path.split("?", 1)[0], headers, body


async def serve(settings: EngineSettings, host: str, port: int, port_file: Path | None = None) -> None:
    server = LoadHTTPServer(LoadEngine(settings))
    bound = await server.start(host, port)
    if port_file is not None:  # written after bind: the parent reads the real port of --port 0
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(bound))
        os.replace(tmp, port_file)
    print(f"loadserver listening on http://{host}:{bound}/v1", flush=True)
    await server.serve_forever()


# ------------------------------------------------------------------------------------------ subprocess handle

class LoadServer:
    """Run the load server in a subprocess on a free loopback port; stop it by its PID on exit.

    Keyword arguments are EngineSettings / Faults fields (``slots=8, error_rate=0.2, max_faults_per_request=1``).
    """

    def __init__(self, *, host: str = "127.0.0.1", startup_timeout_s: float = 30.0, **options: Any):
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.argv = _argv_for(options)
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="toaflow-loadserver-")

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (ends in /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "LoadServer":
        port_file = Path(self._tmp.name) / "port"
        log_path = Path(self._tmp.name) / "server.log"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.loadserver", "--host", self.host, "--port", "0",
                 "--port-file", str(port_file), *self.argv],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(Path(__file__).resolve().parents[1]),
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"loadserver exited with {self.process.returncode}: {log_path.read_text()[-2000:]}")
            if port_file.exists():
                self.port = int(port_file.read_text())
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"loadserver did not start within {self.startup_timeout_s}s: {log_path.read_text()[-2000:]}")

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.root_url}/stats", timeout=10).json()

    def reset(self) -> None:
        """Clear the counters and the prefix cache of the idle server (POST /admin/reset)."""
        httpx.post(f"{self.root_url}/admin/reset", timeout=10).raise_for_status()

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.root_url}/admin/faults", json=faults, timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        """Stop our own subprocess (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._tmp.cleanup()

    def __enter__(self) -> "LoadServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _argv_for(options: dict[str, Any]) -> list[str]:
    engine_keys = {f.name for f in fields(EngineSettings)} - {"faults"}
    fault_keys = {f.name for f in fields(Faults)}
    argv: list[str] = []
    for key, value in options.items():
        if key not in engine_keys | fault_keys:
            raise TypeError(f"unknown load server option {key!r}")
        if isinstance(value, bool):  # switches
            argv += [f"--{key.replace('_', '-')}"] if value else []
        elif value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadserver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (see --port-file)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--slots", type=int, default=64, help="requests processed at once; the rest queue")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="time per generated token in a slot")
    parser.add_argument("--response-tokens", type=int, default=32, help="tokens per answer (capped by max_tokens)")
    parser.add_argument("--api-key", help="require this bearer token (tests only; use --api-key-env otherwise)")
    parser.add_argument("--api-key-env", help="require the bearer token held in this environment variable")
    parser.add_argument("--model", help="only accept requests for this model name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.0,
                        help="time per prompt token missing from the prefix cache")
    parser.add_argument("--prefix-cache-blocks", type=int, default=0,
                        help="prefix cache capacity in blocks of --block-tokens (0 = no cache)")
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument("--refine-marker", help="count prompts containing this text under refine_prefix_cache_*")
    parser.add_argument("--distinct-answers", action="store_true", help="make every answer's words different")
    for kind in FAULT_KINDS:
        parser.add_argument(f"--{kind}-rate", type=float, default=0.0)
    parser.add_argument("--retry-after-s", type=float, default=1.0)
    parser.add_argument("--slow-s", type=float, default=30.0)
    parser.add_argument("--max-faults-per-request", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    api_key = args.api_key or (os.environ.get(args.api_key_env) if args.api_key_env else None)
    faults = Faults(**{f"{k}_rate": getattr(args, f"{k}_rate") for k in FAULT_KINDS},
                    retry_after_s=args.retry_after_s, slow_s=args.slow_s,
                    max_faults_per_request=args.max_faults_per_request)
    settings = EngineSettings(slots=args.slots, token_delay_ms=args.token_delay_ms,
                              response_tokens=args.response_tokens, api_key=api_key, model=args.model,
                              faults=faults.validate(), seed=args.seed,
                              prefill_ms_per_token=args.prefill_ms_per_token,
                              prefix_cache_blocks=args.prefix_cache_blocks, block_tokens=args.block_tokens,
                              refine_marker=args.refine_marker, distinct_answers=args.distinct_answers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(serve(settings, args.host, args.port, args.port_file))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
