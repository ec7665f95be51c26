"""What a run started from the Prefect UI may choose: the NAME of a config in the operator's config folder, a
prompt source under the operator's declared roots, plus typed overrides of safe keys.

Anyone who can press "Run" on a deployment can set its parameters, so parameters name things; they never point
at files. A config can make a run execute code of someone's choosing: `trust_remote_code: true` (reward models,
judges, the training base model) runs a model repository's own Python, a `plugin` reward imports any
`module:function`, and a managed server's `executable` / `extra_args` pick the command line a worker runs. Those
keys come only from config files the operator put in the config folder (or passes to the `toa` CLI on the
worker). A deployment run therefore takes:

- `config`: the name of a config in the operator's config folder: the project's shipped `configs/` folder, or the
  folder `TOAFLOW_CONFIG_DIR` names in the worker's environment (never a parameter). `demo.yaml`,
  `paper/alpaca_eval/toa.yaml` (the old spelling `configs/demo.yaml` still works). An absolute path, `..`, `~`
  or a name that resolves outside the folder is refused before the run starts, with the allowed names;
- `prompts`: a source under the prompt roots the operator declares (`TOAFLOW_PROMPT_ROOTS` on the worker and the
  config's `synthesis.prompt_roots`; the project's `data/prompts/` always): local folders, `s3://bucket/prefix`
  store prefixes and `hf:ORG/NAME` dataset ids. It is checked before anything is downloaded;
- `overrides`: a few typed settings (`RunOverrides`) that change what a run does but not what code it runs.

The operator's `toa` commands keep accepting config paths and any prompt source: whoever runs them on the worker
already controls it. Flows tell the two apart by asking Prefect whether the run (or its parent) was started from a
deployment (tasks/flow_runs.py: `started_from_deployment`); a deployment run calls the flow function directly, so
the rule holds in the flows themselves. The deployments also enforce their parameter schema: the Prefect server
refuses a `config` that is a mapping, an absolute path or holds `..`, and an override key `RunOverrides` does not
list, before a flow run exists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, WithJsonSchema

from toa_core.config import SearchConfig, Section

PROJECT_DIR = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG_DIR = PROJECT_DIR / "configs"
SHIPPED_PROMPTS_DIR = PROJECT_DIR / "data" / "prompts"
CONFIG_DIR_ENV = "TOAFLOW_CONFIG_DIR"
PROMPT_ROOTS_ENV = "TOAFLOW_PROMPT_ROOTS"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  # read_yaml_mapping reads JSON too
LEGACY_PREFIX = "configs/"  # names used to be project-relative: configs/demo.yaml
SHOWN_CONFIGS = 12  # names listed in a refusal message


class ConfigParameterError(ValueError):
    """A `config` (or `prompts`) parameter that a run may not use; the message names the parameter, what is
    allowed and where the operator declares it."""


def operator_config_dir() -> Path:
    """The operator's config folder: $TOAFLOW_CONFIG_DIR on this worker, else the project's shipped configs/."""
    configured = os.environ.get(CONFIG_DIR_ENV, "").strip()
    return Path(configured).expanduser().resolve() if configured else SHIPPED_CONFIG_DIR.resolve()


def available_configs(folder: Path | None = None) -> tuple[str, ...]:
    """The config names of `folder` (default: the operator's): paths relative to it, top-level ones first, then
    sub-folders (paper/**). accelerate/ holds launcher files, not run configs."""
    folder = folder or operator_config_dir()
    if not folder.is_dir():
        return ()
    folder = folder.resolve()
    found = [path.relative_to(folder) for path in folder.rglob("*")
             if path.suffix.lower() in (".yaml", ".yml") and path.is_file() and path.resolve().is_relative_to(folder)
             and "accelerate" not in path.relative_to(folder).parts[:-1]]
    return tuple(path.as_posix() for path in sorted(found, key=lambda path: (len(path.parts), path)))


def shipped_configs() -> tuple[str, ...]:
    """The names of the configs shipped in the project's configs/ folder."""
    return available_configs(SHIPPED_CONFIG_DIR) or ("demo.yaml",)


SHIPPED_CONFIGS = shipped_configs()
CONFIG_CHOICES = available_configs() or SHIPPED_CONFIGS  # what `toa deploy` offers in the form (its environment)
# A name, never a path: no leading '/' or '~', no '..', a config suffix. The server checks this before a flow run
# exists; the flow checks the rest (the name exists in the folder and does not resolve outside it).
CONFIG_NAME_PATTERN = r"^(?![/~])(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_./-]*\.(yaml|yml|json)$"

# In the deployment form: a choice of the operator's configs, or the name of another config in that folder.
ConfigFile = Annotated[
    Annotated[str, WithJsonSchema({"title": "operator config", "type": "string", "enum": list(CONFIG_CHOICES)})]
    | Annotated[str, WithJsonSchema({"title": "other config name", "type": "string",
                                     "pattern": CONFIG_NAME_PATTERN})],
    Field(description="Run config: the name of a config in the operator's config folder (configs/ or "
                      "$TOAFLOW_CONFIG_DIR on the worker), e.g. demo.yaml; never a path"),
]


@dataclass(frozen=True)
class ResolvedConfig:
    """Where a `config` parameter led: the file, its name in the operator's folder (None for an operator's path
    outside it) and how it was allowed ("config folder" or "operator path")."""
    path: Path
    name: str | None
    source: str

    @property
    def label(self) -> str:
        """The name when there is one, else the path (operator runs only)."""
        return self.name or str(self.path)


def _name_in_folder(config: str, folder: Path) -> str | None:
    """`config`'s name when it names an existing config file strictly inside `folder` (links resolved), else None.
    Only plain relative names count: absolute paths, '~' and '..' never do."""
    if not config or config.startswith(("/", "~", "\\")) or "\\" in config or "\x00" in config:
        return None
    candidates = [config] + ([config[len(LEGACY_PREFIX):]] if config.startswith(LEGACY_PREFIX) else [])
    for name in candidates:
        parts = Path(name).parts
        if not parts or any(part in ("..", ".", "") for part in parts) \
                or Path(name).suffix.lower() not in CONFIG_SUFFIXES:
            continue
        path = (folder / name).resolve()
        if path.is_file() and path.is_relative_to(folder):
            return path.relative_to(folder).as_posix()
    return None


def _listing(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:SHOWN_CONFIGS])
    more = len(names) - SHOWN_CONFIGS
    return (shown + (f" and {more} more" if more > 0 else "")) or "(none: the folder holds no config)"


def resolve_config(config: Any, *, operator: bool) -> ResolvedConfig:
    """The config file a `config` parameter names.

    Any run: the name of a config in the operator's config folder (`operator_config_dir`). `operator=True` (the
    `toa` CLI and Python callers on the worker, never a deployment run): also the path of any YAML file there.
    Raises ConfigParameterError naming the parameter and listing the allowed configs.
    """
    if not isinstance(config, str) or not config.strip():
        raise ConfigParameterError(
            f"parameter `config` must be the name of a config in the operator's config folder, e.g. "
            f"{', '.join(SHIPPED_CONFIGS[:3])}; got {type(config).__name__}: a whole config cannot be passed as a "
            "parameter")
    folder = operator_config_dir()
    name = None if operator and Path(config).expanduser().is_file() else _name_in_folder(config, folder)
    if name is not None:
        return ResolvedConfig(folder / name, name, "config folder")
    if not operator:
        raise ConfigParameterError(
            f"parameter `config` {config!r} is refused: a run started from a deployment names a config of the "
            f"operator's config folder (the shipped configs/, or ${CONFIG_DIR_ENV} on the worker) and never points "
            f"at a file; allowed configs: {_listing(available_configs(folder))}")
    path = Path(config).expanduser()
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigParameterError(f"config {config!r}: expected a .yaml (or .json) file (configs of the operator "
                                   f"folder: {_listing(available_configs(folder)[:3])}, ...)")
    if not path.is_file():
        raise ConfigParameterError(f"config {config!r}: no such file on this worker (relative paths start at "
                                   f"{Path.cwd()}); the operator's configs are in {folder}")
    resolved = path.resolve()
    inside = resolved.is_relative_to(folder)
    return ResolvedConfig(path, resolved.relative_to(folder).as_posix() if inside else None,
                          "config folder" if inside else "operator path")


def config_path(config: str, *, operator: bool = True) -> Path:
    """The file a `config` parameter names (`resolve_config`); `operator=False` for deployment runs."""
    return resolve_config(config, operator=operator).path


# -- prompt sources ---------------------------------------------------------------------------------------------

def prompt_roots(config_roots: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The prompt roots a deployment run may read: $TOAFLOW_PROMPT_ROOTS (comma-separated local folders,
    s3://bucket/prefix, hf:ORG/NAME), the config's `synthesis.prompt_roots`, and the project's shipped
    data/prompts/ folder."""
    raw = os.environ.get(PROMPT_ROOTS_ENV, "")
    roots = [item.strip() for item in raw.split(",") if item.strip()] + list(config_roots)
    return list(dict.fromkeys(roots + [str(SHIPPED_PROMPTS_DIR)]))


def _s3_parts(uri: str) -> tuple[str, list[str]] | None:
    """(bucket, key segments) of an s3:// URI, None when a segment is empty, '.' or '..'."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    segments = [segment for segment in key.split("/")] if key else []
    if not bucket or any(segment in ("", ".", "..") for segment in segments[:-1]) or \
            (segments and segments[-1] in (".", "..")):
        return None
    return bucket, [segment for segment in segments if segment]


def check_prompt_source(source: Any, roots: list[str]) -> str:
    """`source` when it lies under one of `roots` (see `prompt_roots`), as the source ingestion should read: an
    s3:// URI, an absolute local path (a relative one is looked up in each local root), or a dataset id. Raises
    ConfigParameterError naming the parameter and the roots. Nothing is read beyond the local file system's
    metadata: the check happens before any download."""
    if not isinstance(source, str) or not source.strip() or "\x00" in source:
        raise ConfigParameterError("parameter `prompts` must name a prompt source under the operator's prompt roots")
    local_roots = [Path(root).expanduser().resolve() for root in roots if "://" not in root
                   and not root.startswith("hf:")]
    if source.startswith("s3://"):
        parts = _s3_parts(source)
        for root in (root for root in roots if root.startswith("s3://")):
            root_parts = _s3_parts(root.rstrip("/"))
            if parts and root_parts and parts[0] == root_parts[0] and parts[1][:len(root_parts[1])] == root_parts[1] \
                    and len(parts[1]) >= max(len(root_parts[1]), 1):
                return source
    elif "://" not in source or source.startswith("file://"):
        raw = source[len("file://"):] if source.startswith("file://") else source
        if not raw.startswith("~") and "\\" not in raw:
            for root in local_roots:
                path = (root / raw).resolve() if not Path(raw).is_absolute() else Path(raw).resolve()
                if path.is_relative_to(root) and path.exists():
                    return str(path)
            if f"hf:{source}" in roots:
                return source
    shown = ", ".join(roots)
    raise ConfigParameterError(
        f"parameter `prompts` {source!r} is refused: a run started from a deployment reads prompts only under the "
        f"roots the operator declared ({shown}); the operator adds roots with ${PROMPT_ROOTS_ENV} on the worker or "
        "`synthesis.prompt_roots` in the config")


def check_model_parameter(model: Any) -> str:
    """A deployment run's `model` (the evaluate flow): a run's model in the store (`runs/<id>/models/<stage>`) or a
    builtin test model. A folder on the worker, another URI or an endpoint (which would receive the operator's API
    key) is refused with ConfigParameterError; the operator's `toa evaluate --model` takes any of them."""
    import re

    if isinstance(model, str) and (re.fullmatch(r"runs/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/models/[A-Za-z0-9_-]+", model)
                                   or re.fullmatch(r"builtin:[A-Za-z0-9_.-]+", model)):
        return model
    raise ConfigParameterError(
        f"parameter `model` {model!r} is refused: a run started from a deployment evaluates a run's model in the "
        "store (runs/<run id>/models/dpo or .../sft) or builtin:NAME; folders on the worker and endpoints are for the "
        "operator's `toa evaluate --model`")


# -- settings that run code -------------------------------------------------------------------------------------

CODE_RUNNING_KEYS = {"trust_remote_code": "runs the model repository's own Python",
                     "executable": "picks the program a worker starts",
                     "extra_args": "adds to a server's command line",
                     "callable": "imports a Python function (plug-in)"}


def code_running_settings(config: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a config mapping (a RunConfig's `model_dump`) that make a run execute code of the config's
    choosing: `trust_remote_code: true`, a plug-in reward's `callable`, a server's `executable` or `extra_args`.
    Such a config must come from the operator (its folder, or the `toa` CLI); the run's manifest lists them."""
    found: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key in CODE_RUNNING_KEYS and value not in (None, False, [], ""):
                found.append(dotted)
            else:
                found += code_running_settings(value, dotted)
    elif isinstance(config, list):
        for index, item in enumerate(config):
            found += code_running_settings(item, f"{prefix}.{index}")
    return found


Strategy = Literal[get_args(SearchConfig.model_fields["strategy"].annotation)]  # type: ignore[misc]


def _optional(kind: type, key: str, description: str, **bounds: Any) -> Any:
    """An optional override: None (the form's empty field) keeps the config's value. The form shows a plain
    field of `kind` (no "None" switch); `key` is the config key it sets."""
    schema: dict[str, Any] = {"type": {int: "integer", float: "number", str: "string"}.get(kind, "string"),
                              "title": key, "description": description, **bounds}
    if kind is Strategy:
        schema["enum"] = list(get_args(Strategy))
    checked = Annotated[kind, Field(ge=bounds.get("minimum"), le=bounds.get("maximum"))]
    return Annotated[checked | None, WithJsonSchema(schema)]


class RunOverrides(Section):
    """Settings a run from the UI may change; empty fields keep the config file's values. Nothing here can make a
    run execute other code: those keys come only from the operator's config files."""
    search_strategy: _optional(Strategy, "search.strategy", "search strategy (toa or a baseline)") = None
    search_budget: _optional(int, "search.budget", "generations per prompt", minimum=1) = None
    search_seed: _optional(int, "search.seed", "seed of the search") = None
    synthesis_shard_size: _optional(int, "synthesis.shard_size", "prompts per shard", minimum=1) = None
    synthesis_max_shards_in_flight: _optional(int, "synthesis.max_shards_in_flight", "shards sampled at once",
                                              minimum=1) = None
    training_sft_max_steps: _optional(int, "training.sft.max_steps", "SFT optimizer steps", minimum=1) = None
    training_dpo_max_steps: _optional(int, "training.dpo.max_steps", "DPO optimizer steps", minimum=1) = None
    training_seed: _optional(int, "training.common.seed", "seed of training") = None
    evaluation_bootstrap_samples: _optional(int, "evaluation.bootstrap_samples", "resamples behind each 95% interval",
                                            minimum=50) = None
    evaluation_max_regression: _optional(float, "evaluation.gate.max_regression",
                                         "allowed drop (metric units) before the gate blocks", minimum=0) = None

    def dotted(self) -> dict[str, Any]:
        """The set fields as {"search.budget": 12, ...}: the overrides `runconfig.load_config` applies."""
        return {_KEYS[name]: value for name, value in self.model_dump().items() if value is not None}


_KEYS = {name: next(item.json_schema["title"] for item in field.metadata if isinstance(item, WithJsonSchema))
         for name, field in RunOverrides.model_fields.items()}  # field name -> the config key it sets


def override_mapping(overrides: RunOverrides | dict[str, Any] | None) -> dict[str, Any]:
    """Dotted-key overrides from a `overrides` flow parameter (a RunOverrides, its dict form, or None)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, RunOverrides):
        overrides = RunOverrides.model_validate(overrides)
    return overrides.dotted()


def synthesis_settings(overrides: RunOverrides | dict[str, Any] | None, limit: int | None = None,
                       prompts: str | None = None) -> dict[str, Any]:
    """The dotted overrides of a synthesis run (and of each of its shard flow runs): `overrides` plus the
    synthesize flow's own `limit` and `prompts` parameters."""
    settings = override_mapping(overrides)
    if limit is not None:
        settings["synthesis.prompts.limit"] = limit
    if prompts is not None:
        settings["synthesis.prompts.source"] = prompts
    return settings
