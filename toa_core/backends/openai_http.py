"""One async client for OpenAI-compatible chat servers (vLLM, SGLang, TGI, `transformers serve`, hosted APIs).

What it guarantees:
- Per-endpoint concurrency limit (a semaphore per base URL) and a connection pool sized to it.
- Every request is bounded: connect/read timeouts from RetryConfig plus an overall deadline per attempt.
- Retries with exponential backoff and full jitter on 429 (Retry-After honoured, up to backoff_max_s), 408, 5xx,
  timeouts, connection errors and truncated or malformed bodies. Other 4xx fail fast with the server's message.
- Replicas: `routing: affinity` (the default with several endpoints) keeps each (model, prompt) on one replica
  under a load bound, so its prefix cache serves the tree; `round_robin` uses them in turn (toa_core/backends/
  routing.py). Either way a request's retry goes to the next replica of its plan.
- `generate` never raises for a failed request: it returns `Generation(error=...)`.
- The API key (read from the env var named in ModelConfig.api_key_env) never appears in errors, logs or reprs.

We always send chat messages, never a rendered prompt: the server applies its own chat template. Streaming is off
(one JSON answer per request).

Transport: aiohttp with orjson. The orchestrator's CPU per generation is mostly this client (TOA's own
bookkeeping is a small share), and aiohttp's C HTTP parser and O(1) connection pool cost a fraction of httpx's
pure-Python stack (bench/bench_orchestration.py measures both side by side).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from toa_core.backends.routing import DEFAULT_LOAD_FACTOR, SESSION_HEADER, ReplicaRouter, session_key
from toa_core.config import ModelConfig, RetryConfig
from toa_core.credentials import mask_url_credentials, redact_text, secret_values
from toa_core.records import Generation, Message, is_valid_unicode
from toa_core.interfaces import SamplingParams

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    """An attempt failed in a way another attempt may fix; `wait_s` is the server's Retry-After if any."""

    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


class _Fatal(Exception):
    """An attempt failed in a way retrying cannot fix (bad request, auth, unknown model)."""


