"""Publishing on promotion (pipeline.publish, opt-in): after the gate promoted a run, push its model (as trained, and
merged into its base weights), each with a model card, and its datasets with their dataset card, to the Hub repos
the config names (infra/hub.py does the pushing).

A failed push never un-promotes: the model is `latest` in the store whatever the Hub says. Each target succeeds or
fails on its own; the outcome goes to runs/<run_id>/publish.json, the run's log and its final message, and the
next promotion pushes again. Nothing here raises.
"""
from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.hub import PublishError, hub_endpoint, hub_token, push_folder
from infra.policy import final_model_key
from toa_core.credentials import redact_text
from infra.store import DIR_MARKER, Store, open_store
from runconfig import RunConfig

PUBLISH_FILE = "publish.json"


def _download(store: Store, prefix: str, names: list[str], dest: Path) -> Path:
    for name in names:
        store.download_file(f"{prefix}/{name}", dest / name)
    return dest


def model_folder(store: Store, model_key: str, dest: Path) -> Path:
    """The promoted model as trained (adapter or full weights, tokenizer, metrics, its README model card)."""
    names = store.read_json(f"{model_key}/{DIR_MARKER}")["files"]
    return _download(store, model_key, [n for n in names if not n.startswith(("merged/", "checkpoints/"))], dest)


def merged_folder(cfg: RunConfig, store: Store, model_key: str, dest: Path, adapter_repo: str | None) -> Path:
    """The promoted model as full weights: training's merged/ copy when it wrote one, else the adapter merged into
    its base now (cached by content, as evaluation merges it); with a model card that says what it is."""
    names = store.read_json(f"{model_key}/{DIR_MARKER}")["files"]
    merged_names = [n[len("merged/"):] for n in names if n.startswith("merged/")]
    if merged_names:
        _download(store, f"{model_key}/merged", merged_names, dest)
    elif "adapter_config.json" in names:
        from evaluation.generation import merge_adapter

        adapter = model_folder(store, model_key, dest.parent / "adapter-to-merge")
        shutil.copytree(merge_adapter(adapter, cfg.training.common.base_model), dest,
                        ignore=shutil.ignore_patterns("_MERGED.json"))
    else:
        model_folder(store, model_key, dest)  # full weights already
    metrics = store.read_json(f"{model_key}/training_metrics.json") if store.exists(
        f"{model_key}/training_metrics.json") else {}
    base = metrics.get("base_model") or cfg.training.common.base_model
    trained_card = store.read_text(f"{model_key}/README.md") if store.exists(f"{model_key}/README.md") else ""
    (dest / "README.md").write_text(
        f"---\nlibrary_name: transformers\ntags: [toaflow, merged]\n---\n\n"
        f"# toaflow model, merged weights — `{model_key}`\n\n"
        f"The promoted model `{model_key}` with its LoRA adapter merged into the base model `{base}`: plain "
        f"weights for servers that cannot apply adapters (`vllm serve <this repo>`, `transformers serve`). "
        + (f"The adapter itself is in `{adapter_repo}`. " if adapter_repo else "")
        + "How it was trained:\n\n" + trained_card.replace("\n# ", "\n## "))
    return dest


def datasets_folder(store: Store, run_id: str, dest: Path) -> Path:
    """The run's own datasets (sft/, dpo/, stats.json) with README.md, the dataset card."""
    prefix = f"runs/{run_id}/datasets"
    return _download(store, prefix, [key[len(prefix) + 1:] for key in store.list(prefix + "/")], dest)


@task(name="publish-promoted", cache_policy=NO_CACHE)
def publish_promoted(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """Push the promoted run's model, merged model and datasets to the configured repos; never raises.

    Returns (and writes to runs/<run_id>/publish.json) {"run_id", "endpoint", "at", "pushed": [...],
    "failed": [{"repo", "kind", "error"}]}."""
    publish = cfg.pipeline.publish
    store = open_store(cfg.store)
    logger = get_run_logger()
    report: dict[str, Any] = {"run_id": run_id, "endpoint": hub_endpoint(), "pushed": [], "failed": [],
                              "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    model_key = final_model_key(store, run_id)
    message = f"toaflow: promoted run {run_id}"
    targets: list[tuple[str | None, str, Callable[[Path], Path]]] = [
        (publish.model_repo, "model", lambda tmp: model_folder(store, model_key, tmp / "model")),
        (publish.merged_repo, "model", lambda tmp: merged_folder(cfg, store, model_key, tmp / "merged",
                                                                 publish.model_repo)),
        (publish.dataset_repo, "dataset", lambda tmp: datasets_folder(store, run_id, tmp / "datasets")),
    ]
    token = ""
    try:
        token = hub_token(publish.token_env)
        if model_key is None:
            raise PublishError(f"run {run_id} has no finished model to publish")
    except PublishError as error:
        report["failed"] = [{"repo": repo, "kind": kind, "error": str(error)} for repo, kind, _ in targets if repo]
    else:
        for repo, kind, build in targets:
            if not repo:
                continue
            try:
                with tempfile.TemporaryDirectory(prefix="toaflow-publish-") as tmp:
                    pushed = push_folder(build(Path(tmp)), repo, kind, token, private=publish.private, message=message)
                report["pushed"].append({"repo": pushed.repo_id, "kind": kind, "files": pushed.files,
                                         "commit": pushed.commit_url})
                logger.info("published %s %s (%d files): %s", kind, repo, pushed.files, pushed.commit_url)
            except Exception as error:  # noqa: BLE001 - a failed push is reported, never raised
                report["failed"].append({"repo": repo, "kind": kind,
                                         "error": redact_text(f"{error}", {token} if token else None)})
    for failure in report["failed"]:
        logger.warning("publishing %s %s FAILED (the promotion stands): %s", failure["kind"], failure["repo"],
                       failure["error"])
    store.write_json(f"runs/{run_id}/{PUBLISH_FILE}", report)
    return report


def publish_line(report: dict[str, Any] | None) -> str:
    """"; published to a/b, c/d" or "; publishing FAILED for a/b (see publish.json)" for the run's final message."""
    if not report:
        return ""
    parts = []
    if report["pushed"]:
        parts.append("published to " + ", ".join(p["repo"] for p in report["pushed"]))
    if report["failed"]:
        parts.append("publishing FAILED for " + ", ".join(f["repo"] for f in report["failed"]) +
                     f" ({report['failed'][0]['error'][:200]}; runs/{report['run_id']}/{PUBLISH_FILE})")
    return "; " + "; ".join(parts)
