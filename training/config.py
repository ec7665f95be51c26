"""The `training:` config section: SFT then DPO with TRL, LoRA by default.

Layout (every key optional; defaults suit the tiny CPU model so a test config stays short):

    training:
      common: {base_model, full_finetune, precision, max_length, seed, launcher, ...}   # shared by both stages
      lora:   {r, alpha, dropout, target_modules}                                       # ignored when full_finetune
      sft:    {learning_rate, epochs, max_steps, per_device_batch_size, grad_accum, ...}
      dpo:    {... same stage keys ..., beta, loss_type}

Each stage process reads the YAML itself (`python -m training.sft --config C --run-id R`); it only looks at the
`store` and `training` sections, so any run config (tiny, demo, paper) works and so does a training-only file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from infra.config import StoreConfig
from toa_core.config import Section, describe_validation_error, read_yaml_mapping

STAGES = ("sft", "dpo")


class LoraSection(Section):
    """LoRA adapter shape (peft.LoraConfig). Defaults follow the alignment-handbook QLoRA recipes (r 16, dropout 0.05,
    every attention and MLP projection); alpha = 2r is the common rule of thumb for a unit-ish update scale."""
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names to adapt (Llama naming), or 'all-linear'",
    )


class CommonTrainingConfig(Section):
    """Settings shared by the SFT and DPO stages."""
    base_model: str = Field("builtin:tiny-llama", description="builtin:NAME, a local HF folder, or a hub id")
    full_finetune: bool = Field(False, description="train every weight instead of a LoRA adapter (needs far more memory)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 on a GPU that supports it, fp32 otherwise; bf16 on a machine without it is an error")
    gradient_checkpointing: bool | None = Field(None, description="None = on with a GPU, off on CPU (where it only costs time)")
    max_length: int = Field(2048, ge=8, description="tokens per sequence (prompt + response); longer ones are truncated")
    seed: int = Field(42, description="seeds python, numpy, torch and the data order (transformers.set_seed)")
    launcher: Literal["python", "accelerate"] = Field(
        "python", description="how each stage process starts: plain python, or `accelerate launch` (multi-GPU)")
    accelerate_config: str | None = Field(None, description="accelerate config file (DeepSpeed/FSDP), launcher: accelerate")
    num_processes: int = Field(1, ge=1, description="processes (GPUs) for `accelerate launch`")
    timeout_s: float = Field(48 * 3600.0, gt=0, description="a stage process running longer than this is killed and fails")
    merge_adapter: bool = Field(False, description="also write LoRA-merged full weights to models/<stage>/merged/")
    start_from: Literal["base", "latest"] = Field(
        "base", description="latest (iterative DPO): train on from the promoted model's weights (its adapter, or full "
                            "weights) instead of base_model; the DPO reference follows (docs/training.md). Before "
                            "the first promotion, training starts from base_model")
    save_steps: int = Field(200, ge=1, description="checkpoint (and sync it to the store) every N optimizer steps")
    keep_checkpoints: bool = Field(False, description="keep the stored checkpoints after the stage is published")
    work_dir: str | None = Field(None, description="local scratch folder (checkpoints, weights); default a temp folder")
    logging_steps: int = Field(10, ge=1)
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads when training on CPU; None = torch's default (all cores). 1 is much "
                                "faster for tiny models on a busy machine (no thread spin-waiting)")
    attn_implementation: str | None = Field(None, description="e.g. flash_attention_2 or sdpa; None = transformers' choice")
    trust_remote_code: bool = Field(False, description="run the model repository's own code; off unless set")
    chat_template: str = Field(
        "model", description="the chat template training renders conversations with: `model` = the tokenizer's own; "
                             "`builtin:llama-3.1` = toaflow's Llama-3.1 template (training/templates/), the same text "
                             "with {% generation %} markers, so assistant-only loss applies; or a .jinja file path")
    callbacks: list[str] = Field(default_factory=list, description="extra transformers TrainerCallback classes, 'module:Class'")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="experiment trackers that receive the training curves (TRL's report_to), "
        "the run id as the tracker's run name: tensorboard events land in the store under "
        "tracking/tensorboard/<run_id>/<stage>/; mlflow and wandb read their server and key from the worker's "
        "environment (MLFLOW_TRACKING_URI, WANDB_API_KEY, ...); empty = none")

    @model_validator(mode="after")
    def _launcher_needs(self) -> "CommonTrainingConfig":
        if self.launcher == "python" and self.num_processes > 1:
            raise ValueError("num_processes > 1 needs launcher: accelerate (plain python runs one process)")
        return self


class StageConfig(Section):
    """Optimizer and schedule settings of one stage (TRL/transformers TrainingArguments names in brackets)."""
    enabled: bool = Field(True, description="skip this stage when false")
    learning_rate: float = Field(1e-4, gt=0)
    epochs: float = Field(1.0, gt=0, description="[num_train_epochs] ignored when max_steps is set")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    per_device_batch_size: int = Field(2, ge=1, description="[per_device_train_batch_size]")
    grad_accum: int = Field(1, ge=1, description="[gradient_accumulation_steps] effective batch = this x batch x processes")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler: str = Field("cosine", description="[lr_scheduler_type] linear, cosine, constant, ...")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_train_samples: int | None = Field(None, ge=1, description="use only the first N training rows (smoke runs)")
    evaluate: bool = Field(True, description="evaluate on the test split at the end (when the split has rows)")


class SFTStageConfig(StageConfig):
    """Supervised fine-tuning on the best response per prompt (`messages` rows)."""
    learning_rate: float = Field(2e-4, gt=0)
    assistant_only_loss: Literal["auto", "on", "off"] = Field(
        "auto", description="auto = on when the chat template marks assistant turns with {% generation %}")
    packing: bool = False


class DPOStageConfig(StageConfig):
    """Direct preference optimization on (prompt, chosen, rejected), starting from the SFT policy."""
    learning_rate: float = Field(5e-6, gt=0)
    beta: float = Field(0.1, gt=0, description="KL strength toward the reference (the SFT policy)")
    loss_type: str = Field("sigmoid", description="TRL DPO loss: sigmoid (the DPO paper), ipo, hinge, ...")
    from_sft: bool = Field(True, description="start from this run's SFT model (false: from common.base_model)")


class TrainingConfig(Section):
    """The whole `training:` section."""
    common: CommonTrainingConfig = Field(default_factory=CommonTrainingConfig)
    lora: LoraSection = Field(default_factory=LoraSection)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)


class StageSettings(Section):
    """What a stage process needs from a run config: where the store is and how to train."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)


class TrainingConfigError(ValueError):
    """A config file that cannot be used for training; the message names the file and the key."""


def parse_stage_settings(data: dict[str, Any], source: str = "<config>") -> StageSettings:
    """Validate the `store` and `training` sections of a run-config mapping (other sections are ignored)."""
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    wanted = {key: data[key] for key in ("store", "training") if data.get(key) is not None}
    try:
        return StageSettings.model_validate(wanted)
    except ValidationError as error:
        raise TrainingConfigError(describe_validation_error(source, error, "training config")) from None


def load_stage_settings(path: str | Path) -> StageSettings:
    """Read a YAML (or JSON) run config and validate its `store` and `training` sections."""
    data = read_yaml_mapping(path, TrainingConfigError)
    return parse_stage_settings(data, source=str(path))
