"""One run-id rule, checked before anything touches the store or the disk; recursive deletes stay in their folder."""
from __future__ import annotations

import os

import pytest

from infra.manifest import Manifest
from infra.run_ids import InvalidRunId, check_run_id, new_run_id, run_id_slug
from infra.runtime import local_run_dir, model_servers
from infra.store import LocalStore
from runconfig import parse_config
from toa_core.folders import UnsafeRemoval, remove_tree

BAD_RUN_IDS = ["/abs", "../x", "a/b", "", ".", "..", "-x", ".hidden", "a\\b", "a b", "x" * 129, "é"]


@pytest.mark.parametrize("run_id", ["a", "demo-20261122-013000-9f3a", "A.b_c-9", "1", "x" * 128, "a..b"])
def test_good_run_ids_pass_unchanged(run_id):
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", BAD_RUN_IDS + [None, 7])
def test_bad_run_ids_are_refused_with_the_rule(run_id):
    with pytest.raises(InvalidRunId, match="invalid run id .*letters, digits"):
        check_run_id(run_id)


def test_new_run_ids_follow_the_rule_whatever_the_config_name():
    for name in ["demo", "../../etc", "/abs/path", "my config ✓", "", "." * 50, "x" * 200]:
        assert check_run_id(new_run_id(name)).startswith(run_id_slug(name))


@pytest.mark.parametrize("run_id", ["/abs", "../x", "a/b"])
def test_manifest_and_local_run_folder_refuse_bad_ids_before_any_io(tmp_path, monkeypatch, run_id):
    store = LocalStore(tmp_path / "store")
    monkeypatch.setenv("TOAFLOW_WORKDIR", str(tmp_path / "work"))
    with pytest.raises(InvalidRunId):
        Manifest.open(store, run_id, config={"a": 1})
    with pytest.raises(InvalidRunId):
        Manifest.load(store, run_id)
    with pytest.raises(InvalidRunId):
        local_run_dir(run_id)  # where server logs go
    cfg = parse_config({"models": [{"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:1/v1"]}],
                        "reward": {"kind": "plugin", "callable": "tests.faults.helpers:length_reward"},
                        "servers": {"managed": True, "servers": [{"name": "s", "kind": "transformers",
                                                                  "model": "builtin:tiny-llama"}]}})
    with pytest.raises(InvalidRunId), model_servers(cfg, run_id):
        pass  # never reached: no server is started for a bad run id
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()


def test_server_names_cannot_leave_the_log_folder():
    with pytest.raises(Exception, match="servers.servers.0.name"):
        parse_config({"models": [{"name": "a", "model": "m", "served_by": "x"}],
                      "reward": {"kind": "plugin", "callable": "tests.faults.helpers:length_reward"},
                      "servers": {"servers": [{"name": "..", "kind": "transformers", "model": "m"}]}})


# -- remove_tree ----------------------------------------------------------------------------------------------

def test_remove_tree_deletes_only_strictly_inside_its_owner(tmp_path):
    owner, outside = tmp_path / "owner", tmp_path / "outside"
    (owner / "scratch" / "deep").mkdir(parents=True)
    (outside / "sft").mkdir(parents=True)
    (outside / "sft" / "keep.txt").write_text("precious")

    for target in (outside / "sft", owner / ".." / "outside" / "sft", owner, tmp_path, "/"):
        with pytest.raises(UnsafeRemoval, match="refusing to delete"):
            remove_tree(target, owner)
    (owner / "link").symlink_to(outside / "sft", target_is_directory=True)
    with pytest.raises(UnsafeRemoval):
        remove_tree(owner / "link", owner)  # the link resolves outside: its target is what counts
    assert (outside / "sft" / "keep.txt").read_text() == "precious"

    (owner / "inner-link").symlink_to(owner / "scratch", target_is_directory=True)
    remove_tree(owner / "inner-link", owner)  # a link inside pointing inside: the link goes, not its target
    assert not os.path.lexists(owner / "inner-link") and (owner / "scratch" / "deep").is_dir()
    remove_tree(owner / "scratch", owner)
    assert not (owner / "scratch").exists() and owner.is_dir()
    remove_tree(owner / "never-existed", owner)  # missing is fine
    with pytest.raises(FileNotFoundError):
        remove_tree(owner / "never-existed", owner, missing_ok=False)
