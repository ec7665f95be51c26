"""A reward model served over HTTP by vLLM's pooling runner (`vllm serve RM --runner pooling`).

Each pair is sent as a chat conversation ``[*messages, {"role": "assistant", "content": response}]``; the server
applies the reward model's own chat template. Two vLLM APIs:

- ``classify``: ``POST /classify`` ``{"model", "messages", "use_activation": false}`` -> ``data[0].probs[0]``
  (``use_activation: false`` keeps the raw logit; with activation a 1-label head would return a sigmoid).
- ``pooling``:  ``POST /pooling`` ``{"model", "messages"}`` -> ``data[0].data``: the last value of the (possibly
  per-token) output is the score.

Both carry vLLM's truncation settings: ``truncate_prompt_tokens`` = the reward config's ``max_length`` and
``truncation_side: "right"``, so a long pair loses the end of its response and keeps the question, as the in-process
classifier does (vLLM versions without ``truncation_side`` ignore it and keep the last tokens instead). vLLM refuses
a ``truncate_prompt_tokens`` above the server's ``--max-model-len``: keep ``max_length`` at or below it.

Endpoints may be given with or without the trailing ``/v1`` (the pooling routes live at the server root). Pairs of
one batch run concurrently (vLLM batches them itself), within ``max_concurrency`` per endpoint, with the same
retry policy as the chat client: backoff with jitter on 408/429/5xx/timeouts/connection errors/bad bodies.
A pair the server rejects (another 4xx) or scores with a non-finite value fails at once and for good
(`RewardError.permanent`); `score_batch` reports failed pairs with PairErrors, so the rest of the batch keeps its
scores.
With several replicas, every pair of one question goes to one replica under a load bound (``routing: affinity``,
toa_core/backends/routing.py), so that replica's prefix cache holds the question for all of its responses.
"""
from __future__ import annotations

import asyncio
import math
import os
import random
import uuid
from typing import Any, Literal, Sequence

import aiohttp

from toa_core.backends.openai_http import RETRYABLE_STATUS, HTTPTransport, backoff_delay, parse_retry_after
from toa_core.backends.routing import DEFAULT_LOAD_FACTOR, SESSION_HEADER, ReplicaRouter, session_key
from toa_core.config import RetryConfig
from toa_core.credentials import mask_url_credentials, redact_text, secret_values
from toa_core.interfaces import PairErrors, RewardError
from toa_core.records import Message


# Attempt failures another replica may not have: they cool the replica down (toa_core/backends/routing.py).
_REPLICA_FAULTS = (asyncio.TimeoutError, aiohttp.ClientError, ValueError, KeyError, IndexError, TypeError)


def server_root(endpoint: str) -> str:
    """`http://h:p/v1` or `http://h:p/` -> `http://h:p`."""
    root = endpoint.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def extract_score(api: str, payload: Any) -> float:
    """The scalar reward from a /classify or /pooling response body (raises ValueError when malformed)."""
    item = payload["data"][0]
    values: Any = item["probs"] if api == "classify" else item["data"]
    while isinstance(values, list):  # per-token outputs nest: the score of the sequence is the last one
        if not values:
            raise ValueError("empty score list")
        values = values[-1] if isinstance(values[-1], list) else values[0]
    return float(values)


