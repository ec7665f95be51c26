"""The model under test: where it comes from, and how it answers every benchmark prompt.

`--model` accepts
- an OpenAI-compatible endpoint: "http://host:8000/v1#served-name" (or set generation.served_model);
- a store location of the training flow's output: "runs/<id>/models/dpo" (a key in the run's store) or the full
  store URI (s3://bucket/prefix/runs/<id>/models/dpo, or the absolute local path);
- a local HF folder, a hub id in the local cache, or "builtin:NAME".

A LoRA adapter folder (adapter_config.json) is merged into its base model in memory with peft and the merged
weights are cached under $TOAFLOW_CACHE/merged/<hash of the adapter files>/ (the 3 newest are kept), so the
in-process transformers backend serves it like any model and a second evaluation of the same adapter skips the merge. On GPU hosts,
serve the adapter with vLLM (`--enable-lora --lora-modules`) and pass the endpoint instead.

Generation goes through the same model clients as synthesis (toa_core.backends.factory). A failed request is a
recorded error for that item (its metrics count it as failed), never an empty answer scored as if it were real.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evaluation.benchmarks import EvalItem
from evaluation.config import GenerationConfig
from toa_core.credentials import redact_text
from toa_core.config import ModelConfig
from toa_core.folders import remove_tree
from toa_core.interfaces import ChatModel, SamplingParams

log = logging.getLogger(__name__)

MERGED_MARKER = "_MERGED.json"
MERGED_KEEP = 3  # merged models kept in the cache (the current run, the previous one, one spare)


class ModelSourceError(ValueError):
    """`--model` does not name a usable model; the message says what was tried and what to pass.

    The message names the `--model` value, which may be an endpoint URL with credentials: it is redacted here,
    so the error is safe wherever it goes (the flow run's Failed state message, the `error:` line)."""

    def __init__(self, message: str):
        super().__init__(redact_text(message))


@dataclass(frozen=True)
class ModelUnderTest:
    """A resolved model: an agent config for the backend factory, and a label for reports."""
    config: ModelConfig
    label: str


def _cache_root() -> Path:
    from toa_core.backends.assets import cache_root

    return cache_root()


def _download_files(store: Any, prefix: str, keys: list[str], dest: Path) -> Path:
    """Download the files directly under `prefix` (not checkpoints/ or other subfolders) into `dest`."""
    for key in keys:
        name = key[len(prefix) + 1:]
        if "/" not in name and not name.startswith("_"):
            store.download_file(key, dest / name)
    return dest


def _download_from_store(store: Any, prefix: str, generation: GenerationConfig) -> ModelUnderTest | None:
    """Fetch the model folder at store `prefix`; None when nothing is stored there.

    A training output with merged weights (models/<stage>/merged/) is used as is. An adapter is downloaded to a
    temporary folder and merged (the merge is cached by content). Full weights are kept under
    $TOAFLOW_CACHE/eval-models/<hash of the store URI and file list>/ so a re-run skips the download."""
    label = prefix.rstrip("/")
    keys = store.list(label + "/")
    if not keys:
        return None
    if store.exists(f"{label}/merged/config.json"):
        merged = _download_from_store(store, f"{label}/merged", generation)
        return ModelUnderTest(merged.config, label) if merged else None
    if f"{label}/adapter_config.json" in keys:
        with tempfile.TemporaryDirectory(prefix="toaflow-adapter-") as tmp:
            folder = _download_files(store, label, keys, Path(tmp) / "adapter")
            return _local_model(folder, generation, label)
    digest = hashlib.sha256((store.uri(label) + "|" + "|".join(keys)).encode()).hexdigest()[:16]
    target = _cache_root() / "eval-models" / digest
    if not (target / "_DOWNLOADED").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=_ensure(target.parent)))
        _download_files(store, label, keys, staging)
        (staging / "_DOWNLOADED").write_text("ok")
        remove_tree(target, target.parent, ignore_errors=True)
        staging.rename(target)
    return _local_model(target, generation, label)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _adapter_base(folder: Path, override: str | None) -> str:
    """The base model of an adapter: the config's override, the training metrics' spec, or adapter_config's path."""
    if override:
        return override
    metrics = folder / "training_metrics.json"
    if metrics.is_file():
        spec = json.loads(metrics.read_text()).get("base_model")
        if spec:
            return str(spec)
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelSourceError(f"{folder}/adapter_config.json names no base model; set evaluation.generation.base_model")
    return str(base)


