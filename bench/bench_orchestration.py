"""Orchestration efficiency: how close does a tree search over many prompts get to the model server's capacity?

Setup: bench/loadserver.py on loopback stands in for a vLLM replica: `slots` requests are processed at once (the
rest queue), each takes `latency` (= response tokens x per-token delay), so the server's capacity is
`slots / latency` generations per second. The drivers run against the same server in the same run:

- toaflow: `toa_core.engine.run_search` with a tree strategy (`--strategy`, default TOA), three agents
  (OpenAIChatModel: aiohttp + orjson, one shared connection pool per endpoint) and a cheap in-process reward,
  `prompts in flight` trees at once, in one process (one event loop, one core at most).
- toaflow-2proc: the same split over two processes (half the prompts and half the trees each, both at once), as
  `synthesis.processes_per_host: 2` splits a shard.
- toaflow-httpx: one process with the client's previous transport (httpx, connections spread over small
  AsyncClients), to show what the aiohttp transport changed.
- reference: the reference design, a pool of threads with one blocking request at a time per prompt
  (httpx sync client + ThreadPoolExecutor), each thread running a TOA-like sequential loop (fresh answers from
  each model, then refinements of the best so far) with the same cheap reward and the same budget.

`--strategy toa,ab_mcts,...` runs the toaflow drivers once per tree strategy variant (toa, ab_mcts, each also with
4 rollouts per tree `-r4` and with adaptive budgets `-adaptive`: bench/_common.py TREE_VARIANTS) and prints the same
table per strategy; the reference driver does not depend on it and runs once.

Each cell runs in its own child process, so CPU time and peak RSS belong to that driver alone. Reported per cell:
generations/s divided by server capacity (and by the best any driver can reach with that many prompts in flight,
min(1, in_flight/slots)), orchestrator CPU ms per generation (and the part of it spent in the search logic:
selection and backup, measured by the play loop; and the part spent in the garbage collector, gc.callbacks),
peak RSS, and the load server's CPU use (a load
server near 1 core is itself the bottleneck). The reward is cheap on purpose, so the server is the bottleneck.

    python bench/bench_orchestration.py            # full sweep (see README for the figures)
    python bench/bench_orchestration.py --quick    # under a minute
    python bench/bench_orchestration.py --in-flight 1000 --slots 256 --strategy toa,ab_mcts
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (TREE_VARIANTS, GcTimer, GenerationCounts, Stopwatch, emit_result, header,  # noqa: E402
                     peak_rss_mib, process_cpu_seconds, run_child, table, thread_sched_seconds)

AGENTS = 3
DRIVERS = ("toaflow", "toaflow-2proc", "toaflow-httpx", "reference")
REFINE_TEMPLATE = "Improve this answer to the question.\nQuestion: {question}\nAnswer: {answer}"


def _question(i: int) -> str:
    return f"Question number {i}: explain one idea from chapter {i % 97} in a few sentences."


class CheapReward:
    """A RewardModel that costs (almost) nothing: a seeded draw per call, so the tree has varied rewards.

    The load server returns the same text for every request, so a reward of the text alone would be constant.
    """
    name = "cheap-random"

    def __init__(self, seed: int = 0):
        self._rng = random.Random(seed)

    async def score(self, messages, response: str) -> float:
        return self._rng.gauss(0.0, 1.0)

    async def score_batch(self, pairs):
        return [self._rng.gauss(0.0, 1.0) for _ in pairs]

    async def aclose(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------ drivers

def _httpx_pool_class():
    """EndpointPool with the transport the client had before aiohttp: httpx, the pool's connections spread over
    AsyncClients of 4 connections each, least busy first (kept here to measure the change side by side)."""
    import ssl

    import aiohttp
    import certifi
    import httpx
    from toa_core.backends.openai_http import EndpointPool, Response

    class HttpxShardedTransport:
        def __init__(self, size: int, retry, per_client: int = 4):
            n_clients = max(1, -(-size // per_client))
            per = -(-size // n_clients)
            tls = ssl.create_default_context(cafile=certifi.where())
            timeout = httpx.Timeout(retry.read_timeout_s, connect=retry.connect_timeout_s)
            self._deadline = retry.connect_timeout_s + retry.read_timeout_s
            self._clients = [httpx.AsyncClient(limits=httpx.Limits(max_connections=per, max_keepalive_connections=per),
                                               timeout=timeout, verify=tls) for _ in range(n_clients)]
            self._active = [0] * n_clients

        async def post_json(self, url, body, headers):
            index = min(range(len(self._clients)), key=self._active.__getitem__)
            self._active[index] += 1
            try:
                answer = await asyncio.wait_for(self._clients[index].post(str(url), json=body, headers=headers),
                                                timeout=self._deadline)
            except httpx.TimeoutException as exc:
                raise asyncio.TimeoutError(str(exc)) from None
            except httpx.TransportError as exc:
                raise aiohttp.ClientConnectionError(str(exc)) from None
            finally:
                self._active[index] -= 1
            return Response(answer.status_code, answer.content, answer.reason_phrase, answer.headers.get("retry-after"))

        async def aclose(self):
            for client in self._clients:
                await client.aclose()

    class HttpxEndpointPool(EndpointPool):
        @property
        def client(self):
            self._bind_loop()
            if self._client is None:
                self._client = HttpxShardedTransport(self.max_concurrency * len(self.endpoints), self.retry)
            return self._client

    return HttpxEndpointPool


async def _toaflow_driver(url: str, in_flight: int, n_prompts: int, budget: int, max_tokens: int,
                          httpx_transport: bool = False, first_prompt: int = 0, variant: str = "toa") -> dict:
    from toa_core.backends.openai_http import EndpointPool, OpenAIChatModel
    from toa_core.config import ModelConfig, RetryConfig, SearchConfig
    from toa_core.engine import run_search
    from toa_core.records import Prompt
    from toa_core.strategies import SearchContext

    retry = RetryConfig(max_attempts=4, backoff_initial_s=0.05, backoff_max_s=1.0, connect_timeout_s=30,
                        read_timeout_s=300)
    # Agents behind one server share its pool: the concurrency limit holds per server, not per agent. The limit
    # is the number of trees, so the client never holds back a request the server could queue.
    pool_class = _httpx_pool_class() if httpx_transport else EndpointPool
    pool = pool_class([url], max_concurrency=in_flight, retry=retry)
    agents = [OpenAIChatModel(ModelConfig(name=f"agent-{k}", model="load", endpoints=[url],
                                          max_concurrency=in_flight, retry=retry), pool=pool)
              for k in range(AGENTS)]
    strategy, overrides = TREE_VARIANTS[variant]
    search = SearchConfig(strategy=strategy, budget=budget, max_tokens=max_tokens, tau=1.0, alpha=0.05,
                          prompt_concurrency=in_flight, **overrides)
    ctx = SearchContext(agents=agents, reward=CheapReward(), search=search)
    prompts = [Prompt.from_messages([{"role": "user", "content": _question(i)}])
               for i in range(first_prompt, first_prompt + n_prompts)]
    counts = GenerationCounts()

    try:
        await run_search(prompts, ctx, on_result=counts)
        counts["sched_end"] = thread_sched_seconds()
    finally:
        await pool.aclose()
    return dict(counts)


def _reference_driver(url: str, in_flight: int, n_prompts: int, budget: int, max_tokens: int) -> dict:
    """Thread per prompt in flight, one blocking request at a time: fresh answers, then refine the best."""
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    client = httpx.Client(limits=httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight),
                          timeout=httpx.Timeout(300, connect=30))
    lock = __import__("threading").Lock()
    rng = random.Random(0)
    counts = {"generations": 0, "errors": 0}

    def complete(messages: list[dict]) -> str | None:
        body = {"model": "load", "messages": messages, "max_tokens": max_tokens, "temperature": 0.7}
        for attempt in range(4):
            try:
                response = client.post(f"{url}/chat/completions", json=body)
                if response.status_code == 200:
                    return response.json()["choices"][0]["message"]["content"]
            except httpx.HTTPError:
                pass
            time.sleep(min(1.0, 0.05 * 2 ** attempt))
        return None

    def one_prompt(i: int) -> None:
        question = _question(i)
        best_text, best_reward = None, float("-inf")
        for step in range(budget):
            if best_text is None or step < AGENTS:
                messages = [{"role": "user", "content": question}]
            else:
                messages = [{"role": "user", "content": REFINE_TEMPLATE.format(question=question, answer=best_text)}]
            text = complete(messages)
            with lock:
                counts["generations"] += 1
                if text is None:
                    counts["errors"] += 1
                    continue
                reward = rng.gauss(0.0, 1.0)
            if reward > best_reward:
                best_text, best_reward = text, reward

    try:
        with ThreadPoolExecutor(max_workers=in_flight) as pool:
            list(pool.map(one_prompt, range(n_prompts)))
            counts["sched_end"] = thread_sched_seconds()  # while the worker threads still exist
    finally:
        client.close()
    return counts


_START = None  # a barrier shared by the processes of the toaflow-2proc driver


def _set_start_barrier(barrier) -> None:
    global _START
    _START = barrier


def _driver_part(url: str, in_flight: int, n_prompts: int, budget: int, max_tokens: int, first_prompt: int,
                 variant: str) -> dict:
    """One process of toaflow-2proc: imports done, wait for the other, then run and measure."""
    import toa_core.engine  # noqa: F401

    _START.wait()
    sched_start = thread_sched_seconds()
    with Stopwatch() as sw, GcTimer() as gc_timer:
        counts = asyncio.run(_toaflow_driver(url, in_flight, n_prompts, budget, max_tokens, first_prompt=first_prompt,
                                             variant=variant))
    sched_end = counts.pop("sched_end")
    return {**counts, "wall_s": sw.wall_s, "cpu_s": sw.cpu_s, "gc_cpu_s": gc_timer.cpu_s,
            "peak_rss_mib": peak_rss_mib(), "runq_wait_s": sched_end[1] - sched_start[1]}


def _multi_process_driver(url: str, in_flight: int, n_prompts: int, budget: int, max_tokens: int,
                          variant: str, processes: int = 2) -> dict:
    """`processes` orchestrator processes, each with its share of the prompts and of the trees in flight."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    shares = [n_prompts // processes + (k < n_prompts % processes) for k in range(processes)]
    firsts = [sum(shares[:k]) for k in range(processes)]
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_set_start_barrier,
                             initargs=(barrier,)) as pool:
        parts = list(pool.map(_driver_part, [url] * processes, [-(-in_flight // processes)] * processes, shares,
                              [budget] * processes, [max_tokens] * processes, firsts, [variant] * processes))
    return {"generations": sum(p["generations"] for p in parts), "errors": sum(p["errors"] for p in parts),
            "search_cpu_s": sum(p["search_cpu_s"] for p in parts), "gc_cpu_s": sum(p["gc_cpu_s"] for p in parts),
            "wall_s": max(p["wall_s"] for p in parts), "cpu_s": sum(p["cpu_s"] for p in parts),
            "peak_rss_mib": sum(p["peak_rss_mib"] for p in parts), "base_rss_mib": 0.0,
            "runq_wait_s": sum(p["runq_wait_s"] for p in parts)}


def child(args: argparse.Namespace) -> None:
    import toa_core.engine  # noqa: F401  (imports outside the measured window, for every driver alike)
    import httpx  # noqa: F401

    if TREE_VARIANTS[args.strategy[0]][0] == "ab_mcts":  # what the strategy imports on first use, once per process
        import toa_core.strategies.ab_mcts_core  # noqa: F401

    in_flight = args.in_flight[0]
    if args.child == "toaflow-2proc":
        emit_result(_multi_process_driver(args.url, in_flight, args.prompts, args.budget, args.max_tokens,
                                          args.strategy[0]))
        return
    base_rss = peak_rss_mib()
    profiler = None
    if args.profile and args.child == "toaflow":
        import cProfile
        profiler = cProfile.Profile()
    sched_start = thread_sched_seconds()
    with Stopwatch() as sw, GcTimer() as gc_timer:
        if profiler is not None:
            profiler.enable()
        if args.child in ("toaflow", "toaflow-httpx"):
            counts = asyncio.run(_toaflow_driver(args.url, in_flight, args.prompts, args.budget, args.max_tokens,
                                                 httpx_transport=args.child == "toaflow-httpx",
                                                 variant=args.strategy[0]))
        else:
            counts = _reference_driver(args.url, in_flight, args.prompts, args.budget, args.max_tokens)
        if profiler is not None:
            profiler.disable()
    sched_end = counts.pop("sched_end")
    extra = {"profile": _profile_text(profiler, args.profile)} if profiler is not None else {}
    emit_result({**counts, "wall_s": sw.wall_s, "cpu_s": sw.cpu_s, "gc_cpu_s": gc_timer.cpu_s,
                 "peak_rss_mib": peak_rss_mib(),
                 "base_rss_mib": base_rss, "runq_wait_s": sched_end[1] - sched_start[1], **extra})


def _profile_text(profiler, top: int) -> str:
    """The `top` functions by own time (cProfile), as pstats prints them."""
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    return text[text.index("   ncalls"):] if "   ncalls" in text else text


# ------------------------------------------------------------------------------------------------ sweep

def sweep(args: argparse.Namespace) -> list[dict]:
    from bench.loadserver import LoadServer

    here = str(Path(__file__).resolve())
    latency_s = args.latency_ms / 1000
    cells = []
    for slots in args.slots:
        with LoadServer(slots=slots, token_delay_ms=args.latency_ms / args.response_tokens,
                        response_tokens=args.response_tokens) as server:
            capacity = slots / latency_s
            for in_flight in args.in_flight:
                n_prompts = in_flight * args.rounds
                for strategy in args.strategy:
                    for driver in args.drivers:
                        if driver == "reference" and strategy != args.strategy[0]:
                            continue  # its own TOA-like loop: the same cell for every strategy
                        server_cpu_before = process_cpu_seconds(server.process.pid)
                        result = run_child([here, "--child", driver, "--url", server.base_url,
                                            "--in-flight", str(in_flight), "--prompts", str(n_prompts),
                                            "--budget", str(args.budget), "--max-tokens", str(args.response_tokens),
                                            "--strategy", strategy, "--profile", str(args.profile)])
                        server_cpu = process_cpu_seconds(server.process.pid) - server_cpu_before
                        rate = result["generations"] / result["wall_s"]
                        bound = min(1.0, in_flight / slots)
                        generations = max(1, result["generations"])
                        label = "-" if driver == "reference" else strategy
                        cell = {"driver": driver, "strategy": label, "slots": slots, "in_flight": in_flight,
                                "prompts": n_prompts, "capacity": capacity, "rate": rate, "ratio": rate / capacity,
                                "ratio_of_bound": rate / (capacity * bound),
                                "cpu_ms_per_gen": 1000 * result["cpu_s"] / generations,
                                "search_ms_per_gen": 1000 * result.get("search_cpu_s", float("nan")) / generations,
                                "gc_ms_per_gen": 1000 * result["gc_cpu_s"] / generations,
                                "server_cores": server_cpu / result["wall_s"],
                                "runq_share": result["runq_wait_s"] / result["wall_s"], **result}
                        cells.append(cell)
                        if "profile" in result:
                            print(f"  cProfile of that cell (CPU figures inflated by the profiler), top "
                                  f"{args.profile} by own time:\n{result.pop('profile')}")
                        print(f"  slots={slots:<4} in_flight={in_flight:<5} {driver:<13} {label:<16} {rate:8.1f} gen/s "
                              f"= {cell['ratio']:.3f} of capacity, {cell['cpu_ms_per_gen']:.2f} ms CPU/gen "
                              f"(search {cell['search_ms_per_gen']:.3f}, collector {cell['gc_ms_per_gen']:.3f}), "
                              f"peak {result['peak_rss_mib']:.0f} MiB, "
                              f"run-queue wait {cell['runq_share']:.2f} s/s, errors {result['errors']}", flush=True)
    return cells


def report(cells: list[dict], args: argparse.Namespace) -> None:
    drivers = [d for d in DRIVERS if d in args.drivers]
    short = {"toaflow": "toa", "toaflow-2proc": "toa2p", "toaflow-httpx": "httpx", "reference": "ref"}
    missing = {"ratio": float("nan"), "cpu_ms_per_gen": float("nan"), "search_ms_per_gen": float("nan"),
               "gc_ms_per_gen": float("nan"), "peak_rss_mib": float("nan"), "runq_share": float("nan"),
               "server_cores": float("nan"), "errors": 0}
    print()
    print("ratio = achieved generations/s / (slots / latency); bound = min(1, in_flight / slots); "
          "cpu = orchestrator CPU ms per generation; search = the part of it in the search logic (selection and "
          "backup); gc = the part of it in the garbage collector; MiB = peak RSS; runq = seconds per second the "
          "driver's threads were runnable but waiting for a "
          "CPU (starvation by other processes); srv = load server CPU cores used")
    by_key = {(c["slots"], c["in_flight"], c["driver"], c["strategy"]): c for c in cells}
    for strategy in args.strategy:
        def found(slots: int, in_flight: int, driver: str) -> dict | None:
            return by_key.get((slots, in_flight, driver, "-" if driver == "reference" else strategy))

        rows = []
        for slots in args.slots:
            for in_flight in args.in_flight:
                row = [found(slots, in_flight, d) for d in drivers]
                if all(c is None for c in row):
                    continue
                row = [c if c is not None else missing for c in row]
                tree_drivers = [c for d, c in zip(drivers, row) if d != "reference"]
                rows.append([slots, in_flight, next(c for c in row if c is not missing)["capacity"],
                             min(1.0, in_flight / slots), *(c["ratio"] for c in row),
                             *(c["cpu_ms_per_gen"] for c in row), *(c["search_ms_per_gen"] for c in tree_drivers),
                             *(c["gc_ms_per_gen"] for c in row),
                             *(c["peak_rss_mib"] for c in row), *(c["runq_share"] for c in row),
                             *(c["server_cores"] for c in row), sum(c["errors"] for c in row)])
        tree_names = [short[d] for d in drivers if d != "reference"]
        print(f"\nstrategy {strategy}:")
        print(table(["slots", "in_flight", "capacity/s", "bound",
                     *(f"{short[d]}/cap" for d in drivers), *(f"{short[d]}_cpu" for d in drivers),
                     *(f"{name}_search" for name in tree_names), *(f"{short[d]}_gc" for d in drivers),
                     *(f"{short[d]}_MiB" for d in drivers), *(f"{short[d]}_runq" for d in drivers),
                     *(f"{short[d]}_srv" for d in drivers), "errors"], rows))
    top = max(args.in_flight)
    parts, cpu_verdicts = [], []
    for strategy in args.strategy:
        at_top = [c for c in cells if c["in_flight"] == top and c["strategy"] == strategy]
        share = []
        for driver in drivers:
            mine = [c for c in at_top if c["driver"] == driver]
            if mine:
                worst = min(mine, key=lambda c: c["ratio"])
                share.append(f"{driver} {worst['ratio']:.3f} ({worst['cpu_ms_per_gen']:.2f} ms CPU/gen, search "
                             f"{worst['search_ms_per_gen']:.3f})")
        if share:
            parts.append(f"{strategy}: {', '.join(share)}")
        one_process = [c for c in at_top if c["driver"] == "toaflow"]
        if one_process:
            cpu = max(c["cpu_ms_per_gen"] for c in one_process)
            ratio = min(c["ratio"] for c in one_process)
            cpu_verdicts.append(f"{strategy} {'MET' if cpu <= 0.5 else 'MISSED'}, capacity 0.9 in one process "
                                f"{'MET' if ratio >= 0.9 else 'MISSED'}")
    reference = [c for c in cells if c["in_flight"] == top and c["driver"] == "reference"]
    if reference:
        worst = min(reference, key=lambda c: c["ratio"])
        parts.append(f"reference {worst['ratio']:.3f} ({worst['cpu_ms_per_gen']:.2f} ms CPU/gen)")
    best_per_slots = [max((c["ratio"] for c in cells if c["driver"] != "reference" and c["in_flight"] == top
                           and c["slots"] == slots and c["strategy"] == strategy), default=0.0)
                      for slots in args.slots for strategy in args.strategy]
    share_verdict = "MET" if best_per_slots and min(best_per_slots) >= 0.9 else "MISSED"
    print(f"\nSUMMARY orchestration: share of server capacity at {top} prompts in flight (worst over slots "
          f"{args.slots}): {'; '.join(parts)}; capacity target 0.9 (best driver, every strategy) {share_verdict}; "
          f"CPU target 0.5 ms/generation in one process: {'; '.join(cpu_verdicts) or 'not measured'} "
          f"(load average {os.getloadavg()[0]:.2f} at the end)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sweep, under a minute")
    parser.add_argument("--slots", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--in-flight", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--budget", type=int, default=None, help="generations per prompt")
    parser.add_argument("--rounds", type=int, default=2, help="prompts = rounds x prompts in flight")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="server time per request in a slot")
    parser.add_argument("--response-tokens", type=int, default=32)
    parser.add_argument("--drivers", type=lambda s: s.split(","), default=list(DRIVERS))
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="run the one-process toaflow cells under cProfile and print their top N functions")
    parser.add_argument("--strategy", type=lambda s: s.split(","), default=["toa"],
                        help=f"comma-separated tree strategy variants, one table each: {', '.join(TREE_VARIANTS)}")
    # child mode (one cell)
    parser.add_argument("--child", choices=DRIVERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-tokens", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.strategy) - set(TREE_VARIANTS)) + sorted(set(args.drivers) - set(DRIVERS))
    if unknown:
        parser.error(f"unknown strategy variant or driver: {', '.join(unknown)}; strategies: "
                     f"{', '.join(TREE_VARIANTS)}; drivers: {', '.join(DRIVERS)}")
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.slots = args.slots or [16]
        args.in_flight = args.in_flight or [16, 64]
        args.budget = args.budget or 4
        args.rounds = 1
        args.latency_ms = min(args.latency_ms, 50.0)
    args.slots = args.slots or [64, 256]
    args.in_flight = args.in_flight or [10, 100, 1000]
    args.budget = args.budget or 16
    # SIGTERM unwinds like Ctrl-C, so the load server subprocess is stopped by its `with` block.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    header("orchestration efficiency (generations/s over server capacity)", sys.argv)
    print(f"# latency {args.latency_ms:g} ms/request ({args.response_tokens} tokens), budget {args.budget}, "
          f"{AGENTS} agents, prompts = {args.rounds} x in flight, strategies {', '.join(args.strategy)}, "
          f"load average {os.getloadavg()[0]:.2f}")
    cells = sweep(args)
    report(cells, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
