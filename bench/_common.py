"""Shared helpers of the benchmarks: machine description, tables, child processes that report JSON.

Every benchmark measures its cells in child processes (one per cell) when peak memory matters, so that
`ru_maxrss` belongs to that cell alone; a child prints one JSON line prefixed with RESULT_PREFIX as its
last output, which `run_child` parses.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH-RESULT "

if str(REPO) not in sys.path:  # run as `python bench/bench_x.py` from anywhere
    sys.path.insert(0, str(REPO))


def machine() -> str:
    """One line describing where the figures were measured."""
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc), for the load server's share."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of the full line)


def thread_sched_seconds() -> tuple[float, float]:
    """(time on a CPU, time runnable but waiting for a CPU) summed over this process's live threads (Linux).

    The second number shows CPU starvation: on a shared machine a single-threaded event loop waits in the run
    queue behind other processes, while a pool of N threads gets N shares of the CPU.
    """
    on_cpu = waiting = 0
    for stat in Path(f"/proc/{os.getpid()}/task").glob("*/schedstat"):
        try:
            run_ns, wait_ns, _ = stat.read_text().split()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        on_cpu += int(run_ns)
        waiting += int(wait_ns)
    return on_cpu / 1e9, waiting / 1e9


def emit_result(payload: dict[str, Any]) -> None:
    """Child side: print the cell's measurements as the last line of stdout."""
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def run_child(argv: Sequence[str], timeout_s: float = 1800) -> dict[str, Any]:
    """Run `python <argv>` and return the JSON the child emitted; raise with its stderr tail if it failed."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
                          env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench child {' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (floats with 3 significant digits)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in text]
    return "\n".join(out)


# The tree strategies as the benchmarks run them: name -> (search.strategy, SearchConfig overrides).
TREE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "toa": ("toa", {}),
    "toa-r4": ("toa", {"rollouts_per_tree": 4}),
    "toa-adaptive": ("toa", {"adaptive": {"enabled": True}}),
    "ab_mcts": ("ab_mcts", {}),
    "ab_mcts-r4": ("ab_mcts", {"rollouts_per_tree": 4}),
    "ab_mcts-adaptive": ("ab_mcts", {"adaptive": {"enabled": True}}),
}


class GenerationCounts(dict):
    """An `on_result` callback for `run_search` that counts generations, the failed ones and the CPU seconds of
    the search logic (tree strategies report it): `counts = GenerationCounts(); await run_search(prompts, ctx,
    on_result=counts)`; then counts["generations"]."""

    def __init__(self) -> None:
        super().__init__(generations=0, errors=0, search_cpu_s=0.0)

    def __call__(self, result: Any) -> None:
        self["generations"] += len(result.candidates)
        self["errors"] += sum(candidate.error is not None for candidate in result.candidates)
        self["search_cpu_s"] += (result.search or {}).get("search_cpu_s", 0.0)


class Stopwatch:
    """Wall and CPU time of a block: `with Stopwatch() as sw: ...; sw.wall_s, sw.cpu_s`."""

    def __enter__(self) -> "Stopwatch":
        self._wall, self._cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = cpu_seconds() - self._cpu


class GcTimer:
    """CPU seconds this thread spent in the garbage collector during a block, and collections per generation:
    `with GcTimer() as gc_timer: ...; gc_timer.cpu_s, gc_timer.collections` (gc.callbacks; the collector runs in
    whichever thread allocates, so this counts the block's thread when it is the only busy one)."""

    def __enter__(self) -> "GcTimer":
        import gc

        self.cpu_s = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._on_collection)
        return self

    def __exit__(self, *exc: Any) -> None:
        import gc

        gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.cpu_s += time.thread_time() - self._started
            self.collections[info["generation"]] += 1


def header(title: str, command: Sequence[str]) -> None:
    print(f"# {title}")
    print(f"# machine: {machine()}")
    print(f"# command: python {' '.join(command)}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
