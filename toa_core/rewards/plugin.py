"""A reward function supplied by the user as ``"package.module:callable"``.

Each call is bounded by ``timeout_s`` (the reward config's read timeout).

The callable takes ``(messages, response)`` and returns a number, synchronously or as an awaitable. Sync callables
run in a worker thread so a slow one does not stall the event loop. It may raise: the error becomes a RewardError.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import math
from typing import Any, Callable, Sequence

from toa_core.interfaces import PairErrors, RewardError
from toa_core.records import Message


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``module:attr`` (attr may be dotted, e.g. ``module:Class.method``); errors name the spec and the fix."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"plugin reward {spec!r}: expected 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"plugin reward {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ValueError(f"plugin reward {spec!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"plugin reward {spec!r}: {attr_path!r} is not callable")
    return target


class PluginReward:
    """RewardModel calling a user function per pair (pairs of one batch run concurrently)."""

    def __init__(self, spec: str, *, timeout_s: float = 600.0, name: str | None = None):
        self.spec = spec
        self.timeout_s = timeout_s
        self.name = name or f"plugin:{spec}"
        self._fn = load_callable(spec)

    def __repr__(self) -> str:
        return f"PluginReward({self.spec!r})"

    async def score(self, messages: list[Message], response: str) -> float:
        try:
            value = float(await asyncio.wait_for(self._call(messages, response), timeout=self.timeout_s))
        except asyncio.TimeoutError:
            raise RewardError(f"{self.name}: no result within {self.timeout_s:g}s") from None
        except Exception as exc:
            raise RewardError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if not math.isfinite(value):
            raise RewardError(f"{self.name}: returned a non-finite reward {value}", permanent=True)
        return value

    async def _call(self, messages: list[Message], response: str) -> object:
        if inspect.iscoroutinefunction(self._fn):
            return await self._fn(messages, response)
        value = await asyncio.to_thread(self._fn, messages, response)
        return await value if inspect.isawaitable(value) else value

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        """Each pair on its own; PairErrors (carrying the other scores) when some of them fail."""
        results = await asyncio.gather(*[self.score(messages, response) for messages, response in pairs],
                                       return_exceptions=True)
        return PairErrors.collect(self.name, results)

    async def aclose(self) -> None:
        return None
