"""A training stage never deletes outside its own scratch folder: bad run ids are refused before any disk access, a
symlinked run folder pointing elsewhere is refused, and a stage that fails cleans up only what it created."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.training.helpers import tiny_training
from training import dpo, sft
from training.stage import ERROR_PREFIX, stage_main

REPO = Path(__file__).resolve().parents[2]


def plant(folder: Path) -> Path:
    """A file another run (or another user) cares about, at <folder>/sft/keep.txt."""
    (folder / "sft").mkdir(parents=True, exist_ok=True)
    keep = folder / "sft" / "keep.txt"
    keep.write_text("precious")
    return keep


def config_file(tmp_path: Path, **common) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"store": {"root": str(tmp_path / "store")}, "training": tiny_training(**common)}))
    return path


def stage_errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(ERROR_PREFIX)]


@pytest.mark.parametrize("stage", [sft, dpo], ids=["sft", "dpo"])
@pytest.mark.parametrize("bad", ["/abs", "../victim", "a/b"])
def test_stage_refuses_bad_run_ids_with_one_line_and_deletes_nothing(stage, bad, tmp_path, capsys):
    scratch = tmp_path / "scratch"
    keep = plant(tmp_path / "victim")
    config = config_file(tmp_path, work_dir=str(scratch))
    run_id = str(tmp_path / "victim") if bad == "/abs" else bad  # an absolute path onto the planted folder
    for argv in (["--run-id", run_id], ["--run-id", "ok", "--data-run-id", run_id]):
        assert stage_main(stage.STAGE, stage.run, ["--config", str(config), *argv]) == 2
        errors = stage_errors(capsys.readouterr().err)
        assert len(errors) == 1 and "invalid --" in errors[0] and repr(run_id) in errors[0]
    assert keep.read_text() == "precious"
    assert not scratch.exists() and not (tmp_path / "store").exists()


def test_a_symlinked_run_folder_pointing_elsewhere_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the default scratch root lives here
    config = config_file(tmp_path)
    tag = hashlib.sha256(str(tmp_path / "store").encode()).hexdigest()[:10]
    root = tmp_path / "tmp" / "toaflow-training" / tag
    root.mkdir(parents=True)
    keep = plant(tmp_path / "victim")
    (root / "linked").symlink_to(tmp_path / "victim", target_is_directory=True)

    assert stage_main("sft", sft.run, ["--config", str(config), "--run-id", "linked"]) == 2
    errors = stage_errors(capsys.readouterr().err)
    assert len(errors) == 1 and "resolves outside" in errors[0]
    assert keep.read_text() == "precious"


def test_a_failing_stage_removes_only_its_own_scratch_folder(tmp_path, tiny_base):
    """As a process, like the flow runs it: no dataset, so the stage fails after creating its scratch folder."""
    tmp = tmp_path / "tmp"
    tag = hashlib.sha256(str(tmp_path / "store").encode()).hexdigest()[:10]
    root = tmp / "toaflow-training" / tag
    neighbours = [plant(root / "other-run"), plant(tmp_path / "victim"), plant(root.parent / "other-store")]
    config = config_file(tmp_path)

    for run_id, reason in (("ok", "no SFT dataset"), (str(tmp_path / "victim"), "invalid --run-id")):
        done = subprocess.run([sys.executable, "-m", "training.sft", "--config", str(config), "--run-id", run_id],
                              capture_output=True, text=True, timeout=120, cwd=REPO,
                              env={**_env(), "TMPDIR": str(tmp)})
        assert done.returncode == 2, done.stderr[-2000:]
        errors = stage_errors(done.stderr)
        assert len(errors) == 1 and reason in errors[0], done.stderr[-2000:]
    assert all(keep.read_text() == "precious" for keep in neighbours)
    assert not (root / "ok").exists()  # its own scratch folder is gone


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}
