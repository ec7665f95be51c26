"""Loading the model and tokenizer a stage trains: precision, chat template, LoRA.

Everything here fails before any training step with a message that says what to change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import CommonTrainingConfig, LoraSection

log = logging.getLogger(__name__)


class TrainingSetupError(ValueError):
    """The stage cannot start: bad dataset, model, tokenizer or precision. The message names the fix."""


@dataclass(frozen=True)
class Precision:
    """What the hardware and config settle on: the weights' dtype and the Trainer flags that go with it."""
    bf16: bool
    gradient_checkpointing: bool
    device: str  # "cuda" or "cpu" (what the Trainer will use)

    @property
    def torch_dtype(self) -> Any:
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32


def choose_precision(common: CommonTrainingConfig) -> Precision:
    """bf16 + gradient checkpointing on a GPU that supports bf16, fp32 on CPU; `precision: bf16` without support fails."""
    import torch

    has_cuda = torch.cuda.is_available()
    bf16_ok = has_cuda and torch.cuda.is_bf16_supported()
    if common.precision == "bf16" and not bf16_ok:
        where = "this GPU does not support bf16" if has_cuda else "no CUDA GPU is visible (CPU training runs in fp32)"
        raise TrainingSetupError(
            f"training.common.precision is 'bf16' but {where}; set training.common.precision to 'auto' or 'fp32'")
    bf16 = bf16_ok if common.precision == "auto" else common.precision == "bf16"
    checkpointing = has_cuda if common.gradient_checkpointing is None else common.gradient_checkpointing
    return Precision(bf16=bf16, gradient_checkpointing=checkpointing, device="cuda" if has_cuda else "cpu")


def limit_cpu_threads(common: CommonTrainingConfig, precision: Precision) -> None:
    """Apply `training.common.cpu_threads` on CPU (GPU runs leave torch's threads alone)."""
    if precision.device == "cpu" and common.cpu_threads:
        import torch

        torch.set_num_threads(common.cpu_threads)


def resolve_base_model(spec: str) -> Path:
    """builtin:NAME, a local folder or a hub id -> a local HF folder (built or fetched on demand)."""
    from toa_core.backends.assets import AssetError, resolve_model

    try:
        return resolve_model(spec)
    except AssetError as error:
        raise TrainingSetupError(f"training.common.base_model: {error}") from None


def template_marks_assistant(tokenizer: Any) -> bool:
    """True when the chat template has {% generation %} markers (TRL's `assistant_only_loss` needs them)."""
    from infra.model_metadata import GENERATION_MARKER

    return bool(GENERATION_MARKER.search(tokenizer.chat_template or ""))


TEMPLATES_DIR = Path(__file__).parent / "templates"
# Templates shipped with toaflow: same text as the model's own template, plus {% generation %} markers.
SHIPPED_TEMPLATES = {"builtin:llama-3.1": TEMPLATES_DIR / "llama-3.1.jinja"}


def chat_template_source(choice: str) -> str | None:
    """The template text `training.common.chat_template` selects (None = keep the tokenizer's own)."""
    if choice == "model":
        return None
    path = SHIPPED_TEMPLATES.get(choice)
    if path is None and choice.startswith("builtin:"):
        raise TrainingSetupError(f"training.common.chat_template: unknown template {choice!r}; shipped ones: "
                                 f"{', '.join(SHIPPED_TEMPLATES)} (or `model`, or a .jinja file path)")
    path = path or Path(choice).expanduser()
    if not path.is_file():
        raise TrainingSetupError(f"training.common.chat_template: {path} is not a file; use `model`, "
                                 f"{', '.join(SHIPPED_TEMPLATES)} or the path of a .jinja file")
    return path.read_text(encoding="utf-8")


def assistant_only_setting(tokenizer: Any, setting: str) -> bool:
    """Whether SFT trains on assistant tokens only: `on` needs a marked template (else an error naming the fix),
    `auto` follows the template, `off` is off."""
    marked = template_marks_assistant(tokenizer)
    if setting == "on" and not marked:
        raise TrainingSetupError(
            "training.sft.assistant_only_loss is 'on' but the chat template has no {% generation %} markers, so TRL "
            "cannot tell assistant tokens from the prompt; set training.common.chat_template to a marked template "
            f"({', '.join(SHIPPED_TEMPLATES)} for Llama-3.1 models, or a .jinja file) or assistant_only_loss: off")
    if setting == "auto" and not marked:
        log.warning("the chat template has no {%% generation %%} markers: SFT trains on the whole conversation "
                    "(prompt included); set training.common.chat_template to a marked template to train on replies only")
    return {"on": True, "off": False, "auto": marked}[setting]


def load_tokenizer(folder: str | Path, chat_template: str = "model") -> Any:
    """The model's tokenizer with the chat template `chat_template` selects (see chat_template_source); it must
    end up with a template (the datasets are conversations)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    replacement = chat_template_source(chat_template)
    if replacement is not None:
        tokenizer.chat_template = replacement
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingSetupError(
            f"the tokenizer in {folder} has no chat template, so conversations cannot be formatted; "
            "use an instruct/chat model (its tokenizer_config.json carries `chat_template`) or add one to that file")
    if tokenizer.pad_token is None:
        # Padding positions are masked out of the loss, so reusing EOS as padding is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(folder: str | Path, common: CommonTrainingConfig, precision: Precision) -> Any:
    """The causal LM in the training dtype. Under accelerate the Trainer places it, so no device_map here."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": precision.torch_dtype, "trust_remote_code": common.trust_remote_code}
    if common.attn_implementation:
        kwargs["attn_implementation"] = common.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if precision.gradient_checkpointing:
        model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    return model


def lora_config(lora: LoraSection) -> Any:
    """peft.LoraConfig for a causal LM from the `training.lora` section."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, bias="none", task_type="CAUSAL_LM",
    )


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, for the log and the model card."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def load_starting_policy(start_dir: Path | None, base_dir: Path, common: CommonTrainingConfig, lora: LoraSection,
                         precision: Precision, label: str) -> tuple[Any, Any, str]:
    """The policy a stage trains, starting from `start_dir` (a published model: LoRA adapter or full weights) or,
    when None, from the base model: (model, peft_config for the trainer, what the frozen reference is).

    An adapter start is trained further (no new adapter: TRL's DPO keeps a frozen copy of it as its reference), so
    the result stays ONE adapter over the untouched base weights. A full-weights start gets a fresh adapter (its
    reference is those weights with the adapter disabled), or is trained whole with full_finetune.
    """
    if start_dir is None:
        model = load_causal_lm(base_dir, common, precision)
        return model, (None if common.full_finetune else lora_config(lora)), "the base model"
    if (start_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        if common.full_finetune:
            raise TrainingSetupError(f"{label} is a LoRA adapter but training.common.full_finetune is true; "
                                     "train it with full_finetune, or set it false")
        base = load_causal_lm(base_dir, common, precision)
        return PeftModel.from_pretrained(base, str(start_dir), is_trainable=True), None, \
            f"{label} (a frozen copy of its adapter)"
    model = load_causal_lm(start_dir, common, precision)
    if common.full_finetune:
        return model, None, f"{label} (a frozen second copy of its weights)"
    return model, lora_config(lora), f"{label} (its weights with the adapter disabled)"
