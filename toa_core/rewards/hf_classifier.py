"""An HF sequence-classification reward model run in process.

Heads:
- ``logits``: the score is ``logits[:, 0]`` (Skywork-Reward style, and any num_labels=1 classifier).
- ``score``: the score is ``output.score`` (ArmoRM style; its modelling code needs ``trust_remote_code: true``).

Each (messages, response) pair is rendered with the reward model's own chat template as the conversation
``[*messages, {"role": "assistant", "content": response}]``, truncated to ``max_length`` tokens (the end of the
response is cut; the question is kept), and scored in padded batches of ``batch_size``.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Literal, Sequence

from toa_core.backends.assets import limit_cpu_threads, resolve_model, torch_placement
from toa_core.records import Message
from toa_core.rewards.in_process import InProcessReward

log = logging.getLogger(__name__)


def choose_pad_token(tokenizer: Any, model_config: Any) -> None:
    """Give a tokenizer without a pad token one that no rendered pair contains.

    Classifiers read the score at the last token before padding, found by the pad id (ArmoRM's code even takes
    the position before the *first* pad id). Llama-3 tokenizers ship without a pad token, and EOS as padding
    (the usual stand-in) is also the end-of-turn token the chat template writes, so the score would be read in
    the middle of the conversation. In order: the model config's pad_token_id; an unused special token the
    tokenizer already has (Llama-3.1's `<|finetune_right_pad_id|>`, a `reserved` one); EOS as the last resort
    (then `toa preflight` reports the model)."""
    if tokenizer.pad_token_id is not None:
        return
    configured = getattr(model_config, "pad_token_id", None)
    if isinstance(configured, int) and 0 <= configured < len(tokenizer):
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(configured)
        return
    template = str(getattr(tokenizer, "chat_template", "") or "")
    special = [token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values() if token.special]
    unused = [token for token in special if token not in template and token not in (tokenizer.eos_token,
                                                                                    tokenizer.bos_token)]
    for wanted in ("pad", "reserved"):
        found = next((token for token in unused if wanted in token.lower()), None)
        if found is not None:
            tokenizer.pad_token = found
            return
    log.warning("reward model tokenizer has no pad token and no unused special token: padding with EOS, which "
                "can move where the score is read when EOS also ends turns (toa preflight reports it)")
    tokenizer.pad_token = tokenizer.eos_token


class HFClassifierReward(InProcessReward):
    """RewardModel over AutoModelForSequenceClassification (see module docstring for heads)."""

    def __init__(self, model: str | Path, *, head: Literal["logits", "score"] = "logits",
                 trust_remote_code: bool = False, max_length: int = 4096, batch_size: int = 16,
                 name: str | None = None, device: str = "auto", dtype: str = "auto"):
        self.path = resolve_model(str(model))
        self.device_spec, self.dtype_spec = device, dtype
        self.device = "cpu"
        self.name = name or f"hf:{self.path.name}"
        self.head = head
        self.trust_remote_code = trust_remote_code
        self.max_length = max_length
        self.batch_size = batch_size
        self.forward_calls = 0  # batched forward passes run (observability and tests)
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        return f"HFClassifierReward(path={str(self.path)!r}, head={self.head!r})"

    def load(self) -> None:
        """Load the tokenizer and weights now (otherwise the first scoring call does)."""
        with self._lock:
            self._ensure_loaded()

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        limit_cpu_threads()
        if self.trust_remote_code:
            from toa_core.rewards import remote_code_compat

            remote_code_compat.apply()  # ArmoRM's modelling code imports docstrings transformers 5 removed
        tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
        self.device, torch_dtype = torch_placement(self.device_spec, self.dtype_spec)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path, trust_remote_code=self.trust_remote_code, dtype=torch_dtype).to(self.device)
        choose_pad_token(tokenizer, model.config)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # batched scoring finds the last real token by it
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions < self.max_length:
            self.max_length = positions  # pairs past the trained context would be scored by untrained positions
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        model.eval()
        self._tokenizer, self._model = tokenizer, model

    def render(self, messages: list[Message], response: str) -> str:
        conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
        conversation.append({"role": "assistant", "content": response})
        return self._tokenizer.apply_chat_template(conversation, tokenize=False)

    def _score_sync(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        import torch

        with self._lock:
            self._ensure_loaded()
            scores: list[float] = []
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start:start + self.batch_size]
                texts = [self.render(messages, response) for messages, response in chunk]
                # The template already wrote BOS and the turn markers: do not add special tokens twice.
                encoded = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                          add_special_tokens=False, return_tensors="pt").to(self.device)
                with torch.inference_mode():
                    output = self._model(**encoded)
                self.forward_calls += 1
                values = output.score if self.head == "score" else output.logits[:, 0]
                scores.extend(float(v) for v in values.float().reshape(len(chunk), -1)[:, 0])
        return scores
