"""Bad inputs fail before any training step, with a message that names the file or key and the fix."""
from __future__ import annotations

import shutil

import pytest

from tests.training.helpers import dpo_rows, settings_for, sft_rows, tiny_training, write_parquet
from training import dpo, sft
from training.modeling import TrainingSetupError, load_tokenizer


def test_missing_dataset_names_the_key_and_the_fix(local_store, tiny_base):
    with pytest.raises(TrainingSetupError, match=r"no SFT dataset at .*runs/nothing/datasets/sft/train.parquet.*toa synthesize"):
        sft.run(settings_for(str(local_store.root)), run_id="r", data_run_id="nothing")


def test_empty_dataset(local_store, tiny_base):
    write_parquet(local_store, "runs/d/datasets/sft/train.parquet", sft_rows(1)[:0] or [],
                  schema=_schema_of(sft_rows(1)))
    with pytest.raises(TrainingSetupError, match="has no rows"):
        sft.run(settings_for(str(local_store.root)), run_id="r", data_run_id="d")


def test_missing_columns_are_listed(local_store, tiny_base):
    rows = [{k: v for k, v in row.items() if k != "rejected"} for row in dpo_rows(4)]
    write_parquet(local_store, "runs/d/datasets/dpo/train.parquet", rows)
    settings = settings_for(str(local_store.root), {**tiny_training(), "dpo": {"from_sft": False}})
    with pytest.raises(TrainingSetupError, match=r"lacks column\(s\) rejected .*has: prompt_id, prompt, chosen"):
        dpo.run(settings, run_id="r", data_run_id="d")


def test_completion_that_is_not_the_assistant_names_the_row(local_store, tiny_base):
    rows = dpo_rows(4)
    rows[2]["chosen"] = [{"role": "user", "content": "oops"}]
    write_parquet(local_store, "runs/d/datasets/dpo/train.parquet", rows)
    settings = settings_for(str(local_store.root), {**tiny_training(), "dpo": {"from_sft": False}})
    with pytest.raises(TrainingSetupError, match="row 2, column 'chosen': its last message is not from the assistant"):
        dpo.run(settings, run_id="r", data_run_id="d")


def test_dpo_without_a_finished_sft_model_says_what_to_do(local_store, data_run, tiny_base):
    with pytest.raises(TrainingSetupError, match="no finished SFT model .*run the SFT stage .*from_sft: false"):
        dpo.run(settings_for(str(local_store.root)), run_id="fresh", data_run_id=data_run)


def test_tokenizer_without_chat_template(tmp_path, local_store, data_run, tiny_base):
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_base, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = folder / "tokenizer_config.json"
    import json
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    with pytest.raises(TrainingSetupError, match="has no chat template"):
        load_tokenizer(folder)
    settings = settings_for(str(local_store.root), {**tiny_training(), "common": {"base_model": str(folder)}})
    with pytest.raises(TrainingSetupError, match="has no chat template"):
        sft.run(settings, run_id="r", data_run_id=data_run)


def test_bf16_on_cpu_fails_before_loading_anything(local_store, data_run, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = settings_for(str(local_store.root), {**tiny_training(), "common": {"precision": "bf16"}})
    with pytest.raises(TrainingSetupError, match="precision is 'bf16' but no CUDA GPU"):
        sft.run(settings, run_id="r", data_run_id=data_run)


def _schema_of(rows):
    import pyarrow as pa

    return pa.Table.from_pylist(rows).schema
