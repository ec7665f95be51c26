"""Replica routing: does keeping each TOA tree on one replica's prefix cache pay, and does the load stay even?

Setup: R load servers (bench/loadserver.py) stand in for R vLLM replicas of the agents' model, each with a
prefix cache like vLLM's (LRU over 16-token block hashes; `prefix_cache_blocks` per replica, sized so that the
prefixes of the trees in flight fit when each replica holds 1/R of them, not when it must hold all of them), a
prefill cost per uncached prompt token and a decode cost per generated token (a prefill-heavy setting: long
questions, short answers). Every answer is different, so refinements of different parents differ too. TOA runs
with three agents over the same prompts, once per routing, each on fresh replicas (empty caches), in one run:

- round_robin: toaflow's client uses the replicas in turn (what it always did);
- affinity: toaflow's client keeps each (model, prompt) on one replica under the load bound (1.25 x mean);
- router-consistent_hash / router-cache_aware: one managed `vllm-router` in front of the replicas (its policy
  keys on the X-Session-ID header the client sends / on the prompt text); the client sees one endpoint.

Printed per routing: prefix-cache hit rate (tokens found cached / prompt tokens, vLLM's prefix_cache_hits /
prefix_cache_queries) on refinement requests and on all requests, generations/s and its ratio to round robin,
the busiest replica's mean in-flight requests over the replicas' mean, orchestrator CPU ms per generation (and the
router's). Then the same for reward scoring over R reward replicas (vLLM pooling stand-ins): trees score their
responses one at a time; hit rate on the question (the shared prefix) and pairs/s.

    python bench/bench_routing.py            # full (see bench/README.md for the figures)
    python bench/bench_routing.py --quick    # seconds
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (GenerationCounts, Stopwatch, emit_result, header, process_cpu_seconds, run_child,  # noqa: E402
                     table)
from bench_orchestration import CheapReward  # noqa: E402  (the chat part measures the servers, not the reward)

AGENTS = 3
CHAT_ROUTINGS = ("round_robin", "affinity", "router-consistent_hash", "router-cache_aware")
REWARD_ROUTINGS = ("round_robin", "affinity", "router-consistent_hash")
VOCABULARY = ("model replica cache prefix token block request answer question tree search reward refine batch "
              "server latency throughput memory schedule queue policy session hash ring load bound").split()


def question(i: int, words: int) -> str:
    """A long, distinct question: nothing but the template is shared across prompts."""
    rng = random.Random(i)
    return f"Question {i}: " + " ".join(f"{rng.choice(VOCABULARY)}{rng.randrange(1000)}" for _ in range(words))


def refine_marker() -> str:
    """A line of toaflow's own refine template: the load server counts prompts containing it as refinements."""
    from toa_core.prompts import load_templates

    return load_templates({}, task="chat").refine.strip().splitlines()[0]


# ------------------------------------------------------------------------------------------------ child drivers

async def _chat_driver(args: argparse.Namespace) -> dict:
    from toa_core.backends.factory import aclose_all, build_agents
    from toa_core.config import ModelConfig, RetryConfig, SearchConfig
    from toa_core.engine import run_search
    from toa_core.records import Prompt
    from toa_core.strategies import SearchContext

    retry = RetryConfig(max_attempts=4, backoff_initial_s=0.05, backoff_max_s=1.0, connect_timeout_s=30,
                        read_timeout_s=300)
    routing = args.routing if args.routing in ("round_robin", "affinity") else None
    agents = build_agents([ModelConfig(name=f"agent-{k}", model=f"agent-{k}", endpoints=args.urls, routing=routing,
                                       max_concurrency=args.trees, retry=retry) for k in range(AGENTS)])
    search = SearchConfig(strategy="toa", budget=args.budget, max_tokens=args.answer_tokens, tau=1.0, alpha=0.05,
                          prompt_concurrency=args.trees)
    ctx = SearchContext(agents=agents, reward=CheapReward(), search=search)
    prompts = [Prompt.from_messages([{"role": "user", "content": question(i, args.question_words)}])
               for i in range(args.prompts)]
    counts = GenerationCounts()

    try:
        await run_search(prompts, ctx, on_result=counts)
    finally:
        await aclose_all(agents)
    return dict(counts)


