"""The scaling flow: every strategy at every budget on the same prompts, then the paper's scaling figure.

    toa scaling --config configs/demo.yaml --budgets 4,8,12 --strategies toa,random,ensemble,prs,seq_refine,moa --limit 4

Searches that a larger budget contains are not repeated (toa_core.scaling.REUSE says which strategies allow it).
Re-running a run id resumes the sweep. Results land in `runs/<run_id>/scaling/` and as Prefect artifacts.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from infra.manifest import Manifest
from infra.run_ids import check_new_run_id, new_run_id
from infra.runtime import model_servers
from infra.store import open_store
from tasks.artifacts import ProgressReporter
from tasks.flow_runs import finish, name_flow_run, run_name
from tasks.run_inputs import RunInputs
from tasks.scaling import report_scaling, scaling_key, search_strategy
from tasks.synthesis import ingest_prompts, run_key
from toa_core.scaling import parse_budgets, parse_strategies
from runconfig import load_config
from runconfig.parameters import ConfigFile

DEFAULT_STRATEGIES = ["toa", "random", "ensemble", "prs", "seq_refine", "moa"]


@flow(name="scaling", flow_run_name=run_name)
def scaling(config: ConfigFile = "demo.yaml", budgets: list[int] | str = "16,40,80,160",
            strategies: list[str] | str = ",".join(DEFAULT_STRATEGIES), limit: int | None = None,
            run_id: str | None = None, prompts: str | None = None, bootstrap_samples: int = 1000) -> dict[str, Any]:
    """Run every strategy at every budget on the same prompts and draw reward-vs-compute curves.

    Args:
        config: Run config, by name in the operator's config folder (the operator's own runs may give a path):
            models, reward, search settings, synthesis.prompts for the prompt source.
        budgets: Generations per prompt, e.g. "16,40,80,160" (or a list).
        strategies: Comma-separated strategies (or a list): toa, random, ensemble, prs, seq_refine, moa.
        limit: Use a seeded random sample of at most this many prompts (the paper used 200 AlpacaEval prompts).
        run_id: Run id to create or resume; empty = a new id.
        prompts: Prompt source overriding `synthesis.prompts.source` (from a deployment: under the operator's
            prompt roots only).
        bootstrap_samples: Resamples behind each 95% interval.
    """
    if run_id:
        check_new_run_id(run_id)  # before anything else: it becomes store keys and local folders
    logger = get_run_logger()
    inputs = RunInputs.of(config)  # a deployment run names an operator config; refused here otherwise
    budget_list = parse_budgets(budgets)
    strategy_list = parse_strategies(strategies)
    overrides: dict[str, Any] = {}
    if limit is not None:
        overrides["synthesis.prompts.limit"] = limit
    prompts = inputs.prompts(prompts, load_config(inputs.config.path).synthesis.prompt_roots)  # before any download
    if prompts is not None:
        overrides["synthesis.prompts.source"] = prompts
    cfg = load_config(inputs.config.path, overrides)
    run_id = run_id or new_run_id(f"scaling-{cfg.name}")
    name_flow_run(run_id)
    store = open_store(cfg.store)
    manifest = Manifest.open(store, run_id, config=cfg.model_dump(mode="json"), seeds={"search": cfg.search.seed})
    manifest.record_trust(inputs.trust(cfg.model_dump(mode="json")))
    logger.info("scaling run %s: strategies %s at budgets %s -> %s", run_id, strategy_list, budget_list,
                store.uri(scaling_key(run_id) + "/"))

    with manifest.stage_attempt("ingest") as attempt:
        ingest = ingest_prompts(cfg, run_id)
        attempt.counts = {k: v for k, v in ingest.items() if isinstance(v, int) and not isinstance(v, bool)}

    with manifest.stage_attempt("scaling") as attempt:
        progress = ProgressReporter(len(strategy_list), artifact="scaling-progress",
                                    description=f"strategies of scaling run {run_id} finished")
        runs: dict[str, dict[int, str]] = {}
        generations = 0
        with model_servers(cfg, run_id) as endpoints:
            for strategy in strategy_list:
                outcome = search_strategy(cfg, run_id, strategy, budget_list, endpoints)
                runs[strategy] = outcome["runs"]
                generations += outcome["generations"]
                progress.advance()
        report = report_scaling(cfg, run_id, strategy_list, budget_list, runs, bootstrap_samples)
        manifest.add_lineage("scaling", [store.uri(run_key(run_id, "prompts") + "/")],
                             [uri for by_budget in runs.values() for uri in by_budget.values()])
        earlier = (manifest.stage("scaling") or {}).get("counts", {}).get("generations", 0)
        attempt.counts = {"generations": earlier + generations, "curve_points": len(report["rows"])}
        attempt.attempt_counts = {"generations_new": generations, "curve_points": len(report["rows"])}
    return finish({"run_id": run_id, "run_uri": store.uri(run_key(run_id) + "/"), **report},
                  f"{len(strategy_list)} strategies x {len(budget_list)} budgets: {len(report['rows'])} curve points, "
                  f"{generations} new generations")
