"""Training curves in an experiment tracker: TensorBoard (TRL's report_to), with the run id as the run's name.

TensorBoard is the tracker tested here: it installs next to the project's pins (`pip install tensorboard==2.21.0`
adds absl-py, grpcio, protobuf and its data server, and changes nothing installed), while MLflow 3.17 would
downgrade pinned packages (pyarrow 26 -> 25, cryptography, opentelemetry). MLflow and W&B go through the same TRL
`report_to` switch; only their server and key come from the worker's environment.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.training.helpers import settings_for, tiny_training


def test_sft_curves_land_in_tensorboard_under_the_run_id(local_store, data_run, tiny_base, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training import sft

    for name in ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TAGS"):  # the stage sets them: restored after the test
        monkeypatch.setenv(name, "")
    training = tiny_training(report_to=["tensorboard"])
    training["sft"]["max_steps"] = 4
    metrics = sft.run(settings_for(str(local_store.root), training), run_id="track-1", data_run_id=data_run)

    events = sorted(Path(local_store.root, "tracking/tensorboard/track-1/sft").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard events in the store"
    assert metrics["tensorboard"] == local_store.uri("tracking/tensorboard/track-1/sft")
    curves = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    losses = curves.Scalars("train/loss")
    assert [point.step for point in losses] == [1, 2, 3, 4]
    assert [round(point.value, 4) for point in losses] == [round(e["loss"], 4) for e in metrics["log_history"]
                                                            if "loss" in e]
    assert "train/learning_rate" in curves.Tags()["scalars"]
    # The run's name in the tracker is the toaflow run id (the Trainer writes its arguments as text).
    arguments = next(json.loads(curves.Tensors(tag)[0].tensor_proto.string_val[0])
                     for tag in curves.Tags()["tensors"] if tag.startswith("args"))
    assert arguments["run_name"] == "track-1" and arguments["report_to"] == ["tensorboard"]
