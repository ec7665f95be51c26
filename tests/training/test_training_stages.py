"""Tiny SFT then DPO for real: in process on S3, as stage processes (crash + resume, failures), and as the flow."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from infra.store import open_store
from tests.training.helpers import settings_for, tiny_training, write_datasets
from training import dpo, sft
from training.config import CommonTrainingConfig
from training.launch import StageFailed, run_stage_process, stage_argv


def _mean(values):
    return sum(values) / len(values)


def _history(metrics, key):
    return [entry[key] for entry in metrics["log_history"] if key in entry and "train_runtime" not in entry]


def write_config(path: Path, store_root: str, training: dict) -> Path:
    path.write_text(yaml.safe_dump({"store": {"root": store_root}, "training": training}))
    return path


def test_sft_then_dpo_learn_and_land_in_s3(s3_store_config, tiny_base):
    store = open_store(s3_store_config)
    write_datasets(store, "data")
    settings = settings_for(s3_store_config.root, tiny_training(merge_adapter=True),
                            endpoint_url=s3_store_config.endpoint_url)

    sft_metrics = sft.run(settings, run_id="run", data_run_id="data")
    losses = _history(sft_metrics, "loss")
    assert _mean(losses[-3:]) < _mean(losses[:3]) * 0.9, losses

    dpo_metrics = dpo.run(settings, run_id="run", data_run_id="data")
    accuracies = _history(dpo_metrics, "rewards/accuracies")
    assert accuracies[0] < 0.5 and _mean(accuracies[-3:]) > 0.9, accuracies  # policy == reference at step 1
    dpo_losses = _history(dpo_metrics, "loss")
    assert dpo_losses[-1] < dpo_losses[0]
    assert dpo_metrics["reference"].startswith("the SFT policy")

    keys = store.list("runs/run/models/")
    for stage in ("sft", "dpo"):
        for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_metrics.json",
                     "README.md", "_COMPLETE.json"):
            assert f"runs/run/models/{stage}/{name}" in keys
    assert not [k for k in keys if "/checkpoints/" in k or "/ref/" in k], keys  # cleaned up, no frozen copy
    assert "runs/run/models/dpo/merged/model.safetensors" in keys
    card = store.read_text("runs/run/models/dpo/README.md")
    assert "`data`" in card and "builtin:tiny-llama" in card and '"beta": 0.1' in card
    stored = store.read_json("runs/run/models/sft/training_metrics.json")
    assert stored["log_history"] and stored["data_run_id"] == "data" and stored["weights"] == "lora_adapter"

    # A re-run skips the published stage instead of training again.
    assert sft.run(settings, run_id="run", data_run_id="data")["global_step"] == sft_metrics["global_step"]


def test_crashed_stage_resumes_from_its_stored_checkpoint(tmp_path, local_store, data_run, tiny_base):
    training = tiny_training(callbacks=["tests.training.helpers:KillAfterFirstCheckpoint"])
    crashing = write_config(tmp_path / "crash.yaml", str(local_store.root), training)
    common = CommonTrainingConfig(**training["common"])
    with pytest.raises(StageFailed) as failure:
        run_stage_process(stage_argv("sft", crashing, "run", data_run, common), timeout_s=300, log=lambda _: None)
    assert failure.value.returncode == -9
    assert local_store.dir_complete("runs/run/models/sft/checkpoints/checkpoint-4")
    assert not local_store.dir_complete("runs/run/models/sft")

    lines: list[str] = []
    healthy = write_config(tmp_path / "ok.yaml", str(local_store.root), tiny_training())
    run_stage_process(stage_argv("sft", healthy, "run", data_run, CommonTrainingConfig(**tiny_training()["common"])),
                      timeout_s=300, log=lines.append)
    metrics = local_store.read_json("runs/run/models/sft/training_metrics.json")
    assert metrics["resumed_from_step"] == 4 and metrics["global_step"] == 10
    assert any("resuming from checkpoint-4" in line for line in lines)
    assert min(entry["step"] for entry in metrics["log_history"]) == 1  # the history before the crash is kept
    assert not local_store.list("runs/run/models/sft/checkpoints/")


def test_stage_failure_surfaces_its_one_line_error(tmp_path, local_store, tiny_base):
    config = write_config(tmp_path / "c.yaml", str(local_store.root), tiny_training())
    lines: list[str] = []
    with pytest.raises(StageFailed) as failure:
        run_stage_process(stage_argv("sft", config, "run", "no-such-run", CommonTrainingConfig()), timeout_s=300,
                          log=lines.append)
    message = str(failure.value)
    assert message.startswith("training.sft failed (exit 2): no SFT dataset at ")
    assert "Traceback" not in message and "\n" not in message
    assert any("no SFT dataset" not in line for line in lines) or lines == []


def test_crash_without_error_line_reports_the_stderr_tail():
    script = "import sys; print('working', flush=True); sys.stderr.write('first\\nSegmentation fault\\n'); sys.exit(139)"
    lines: list[str] = []
    with pytest.raises(StageFailed, match=r"failed \(exit 139\): first \| Segmentation fault") as failure:
        run_stage_process([sys.executable, "-c", script], timeout_s=60, log=lines.append)
    assert "working" in lines and failure.value.stderr_tail == ["first", "Segmentation fault"]


def test_a_stage_that_hangs_is_stopped_at_the_timeout():
    with pytest.raises(StageFailed, match="timed out after 1s"):
        run_stage_process([sys.executable, "-c", "import time; time.sleep(120)"], timeout_s=1, log=lambda _: None)


def test_train_flow_runs_both_stages_as_processes_and_reports(tmp_path, local_store, data_run, tiny_base,
                                                               prefect_harness):
    from flows.train import train

    config = write_config(tmp_path / "c.yaml", str(local_store.root), tiny_training())
    result = train(str(config), run_id="run", data_run_id=data_run)

    assert result["sft"]["metrics"]["global_step"] == 10 and result["dpo"]["metrics"]["global_step"] == 10
    assert local_store.dir_complete("runs/run/models/sft") and local_store.dir_complete("runs/run/models/dpo")
    png = local_store.read_bytes("runs/run/reports/training_curves.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rows = local_store.read_json("runs/run/reports/training_metrics.json")
    assert [row["stage"] for row in rows] == ["sft", "dpo"] and rows[1]["final_reward_accuracy"] == 1.0
    manifest = local_store.read_json("runs/run/manifest.json")
    assert manifest["stages"]["train.sft"]["status"] == "finished"
    assert manifest["stages"]["train.dpo"]["status"] == "finished"
    assert any(entry["stage"] == "train.dpo" and result["sft"]["uri"] in entry["inputs"]
               for entry in manifest["lineage"])


def test_train_flow_fails_with_the_stage_error_and_records_it(tmp_path, local_store, tiny_base, prefect_harness):
    from flows.train import train

    config = write_config(tmp_path / "c.yaml", str(local_store.root), tiny_training())
    with pytest.raises(StageFailed, match=r"^training.sft failed \(exit 2\): no SFT dataset at "):
        train(str(config), run_id="broken", data_run_id="missing")
    stage = local_store.read_json("runs/broken/manifest.json")["stages"]["train.sft"]
    assert stage["status"] == "failed" and "no SFT dataset" in stage["error"]
