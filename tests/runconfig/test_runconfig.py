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
