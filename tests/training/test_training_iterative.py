"""Iterative training (`training.common.start_from: latest`): a stage starts from the promoted model pinned in
runs/<run>/policy.json, and the DPO reference follows it."""
from __future__ import annotations

import pytest

from tests.training.helpers import settings_for, tiny_training
from training.modeling import TrainingSetupError


def test_dpo_from_latest_uses_it_as_start_and_reference(local_store, data_run, tiny_base):
    from training import dpo, sft

    quick = tiny_training()
    quick["sft"]["max_steps"] = quick["dpo"]["max_steps"] = 2
    sft.run(settings_for(str(local_store.root), quick), run_id="night-1", data_run_id=data_run)
    local_store.write_json("registry/latest.json", {"run_id": "night-1", "promoted_at": "2026-01-01T02:00:00Z"})

    iterative = tiny_training(start_from="latest")
    iterative["sft"]["max_steps"] = iterative["dpo"]["max_steps"] = 2
    iterative["dpo"]["from_sft"] = False
    metrics = dpo.run(settings_for(str(local_store.root), iterative), run_id="night-2", data_run_id=data_run)
    assert local_store.read_json("runs/night-2/policy.json")["model"] == "runs/night-1/models/sft"
    assert metrics["started_from"] == "runs/night-1/models/sft"
    assert metrics["reference"] == "the promoted model of run night-1 (a frozen copy of its adapter)"
    card = local_store.read_text("runs/night-2/models/dpo/README.md")
    assert "Started from:** `runs/night-1/models/sft`" in card and "promoted model of run night-1" in card

    # A promoted model of another base cannot be trained on: said before any weights load.
    local_store.write_json("runs/night-3/policy.json", {"run_id": "night-1", "model": "runs/night-1/models/sft",
                                                        "base_model": "some/other-base", "weights": "lora_adapter"})
    with pytest.raises(TrainingSetupError, match="trained from 'some/other-base'"):
        sft.run(settings_for(str(local_store.root), iterative), run_id="night-3", data_run_id=data_run)