async def _reward_driver(args: argparse.Namespace) -> dict:
    from toa_core.config import RetryConfig
    from toa_core.rewards.batching import BatchingReward
    from toa_core.rewards.http import HTTPReward

    routing = args.routing if args.routing in ("round_robin", "affinity") else None
    retry = RetryConfig(max_attempts=4, backoff_initial_s=0.05, backoff_max_s=1.0, read_timeout_s=300)
    reward = BatchingReward(HTTPReward(args.urls, "rm", retry=retry, routing=routing,
                                       max_concurrency=args.reward_trees),
                            batch_size=16, batch_wait_ms=2, max_attempts=1)
    rng = random.Random(1)
    counts = {"pairs": 0, "errors": 0}
    queue = list(range(args.prompts))

    async def tree() -> None:  # one tree scores its responses one at a time, as TOA does
        while queue:
            i = queue.pop()
            messages = [{"role": "user", "content": question(i, args.question_words)}]
            for k in range(args.budget):
                await asyncio.sleep(rng.uniform(0.0, 0.01))  # trees do not score in lockstep
                response = " ".join(f"p{i}r{k}x{rng.randrange(10**6)}" for _ in range(args.answer_tokens))
                try:
                    await reward.score(messages, response)
                except Exception:  # noqa: BLE001 - counted, the bench goes on
                    counts["errors"] += 1
                counts["pairs"] += 1

    try:
        await asyncio.gather(*(tree() for _ in range(args.reward_trees)))
    finally:
        await reward.aclose()
    return counts


def child(args: argparse.Namespace) -> None:
    import toa_core.engine  # noqa: F401  (imports outside the measured window)
    import httpx  # noqa: F401

    with Stopwatch() as sw:
        driver = _chat_driver if args.child == "chat" else _reward_driver
        counts = asyncio.run(driver(args))
    emit_result({**counts, "wall_s": sw.wall_s, "cpu_s": sw.cpu_s})


# ------------------------------------------------------------------------------------------------ one cell

def router_available() -> bool:
    return (Path(sys.executable).parent / "vllm-router").exists() or shutil.which("vllm-router") is not None


def start_replicas(part: str, args: argparse.Namespace) -> list:
    """The R load servers of one part (chat: prefill + decode; reward: prefill only), started once."""
    from bench.loadserver import LoadServer

    chat = part == "chat"
    options = dict(slots=args.slots, token_delay_ms=args.decode_ms_per_token if chat else 0.0,
                   response_tokens=args.answer_tokens, prefill_ms_per_token=args.prefill_ms_per_token,
                   prefix_cache_blocks=args.cache_blocks if chat else args.reward_cache_blocks,
                   refine_marker=refine_marker(), distinct_answers=True)
    replicas = []
    try:
        for _ in range(args.replicas):
            replicas.append(LoadServer(**options).start())
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    return replicas


