"""What a deployment run may set: a config file on the worker (shipped or by path) and typed safe overrides."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from runconfig import load_config
from runconfig.parameters import (PROJECT_DIR, SHIPPED_CONFIGS, ConfigParameterError, RunOverrides, config_path,
                                  override_mapping)


def test_shipped_configs_are_offered_and_resolved_from_the_project_folder(tmp_path, monkeypatch):
    assert SHIPPED_CONFIGS[:3] == ("configs/demo.yaml", "configs/demo_translation.yaml", "configs/tiny.yaml")  # everyday first
    assert "configs/paper/alpaca_eval/toa.yaml" in SHIPPED_CONFIGS
    assert not [name for name in SHIPPED_CONFIGS if "accelerate" in name]  # launcher files, not configs
    monkeypatch.chdir(tmp_path)  # a worker whose working directory is elsewhere
    assert config_path("configs/tiny.yaml") == PROJECT_DIR / "configs" / "tiny.yaml"


def test_a_config_parameter_must_name_a_yaml_file_on_the_worker(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\n")
    assert config_path(str(own)) == own
    with pytest.raises(ConfigParameterError, match="no such file on this worker"):
        config_path(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigParameterError, match="expected a .yaml"):
        config_path("/etc/passwd")
    with pytest.raises(ConfigParameterError, match="a whole config cannot be passed as a parameter"):
        config_path({"reward": {"trust_remote_code": True}})


def test_overrides_are_typed_safe_keys_only(tmp_path):
    overrides = RunOverrides(search_budget=6, search_strategy="prs", training_sft_max_steps=2)
    assert overrides.dotted() == {"search.budget": 6, "search.strategy": "prs", "training.sft.max_steps": 2}
    assert override_mapping({"evaluation_max_regression": 0.5}) == {"evaluation.gate.max_regression": 0.5}
    assert override_mapping(None) == {}
    cfg = load_config(config_path("configs/tiny.yaml"), overrides.dotted())
    assert (cfg.search.budget, cfg.search.strategy, cfg.training.sft.max_steps) == (6, "prs", 2)
    for code_running in ({"reward_trust_remote_code": True}, {"trust_remote_code": True},
                         {"reward.callable": "os:system"}, {"servers_executable": "/bin/sh"}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            RunOverrides.model_validate(code_running)
    with pytest.raises(ValidationError):
        RunOverrides(search_budget=0)
    with pytest.raises(ValidationError):
        RunOverrides(search_strategy="anything")


def test_every_override_sets_a_real_config_key():
    """Each typed override names a key the config tree still has (a renamed key would fail every UI run)."""
    values = {"search_strategy": "random", "evaluation_max_regression": 0.25, "evaluation_bootstrap_samples": 100}
    overrides = RunOverrides.model_validate({name: values.get(name, 3) for name in RunOverrides.model_fields})
    cfg = load_config(config_path("configs/tiny.yaml"), overrides.dotted())
    for key, value in overrides.dotted().items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key


def test_flows_refuse_a_whole_config_as_a_parameter(prefect_harness):
    from prefect.exceptions import ParameterTypeError

    from flows.train import train

    with pytest.raises(ParameterTypeError):
        train(config={"training": {"common": {"trust_remote_code": True}}}, run_id="r")
    with pytest.raises(ParameterTypeError):
        train(config="configs/tiny.yaml", run_id="r", overrides={"training_trust_remote_code": True})