def backoff_delay(attempt: int, retry: RetryConfig, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(max, initial * 2**attempt)), attempt counted from 0."""
    cap = min(retry.backoff_max_s, retry.backoff_initial_s * (2 ** attempt))
    return (rng or random).uniform(0, cap)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; HTTP dates are rare from model servers)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def chat_url(base_url: str) -> str:
    """`http://host:port/v1` -> `http://host:port/v1/chat/completions` (a trailing slash is tolerated)."""
    return base_url.rstrip("/") + "/chat/completions"


_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    """One TLS context per process: loading the CA bundle costs ~50 ms of CPU, so it is done once."""
    global _TLS
    if _TLS is None:
        import certifi

        _TLS = ssl.create_default_context(cafile=certifi.where())
    return _TLS


@dataclass
class Response:
    """What an attempt needs from an HTTP answer: status, body bytes and the Retry-After header."""
    status: int
    body: bytes
    reason: str = ""
    retry_after: str | None = None

    def json(self) -> Any:
        """The body as JSON; ValueError for anything unreadable, including a body nested too deeply for the
        standard library's recursive parser (which raises RecursionError)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            # Python-based servers may write NaN/Infinity (not JSON, which orjson refuses): read them as the
            # standard library does, so a reward server's NaN is reported as a non-finite score, not a bad body.
            try:
                return json.loads(self.body)
            except RecursionError:
                raise ValueError("JSON body nested too deeply") from None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class HTTPTransport:
    """POSTs JSON over one aiohttp session whose pool holds `size` keep-alive connections.

    aiohttp keeps idle connections per host in a deque (taking one is O(1)), where httpx's pool scanned all its
    connections on every request; with hundreds of trees in flight that scan was most of the orchestrator's CPU.
    """

    def __init__(self, size: int, retry: RetryConfig):
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=size, limit_per_host=0, ssl=_tls_context(), ttl_dns_cache=300),
            # connect / between-reads timeouts, and a deadline for the whole exchange (a server that trickles
            # bytes forever must not hang a tree)
            timeout=aiohttp.ClientTimeout(total=retry.connect_timeout_s + retry.read_timeout_s,
                                          sock_connect=retry.connect_timeout_s, sock_read=retry.read_timeout_s),
            headers={"Content-Type": "application/json"},  # bodies go out as orjson bytes
        )

    async def post_json(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> Response:
        """POST `body` as JSON; raise asyncio.TimeoutError or aiohttp.ClientError when the exchange fails."""
        async with self._session.post(url, data=orjson.dumps(body), headers=headers) as answer:
            payload = await answer.read()
            return Response(answer.status, payload, answer.reason or "", answer.headers.get("Retry-After"))

    async def aclose(self) -> None:
        await self._session.close()


@dataclass
class EndpointPool:
    """A set of replicas sharing one connection pool (HTTPTransport) and one semaphore per replica.

    Agents whose configs list the same endpoints share a pool (see factory.build_agents), so the concurrency limit
    holds per server, not per agent.
    """
    endpoints: list[str]
    max_concurrency: int
    retry: RetryConfig
    routing: str | None = None  # round_robin | affinity; None = affinity with several endpoints
    load_factor: float = DEFAULT_LOAD_FACTOR
    router: ReplicaRouter = field(init=False, repr=False)
    _client: "HTTPTransport | None" = field(default=None, init=False, repr=False)
    _semaphores: dict[str, asyncio.Semaphore] = field(default_factory=dict, init=False, repr=False)
    _users: int = field(default=0, init=False, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("an endpoint pool needs at least one base URL")
        self._urls = {endpoint: chat_url(endpoint) for endpoint in self.endpoints}
        self.router = ReplicaRouter(self.endpoints, self.routing, load_factor=self.load_factor)

    def _bind_loop(self) -> None:
        """Connections and semaphores belong to one event loop: start fresh when used from a new one."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._client = None  # the old loop's connections are unusable (it is closed or elsewhere)
            self._semaphores = {url: asyncio.Semaphore(self.max_concurrency) for url in self.endpoints}

    @property
    def client(self) -> "HTTPTransport":
        self._bind_loop()
        if self._client is None:
            self._client = HTTPTransport(self.max_concurrency * len(self.endpoints), self.retry)
        return self._client

    def chat_url(self, endpoint: str) -> str:
        return self._urls[endpoint]

    def semaphore(self, endpoint: str) -> asyncio.Semaphore:
        self._bind_loop()
        return self._semaphores[endpoint]

    def acquire(self) -> "EndpointPool":
        """Register one more user; the pool's client closes when the last user releases it."""
        self._users += 1
        return self

    async def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            if asyncio.get_running_loop() is self._loop:
                await client.aclose()


class OpenAIChatModel:
    """A ChatModel backed by an OpenAI-compatible `/v1/chat/completions` endpoint (one or several replicas)."""

    def __init__(self, config: ModelConfig, endpoints: list[str] | None = None, *, pool: EndpointPool | None = None,
                 rng: random.Random | None = None):
        self.config = config
        self.name = config.name
        urls = list(endpoints if endpoints is not None else config.endpoints)
        self._pool = (pool or EndpointPool(urls, config.max_concurrency, config.retry, config.routing,
                                           config.affinity_load_factor)).acquire()
        self._closed = False
        self._rng = rng or random.Random()
        self._api_key = _read_api_key(config)
        self._warned_no_usage = False

    def __repr__(self) -> str:  # never shows the key, nor credentials in an endpoint URL
        return mask_url_credentials(
            f"OpenAIChatModel(name={self.name!r}, model={self.config.model!r}, endpoints={self._pool.endpoints!r})")

    @property
    def endpoints(self) -> list[str]:
        return list(self._pool.endpoints)

    def request_body(self, messages: list[Message], params: SamplingParams) -> dict[str, Any]:
        """The JSON body sent: agent overrides (temperature/top_p/max_tokens) win over the search's params; the
        agent's top_k / min_p / repetition_penalty are added when configured."""
        if self.config.system_prompt and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": self.config.system_prompt}, *messages]
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": self.config.temperature if self.config.temperature is not None else params.temperature,
            "top_p": self.config.top_p if self.config.top_p is not None else params.top_p,
            "max_tokens": self.config.max_tokens if self.config.max_tokens is not None else params.max_tokens,
        }
        for name in ("top_k", "min_p", "repetition_penalty"):  # only when configured (see ModelConfig)
            value = getattr(self.config, name)
            if value is not None:
                body[name] = value
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def generate(self, messages: list[Message], params: SamplingParams) -> Generation:
        """One completion with retries. Never raises: a request that fails for good returns Generation(error=...),
        and so does anything unexpected (a body no check foresaw): one failed candidate, never a failed run."""
        started = time.monotonic()
        try:
            return await self._generate(messages, params, started)
        except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; cancellation still propagates
            return self._failed(f"unexpected error: {type(exc).__name__}: {str(exc)[:300]}", started, 0)

    async def _generate(self, messages: list[Message], params: SamplingParams, started: float) -> Generation:
        body = self.request_body(messages, params)
        headers = {"X-Request-Id": uuid.uuid4().hex}  # the same on every retry: servers can trace and dedupe
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        session = session_key(self.config.model, params.session_id) if params.session_id else None
        if session:
            headers[SESSION_HEADER] = session  # a vllm-router in front of replicas keeps the session together too
        retry = self.config.retry
        plan = self._pool.router.plan(session)
        last_error = "no attempt made"
        for attempt in range(retry.max_attempts):
            endpoint = plan[attempt % len(plan)]
            try:
                with self._pool.router.attempt(endpoint, faults=(_Retryable,)):
                    generation = await self._attempt(endpoint, body, headers)
            except _Fatal as exc:
                return self._failed(str(exc), started, attempt)
            except _Retryable as exc:
                last_error = str(exc)
                if attempt + 1 >= retry.max_attempts:
                    break
                delay = backoff_delay(attempt, retry, self._rng)
                if exc.wait_s is not None:
                    delay = max(delay, min(exc.wait_s, retry.backoff_max_s))
                log.info("agent %s: attempt %d/%d failed (%s); retrying in %.2fs",
                         self.name, attempt + 1, retry.max_attempts, self._scrub(last_error), delay)
                await asyncio.sleep(delay)
                continue
            generation.retries = attempt
            generation.latency_s = time.monotonic() - started
            return generation
        return self._failed(f"gave up after {retry.max_attempts} attempts: {last_error}", started,
                            retry.max_attempts - 1)

    async def _attempt(self, endpoint: str, body: dict[str, Any], headers: dict[str, str]) -> Generation:
        pool = self._pool
        async with pool.semaphore(endpoint):
            try:
                response = await pool.client.post_json(pool.chat_url(endpoint), body, headers)
            except asyncio.TimeoutError as exc:  # aiohttp's connect, read and total timeouts all derive from it
                raise _Retryable(f"timeout from {endpoint} ({type(exc).__name__})") from None
            except aiohttp.ClientError as exc:  # connect errors, resets, bodies cut short
                raise _Retryable(f"connection error from {endpoint}: {type(exc).__name__}: {exc}") from None
        status = response.status
        if status == 200:
            return self._parse(endpoint, response, body)
        message = _server_message(response)
        if status in RETRYABLE_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status} from {endpoint}: {message}",
                             parse_retry_after(response.retry_after) if status == 429 else None)
        raise _Fatal(f"HTTP {status} from {endpoint}: {message}")

    def _parse(self, endpoint: str, response: Response, body: dict[str, Any]) -> Generation:
        """A 200 answer as a Generation. A body of the wrong shape (not the OpenAI schema, odd types, nested too
        deeply) is retryable: another replica or attempt may answer properly. Text that is not valid Unicode (a
        lone surrogate such as "\\ud800" that a JSON escape can carry) is a failed generation: it cannot be stored
        in a Parquet table or sent on, and the same request would likely produce it again."""
        try:
            payload = response.json()
            choice = payload["choices"][0]
            content = choice["message"].get("content")
            if not isinstance(choice, dict) or not (content is None or isinstance(content, str)):
                raise TypeError("choices[0].message.content is not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _Retryable(f"malformed or truncated response from {endpoint}: {type(exc).__name__}") from None
        text = content if isinstance(content, str) else ""
        if not is_valid_unicode(text):
            raise _Fatal(f"response from {endpoint} holds invalid Unicode (a lone surrogate code point); "
                         "the answer is recorded as failed")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        prompt_tokens = prompt_tokens if _is_count(prompt_tokens) else None
        completion_tokens = completion_tokens if _is_count(completion_tokens) else None
        if prompt_tokens is None or completion_tokens is None:
            if not self._warned_no_usage:
                log.warning("agent %s: server %s returns no `usage`; token counts are estimated (~4 chars/token)",
                            self.name, endpoint)
                self._warned_no_usage = True
            prompt_chars = sum(len(m["content"]) for m in body["messages"])
            prompt_tokens = prompt_tokens if prompt_tokens is not None else estimate_tokens_from_chars(prompt_chars)
            completion_tokens = completion_tokens if completion_tokens is not None else estimate_tokens_from_chars(len(text))
        finish_reason = choice.get("finish_reason")
        return Generation(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          finish_reason=finish_reason if isinstance(finish_reason, str) and is_valid_unicode(finish_reason)
                          else None)

    def _failed(self, error: str, started: float, retries: int) -> Generation:
        # A server's message may carry lone surrogates too: the error goes into the candidate table as text.
        error = self._scrub(error).encode("utf-8", "replace").decode("utf-8")
        log.warning("agent %s: generation failed: %s", self.name, error)
        return Generation(text=None, error=error, retries=retries, latency_s=time.monotonic() - started)

    def _scrub(self, text: str) -> str:
        """Remove the API key (servers sometimes echo it) and credentials written in an endpoint URL from any text
        that may leave this object."""
        return redact_text(text, secret_values() | ({self._api_key} if self._api_key else set()))

    async def aclose(self) -> None:
        """Release the endpoint pool (its connections close with its last agent). Idempotent."""
        if not self._closed:
            self._closed = True
            await self._pool.release()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def estimate_tokens_from_chars(n_chars: int) -> int:
    """Rough token count for servers without `usage`: about 4 characters per token."""
    return max(1, round(n_chars / 4)) if n_chars else 0


def _read_api_key(config: ModelConfig) -> str | None:
    if not config.api_key_env:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ValueError(f"model '{config.name}': api_key_env names ${config.api_key_env}, which is not set")
    return key


def _server_message(response: Response, limit: int = 500) -> str:
    """The server's own error message (OpenAI `{"error": {"message"}}`, FastAPI `{"detail"}`, or raw text)."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:limit] or response.reason
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:limit]
        if isinstance(error, str):
            return error[:limit]
        if payload.get("detail"):
            return str(payload["detail"])[:limit]
        if payload.get("message"):
            return str(payload["message"])[:limit]
    try:
        return orjson.dumps(payload).decode()[:limit]
    except (TypeError, ValueError):  # nested deeper than orjson writes, or not serialisable back
        return response.text[:limit]
