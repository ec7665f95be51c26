"""Pushing a folder to a Hub repository, against a LOCAL STAND-IN for the Hub's HTTP API (tests/fixtures/hub.py):
no real Hub is reachable here, so this checks the calls huggingface_hub makes and what toaflow reports."""
from __future__ import annotations

import pytest

from infra.hub import PublishConfig, PublishError, hub_token, push_folder
from tests.fixtures.hub import hub_standin  # noqa: F401 - the fixture

TOKEN = "hf_standin_secret_0123456789"


def test_push_creates_a_private_repo_and_commits_every_file_with_the_token(hub_standin, tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
    (folder / "adapter_model.safetensors").write_bytes(b"\x00weights\x01")
    (folder / "sub" / "tokenizer.json").write_text("{}")
    pushed = push_folder(folder, "team/toa-policy", "model", TOKEN, private=True, message="toaflow: promoted run r1")
    assert pushed.files == 3 and pushed.commit_url.startswith(hub_standin.url + "/team/toa-policy/commit/")
    assert hub_standin.repos["model:team/toa-policy"]["visibility"] == "private"
    assert hub_standin.files["model:team/toa-policy"] == {
        "README.md": b"---\nlicense: apache-2.0\n---\n# card\n", "adapter_model.safetensors": b"\x00weights\x01",
        "sub/tokenizer.json": b"{}"}
    assert hub_standin.commits["model:team/toa-policy"] == ["toaflow: promoted run r1"]
    assert {r["authorization"] for r in hub_standin.requests} == {f"Bearer {TOKEN}"}  # HF_ENDPOINT was used

    push_folder(folder, "team/toa-data", "dataset", TOKEN, private=False, message="m")
    assert "visibility" not in hub_standin.repos["dataset:team/toa-data"] or \
        hub_standin.repos["dataset:team/toa-data"]["visibility"] == "public"


def test_a_failed_push_names_the_repo_and_masks_the_token(hub_standin, tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    hub_standin.failing.add("team/broken")
    with pytest.raises(PublishError) as failure:
        push_folder(folder, "team/broken", "model", TOKEN, private=True, message="m")
    assert "team/broken" in str(failure.value) and hub_standin.url in str(failure.value)
    assert "storage is down" in str(failure.value) and TOKEN not in str(failure.value)

    monkeypatch.delenv("TOAFLOW_TEST_HUB_TOKEN", raising=False)
    with pytest.raises(PublishError, match=r"\$TOAFLOW_TEST_HUB_TOKEN .* is not set"):
        hub_token("TOAFLOW_TEST_HUB_TOKEN")
    with pytest.raises(ValueError, match="needs at least one of model_repo"):
        PublishConfig(enabled=True)