def merge_adapter(folder: Path, base_override: str | None = None) -> Path:
    """Merge the LoRA adapter in `folder` into its base model; returns the cached merged folder."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("adapter_*")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    base_spec = _adapter_base(folder, base_override)
    digest.update(base_spec.encode())
    target = _cache_root() / "merged" / digest.hexdigest()[:16]
    if (target / MERGED_MARKER).is_file():
        return target
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toa_core.backends.assets import AssetError, resolve_model

    try:
        base_dir = resolve_model(base_spec)
    except AssetError as error:
        raise ModelSourceError(f"{folder}: base model '{base_spec}' of the adapter is not available: {error}; "
                               f"set evaluation.generation.base_model") from None
    log.info("merging LoRA adapter %s into %s", folder, base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    tokenizer_dir = folder if (folder / "tokenizer_config.json").is_file() else base_dir
    staging = Path(tempfile.mkdtemp(prefix=".merge-", dir=_ensure(target.parent)))
    merged.save_pretrained(str(staging))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(staging))
    (staging / MERGED_MARKER).write_text(json.dumps({"adapter": str(folder), "base": base_spec}))
    remove_tree(target, target.parent, ignore_errors=True)
    staging.rename(target)  # publish whole: a crash mid-merge leaves no half-written model behind
    _prune_merged(target.parent, keep=MERGED_KEEP)
    return target


def _prune_merged(root: Path, keep: int) -> None:
    """Keep the `keep` most recently merged models: every nightly run merges a new adapter (full-size weights)."""
    merged = sorted((p for p in root.iterdir() if (p / MERGED_MARKER).is_file()),
                    key=lambda p: (p / MERGED_MARKER).stat().st_mtime, reverse=True)
    for old in merged[keep:]:
        remove_tree(old, root, ignore_errors=True)


def _local_model(folder: Path, generation: GenerationConfig, label: str) -> ModelUnderTest:
    if (folder / "merged" / "config.json").is_file():  # the training flow published merged weights too
        folder = folder / "merged"
    elif (folder / "adapter_config.json").is_file():
        folder = merge_adapter(folder, generation.base_model)
    elif not (folder / "config.json").is_file():
        raise ModelSourceError(f"{folder}: neither a LoRA adapter (adapter_config.json) nor HF weights (config.json)")
    return ModelUnderTest(ModelConfig(name="model_under_test", backend="transformers", model=str(folder)), label)


def resolve_model_under_test(uri: str, generation: GenerationConfig, store: Any | None = None) -> ModelUnderTest:
    """Turn `--model` into a backend config (see the module docstring for the accepted forms)."""
    uri = uri.strip()
    if uri.startswith(("http://", "https://")):
        # The served name follows the last '#', unless that '#' sits inside the URL's user-info (a password
        # written raw, "https://user:p#ss@host/v1"): a served name never holds '@'.
        endpoint, _, served = uri.rpartition("#")
        if not endpoint or "@" in served:
            endpoint, served = uri, ""
        served = served or generation.served_model
        if not served:
            raise ModelSourceError(f"'{uri}': an endpoint needs the served model name: '{endpoint}#<model>' "
                                   f"or evaluation.generation.served_model")
        return ModelUnderTest(ModelConfig(name="model_under_test", backend="openai", model=served,
                                          endpoints=[endpoint], api_key_env=generation.api_key_env,
                                          max_concurrency=generation.concurrency), f"{served} @ {endpoint}")
    if uri.startswith("builtin:"):
        return ModelUnderTest(ModelConfig(name="model_under_test", backend="transformers", model=uri), uri)
    local = Path(uri).expanduser()
    if local.is_dir():
        if store is not None:
            try:  # a folder inside a local store: label it by its key
                return _local_model(local, generation, store.key_of(str(local.resolve())))
            except Exception:  # noqa: BLE001 - not inside the store: a plain folder
                pass
        return _local_model(local, generation, str(local))
    if store is not None:
        key = uri
        if "://" in uri or uri.startswith("/"):
            try:
                key = store.key_of(uri)
            except Exception as error:  # noqa: BLE001 - StoreError: the URI is outside this store
                raise ModelSourceError(f"'{uri}' is not inside the run's store ({store!r}): {error}") from None
        in_local_store = Path(store.uri(key))
        if "://" not in store.uri(key) and in_local_store.is_dir():  # a local store: use the folder where it is
            return _local_model(in_local_store, generation, key)
        downloaded = _download_from_store(store, key, generation)
        if downloaded is not None:
            return downloaded
    if "/" in uri and not uri.startswith(("runs/", ".", "/")) and uri.count("/") == 1:
        return ModelUnderTest(ModelConfig(name="model_under_test", backend="transformers", model=uri), uri)  # a hub id in the HF cache
    raise ModelSourceError(f"'{uri}': no such folder or store location; pass runs/<id>/models/dpo, a local model "
                           f"folder, builtin:NAME or http://host:port/v1#model")


def build_chat_model(config: ModelConfig) -> ChatModel:
    """The same client the synthesis uses (toa_core.backends.factory)."""
    from toa_core.backends.factory import build_agents

    return build_agents([config])[0]


async def generate_outputs(model: ChatModel, items: Sequence[EvalItem], generation: GenerationConfig) -> list[dict[str, Any]]:
    """One output row per item: {item_id, output, error, completion_tokens, latency_s, finish_reason}."""
    params = SamplingParams(temperature=generation.temperature, top_p=generation.top_p,
                            max_tokens=generation.max_tokens, seed=generation.seed)
    semaphore = asyncio.Semaphore(generation.concurrency)

    async def one(item: EvalItem) -> dict[str, Any]:
        messages = list(item.messages)
        if generation.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": generation.system_prompt}, *messages]
        async with semaphore:
            result = await model.generate(messages, params)
        return {"item_id": item.item_id, "output": result.text if result.ok else None, "error": result.error,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "latency_s": round(result.latency_s, 3), "finish_reason": result.finish_reason}

    return list(await asyncio.gather(*(one(item) for item in items)))
