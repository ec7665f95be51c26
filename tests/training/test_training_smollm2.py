"""A real small chat model (SmolLM2-135M-Instruct): LoRA SFT then DPO for a few steps, as the demo does."""
from __future__ import annotations

import pytest

from infra.store import open_store
from tests.training.helpers import settings_for, write_datasets
from training import dpo, sft

# The `training:` block of configs/demo_translation.yaml (see docs/training.md).
DEMO_TRAINING = {
    "common": {"base_model": "builtin:smollm2", "max_length": 512, "logging_steps": 1, "save_steps": 50,
               "seed": 0, "timeout_s": 900, "cpu_threads": 1},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "sft": {"learning_rate": 2e-4, "max_steps": 8, "per_device_batch_size": 2, "warmup_ratio": 0.0},
    "dpo": {"learning_rate": 5e-5, "max_steps": 8, "per_device_batch_size": 2, "warmup_ratio": 0.0, "beta": 0.1},
}


@pytest.mark.slow
def test_smollm2_lora_sft_then_dpo(tmp_path, smollm2_dir):
    store = open_store(str(tmp_path / "store"))
    write_datasets(store, "data", train_rows=16, test_rows=2)
    settings = settings_for(str(tmp_path / "store"), DEMO_TRAINING)

    sft_metrics = sft.run(settings, run_id="demo", data_run_id="data")
    assert sft_metrics["global_step"] == 8 and sft_metrics["weights"] == "lora_adapter"
    assert sft_metrics["final_loss"] < sft_metrics["first_loss"]

    dpo_metrics = dpo.run(settings, run_id="demo", data_run_id="data")
    accuracies = [e["rewards/accuracies"] for e in dpo_metrics["log_history"] if "rewards/accuracies" in e]
    assert dpo_metrics["global_step"] == 8 and max(accuracies[-3:]) > accuracies[0]
    assert store.dir_complete("runs/demo/models/dpo")
