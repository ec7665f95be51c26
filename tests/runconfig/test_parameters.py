"""What a deployment run may set: the name of a config in the operator's folder, a prompt source under the
operator's roots, and typed safe overrides; the operator's own runs may still give paths."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from runconfig import load_config
from runconfig.parameters import (CONFIG_NAME_PATTERN, PROJECT_DIR, SHIPPED_CONFIGS, ConfigParameterError,
                                  RunOverrides, check_prompt_source, code_running_settings, config_path,
                                  override_mapping, prompt_roots, resolve_config)


def test_shipped_configs_are_offered_by_name_and_resolved_in_the_config_folder(tmp_path, monkeypatch):
    assert SHIPPED_CONFIGS[:3] == ("demo.yaml", "demo_translation.yaml", "tiny.yaml")  # the everyday ones first
    assert "paper/alpaca_eval/toa.yaml" in SHIPPED_CONFIGS
    assert not [name for name in SHIPPED_CONFIGS if "accelerate" in name]  # launcher files, not configs
    monkeypatch.chdir(tmp_path)  # a worker whose working directory is elsewhere
    for name in ("tiny.yaml", "configs/tiny.yaml"):  # the old project-relative spelling still names it
        resolved = resolve_config(name, operator=False)
        assert (resolved.path, resolved.name, resolved.source) == (
            PROJECT_DIR / "configs" / "tiny.yaml", "tiny.yaml", "config folder")


def test_a_deployment_run_names_a_config_and_never_points_at_a_file(tmp_path, monkeypatch):
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\n")
    link = PROJECT_DIR / "configs"  # names that leave the folder, however spelled
    for pointing in (str(own), "../pyproject.toml", "paper/../../configs/tiny.yaml", "~/mine.yaml",
                     str(link / "tiny.yaml"), "missing.yaml", "/etc/passwd"):
        with pytest.raises(ConfigParameterError, match=r"parameter `config` .* refused.*allowed configs: demo.yaml, "
                                                        r".*tiny.yaml"):
            resolve_config(pointing, operator=False)
    with pytest.raises(ConfigParameterError, match="a whole config cannot be passed as a parameter"):
        resolve_config({"reward": {"trust_remote_code": True}}, operator=False)


def test_the_operator_config_folder_is_set_on_the_worker_only(tmp_path, monkeypatch):
    folder = tmp_path / "operator"
    (folder / "team").mkdir(parents=True)
    (folder / "team" / "night.yaml").write_text("name: night\n")
    (tmp_path / "outside.yaml").write_text("name: outside\n")
    (folder / "escape.yaml").symlink_to(tmp_path / "outside.yaml")  # a link that leaves the folder counts as outside
    monkeypatch.setenv("TOAFLOW_CONFIG_DIR", str(folder))
    assert resolve_config("team/night.yaml", operator=False).path == folder / "team" / "night.yaml"
    for refused in ("tiny.yaml", "escape.yaml", str(tmp_path / "outside.yaml")):
        with pytest.raises(ConfigParameterError, match="allowed configs: team/night.yaml"):
            resolve_config(refused, operator=False)


def test_the_operator_cli_keeps_accepting_paths(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\n")
    resolved = resolve_config(str(own), operator=True)
    assert (resolved.path, resolved.name, resolved.source) == (own, None, "operator path")
    assert config_path("configs/tiny.yaml").resolve() == PROJECT_DIR / "configs" / "tiny.yaml"
    with pytest.raises(ConfigParameterError, match="no such file on this worker"):
        config_path(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigParameterError, match="expected a .yaml"):
        config_path("/etc/passwd")


def test_the_form_refuses_paths_before_a_run_exists():
    import re

    for name in ("demo.yaml", "configs/tiny.yaml", "paper/alpaca_eval/toa.yaml"):
        assert re.match(CONFIG_NAME_PATTERN, name)
    for path in ("/etc/x.yaml", "~/.cache/toaflow/run.yaml", "../x.yaml", "a/../../x.yaml", "x.txt"):
        assert not re.match(CONFIG_NAME_PATTERN, path)


def test_prompt_sources_must_lie_under_the_declared_roots(tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "p.jsonl").write_text("{}\n")
    (tmp_path / "secret.txt").write_text("DB password is hunter2\n")
    monkeypatch.setenv("TOAFLOW_PROMPT_ROOTS", f"{allowed},s3://prompts-bucket/ok")
    roots = prompt_roots(["hf:org/set"])
    assert check_prompt_source("p.jsonl", roots) == str(allowed / "p.jsonl")
    assert check_prompt_source(str(allowed / "p.jsonl"), roots) == str(allowed / "p.jsonl")
    assert check_prompt_source("mixed_instructions.jsonl", roots).endswith("data/prompts/mixed_instructions.jsonl")
    assert check_prompt_source("s3://prompts-bucket/ok/night/1.jsonl", roots)
    assert check_prompt_source("org/set", roots) == "org/set"
    for refused in (str(tmp_path / "secret.txt"), "../secret.txt", "s3://prompts-bucket/okay.jsonl",
                    "s3://prompts-bucket/ok/../x/run.yaml", "s3://other/ok/x.jsonl", "https://example.com/x",
                    "org/other", "/etc"):
        with pytest.raises(ConfigParameterError, match="parameter `prompts` .* refused"):
            check_prompt_source(refused, roots)


def test_code_running_settings_are_listed_for_the_manifest():
    cfg = load_config(config_path("configs/tiny.yaml"), {"reward.trust_remote_code": True})
    found = code_running_settings(cfg.model_dump(mode="json"))
    assert "reward.trust_remote_code" in found
    assert not [key for key in code_running_settings(load_config(config_path("tiny.yaml")).model_dump(mode="json"))
                if key.endswith("trust_remote_code")]
    assert code_running_settings({"servers": {"servers": [{"executable": "/bin/sh", "extra_args": ["-c"]}]},
                                  "reward": {"kind": "plugin", "callable": "os:system"}}) == [
        "servers.servers.0.executable", "servers.servers.0.extra_args", "reward.callable"]


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
        train(config="tiny.yaml", run_id="r", overrides={"training_trust_remote_code": True})
