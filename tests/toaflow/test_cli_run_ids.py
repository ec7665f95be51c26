"""Every `toa` subcommand and every flow that takes a run id refuses one that could leave the store's runs/ folder:
one `error:` line (exit 2), nothing created, nothing deleted. The training stage processes are covered in
tests/training/test_training_run_ids.py, Manifest.open and the server-log folder in tests/infra/test_run_ids.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from infra.run_ids import InvalidRunId
from tests.fixtures.models import tiny_config_file
from toaflow.cli import main

BAD = ["/abs", "../x", "a/b"]


def commands(config: Path, bad: str) -> dict[str, list[str]]:
    """Each subcommand taking a run id, with `bad` in every place a run id goes."""
    return {
        "synthesize": ["synthesize", "--config", str(config), "--run-id", bad],
        "scaling": ["scaling", "--config", str(config), "--run-id", bad],
        "pipeline": ["pipeline", "--config", str(config), "--run-id", bad],
        "train": ["train", "--config", str(config), "--run-id", bad],
        "train --data-run-id": ["train", "--config", str(config), "--run-id", "ok", "--data-run-id", bad],
        "evaluate": ["evaluate", "--config", str(config), "--run-id", bad],
        "evaluate --model": ["evaluate", "--config", str(config), "--model", f"runs/{bad}/models/dpo"],
    }


@pytest.mark.parametrize("bad", BAD)
def test_every_subcommand_refuses_bad_run_ids_with_one_error_line(bad, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "../x" and "a/b" would land here
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "planted.txt").write_text("keep me")
    config = tiny_config_file(tmp_path)
    for name, argv in commands(config, bad).items():
        if name == "evaluate --model" and bad == "a/b":
            continue  # runs/a/b/models/dpo names run "a" (and a model folder "b/models/dpo"), which is valid
        code = main(argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, (name, captured.err)
        checked = f"runs/{bad}/models/dpo".split("/")[1] if name == "evaluate --model" else bad
        assert len(lines) == 1 and lines[0].startswith("error: invalid ") and repr(checked) in lines[0], (name, lines)
        assert captured.out == ""
    assert not (tmp_path / "store").exists()  # nothing was written anywhere
    assert (tmp_path / "x" / "planted.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad", BAD)
def test_every_flow_refuses_bad_run_ids_before_anything_else(bad, tmp_path):
    """Deployments call the flows directly with the form's values: each flow checks the id itself, first."""
    from flows.evaluate import evaluate
    from flows.pipeline import pipeline
    from flows.scaling import scaling
    from flows.synthesize import synthesize
    from flows.train import train

    config = str(tiny_config_file(tmp_path))
    calls = {
        "synthesize": lambda: synthesize.fn(config=config, run_id=bad),
        "scaling": lambda: scaling.fn(config=config, run_id=bad),
        "pipeline": lambda: pipeline.fn(config=config, run_id=bad),
        "train": lambda: train.fn(config, run_id=bad),
        "train data_run_id": lambda: train.fn(config, run_id="ok", data_run_id=bad),
        "evaluate": lambda: evaluate.fn(config, run_id=bad),
        "evaluate model": lambda: evaluate.fn(config, model=f"runs/{bad}/models/dpo"),
    }
    for name, call in calls.items():
        if name == "evaluate model" and bad == "a/b":
            continue
        with pytest.raises(InvalidRunId):
            call()
    assert not (tmp_path / "store").exists()


def test_a_flow_run_with_a_bad_run_id_fails_with_the_rule(tmp_path, prefect_harness):
    from flows.train import train

    with pytest.raises(InvalidRunId, match="invalid run id '/abs'"):
        train(str(tiny_config_file(tmp_path)), run_id="/abs")
    assert not (tmp_path / "store").exists()


def test_a_pipeline_run_id_leaves_room_for_its_accumulated_data_run(tmp_path, capsys, monkeypatch):
    """The pipeline writes its accumulated data under '<run id>-accumulated', itself a run id of at most 128
    characters: a longer pipeline id is refused up front with the limit, by the command and by the flow."""
    from flows.pipeline import pipeline
    from tasks.pipeline import accumulated_data_run_id

    monkeypatch.chdir(tmp_path)
    config = tiny_config_file(tmp_path)
    longest = "n" * (128 - len("-accumulated"))
    assert len(accumulated_data_run_id(longest)) == 128
    too_long = longest + "x"
    assert main(["pipeline", "--config", str(config), "--run-id", too_long]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --run-id '{too_long}' is 117 characters; use at most 116 here"), line
    with pytest.raises(InvalidRunId, match="at most 116"):
        pipeline.fn(config=str(config), run_id=too_long)
    assert not (tmp_path / "store").exists()
