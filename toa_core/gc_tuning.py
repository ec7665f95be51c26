"""The garbage collector's settings while searches run: `run_search` runs inside `tuned_for_search()`.

Why. Reference counting frees almost everything a search drops; the cyclic collector is only for reference
cycles, yet CPython's defaults run a full collection (one that walks every tracked object of the process, the
imported modules included) whenever the first generation has been collected 10 times and the objects that
reached the oldest generation grew by a quarter. A search over many prompts keeps thousands of trees,
coroutines and connections alive for a few seconds each, so that quarter fills about once a second: with 1,000
trees in flight the full collections cost 0.13-0.15 ms of CPU per generation, a third of the orchestrator's
whole cost per generation (bench/README.md, orchestration section, issue 27).

What, while at least one search runs in the process:
- a full collection waits for FULL_COLLECTION_EVERY collections of the middle generation instead of 10 (the
  quarter rule still applies); young collections are unchanged, so the short-lived cycles a search makes are
  freed as promptly as before;
- the objects alive when the first search starts (imported modules, configuration, the prompts) are frozen
  (`gc.freeze`): full collections do not walk them. They are unfrozen when the last search ends, so anything
  among them that became garbage is collected as usual afterwards. Skipped when something else in the
  process froze objects already (its freeze is left alone).
Both are undone when the last search ends (searches may overlap, in one event loop or in several threads).
Nothing a search computes depends on this: the collector only frees objects that nothing can reach.
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

FULL_COLLECTION_EVERY = 100  # middle-generation collections between two full ones (CPython's default: 10)

_lock = threading.Lock()
_active = 0
_restore: tuple[tuple[int, ...], tuple[int, ...], bool] | None = None  # (saved thresholds, ours, froze)


@contextmanager
def tuned_for_search() -> Iterator[None]:
    """Apply the settings above for the duration of the block (nesting and overlapping blocks are fine)."""
    _enter()
    try:
        yield
    finally:
        _leave()


def _enter() -> None:
    global _active, _restore
    with _lock:
        _active += 1
        if _active > 1:
            return
        saved = gc.get_threshold()
        ours = (saved[0], saved[1], max(saved[2], FULL_COLLECTION_EVERY))
        gc.set_threshold(*ours)
        froze = gc.isenabled() and gc.get_freeze_count() == 0
        if froze:
            gc.freeze()
        _restore = (saved, ours, froze)


def _leave() -> None:
    global _active, _restore
    with _lock:
        _active -= 1
        if _active > 0 or _restore is None:
            return
        saved, ours, froze = _restore
        _restore = None
        if gc.get_threshold() == ours:  # changed by someone else meanwhile: theirs stands
            gc.set_threshold(*saved)
        if froze:
            gc.unfreeze()
