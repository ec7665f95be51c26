"""What a model's own files say about it, read without loading weights: context length, architecture, pad token,
chat template, remote code, size. Used by the server start-up check (infra.servers) and `toa preflight`.

Everything comes from small JSON/Jinja files of a local folder or the local hub cache
(`toa_core.backends.assets.local_model_folder`); nothing is downloaded, so a model that is not on this machine
has no metadata (None) and its checks say "not checkable offline".
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toa_core.backends.assets import local_model_folder

# Keys different architectures use for their trained context length (first found wins, top level before text_config).
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int8": 1}
# A template supports TRL's assistant-only loss when it wraps assistant content in {% generation %} markers.
GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


@dataclass(frozen=True)
class ModelMetadata:
    """The parsed config.json (+ tokenizer_config.json and chat template file, when present) of one model folder."""
    folder: Path
    config: dict[str, Any]
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    chat_template_file: str | None = None  # chat_template.jinja, where newer tokenizers keep the template

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    @property
    def positions(self) -> int | None:
        """The context length the model was trained for (what vLLM derives max_model_len from), or None."""
        for section in (self.config, self.config.get("text_config") or {}):
            for key in POSITION_KEYS:
                value = section.get(key)
                if isinstance(value, int) and value > 0:
                    return value
        return None

    @property
    def auto_map(self) -> dict[str, str]:
        """Remote-code classes (trust_remote_code): {auto class: "module.Class"}."""
        return dict(self.config.get("auto_map") or {})

    @property
    def pad_token_id(self) -> int | None:
        value = self.config.get("pad_token_id")
        return value if isinstance(value, int) else None

    @property
    def tokenizer_pad_token(self) -> str | None:
        token = self.tokenizer_config.get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        return token or None

    def special_tokens(self) -> list[str]:
        """The special tokens the tokenizer adds to its vocabulary (tokenizer.json `added_tokens`)."""
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            return []
        added = json.loads(path.read_text()).get("added_tokens") or []
        return [token["content"] for token in added if token.get("special")]

    def unused_pad_candidate(self) -> str | None:
        """The special token toa_core.rewards.hf_classifier.choose_pad_token would pad with when the model has no
        pad token: one with "pad", else "reserved", in its name that the chat template never writes."""
        template = self.chat_template or ""
        eos_bos = {self.tokenizer_config.get(key) for key in ("eos_token", "bos_token")}
        unused = [t for t in self.special_tokens() if t not in template and t not in eos_bos]
        for wanted in ("pad", "reserved"):
            found = next((token for token in unused if wanted in token.lower()), None)
            if found:
                return found
        return None

    @property
    def chat_template(self) -> str | None:
        template = self.chat_template_file or self.tokenizer_config.get("chat_template")
        if isinstance(template, list):  # named variants: the default one is what apply_chat_template uses
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return template or None

    @property
    def template_marks_assistant(self) -> bool:
        return bool(GENERATION_MARKER.search(self.chat_template or ""))

    @property
    def dtype_bytes(self) -> int:
        dtype = str(self.config.get("torch_dtype") or self.config.get("dtype") or "bfloat16").removeprefix("torch.")
        return DTYPE_BYTES.get(dtype, 2)

    def weight_bytes(self) -> int | None:
        """Bytes of the weights: the safetensors index's total, else the weight files' sizes, else an estimate
        from the config's shape (Llama-like decoder), else None."""
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            total = (json.loads(index.read_text()).get("metadata") or {}).get("total_size")
            if isinstance(total, int) and total > 0:
                return total
        files = [p for p in self.folder.glob("*.safetensors")] or [p for p in self.folder.glob("*.bin")]
        sizes = sum(p.stat().st_size for p in files if p.is_file())
        if sizes:
            return sizes
        params = estimated_parameters(self.config)
        return params * self.dtype_bytes if params else None


def estimated_parameters(config: dict[str, Any]) -> int | None:
    """Parameters of a Llama-like decoder from its config (attention with grouped KV heads, gated MLP, embeddings)."""
    section = config.get("text_config") or config
    try:
        hidden, layers = int(section["hidden_size"]), int(section["num_hidden_layers"])
        inner = int(section.get("intermediate_size") or 4 * hidden)
        vocab = int(section["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    heads = int(section.get("num_attention_heads") or 1)
    kv_dim = hidden * int(section.get("num_key_value_heads") or heads) // heads
    experts = int(section.get("num_local_experts") or 1)
    per_layer = hidden * (2 * hidden + 2 * kv_dim) + experts * 3 * hidden * inner
    embeddings = vocab * hidden * (1 if section.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings


_SIZE_IN_NAME = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")


def parameters_from_name(model: str) -> int | None:
    """A rough parameter count read from a hub id ("Llama-3.1-70B" -> 70e9, "Mixtral-8x22B" -> ~141e9), for
    models whose files are not on this machine; None when the name carries no size."""
    match = _SIZE_IN_NAME.search(model.rsplit("/", 1)[-1])
    if not match:
        return None
    experts, size = match.group(1), float(match.group(2))
    # an MoE's experts share attention and embeddings: ~0.8 x experts x size is close for Mixtral-style models
    return int(size * 1e9 * (0.8 * int(experts) if experts else 1))


def read_metadata(folder: Path) -> ModelMetadata:
    """Parse the metadata files of a model folder (config.json must exist)."""
    config = json.loads((folder / "config.json").read_text())
    tokenizer_config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    template_file = folder / "chat_template.jinja"
    return ModelMetadata(folder=folder, config=config, tokenizer_config=tokenizer_config,
                         chat_template_file=template_file.read_text() if template_file.is_file() else None)


def local_metadata(model: str) -> ModelMetadata | None:
    """The metadata of `model` (builtin:NAME, folder or hub id) when its files are on this machine, else None."""
    folder = local_model_folder(model)
    return read_metadata(folder) if folder is not None else None
