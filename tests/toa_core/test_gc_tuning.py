"""The collector's settings while searches run: raised full-collection threshold, frozen start-up objects, both
undone when the last search ends; someone else's freeze and thresholds are left alone."""
from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from toa_core.config import SearchConfig
from toa_core.engine import run_search
from toa_core.gc_tuning import FULL_COLLECTION_EVERY, tuned_for_search
from toa_core.records import Prompt
from toa_core.simulated import SimulatedAgent, SimulatedReward
from toa_core.strategies import SearchContext


@pytest.fixture(autouse=True)
def default_collector():
    """Every test starts and ends with CPython's defaults and nothing frozen."""
    saved = gc.get_threshold()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    yield
    gc.unfreeze()
    gc.set_threshold(*saved)


def test_settings_hold_inside_the_block_and_are_undone_after_it():
    kept = [object() for _ in range(3)]  # some objects alive before the block: frozen inside it
    with tuned_for_search():
        assert gc.get_threshold() == (700, 10, FULL_COLLECTION_EVERY)
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
    assert kept


def test_nested_and_overlapping_blocks_undo_once_when_the_last_ends():
    outer = tuned_for_search()
    outer.__enter__()
    with tuned_for_search():
        assert gc.get_threshold()[2] == FULL_COLLECTION_EVERY
    assert gc.get_threshold()[2] == FULL_COLLECTION_EVERY and gc.get_freeze_count() > 0  # the outer still runs
    outer.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_blocks_in_two_threads_undo_when_both_ended():
    inside, release = threading.Barrier(3), threading.Event()

    def search_thread() -> None:
        with tuned_for_search():
            inside.wait()
            release.wait(10)

    threads = [threading.Thread(target=search_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait()
    assert gc.get_threshold()[2] == FULL_COLLECTION_EVERY
    release.set()
    for thread in threads:
        thread.join(10)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_a_freeze_made_by_someone_else_and_their_thresholds_are_left_alone(monkeypatch):
    gc.freeze()
    gc.set_threshold(500, 20, 200)  # already above ours: kept as is
    # Calls are counted rather than frozen objects: a frozen object that dies (its last reference dropped by another
    # thread of the test process) leaves the count without anyone unfreezing it, which once failed a CI run.
    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
    with tuned_for_search():
        assert gc.get_threshold() == (500, 20, 200)
    assert calls == [] and gc.get_freeze_count() > 0 and gc.get_threshold() == (500, 20, 200)


def test_thresholds_changed_during_the_block_are_not_overwritten():
    with tuned_for_search():
        gc.set_threshold(1000, 10, 50)
    assert gc.get_threshold() == (1000, 10, 50)


def test_an_exception_in_the_block_still_undoes_the_settings():
    with pytest.raises(RuntimeError), tuned_for_search():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_run_search_runs_under_the_settings_and_undoes_them():
    agents = [SimulatedAgent(f"m{i}", 0.1 + 0.02 * i, refine_delta=0.01, noise=0.01) for i in range(3)]
    ctx = SearchContext(agents, SimulatedReward(), SearchConfig(strategy="toa", budget=4))
    seen: list[tuple[int, ...]] = []
    prompts = [Prompt.from_messages([{"role": "user", "content": f"question {i}"}]) for i in range(3)]
    count = asyncio.run(run_search(prompts, ctx, on_result=lambda _: seen.append(gc.get_threshold())))
    assert count == 3 and all(threshold[2] == FULL_COLLECTION_EVERY for threshold in seen)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