class HTTPReward:
    """RewardModel over a vLLM pooling server (see module docstring)."""

    def __init__(self, endpoints: list[str], model: str, *, api: Literal["classify", "pooling"] = "classify",
                 api_key_env: str | None = None, retry: RetryConfig | None = None, max_concurrency: int = 64,
                 name: str | None = None, max_length: int | None = None, routing: str | None = None,
                 load_factor: float = DEFAULT_LOAD_FACTOR):
        if not endpoints:
            raise ValueError("http reward needs at least one endpoint")
        self.endpoints = [server_root(e) for e in endpoints]
        self.model = model
        self.api = api
        self.max_length = max_length
        self.retry = retry or RetryConfig()
        self.name = name or f"http:{model}"
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self._api_key:
            raise ValueError(f"reward: api_key_env names ${api_key_env}, which is not set")
        self.max_concurrency = max_concurrency
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._client: HTTPTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.router = ReplicaRouter(self.endpoints, routing, load_factor=load_factor)
        self._rng = random.Random()

    def __repr__(self) -> str:
        return mask_url_credentials(f"HTTPReward(endpoints={self.endpoints!r}, model={self.model!r}, api={self.api!r})")

    def _bind_loop(self) -> HTTPTransport:
        """The client and semaphores of the running event loop (a new loop gets fresh ones)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._client is None:
            self._loop = loop
            # the chat client's transport: aiohttp's pool costs a fraction of httpx's CPU per request
            self._client = HTTPTransport(self.max_concurrency * len(self.endpoints), self.retry)
            self._semaphores = {e: asyncio.Semaphore(self.max_concurrency) for e in self.endpoints}
        return self._client

    def request_body(self, messages: list[Message], response: str) -> dict[str, Any]:
        conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
        conversation.append({"role": "assistant", "content": response})
        body: dict[str, Any] = {"model": self.model, "messages": conversation}
        if self.api == "classify":
            body["use_activation"] = False
        if self.max_length is not None:
            body["truncate_prompt_tokens"] = self.max_length
            body["truncation_side"] = "right"
        return body

    async def score(self, messages: list[Message], response: str) -> float:
        body = self.request_body(messages, response)
        headers = {"X-Request-Id": uuid.uuid4().hex}  # the same on every retry of this pair
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        client = self._bind_loop()
        # The question is the shared prefix: all of its pairs go to one replica (the session key names it).
        session = session_key(self.model, *(f"{m['role']}\x1e{m['content']}" for m in messages))
        headers[SESSION_HEADER] = session
        plan = self.router.plan(session)
        last = "no attempt made"
        for attempt in range(self.retry.max_attempts):
            endpoint = plan[attempt % len(plan)]
            wait_s: float | None = None
            try:
                with self.router.attempt(endpoint, faults=_REPLICA_FAULTS) as tracked:
                    async with self._semaphores[endpoint]:
                        reply = await client.post_json(f"{endpoint}/{self.api}", body, headers)
                    if reply.status == 200:
                        value = extract_score(self.api, reply.json())
                        if not math.isfinite(value):
                            raise RewardError(f"{self.name}: non-finite score {value} from {endpoint}",
                                              permanent=True)
                        return value
                    message = self._scrub(reply.text[:300])
                    if reply.status not in RETRYABLE_STATUS and reply.status < 500:
                        tracked.succeed()  # a client error: no replica would answer it differently
                        raise RewardError(self._scrub(f"{self.name}: HTTP {reply.status} from {endpoint}/"
                                                      f"{self.api}: {message}"), permanent=True)
                    tracked.fail()
                last = f"HTTP {reply.status} from {endpoint}: {message}"
                if reply.status == 429:
                    wait_s = parse_retry_after(reply.retry_after)
            except RewardError:
                raise
            except asyncio.TimeoutError:
                last = f"timeout from {endpoint}"
            except aiohttp.ClientError as exc:
                last = f"connection error from {endpoint}: {type(exc).__name__}"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                last = f"malformed response from {endpoint}: {type(exc).__name__}: {exc}"
            if attempt + 1 < self.retry.max_attempts:
                delay = backoff_delay(attempt, self.retry, self._rng)
                await asyncio.sleep(max(delay, min(wait_s or 0.0, self.retry.backoff_max_s)))
        raise RewardError(f"{self.name}: gave up after {self.retry.max_attempts} attempts: {self._scrub(last)}")

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        """Every pair concurrently; PairErrors (carrying the other scores) when some of them fail."""
        results = await asyncio.gather(*[self.score(messages, response) for messages, response in pairs],
                                       return_exceptions=True)
        return PairErrors.collect(self.name, results)

    def _scrub(self, text: str) -> str:
        """Remove the API key and any credentials written in an endpoint URL from text leaving this object."""
        return redact_text(text, secret_values() | ({self._api_key} if self._api_key else set()))

    async def aclose(self) -> None:
        if self._client is not None and asyncio.get_running_loop() is self._loop:
            await self._client.aclose()
        self._client = None
