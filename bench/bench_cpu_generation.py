"""CPU generation for the demo: answers per second of SmolLM2 served one request at a time vs continuously batched,
and in process one at a time vs batched greedy.

The same requests (the demo's synthesis prompts, the demo's three system prompts, max_tokens 40), sent through
toaflow's own clients (toa_core.backends), side by side in one run:

- serve 1x1:      one `transformers serve` (one torch thread), one request at a time: the server as the demo used it
                  before continuous batching (it answers one request at a time whatever is in flight);
- serve cb 1x:    the same server with `continuous_batching: true` (infra/config.py);
- serve cb 2x:    two such servers, one per core, the requests split evenly over them (as configs/demo.yaml
                  splits its agents);
- local greedy 1: the in-process backend (toa_core/backends/transformers_local.py), greedy, one prompt at a time;
- local greedy 8: the same with 8 requests in flight, which it answers as one left-padded batch (the evaluation's
                  path); the answers must be the same text as one at a time (checked, printed).

The sampled cells ask at temperature 0.9 with `in_flight` requests in flight (the demo searches 20 prompts at once).

    python bench/bench_cpu_generation.py            # SmolLM2 (built into $TOAFLOW_CACHE first if needed), minutes
    python bench/bench_cpu_generation.py --quick    # the tiny random Llama, 8 short requests per cell, seconds
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, header, table  # noqa: E402

SYSTEM_PROMPTS = ("Follow every instruction in the request exactly. Answer briefly.", "You are a helpful assistant.",
                  "Read the request twice. Obey its rules about length, commas, the first word and words to avoid.")


def demo_questions(n: int) -> list[list[dict]]:
    """The first `n` synthesis prompts of the demo, as chat messages (repeated when n is larger)."""
    rows = [json.loads(line) for line in (REPO / "data" / "prompts" / "constraints_synthesis.jsonl").read_text().splitlines()]
    return [[{"role": "user", "content": rows[i % len(rows)]["prompt"]}] for i in range(n)]


async def send_all(agents, questions, params, in_flight: int):
    """Every question to agent i % len(agents), at most `in_flight` at once; (generations, seconds)."""
    gate = asyncio.Semaphore(in_flight)

    async def one(index: int, messages):
        async with gate:
            return await agents[index % len(agents)].generate(messages, params)

    started = time.perf_counter()
    generations = await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))
    return generations, time.perf_counter() - started


def serve_cell(model_dir: Path, servers: int, batching: bool, questions, params, in_flight: int, log_dir: Path):
    """Start `servers` transformers servers, warm each with one request, send the questions; (generations, s)."""
    from infra.config import ServersConfig, ServerSpec
    from infra.servers import managed_servers
    from toa_core.backends.factory import aclose_all, build_agents
    from toa_core.config import ModelConfig

    specs = [ServerSpec(name=f"s{i}", kind="transformers", model=str(model_dir), startup_timeout_s=300,
                        continuous_batching=batching) for i in range(servers)]
    with managed_servers(ServersConfig(managed=True, max_restarts=0, servers=specs), log_dir) as running:
        async def run():
            # each system prompt on every server, so that request i goes to server i % servers: an even split
            agents = build_agents([ModelConfig(name=f"agent{i}", model=running[f"s{i % servers}"].model_id,
                                               endpoints=[running[f"s{i % servers}"].base_url],
                                               system_prompt=SYSTEM_PROMPTS[i % 3], max_concurrency=64)
                                   for i in range(3 * servers)])
            try:
                for agent in agents[:servers]:  # warm each server outside the timing
                    await agent.generate(questions[0], params)
                return await send_all(agents, questions, params, in_flight)
            finally:
                await aclose_all(agents)

        return asyncio.run(run())


def local_cell(model_dir: Path, questions, params, in_flight: int):
    from toa_core.backends.factory import aclose_all, build_agents
    from toa_core.config import ModelConfig

    async def run():
        (agent,) = build_agents([ModelConfig(name="local", backend="transformers", model=str(model_dir))])
        try:
            await agent.generate(questions[0], params)  # load outside the timing
            return await send_all([agent], questions, params, in_flight)
        finally:
            await aclose_all([agent])

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random Llama, 8 requests of 8 tokens per cell")
    parser.add_argument("--requests", type=int, default=48, help="requests per cell (default 48)")
    parser.add_argument("--in-flight", type=int, default=20, help="sampled cells: requests in flight (default 20)")
    args = parser.parse_args(argv)

    from toa_core.backends.assets import resolve_model
    from toa_core.interfaces import SamplingParams

    model = "builtin:tiny-llama" if args.quick else "builtin:smollm2"
    requests, max_tokens = (8, 8) if args.quick else (args.requests, 40)
    header("CPU generation: one request at a time vs continuous batching (server) and batched greedy (in process)",
           sys.argv)
    model_dir = resolve_model(model)
    print(f"# model {model}, {requests} requests per cell, max_tokens {max_tokens}, "
          f"{args.in_flight} in flight (sampled cells)", flush=True)
    questions = demo_questions(requests)
    sampled = SamplingParams(temperature=0.9, max_tokens=max_tokens)
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    rows, rates, errors = [], {}, 0
    with tempfile.TemporaryDirectory(prefix="bench-cpu-gen-") as tmp:
        cells = [("serve 1x1", lambda: serve_cell(model_dir, 1, False, questions, sampled, args.in_flight, Path(tmp))),
                 ("serve cb 1x", lambda: serve_cell(model_dir, 1, True, questions, sampled, args.in_flight, Path(tmp))),
                 ("serve cb 2x", lambda: serve_cell(model_dir, 2, True, questions, sampled, args.in_flight, Path(tmp))),
                 ("local greedy 1", lambda: local_cell(model_dir, questions, greedy, 1)),
                 ("local greedy 8", lambda: local_cell(model_dir, questions, greedy, 8))]
        texts = {}
        for name, run in cells:
            generations, seconds = run()
            failed = sum(not g.ok for g in generations)
            errors += failed
            tokens = sum(g.completion_tokens or 0 for g in generations)
            rates[name] = len(generations) / seconds
            texts[name] = [g.text for g in generations]
            rows.append((name, len(generations), seconds, rates[name], tokens / seconds, failed))
            print(f"  {name}: {len(generations)} answers in {seconds:.1f} s = {rates[name]:.2f} answers/s, "
                  f"{tokens / seconds:.1f} tokens/s, errors {failed}", flush=True)
    print(table(["cell", "answers", "seconds", "answers/s", "tokens/s", "errors"], rows))
    same = sum(a == b for a, b in zip(texts["local greedy 1"], texts["local greedy 8"]))
    base = rates["serve 1x1"]
    print(f"SUMMARY serve cb 1x = {rates['serve cb 1x'] / base:.2f}x, cb 2x = {rates['serve cb 2x'] / base:.2f}x the "
          f"answers/s of one at a time; local greedy batched = "
          f"{rates['local greedy 8'] / rates['local greedy 1']:.2f}x, same answers {same}/{requests}; errors {errors}")
    return 0 if errors == 0 and same == requests else 1


if __name__ == "__main__":
    sys.exit(main())