def run_cell(part: str, routing: str, args: argparse.Namespace, here: str, replicas: list) -> dict:
    """Replicas reset to empty caches (and a router if asked), one child driver; returns the measurements."""
    from infra.config import ServerSpec
    from infra.servers import ManagedServer

    chat = part == "chat"
    router = None
    with tempfile.TemporaryDirectory(prefix="toaflow-bench-routing-") as logs:
        try:
            for replica in replicas:
                replica.reset()
            urls = [replica.base_url for replica in replicas]
            if routing.startswith("router-"):
                spec = ServerSpec(name="fleet", kind="router", model="load", policy=routing.removeprefix("router-"),
                                  worker_urls=[r.root_url for r in replicas], startup_timeout_s=60)
                router = ManagedServer(spec, Path(logs), max_restarts=0).start()
                router.wait_healthy()
                urls = [router.endpoint.base_url]
            router_cpu = process_cpu_seconds(router.pid) if router else 0.0
            result = run_child([here, "--child", part, "--routing", routing, "--urls", ",".join(urls),
                                "--trees", str(args.trees), "--prompts", str(args.prompts), "--budget",
                                str(args.budget), "--question-words", str(args.question_words),
                                "--answer-tokens", str(args.answer_tokens), "--reward-trees", str(args.reward_trees)])
            router_cpu = process_cpu_seconds(router.pid) - router_cpu if router else float("nan")
            stats = [replica.stats() for replica in replicas]
        finally:
            if router is not None:
                router.stop()
    loads = [s["in_flight_seconds"] / result["wall_s"] for s in stats]
    mean_load = sum(loads) / len(loads)
    total = lambda key: sum(s.get(key, 0) for s in stats)  # noqa: E731
    done = result["generations"] if chat else result["pairs"]
    return {"part": part, "routing": routing, **result,
            "rate": done / result["wall_s"],
            "hit_refine": total("refine_prefix_cache_hits") / max(1, total("refine_prefix_cache_queries")),
            "hit_all": total("prefix_cache_hits") / max(1, total("prefix_cache_queries")),
            # reward: the question is the shared prefix; its tokens are what a cache can save
            "hit_question": total("prefix_cache_hits") / max(1, done * (args.question_words + 3)),
            "busiest": max(loads) / mean_load if mean_load > 0 else float("nan"),
            # modelled replica work (prefill + decode) per generation: what throughput is once the replicas are
            # saturated, free of the noise other processes add to wall time on a shared machine
            "work_ms": 1000 * total("slot_seconds") / max(1, done),
            "served": [s.get("served", 0) for s in stats],
            "cpu_ms": 1000 * result["cpu_s"] / max(1, done),
            "router_cpu_ms": 1000 * router_cpu / max(1, done)}


# ------------------------------------------------------------------------------------------------ report

def combine(repeats: list[dict]) -> dict:
    """One cell from its repeats: the best rate (other processes only ever slow a run down), mean of the rest."""
    cell = dict(repeats[0])
    for key in ("hit_refine", "hit_all", "hit_question", "busiest", "cpu_ms", "router_cpu_ms", "work_ms"):
        cell[key] = sum(r[key] for r in repeats) / len(repeats)
    cell["rate"] = max(r["rate"] for r in repeats)
    cell["errors"] = sum(r["errors"] for r in repeats)
    return cell


