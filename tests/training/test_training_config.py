"""Config parsing, the launch command line and the precision choice: pure, no training."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from training.config import CommonTrainingConfig, TrainingConfigError, load_stage_settings, parse_stage_settings
from training.launch import stage_argv
from training.modeling import TrainingSetupError, choose_precision

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_lora_on_tiny_llama_and_other_sections_are_ignored():
    settings = parse_stage_settings({"models": [{"name": "x"}], "reward": {}, "training": {"dpo": {"beta": 0.05}}})
    assert settings.training.common.base_model == "builtin:tiny-llama"
    assert settings.training.common.full_finetune is False
    assert settings.training.dpo.beta == 0.05
    assert settings.store.root == "./artifacts"


def test_unknown_key_names_the_file_and_the_key():
    with pytest.raises(TrainingConfigError) as error:
        parse_stage_settings({"training": {"sft": {"learning_rte": 1e-4}}}, source="configs/x.yaml")
    assert "configs/x.yaml" in str(error.value) and "training.sft.learning_rte" in str(error.value)


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  sft: [\n")
    with pytest.raises(TrainingConfigError, match=r"bad.yaml: line \d+"):
        load_stage_settings(path)


def test_several_processes_need_accelerate():
    with pytest.raises(ValueError, match="launcher: accelerate"):
        CommonTrainingConfig(num_processes=2)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("train_*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    settings = load_stage_settings(path)
    common = settings.training.common
    # the paper's DPO lr 5e-7 is for full fine-tuning; a LoRA adapter gets 10x (alignment-handbook QLoRA recipe)
    assert settings.training.dpo.learning_rate == (5e-7 if common.full_finetune else 5e-6)
    # Llama-3.1's own template is unmarked: the shipped marked one makes assistant-only loss real
    assert common.chat_template == "builtin:llama-3.1" and settings.training.sft.assistant_only_loss == "on"
    if common.accelerate_config:
        assert (REPO / common.accelerate_config).is_file()


def test_python_launcher_argv():
    argv = stage_argv("sft", "c.yaml", "r1", "d1", CommonTrainingConfig(), python="/py")
    assert argv == ["/py", "-m", "training.sft", "--config", "c.yaml", "--run-id", "r1", "--data-run-id", "d1"]


def test_accelerate_launcher_argv_with_a_deepspeed_config():
    common = CommonTrainingConfig(launcher="accelerate", accelerate_config="configs/accelerate/zero3.yaml",
                                  num_processes=8)
    argv = stage_argv("dpo", "c.yaml", "r1", None, common, python="/py", force=True)
    assert argv == ["/py", "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero3.yaml",
                    "--num_processes", "8", "-m", "training.dpo", "--config", "c.yaml", "--run-id", "r1", "--force"]


def test_accelerate_launcher_without_config_file_uses_plain_multi_gpu():
    common = CommonTrainingConfig(launcher="accelerate", num_processes=2)
    argv = stage_argv("sft", "c.yaml", "r1", None, common, python=sys.executable)
    assert argv[argv.index("accelerate.commands.launch") + 1:argv.index("-m", 2)] == ["--multi_gpu", "--num_processes", "2"]


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown training stage"):
        stage_argv("ppo", "c.yaml", "r", None, CommonTrainingConfig())


def test_cpu_precision_is_fp32_without_checkpointing(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    precision = choose_precision(CommonTrainingConfig())
    assert (precision.bf16, precision.gradient_checkpointing, precision.device) == (False, False, "cpu")


def test_bf16_without_support_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainingSetupError, match="precision is 'bf16'.*set training.common.precision"):
        choose_precision(CommonTrainingConfig(precision="bf16"))


@pytest.mark.gpu
def test_gpu_auto_precision_is_bf16_with_checkpointing():
    import torch

    precision = choose_precision(CommonTrainingConfig())
    assert precision.device == "cuda" and precision.gradient_checkpointing
    assert precision.bf16 == torch.cuda.is_bf16_supported()


def test_toa_train_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    from toaflow.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  common:\n    launcher: slurm\n")
    assert main(["train", "--config", str(bad), "--run-id", "r"]) == 2
    error = capsys.readouterr().err
    assert "training.common.launcher" in error and "Traceback" not in error
