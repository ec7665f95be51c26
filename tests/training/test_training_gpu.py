"""GPU-only paths: bf16 training and a multi-GPU stage through `accelerate launch` (skipped without CUDA)."""
from __future__ import annotations

import pytest
import yaml

from tests.training.helpers import settings_for, tiny_training
from training import sft
from training.config import CommonTrainingConfig
from training.launch import run_stage_process, stage_argv


@pytest.mark.gpu
def test_bf16_lora_sft_on_gpu(local_store, data_run, tiny_base):
    training = tiny_training(precision="bf16")
    metrics = sft.run(settings_for(str(local_store.root), training), run_id="gpu", data_run_id=data_run)
    assert metrics["precision"] == "bf16" and metrics["global_step"] == training["sft"]["max_steps"]


@pytest.mark.gpu
def test_two_gpu_stage_through_accelerate_launch(tmp_path, local_store, data_run, tiny_base):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    training = tiny_training(launcher="accelerate", num_processes=2)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"store": {"root": str(local_store.root)}, "training": training}))
    argv = stage_argv("sft", config, "multi", data_run, CommonTrainingConfig(**training["common"]))
    assert "accelerate.commands.launch" in argv
    run_stage_process(argv, timeout_s=600, log=print)
    assert local_store.dir_complete("runs/multi/models/sft")
