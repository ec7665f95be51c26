"""In-process generation with transformers, for CPU runs and tests.

One loaded model per folder is shared by every agent that names it (cached by resolved path). `generate` runs in a
worker thread (the event loop keeps serving other trees) under a per-model lock: torch already uses every core for
one forward pass, so running two generations on one model at once would only thrash.

Greedy requests (temperature 0: evaluations) that wait for the model at the same time are answered together, as one
left-padded batch of up to GREEDY_BATCH_MAX prompts: a forward pass over 8 prompts of a 135M model costs little more
on a CPU than over one (measured: 60 held-out prompts of SmolLM2, 2.5x faster at 8 in flight), and greedy decoding
does not depend on the other rows of the batch (the attention mask hides the padding; see
tests/toa_core/backends/test_transformers_local.py for the batched = one-at-a-time check). Sampled requests keep
running one at a time: a batch would draw every row from one random stream, so a request's `seed` would no longer
give it the same answer.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toa_core.backends.assets import limit_cpu_threads, resolve_model
from toa_core.config import ModelConfig
from toa_core.interfaces import SamplingParams
from toa_core.records import Generation, Message

log = logging.getLogger(__name__)

GREEDY_BATCH_MAX = 16  # prompts per batched greedy generate
GREEDY_BATCH_WINDOW_S = 0.02  # how long a batch waits for requests still on their way (a generate takes seconds)


@dataclass
class _GreedyRequest:
    """A greedy request waiting for its batch; answered on the event loop it came from."""
    messages: list[Message]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


@dataclass
class LoadedCausalLM:
    """A model + tokenizer loaded once, with the lock that serialises their use."""
    path: Path
    model: Any = None
    tokenizer: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    pending: list[_GreedyRequest] = field(default_factory=list)  # greedy requests not yet in a batch
    pending_guard: threading.Lock = field(default_factory=threading.Lock)
    draining: bool = False  # a thread is answering `pending`

    def ensure_loaded(self) -> None:
        """Load on first use (called with `lock` held, in a worker thread)."""
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        limit_cpu_threads()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # batched decoding continues from the right edge
        model = AutoModelForCausalLM.from_pretrained(self.path)
        model.eval()
        self.model = model


_LOADED: dict[Path, LoadedCausalLM] = {}
_LOADED_GUARD = threading.Lock()


def shared_causal_lm(path: Path) -> LoadedCausalLM:
    """The process-wide LoadedCausalLM for `path` (not loaded until first used)."""
    key = Path(path).resolve()
    with _LOADED_GUARD:
        entry = _LOADED.get(key)
        if entry is None:
            entry = _LOADED[key] = LoadedCausalLM(key)
        entry.users += 1
        return entry


def _release(entry: LoadedCausalLM) -> None:
    with _LOADED_GUARD:
        entry.users -= 1
        if entry.users <= 0:  # last agent gone: free the weights
            _LOADED.pop(entry.path, None)


class TransformersChatModel:
    """A ChatModel that generates in process with `model.generate` and the tokenizer's chat template."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.name = config.name
        self.path = resolve_model(config.model)  # bad specs fail here, at build time, with a clear message
        self._shared = shared_causal_lm(self.path)
        self._closed = False

    def __repr__(self) -> str:
        return f"TransformersChatModel(name={self.name!r}, path={str(self.path)!r})"

    async def generate(self, messages: list[Message], params: SamplingParams) -> Generation:
        """Generate in a worker thread. Never raises: a failure returns Generation(error=...)."""
        started = time.monotonic()
        if self.config.system_prompt and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": self.config.system_prompt}, *messages]
        params = self._effective(params)
        try:
            if params.temperature == 0:
                generation = await self._generate_greedy(messages, params.max_tokens)
            else:
                generation = await asyncio.to_thread(self._generate_sync, messages, params)
        except Exception as exc:  # a broken model must cost one candidate, not the run
            log.warning("agent %s: local generation failed: %s", self.name, exc)
            return Generation(text=None, error=f"{type(exc).__name__}: {exc}", latency_s=time.monotonic() - started)
        generation.latency_s = time.monotonic() - started
        return generation

    def _effective(self, params: SamplingParams) -> SamplingParams:
        c = self.config
        return SamplingParams(
            temperature=c.temperature if c.temperature is not None else params.temperature,
            top_p=c.top_p if c.top_p is not None else params.top_p,
            max_tokens=c.max_tokens if c.max_tokens is not None else params.max_tokens,
            seed=params.seed,
        )

    async def _generate_greedy(self, messages: list[Message], max_tokens: int) -> Generation:
        """Queue a greedy request; a draining thread answers it in a batch with the others waiting."""
        loop = asyncio.get_running_loop()
        request = _GreedyRequest(messages, max_tokens, loop, loop.create_future())
        shared = self._shared
        with shared.pending_guard:
            shared.pending.append(request)
            start = not shared.draining
            shared.draining = True
        if start:
            threading.Thread(target=_drain_greedy, args=(shared,), daemon=True,
                             name=f"greedy-batches-{shared.path.name}").start()
        return await request.future

    def _generate_sync(self, messages: list[Message], params: SamplingParams) -> Generation:
        import torch

        shared = self._shared
        with shared.lock:
            shared.ensure_loaded()
            tokenizer, model = shared.tokenizer, shared.model
            encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
            prompt_len = encoded["input_ids"].shape[1]
            sampling = params.temperature > 0
            kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens, "do_sample": sampling,
                                      "pad_token_id": tokenizer.pad_token_id}
            if sampling:
                kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
            else:  # greedy: neutralise sampling defaults a generation_config.json may carry
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if params.seed is not None:
                torch.manual_seed(params.seed)  # under the lock: the global RNG is ours for this call
            with torch.inference_mode():
                output = model.generate(**encoded, **kwargs)
        return _to_generation(tokenizer, output[0, prompt_len:].tolist(), prompt_len, params.max_tokens,
                              _eos_ids(model, tokenizer))

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self._shared)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the model's generation stop tokens and the tokenizer's end token."""
    ids = _generation_stop_ids(model)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _to_generation(tokenizer: Any, new_tokens: list[int], prompt_tokens: int, max_tokens: int,
                   eos_ids: set[int]) -> Generation:
    """The Generation for the tokens `generate` added: "stop" when it ended on an end token or before max_tokens."""
    stopped = bool(new_tokens) and new_tokens[-1] in eos_ids
    return Generation(text=tokenizer.decode(new_tokens, skip_special_tokens=True), prompt_tokens=prompt_tokens,
                      completion_tokens=len(new_tokens),
                      finish_reason="stop" if stopped or len(new_tokens) < max_tokens else "length")


def _drain_greedy(shared: LoadedCausalLM) -> None:
    """Answer `shared.pending` in batches (same max_tokens, arrival order) until it is empty."""
    while True:
        time.sleep(GREEDY_BATCH_WINDOW_S)
        with shared.pending_guard:
            if not shared.pending:
                shared.draining = False
                return
            max_tokens = shared.pending[0].max_tokens
            batch = [r for r in shared.pending if r.max_tokens == max_tokens][:GREEDY_BATCH_MAX]
            shared.pending = [r for r in shared.pending if not any(r is b for b in batch)]
        try:
            results: list[Generation | BaseException] = list(_generate_greedy_batch(shared, batch))
        except Exception as exc:  # noqa: BLE001 - each waiting request gets the failure as its own
            results = [exc] * len(batch)
        for request, result in zip(batch, results):
            request.loop.call_soon_threadsafe(_settle, request.future, result)


def _settle(future: asyncio.Future, result: "Generation | BaseException") -> None:
    if future.done():  # the caller gave up (cancelled)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _generate_greedy_batch(shared: LoadedCausalLM, batch: list[_GreedyRequest]) -> list[Generation]:
    """One left-padded greedy `generate` over `batch` (all with the same max_tokens)."""
    import torch

    max_tokens = batch[0].max_tokens
    with shared.lock:
        shared.ensure_loaded()
        tokenizer, model = shared.tokenizer, shared.model
        prompts = [tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"] for r in batch]
        encoded = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")  # left: see ensure_loaded
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=max_tokens, do_sample=False, temperature=None,
                                    top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        eos_ids = _eos_ids(model, tokenizer)
        stop_ids = _generation_stop_ids(model) or eos_ids  # where `generate` itself stops a row
    width = encoded["input_ids"].shape[1]
    generations = []
    for prompt, row in zip(prompts, output[:, width:].tolist()):
        # a row that finished before the others is filled with padding after its end token: cut there, as a
        # one-prompt generate would have stopped
        new_tokens = next((row[:i + 1] for i, token in enumerate(row) if token in stop_ids), row)
        generations.append(_to_generation(tokenizer, new_tokens, len(prompt), max_tokens, eos_ids))
    return generations


def _generation_stop_ids(model: Any) -> set[int]:
    """Where `generate` itself stops a row: the model's generation_config end tokens."""
    ids = model.generation_config.eos_token_id
    return set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
