"""Which replica serves a request: round robin, or session affinity with bounded loads.

Why affinity: every request of one TOA tree starts with the same question, and a refinement repeats it (plus the
answer it refines). vLLM caches computed prefixes per replica, so only a replica that saw a tree before can skip
re-computing its prompt. Round robin spreads a tree over all R replicas, and each replica's cache then has to hold
every tree in flight; with affinity each replica holds 1/R of them.

Affinity, as done here:
- A *session key* names what should stay together: (model, prompt) for chat requests, the judged question for
  reward requests (`session_key`). It travels as the `X-Session-ID` header too, so a `vllm-router` in front of the
  replicas (policy `consistent_hash`) can keep the same sessions together on its side.
- Each key ranks the replicas by rendezvous (highest-random-weight) hashing: the same key ranks them the same way
  in every process and run, and adding or removing a replica only moves the keys that ranked it first.
- Bounded loads (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam 2018): a request goes
  to the first replica in its key's ranking whose in-flight count stays within `load_factor` x the mean, rounded
  up. One hot tree therefore never piles onto one replica while others idle; overflow takes the next in line.
- A replica whose last attempt failed in a way another replica could fix (timeout, connection error, 5xx, 429,
  bad body) is demoted to the end of every ranking for a cool-down that doubles per consecutive failure (1 s up to
  30 s); its first success restores it. So a dead replica costs one failed attempt, not one per request.
- Requests without a session (evaluation, judges) go to the least-loaded replica.

Round robin keeps the behaviour toaflow always had: each request starts at the next replica, retries move on;
a replica cooling down is skipped (moved to the end of the plan) as in affinity routing.
In both policies a request's retry goes to the next replica of its plan.
"""
from __future__ import annotations

import hashlib
import math
import time
from typing import Callable, Literal, Sequence

RoutingPolicy = Literal["round_robin", "affinity"]
ROUTING_POLICIES: tuple[str, ...] = ("round_robin", "affinity")
SESSION_HEADER = "X-Session-ID"
DEFAULT_LOAD_FACTOR = 1.25
COOLDOWN_INITIAL_S = 1.0
COOLDOWN_MAX_S = 30.0