def report(cells: list[dict], args: argparse.Namespace) -> None:
    chat = [c for c in cells if c["part"] == "chat"]
    reward = [c for c in cells if c["part"] == "reward"]
    summary = []
    if chat:
        base = next((c["rate"] for c in chat if c["routing"] == "round_robin"), float("nan"))
        print(f"\nTOA over {args.replicas} replicas ({args.prompts} prompts, {args.trees} trees in flight, budget "
              f"{args.budget}, {AGENTS} agents, best gen/s of {args.repeats} run(s)): hit = prefix-cache hit rate in "
              "tokens; work_ms = modelled replica time (prefill + decode) per generation, x_rr_work = round robin's "
              "over it (the throughput ratio once replicas are saturated, free of machine noise); busiest = busiest "
              "replica's mean in-flight / mean over replicas; cpu = orchestrator (router) CPU ms per generation")
        work = next((c["work_ms"] for c in chat if c["routing"] == "round_robin"), float("nan"))
        print(table(["routing", "hit_refine", "hit_all", "gen/s", "x_rr", "work_ms", "x_rr_work", "busiest", "cpu_ms",
                     "router_cpu_ms", "served per replica", "errors"],
                    [[c["routing"], c["hit_refine"], c["hit_all"], c["rate"], c["rate"] / base, c["work_ms"],
                      work / c["work_ms"], c["busiest"], c["cpu_ms"], c["router_cpu_ms"],
                      " ".join(map(str, c["served"])), c["errors"]] for c in chat]))
        affinity = next((c for c in chat if c["routing"] == "affinity"), None)
        rr = next((c for c in chat if c["routing"] == "round_robin"), None)
        if affinity and rr:
            met = (affinity["hit_refine"] >= 0.7 and affinity["rate"] / rr["rate"] >= 1.3
                   and affinity["busiest"] <= 1.25)
            summary.append(f"chat: affinity refine hit {affinity['hit_refine']:.2f} vs round robin "
                           f"{rr['hit_refine']:.2f}, {affinity['rate'] / rr['rate']:.2f}x generations/s "
                           f"({rr['work_ms'] / affinity['work_ms']:.2f}x by replica work), busiest "
                           f"replica {affinity['busiest']:.2f}x mean (targets 0.7 / 1.3x / 1.25: "
                           f"{'MET' if met else 'MISSED'})")
        for c in chat:
            if c["routing"].startswith("router-"):
                summary.append(f"{c['routing']} refine hit {c['hit_refine']:.2f}, {c['rate'] / base:.2f}x, "
                               f"busiest {c['busiest']:.2f}x")
    if reward:
        base = next((c["rate"] for c in reward if c["routing"] == "round_robin"), float("nan"))
        print(f"\nReward scoring over {args.replicas} pooling replicas ({args.prompts} prompts x {args.budget} pairs, "
              f"{args.reward_trees} trees scoring one pair at a time): hit_question = cached tokens / question tokens")
        work = next((c["work_ms"] for c in reward if c["routing"] == "round_robin"), float("nan"))
        print(table(["routing", "hit_question", "hit_all", "pairs/s", "x_rr", "work_ms", "x_rr_work", "busiest",
                     "cpu_ms", "router_cpu_ms", "errors"],
                    [[c["routing"], c["hit_question"], c["hit_all"], c["rate"], c["rate"] / base, c["work_ms"],
                      work / c["work_ms"], c["busiest"], c["cpu_ms"], c["router_cpu_ms"], c["errors"]]
                     for c in reward]))
        affinity = next((c for c in reward if c["routing"] == "affinity"), None)
        if affinity:
            rr = next(c for c in reward if c["routing"] == "round_robin")
            summary.append(f"reward: affinity question hit {affinity['hit_question']:.2f} vs round robin "
                           f"{rr['hit_question']:.2f}, {affinity['rate'] / base:.2f}x pairs/s "
                           f"({rr['work_ms'] / affinity['work_ms']:.2f}x by replica work)")
    print(f"\nSUMMARY routing: {'; '.join(summary)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, seconds")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8, help="requests each replica processes at once")
    parser.add_argument("--trees", type=int, default=None, help="trees (prompts) in flight")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--budget", type=int, default=None, help="generations (or scored pairs) per prompt")
    parser.add_argument("--question-words", type=int, default=400, help="question length (words = tokens here)")
    parser.add_argument("--answer-tokens", type=int, default=48)
    # Slow enough that the replicas, not the orchestrator's share of a busy shared CPU, set the pace.
    parser.add_argument("--prefill-ms-per-token", type=float, default=1.0)
    parser.add_argument("--decode-ms-per-token", type=float, default=4.0)
    parser.add_argument("--cache-blocks", type=int, default=None, help="prefix cache per replica, 16-token blocks")
    parser.add_argument("--reward-cache-blocks", type=int, default=None, help="the same for the reward replicas")
    parser.add_argument("--routings", type=lambda s: s.split(","), default=None,
                        help=f"chat routings (default: {','.join(CHAT_ROUTINGS)}; routers only if installed)")
    parser.add_argument("--parts", type=lambda s: s.split(","), default=["chat", "reward"])
    parser.add_argument("--repeats", type=int, default=None, help="runs per routing, alternating order (default 2)")
    parser.add_argument("--reward-trees", type=int, default=None, help="trees scoring at once (default 2 x --trees)")
    # child mode
    parser.add_argument("--child", choices=("chat", "reward"), help=argparse.SUPPRESS)
    parser.add_argument("--routing", help=argparse.SUPPRESS)
    parser.add_argument("--urls", type=lambda s: s.split(","), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.trees = args.trees or 8
        args.prompts = args.prompts or 16
        args.budget = args.budget or 9
        args.question_words = min(args.question_words, 200)
        args.prefill_ms_per_token = min(args.prefill_ms_per_token, 0.2)
        args.decode_ms_per_token = min(args.decode_ms_per_token, 0.5)
        args.repeats = args.repeats or 1
        args.routings = args.routings or [r for r in CHAT_ROUTINGS if r != "router-cache_aware"]
    args.trees = args.trees or 64
    args.prompts = args.prompts or 2 * args.trees
    args.budget = args.budget or 40
    args.repeats = args.repeats or 2
    args.reward_trees = args.reward_trees or 2 * args.trees
    # Per replica: room for the prefixes of 1/R of the sessions in flight (three agents per tree) with some slack,
    # well short of all of them (what round robin asks of every replica). A chat session holds its fresh prompt and
    # its refine prompts (template + question + each parent's answer); a reward session its question and responses.
    session_blocks = (2 * args.question_words + 120 + args.budget // AGENTS * args.answer_tokens) // 16
    args.cache_blocks = args.cache_blocks or int(1.5 * AGENTS * args.trees * session_blocks / args.replicas)
    pair_blocks = (args.question_words + args.answer_tokens) // 16
    args.reward_cache_blocks = args.reward_cache_blocks or int(1.5 * args.reward_trees * pair_blocks / args.replicas)
    routings = args.routings or [r for r in CHAT_ROUTINGS if not r.startswith("router-") or router_available()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    header("replica routing: prefix-cache hits, throughput and load balance", sys.argv)
    print(f"# {args.replicas} replicas x {args.slots} slots; prefill {args.prefill_ms_per_token:g} ms per uncached "
          f"token, decode {args.decode_ms_per_token:g} ms per token; questions {args.question_words} words, answers "
          f"{args.answer_tokens} tokens; prefix cache {args.cache_blocks} (reward {args.reward_cache_blocks}) blocks "
          f"of 16 per replica; "
          f"load average {os.getloadavg()[0]:.2f}"
          + ("" if router_available() else "; vllm-router not installed: router rows skipped"), flush=True)
    here = str(Path(__file__).resolve())
    cells = []
    for part in args.parts:
        order = routings if part == "chat" else [r for r in REWARD_ROUTINGS if r in routings and
                                                  not (args.quick and r.startswith("router-"))]
        runs: dict[str, list[dict]] = {routing: [] for routing in order}
        replicas = start_replicas(part, args)
        try:
            for repeat in range(args.repeats):  # alternate the order: slow phases of the machine hit every routing
                for routing in order if repeat % 2 == 0 else order[::-1]:
                    cell = run_cell(part, routing, args, here, replicas)
                    runs[routing].append(cell)
                    print(f"  {part:<6} {routing:<24} {cell['rate']:8.1f}/s  hit refine {cell['hit_refine']:.2f} "
                          f"all {cell['hit_all']:.2f}  busiest {cell['busiest']:.2f}x  work {cell['work_ms']:.0f} ms  "
                          f"cpu {cell['cpu_ms']:.2f} ms  errors {cell['errors']}  (load {os.getloadavg()[0]:.1f})",
                          flush=True)
        finally:
            for replica in replicas:
                replica.stop()
        cells += [combine(runs[routing]) for routing in order]
    report(cells, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
