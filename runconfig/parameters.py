"""What a run started from the Prefect UI may choose: a config FILE on the worker, plus typed overrides of safe keys.

Anyone who can press "Run" on a deployment can set its parameters, so parameters never carry a whole config. A
config can make a run execute code of someone's choosing: `trust_remote_code: true` (reward models, judges, the
training base model) runs a model repository's own Python, a `plugin` reward imports any `module:function`, and a
managed server's `executable` / `extra_args` pick the command line a worker runs. Those keys come only from
config files on the worker, written by whoever operates it. A deployment run names such a file:

- `config`: one of the configs shipped in the project's `configs/` folder (the form offers them as a choice), or
  the path of another YAML file on the worker;
- `overrides`: a few typed settings (`RunOverrides`) that change what a run does but not what code it runs:
  search budget and strategy, shard sizes, training steps, the gate's tolerance.

The deployments enforce their parameter schema, so the Prefect server itself refuses a run whose parameters hold
a mapping as `config` or a key `RunOverrides` does not list (such as `trust_remote_code`); a flow called from
Python validates the same types before any work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, WithJsonSchema

from toa_core.config import SearchConfig, Section

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  # read_yaml_mapping reads JSON too


def shipped_configs() -> tuple[str, ...]:
    """The run and training configs under the project's configs/ folder, as project-relative paths: top-level
    ones first, then configs/paper/** (configs/accelerate/ holds launcher files, not configs)."""
    folder = PROJECT_DIR / "configs"
    found = [path.relative_to(PROJECT_DIR) for path in folder.rglob("*.yaml")
             if "accelerate" not in path.relative_to(folder).parts[:-1]]
    return tuple(path.as_posix() for path in sorted(found, key=lambda path: (len(path.parts), path))) \
        or ("configs/demo.yaml",)


SHIPPED_CONFIGS = shipped_configs()

# In the deployment form: a choice of the shipped configs, with a switch to type the path of another file.
ConfigFile = Annotated[
    Annotated[str, WithJsonSchema({"title": "shipped config", "type": "string", "enum": list(SHIPPED_CONFIGS)})]
    | Annotated[str, WithJsonSchema({"title": "file on the worker", "type": "string"})],
    Field(description="Run config: one shipped with the project, or the path of a YAML file on the worker"),
]


class ConfigParameterError(ValueError):
    """A `config` parameter that does not name a config file on the worker; the message says what to pass."""


def config_path(config: str) -> Path:
    """The file a `config` parameter names: a shipped config (relative to the project folder) or an existing
    YAML file on the worker (absolute, or relative to the working directory)."""
    if not isinstance(config, str) or not config.strip():
        raise ConfigParameterError(
            f"config must be the path of a YAML file on the worker (or one of {', '.join(SHIPPED_CONFIGS[:3])}, ...), "
            f"got {type(config).__name__}; a whole config cannot be passed as a parameter")
    if config in SHIPPED_CONFIGS and not Path(config).is_file():
        return PROJECT_DIR / config
    path = Path(config).expanduser()
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigParameterError(f"config {config!r}: expected a .yaml (or .json) file (shipped ones: "
                                   "configs/tiny.yaml, configs/demo.yaml, ...)")
    if not path.is_file():
        raise ConfigParameterError(f"config {config!r}: no such file on this worker (relative paths start at "
                                   f"{Path.cwd()}); shipped configs live in {PROJECT_DIR / 'configs'}")
    return path


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
    run execute other code: those keys come only from config files on the worker."""
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
