"""The composed run config refuses repeated names, naming the file, the section and every repeated name."""
from __future__ import annotations

import copy

import pytest
import yaml

from runconfig import ConfigError, parse_config
from tests.fixtures.models import REPO_ROOT

TINY = yaml.safe_load((REPO_ROOT / "configs" / "tiny.yaml").read_text())


def test_the_tiny_config_is_valid():
    assert parse_config(copy.deepcopy(TINY), source="tiny.yaml").models


@pytest.mark.parametrize("section, make_repeats, message", [
    ("models", lambda c: c["models"].extend(copy.deepcopy(c["models"])), "model names must be unique; repeated: "),
    ("evaluation", lambda c: c.setdefault("evaluation", {}).update(
        benchmarks=[{"name": "mini", "kind": "toaflow_mini"}, {"name": "mini", "kind": "toaflow_mini"}]),
     "benchmark names must be unique; repeated: mini"),
    ("servers", lambda c: c.setdefault("servers", {}).update(servers=[
        {"name": "s", "kind": "transformers", "model": "m", "port": 8001},
        {"name": "s", "kind": "transformers", "model": "m", "port": 8002}]), "server names must be unique"),
])
def test_repeated_names_are_refused_with_the_file_and_the_names(section, make_repeats, message):
    config = copy.deepcopy(TINY)
    make_repeats(config)
    with pytest.raises(ConfigError) as refused:
        parse_config(config, source="mine.yaml")
    assert "mine.yaml" in str(refused.value) and message in str(refused.value)
    if section == "models":
        assert all(m["name"] in str(refused.value) for m in TINY["models"])


def _continuous_batching_config(**second_agent):
    """Two agents on one `transformers serve --continuous-batching`; the second agent's settings from the caller."""
    config = copy.deepcopy(TINY)
    config["servers"] = {"managed": True, "servers": [
        {"name": "cb", "kind": "transformers", "model": "builtin:tiny-llama", "continuous_batching": True}]}
    config["search"] = {**config.get("search", {}), "temperature": 0.9}
    config["models"] = [{"name": "a", "served_by": "cb", "model": "builtin:tiny-llama", "system_prompt": "Be brief."},
                        {"name": "b", "served_by": "cb", "model": "builtin:tiny-llama", **second_agent}]
    return config


def test_agents_of_a_continuous_batching_server_must_sample_alike():
    # the same effective settings (an agent's own temperature equal to the search's) and other system prompts: fine
    parse_config(_continuous_batching_config(temperature=0.9, system_prompt="Be careful."), source="cb.yaml")
    with pytest.raises(ConfigError) as refused:
        parse_config(_continuous_batching_config(temperature=0.7), source="cb.yaml")
    message = str(refused.value)
    assert "cb.yaml" in message and "server 'cb'" in message and "first one it gets" in message
    assert "a: temperature 0.9" in message and "b: temperature 0.7" in message
    with pytest.raises(ConfigError, match="b: temperature 0.9, top_p 1.0, top_k 20"):
        parse_config(_continuous_batching_config(top_k=20), source="cb.yaml")
    off = _continuous_batching_config(temperature=0.7)
    off["servers"]["servers"][0]["continuous_batching"] = False  # one request at a time: each keeps its own
    parse_config(off, source="cb.yaml")


def test_a_reward_model_cannot_share_a_continuous_batching_server():
    config = _continuous_batching_config(temperature=0.9)
    config["reward"] = {"kind": "http", "served_by": "cb"}
    with pytest.raises(ConfigError, match="reward.served_by 'cb'.*a server of its own"):
        parse_config(config, source="cb.yaml")
