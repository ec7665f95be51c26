"""What a flow run may take from its parameters, decided in the flow itself (runconfig/parameters.py has the rules).

A deployment run (the Prefect UI, a schedule, `prefect deployment run`, a parent's `run_deployment`) calls the flow
function directly, exactly as the `toa` CLI does; only Prefect's record of the run tells them apart. So every
flow starts with:

    inputs = RunInputs.of(config)                 # ConfigParameterError before anything exists
    cfg = load_config(inputs.config.path, ...)
    prompts = inputs.prompts(prompts, cfg)        # checked against the operator's prompt roots
    manifest.record_trust(inputs.trust(cfg))      # who started it, which config, which code-running keys

A run is the operator's when neither it nor a flow run it is nested in came from a deployment: the `toa` CLI and
Python callers on the worker. Those keep accepting config paths and any prompt source.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runconfig.parameters import (ConfigParameterError, ResolvedConfig, check_model_parameter, check_prompt_source,
                                  code_running_settings, prompt_roots, resolve_config)


def started_from_deployment() -> bool:
    """True when the current flow run, or a flow run it is nested in, was created from a deployment. Outside a
    flow run (a flow's `.fn`, unit tests) it is False: only code on the worker gets there."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return False
    if context.flow_run.deployment_id is not None:
        return True
    from prefect.runtime import deployment  # a nested subflow inherits its deployment run's id

    return deployment.id is not None


@dataclass(frozen=True)
class RunInputs:
    """The checked `config` of a flow run and whether its parameters came from a deployment."""
    config: ResolvedConfig
    from_deployment: bool

    @classmethod
    def of(cls, config: Any) -> "RunInputs":
        """Resolve the `config` parameter: a config name of the operator's folder for deployment runs, also a
        path for the operator's own runs. Raises ConfigParameterError naming the parameter and the allowed configs."""
        from_deployment = started_from_deployment()
        return cls(resolve_config(config, operator=not from_deployment), from_deployment)

    def prompts(self, prompts: str | None, config_roots: list[str] | tuple[str, ...] = ()) -> str | None:
        """The `prompts` parameter as ingestion should read it: unchanged for the operator's runs; for deployment
        runs only a source under the operator's prompt roots (else ConfigParameterError), before any download."""
        if prompts is None or not self.from_deployment:
            return prompts
        return check_prompt_source(prompts, prompt_roots(config_roots))

    def model(self, model: str | None) -> str | None:
        """The evaluate flow's `model` parameter: unchanged for the operator's runs; for deployment runs only a
        run's model in the store or builtin:NAME (else ConfigParameterError)."""
        if model is None or not self.from_deployment:
            return model
        return check_model_parameter(model)

    def shard_config_name(self) -> str:
        """The config as shard flow runs on other hosts take it: its name in their operator folder."""
        if self.config.name is None:
            raise ConfigParameterError(
                f"config {str(self.config.path)!r}: with synthesis.executor `workers` every shard is a deployment run "
                "on a GPU host, which takes its config by name from the operator's config folder; put this config in "
                "that folder (configs/ or $TOAFLOW_CONFIG_DIR) on every host and pass its name")
        return self.config.name

    def trust(self, config_dump: dict[str, Any]) -> dict[str, Any]:
        """The manifest's record of where the run's config came from and which code-running settings it used."""
        return {"started_from": "deployment" if self.from_deployment else "operator",
                "config": self.config.label, "config_source": self.config.source,
                "code_running_settings": code_running_settings(config_dump)}