def session_key(*parts: str) -> str:
    """A short stable key for what should share a replica, e.g. session_key(model, prompt_id).

    Hashed so that it is a safe header value whatever the parts contain, and says nothing about them.
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=10).hexdigest()
    return f"toa-{digest}"


def resolve_policy(policy: str | None, n_endpoints: int) -> RoutingPolicy:
    """The policy in force: the configured one, else affinity when there are several replicas."""
    if policy is None:
        return "affinity" if n_endpoints > 1 else "round_robin"
    if policy not in ROUTING_POLICIES:
        raise ValueError(f"unknown routing policy {policy!r}; use one of {', '.join(ROUTING_POLICIES)}")
    return policy  # type: ignore[return-value]


class ReplicaRouter:
    """Plans which replica each attempt of a request goes to, and tracks in-flight requests per replica.

    Single event loop, no awaits inside: the counters need no lock. Use it as

        plan = router.plan(session)                  # replicas in attempt order
        with router.attempt(plan[i], faults=(SomeRetryableError,)) as tracked:
            ...                                      # tracked.fail() marks a failure the replica caused
    """

    def __init__(self, endpoints: Sequence[str], policy: str | None = None, *,
                 load_factor: float = DEFAULT_LOAD_FACTOR, clock: Callable[[], float] = time.monotonic):
        if not endpoints:
            raise ValueError("a replica router needs at least one endpoint")
        if load_factor < 1:
            raise ValueError(f"load_factor must be >= 1 (1 = perfectly even), got {load_factor}")
        self.endpoints = list(endpoints)
        self.policy: RoutingPolicy = resolve_policy(policy, len(self.endpoints))
        self.load_factor = load_factor
        self.in_flight = {endpoint: 0 for endpoint in self.endpoints}
        self._clock = clock
        self._next = 0
        self._failures = {endpoint: 0 for endpoint in self.endpoints}
        self._down_until = {endpoint: 0.0 for endpoint in self.endpoints}

    def __repr__(self) -> str:
        return f"ReplicaRouter({len(self.endpoints)} replicas, policy={self.policy!r}, load_factor={self.load_factor})"

    # -- planning ------------------------------------------------------------------------------------------

    def plan(self, session: str | None = None) -> list[str]:
        """Every replica once, in the order this request's attempts use them (attempt i -> plan[i % R])."""
        n = len(self.endpoints)
        if n == 1:
            return list(self.endpoints)
        now = self._clock()
        if self.policy == "round_robin":
            # Rotation as always, but replicas cooling down after a failure go to the end of the plan (in rotation
            # order): a request is not sent to a replica known to be failing while a healthy one is there.
            start, self._next = self._next, (self._next + 1) % n
            rotated = [self.endpoints[(start + i) % n] for i in range(n)]
            return [e for e in rotated if self._down_until[e] <= now] + [e for e in rotated if self._down_until[e] > now]
        if session is None:
            # Least loaded first; ties rotate so that an idle pool is still used in turn.
            start, self._next = self._next, (self._next + 1) % n
            rotated = [self.endpoints[(start + i) % n] for i in range(n)]
            ranking = sorted(rotated, key=self.in_flight.__getitem__)
        else:
            ranking = sorted(self.endpoints, key=lambda endpoint: _weight(session, endpoint), reverse=True)
        healthy = [e for e in ranking if self._down_until[e] <= now]
        ranking = healthy + [e for e in ranking if self._down_until[e] > now]
        chosen = self._first_within_bound(healthy or ranking)
        return [chosen] + [e for e in ranking if e != chosen]

    def capacity(self) -> int:
        """The most requests one replica may hold once the next request is added: ceil(factor x mean)."""
        total = sum(self.in_flight.values()) + 1
        return max(1, math.ceil(self.load_factor * total / len(self.endpoints)))

    def _first_within_bound(self, ranking: list[str]) -> str:
        cap = self.capacity()
        for endpoint in ranking:
            if self.in_flight[endpoint] + 1 <= cap:
                return endpoint
        # Only reachable when the replicas within the bound are cooling down: take the least loaded of the rest.
        return min(ranking, key=self.in_flight.__getitem__)

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def attempt(self, endpoint: str, faults: tuple[type[BaseException], ...] = ()) -> "TrackedAttempt":
        """Count one attempt in flight on `endpoint`; an exception of a type in `faults` (or `.fail()`) marks
        the replica as failing, a clean exit as working."""
        return TrackedAttempt(self, endpoint, faults)

    def is_cooling_down(self, endpoint: str) -> bool:
        return self._down_until[endpoint] > self._clock()

    def _record(self, endpoint: str, failed: bool) -> None:
        if failed:
            self._failures[endpoint] += 1
            cooldown = min(COOLDOWN_MAX_S, COOLDOWN_INITIAL_S * 2 ** (self._failures[endpoint] - 1))
            self._down_until[endpoint] = self._clock() + cooldown
        elif self._failures[endpoint]:
            self._failures[endpoint] = 0
            self._down_until[endpoint] = 0.0


class TrackedAttempt:
    """The context manager `ReplicaRouter.attempt` returns."""

    def __init__(self, router: ReplicaRouter, endpoint: str, faults: tuple[type[BaseException], ...]):
        self.router = router
        self.endpoint = endpoint
        self.faults = faults
        self.failed = False
        self.ok = False

    def fail(self) -> None:
        """The replica answered in a way another replica may not (5xx, 429, a bad body)."""
        self.failed = True

    def succeed(self) -> None:
        """The replica did its job (an answer was used, or a client error that no replica would fix)."""
        self.ok = True

    def __enter__(self) -> "TrackedAttempt":
        self.router.in_flight[self.endpoint] += 1
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.router.in_flight[self.endpoint] -= 1
        if self.failed or (exc_type is not None and issubclass(exc_type, self.faults)):
            self.router._record(self.endpoint, failed=True)
        elif exc_type is None or self.ok:
            self.router._record(self.endpoint, failed=False)
        # any other exception (cancellation, a bug) says nothing about the replica


def _weight(session: str, endpoint: str) -> int:
    """Rendezvous hashing weight of `endpoint` for `session` (the highest weight ranks first)."""
    return int.from_bytes(hashlib.blake2b(f"{session}\x1f{endpoint}".encode("utf-8"), digest_size=8).digest(), "big")
