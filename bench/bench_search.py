"""Search efficiency: what does each strategy find for the same budget, against a known ground truth?

Environment (built on toa_core.simulated): three agents of different skill whose fresh answers have quality
~ skill + noise, on a 0..1 scale like COMET-Kiwi's. A refinement or aggregation starts from the best quoted answer
q and moves it by the agent's delta with diminishing returns: q + delta * (1 - q) for a helpful editor (it closes
that share of the remaining gap), q + delta * q for a harmful one (it loses that share); plus half the agent's
noise; qualities are capped to [0, 1] (1 = a perfect answer). The reward model observes the true quality plus
Gaussian noise. TOA uses the paper's settings for
0..1 rewards (tau 1, alpha 0.05, as for translation with KIWI). Every strategy runs
with the same agents, seeds and budget. Per prompt we compute, from the candidates each strategy produced:

- best_true: the highest true quality generated;      best_obs: the highest observed reward
- picked_true: the true quality of the candidate with the highest observed reward (what SFT data would get)
- top10_true / top10_obs: the mean of the 10 best by true quality / by observed reward

and print the mean over prompts of each strategy relative to TOA at budgets 16, 40, 80, 160, next to an oracle
(a greedy search that sees the true qualities and knows every agent's skill and refinement delta).

`--demo` runs the same strategies on the demo models (three SmolLM2 agents and the SmolLM2 yes/no judge, in
process) for a handful of prompts at a small budget; there is no ground truth there, so only the observed
columns are printed. It is slow (minutes) and never part of --quick.

    python bench/bench_search.py              # 300 prompts x budgets 16,40,80,160
    python bench/bench_search.py --quick      # under a minute
    python bench/bench_search.py --demo       # SmolLM2, slow
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, table  # noqa: E402

from toa_core.config import SearchConfig  # noqa: E402
from toa_core.engine import run_search  # noqa: E402
from toa_core.records import Prompt, PromptResult  # noqa: E402
from toa_core.simulated import SimulatedAgent, SimulatedReward, quality_marker, read_qualities  # noqa: E402
from toa_core.strategies import STRATEGY_CLASSES, SearchContext, Strategy  # noqa: E402
from toa_core.strategies.base import refine_depth  # noqa: E402

STRATEGIES = ("toa", "random", "ensemble", "prs", "seq_refine", "moa")
METRICS = ("best_true", "picked_true", "best_obs", "top10_true", "top10_obs")

# name, skill (mean fresh quality), refine delta (share of the gap closed, < 0: share lost), generation noise
AGENT_SPECS = (
    ("strong-solver", 0.55, 0.05, 0.12),   # best fresh answers, refining helps it only a little
    ("good-editor", 0.40, 0.30, 0.10),     # weaker alone, reliably improves what it is given
    ("sloppy", 0.30, -0.20, 0.20),         # weak, and its refinements make answers worse
)


class BoundedAgent(SimulatedAgent):
    """A SimulatedAgent whose refinements have diminishing returns (see the module docstring)."""

    async def generate(self, messages, params):
        generation = await super().generate(messages, params)
        if generation.text is None:
            return generation
        prompt_text = "\n".join(m["content"] for m in messages)
        quoted = read_qualities(prompt_text)
        quality = read_qualities(generation.text)[-1]
        if quoted:  # the parent class added refine_delta to the best quoted quality; redo it with a bound
            best = max(quoted)
            drawn = quality - (best + self.refine_delta)  # the noise it drew
            gap = (1.0 - best) if self.refine_delta >= 0 else best
            quality = best + self.refine_delta * gap + drawn / 2
        # A perfect answer is 1.0: without the cap, best-of-many resampling would climb on noise alone.
        quality = min(1.0, max(0.0, quality))
        generation.text = f"Answer from {self.name} {quality_marker(quality)}"
        return generation


def make_agents(seed: int) -> list[SimulatedAgent]:
    return [BoundedAgent(name, skill, refine_delta=delta, noise=noise, seed=seed)
            for name, skill, delta, noise in AGENT_SPECS]


def make_prompts(n: int) -> list[Prompt]:
    return [Prompt.from_messages([{"role": "user", "content": f"Simulated task {i}: do the thing well."}])
            for i in range(n)]


def _start(ctx: SearchContext, prompt: Prompt, strategy: str, normalize=None):
    opener = getattr(ctx, "start", None) or getattr(ctx, "open")
    return opener(prompt, strategy, normalize)


class OracleStrategy(Strategy):
    """Greedy with perfect knowledge: each play takes the action with the highest expected true quality.

    It reads the hidden quality of every answer and knows each agent's skill and refinement delta; actions are
    "agent k answers fresh" (expected skill_k) or "agent k refines the best answer so far" (expected best + delta_k).
    It is an upper reference, not a strategy anyone can run.
    """
    name = "oracle"

    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        session = _start(ctx, prompt, self.name)
        best = None
        best_quality = float("-inf")
        for _ in range(ctx.search.budget):
            options = [(agent.skill, i, "fresh") for i, agent in enumerate(ctx.agents)]
            if best is not None:
                options += [(best_quality + agent.refine_delta * ((1 - best_quality) if agent.refine_delta >= 0
                                                                  else best_quality), i, "refine")
                            for i, agent in enumerate(ctx.agents)]
            _, index, kind = max(options, key=lambda o: (o[0], o[2] == "refine", -o[1]))
            agent = ctx.agents[index]
            if kind == "fresh":
                candidate = await session.generate_and_score(agent, prompt.messages, "fresh", None, 1)
            else:
                messages = ctx.templates.refine_messages(prompt, best.text)
                candidate = await session.generate_and_score(agent, messages, "refine", best, refine_depth(best))
            if candidate.text is not None:
                quality = read_qualities(candidate.text)[-1]
                if quality > best_quality:
                    best, best_quality = candidate, quality
        return session.result()


def prompt_metrics(result: PromptResult) -> dict[str, float] | None:
    scored = [c for c in result.candidates if c.reward is not None and c.text]
    if not scored:
        return None
    true = {c.candidate_id: read_qualities(c.text)[-1] for c in scored}
    by_obs = sorted(scored, key=lambda c: c.reward, reverse=True)
    by_true = sorted(scored, key=lambda c: true[c.candidate_id], reverse=True)
    return {
        "best_true": true[by_true[0].candidate_id],
        "picked_true": true[by_obs[0].candidate_id],
        "best_obs": by_obs[0].reward,
        "top10_true": statistics.fmean(true[c.candidate_id] for c in by_true[:10]),
        "top10_obs": statistics.fmean(c.reward for c in by_obs[:10]),
    }


async def evaluate(strategy: Strategy, prompts: list[Prompt], budget: int, args: argparse.Namespace) -> dict:
    search = SearchConfig(strategy="toa", budget=budget, tau=args.tau, alpha=args.alpha, seed=args.seed,
                          prompt_concurrency=64, moa_layers=args.moa_layers)
    ctx = SearchContext(agents=make_agents(args.seed), reward=SimulatedReward(noise=args.reward_noise, seed=args.seed),
                        search=search)
    rows: list[dict[str, float]] = []
    generations = 0

    def on_result(result: PromptResult) -> None:
        nonlocal generations
        generations += len(result.candidates)
        metrics = prompt_metrics(result)
        if metrics is not None:
            rows.append(metrics)

    await run_search(prompts, ctx, strategy=strategy, on_result=on_result)
    if generations != budget * len(prompts):
        raise AssertionError(f"{strategy.name} spent {generations} generations, expected {budget * len(prompts)}")
    return {m: statistics.fmean(r[m] for r in rows) for m in METRICS}


def simulated(args: argparse.Namespace) -> None:
    prompts = make_prompts(args.prompts)
    print(f"# agents (name, skill, refine delta, noise): {AGENT_SPECS}; reward noise {args.reward_noise}; "
          f"tau {args.tau}, alpha {args.alpha}; {args.prompts} prompts", flush=True)
    summary = []
    for budget in args.budgets:
        started = time.perf_counter()
        means = {name: asyncio.run(evaluate(STRATEGY_CLASSES[name](), prompts, budget, args)) for name in STRATEGIES}
        oracle = asyncio.run(evaluate(OracleStrategy(), prompts, budget, args))
        toa = means["toa"]
        rows = [[name, *(means[name][m] / toa[m] for m in METRICS)] for name in STRATEGIES]
        rows.append(["oracle", *(oracle[m] / toa[m] for m in METRICS)])
        rows.append(["(toa absolute)", *(toa[m] for m in METRICS)])
        print(f"\nbudget {budget}: mean over prompts, relative to TOA (1.0 = TOA) "
              f"[{time.perf_counter() - started:.1f} s]")
        print(table(["strategy", *METRICS], rows))
        best_baseline = max((n for n in STRATEGIES if n != "toa"), key=lambda n: means[n]["picked_true"])
        summary.append(f"N={budget}: TOA picked_true {toa['picked_true']:.3f} vs best baseline {best_baseline} "
                       f"{means[best_baseline]['picked_true']:.3f}, oracle {oracle['picked_true']:.3f}")
    print("\nSUMMARY search: " + "; ".join(summary))


# ------------------------------------------------------------------------------------------------ demo

DEMO_PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Give two tips for staying focused while studying.",
    "Explain what a prime number is to a ten-year-old.",
    "Write a haiku about the sea.",
)


async def demo_strategy(name: str, budget: int, n_prompts: int, max_tokens: int) -> dict:
    from toa_core.backends.factory import aclose_all, build_agents, build_reward
    from toa_core.config import ModelConfig, RewardConfig

    models = [
        ModelConfig(name="smol-plain", backend="transformers", model="builtin:smollm2", temperature=0.7),
        ModelConfig(name="smol-brief", backend="transformers", model="builtin:smollm2", temperature=0.9,
                    system_prompt="Answer briefly and precisely."),
        ModelConfig(name="smol-careful", backend="transformers", model="builtin:smollm2", temperature=1.0,
                    system_prompt="Think carefully and give a complete, correct answer."),
    ]
    agents = build_agents(models)
    reward = build_reward(RewardConfig(kind="llm_judge", model="builtin:smollm2", max_length=1024, batch_size=8))
    search = SearchConfig(strategy=name, budget=budget, tau=1.0, alpha=0.05, max_tokens=max_tokens,
                          prompt_concurrency=n_prompts, moa_layers=2)
    ctx = SearchContext(agents=agents, reward=reward, search=search)
    prompts = [Prompt.from_messages([{"role": "user", "content": q}]) for q in DEMO_PROMPTS[:n_prompts]]
    try:
        results = await run_search(prompts, ctx)
    finally:
        await aclose_all(agents, reward)
    best, top = [], []
    for result in results:
        rewards = sorted((c.reward for c in result.candidates if c.reward is not None), reverse=True)
        if rewards:
            best.append(rewards[0])
            top.append(statistics.fmean(rewards[:10]))
    return {"best_obs": statistics.fmean(best), "top10_obs": statistics.fmean(top)}


def demo(args: argparse.Namespace) -> None:
    budget, n_prompts = args.demo_budget, args.demo_prompts
    print(f"# demo: 3 SmolLM2-135M agents + SmolLM2 judge (in process), {n_prompts} prompts, budget {budget}",
          flush=True)
    means = {}
    for name in STRATEGIES:
        started = time.perf_counter()
        means[name] = asyncio.run(demo_strategy(name, budget, n_prompts, args.demo_max_tokens))
        print(f"  {name}: {means[name]} [{time.perf_counter() - started:.0f} s]", flush=True)
    toa = means["toa"]
    rows = [[name, means[name]["best_obs"], means[name]["top10_obs"],
             means[name]["best_obs"] - toa["best_obs"], means[name]["top10_obs"] - toa["top10_obs"]]
            for name in STRATEGIES]
    # Judge log-odds can be negative, so the demo compares by difference, not ratio.
    print(table(["strategy", "best_obs", "top10_obs", "best - toa", "top10 - toa"], rows))
    best_other = max((n for n in STRATEGIES if n != "toa"), key=lambda n: means[n]["best_obs"])
    print(f"\nSUMMARY search demo: TOA best judge log-odds {toa['best_obs']:.3f}, best baseline {best_other} "
          f"{means[best_other]['best_obs']:.3f} ({n_prompts} prompts, budget {budget})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 prompts, budgets 16 and 40 (seconds)")
    parser.add_argument("--demo", action="store_true", help="run on the SmolLM2 demo models instead (slow)")
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[16, 40, 80, 160])
    parser.add_argument("--reward-noise", type=float, default=0.05)
    parser.add_argument("--tau", type=float, default=1.0, help="TOA value = sigmoid(reward / tau)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--moa-layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-prompts", type=int, default=4)
    parser.add_argument("--demo-budget", type=int, default=9)
    parser.add_argument("--demo-max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.budgets = min(args.prompts, 30), [b for b in args.budgets if b <= 40]
    header("search efficiency (simulated agents with ground truth)" if not args.demo else
           "search efficiency on the demo models", sys.argv)
    demo(args) if args.demo else simulated(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
