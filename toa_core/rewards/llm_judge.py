"""A causal LM used as a judge: the CPU demo's reward model.

A small instruct model (SmolLM2-135M) is a poor yes/no judge on its own: measured on easy right/wrong answer pairs,
its verdict alone ranks the right answer first only about half the time. Its *likelihoods* carry more signal, so
the reward adds three log-scale terms, each read from next-token distributions (no text is generated):

- ``verdict``    log P(yes) - log P(no) for "is this answer correct and helpful?" (P(yes) sums the first tokens
                 of "Yes"/"yes"/" Yes"/" yes"; likewise for no);
- ``likelihood`` mean log P(answer token | question), the judge's own belief in the answer;
- ``relevance``  the likelihood minus the mean log P(answer token | a generic request), which rewards answers
                 that respond to *this* question and takes back the likelihood bonus of generic replies
                 ("I don't know.").

On 8 easy pairs (tests/toa_core/rewards, slow tier) the sum ranks every right answer above the wrong one; each
term alone misses one to four. The sum is unbounded and roughly centred like a classifier logit, so the search's
sigmoid(reward / tau) normalisation applies unchanged (tau around 1 suits it). Choose the terms with `terms=`.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

from toa_core.backends.assets import limit_cpu_threads, resolve_model
from toa_core.interfaces import RewardError
from toa_core.records import Message
from toa_core.rewards.in_process import InProcessReward

JUDGE_INSTRUCTION = (
    "Question: {question}\n"
    "Answer: {answer}\n\n"
    "Is the answer correct? Reply Yes or No."
)
GENERIC_REQUEST = "Say something."
YES_WORDS = ("Yes", "yes", " Yes", " yes")
NO_WORDS = ("No", "no", " No", " no")
TERMS = ("verdict", "likelihood", "relevance")


def question_text(messages: list[Message]) -> str:
    """The question as the judge sees it: the user turn, or the whole exchange when there are several turns."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


class LLMJudgeReward(InProcessReward):
    """RewardModel from a causal LM's next-token distributions (see module docstring)."""

    def __init__(self, model: str | Path, *, max_length: int = 2048, batch_size: int = 8,
                 terms: Sequence[str] = TERMS, name: str | None = None):
        unknown = set(terms) - set(TERMS)
        if unknown or not terms:
            raise ValueError(f"judge terms must be a non-empty subset of {TERMS}, got {list(terms)}")
        self.path = resolve_model(str(model))
        self.name = name or f"judge:{self.path.name}"
        self.max_length = max_length
        self.batch_size = batch_size
        self.terms = tuple(terms)
        self.forward_calls = 0  # batched forward passes run (observability and tests)
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._yes_ids: list[int] = []
        self._no_ids: list[int] = []

    def __repr__(self) -> str:
        return f"LLMJudgeReward(path={str(self.path)!r}, terms={self.terms})"

    # ------------------------------------------------------------------------------------------- loading

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        limit_cpu_threads()
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(self.path)
        model.eval()
        yes_ids, no_ids = _first_token_ids(tokenizer, YES_WORDS), _first_token_ids(tokenizer, NO_WORDS)
        shared = set(yes_ids) & set(no_ids)  # e.g. a bare space token both " yes" and " no" start with
        yes_ids = [i for i in yes_ids if i not in shared]
        no_ids = [i for i in no_ids if i not in shared]
        if not yes_ids or not no_ids:
            raise RewardError(f"{self.path}: the tokenizer does not separate Yes from No; pick another judge model")
        self._tokenizer, self._model, self._yes_ids, self._no_ids = tokenizer, model, yes_ids, no_ids

    # ------------------------------------------------------------------------------------------- prompts

    def _chat_prefix(self, content: str) -> list[int]:
        return list(self._tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                                        add_generation_prompt=True, return_dict=True)["input_ids"])

    def _answer_ids(self, response: str) -> list[int]:
        ids = self._tokenizer(response, add_special_tokens=False)["input_ids"]
        return ids[: max(16, self.max_length // 2)]  # keep room for the question and the instruction

    def verdict_prompt_ids(self, messages: list[Message], response: str) -> list[int]:
        answer = self._tokenizer.decode(self._answer_ids(response))
        ids = self._chat_prefix(JUDGE_INSTRUCTION.format(question=question_text(messages), answer=answer))
        return ids[-self.max_length:]  # cut from the left: the instruction at the end must survive

    # ------------------------------------------------------------------------------------------- scoring

    def _score_sync(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        with self._lock:
            self._ensure_loaded()
            totals = [0.0] * len(pairs)
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start:start + self.batch_size]
                parts: list[list[float]] = []
                if "verdict" in self.terms:
                    parts.append(self._verdicts([self.verdict_prompt_ids(m, r) for m, r in chunk]))
                if {"likelihood", "relevance"} & set(self.terms):
                    answers = [self._answer_ids(r) for _, r in chunk]
                    asked = self._mean_logprobs([(self._chat_prefix(question_text(m)), a)
                                                 for (m, _), a in zip(chunk, answers)])
                    if "likelihood" in self.terms:
                        parts.append(asked)
                    if "relevance" in self.terms:
                        generic = self._mean_logprobs([(self._chat_prefix(GENERIC_REQUEST), a) for a in answers])
                        parts.append([x - y for x, y in zip(asked, generic)])
                for offset, values in enumerate(zip(*parts)):
                    totals[start + offset] = float(sum(values))
        return totals

    def _forward(self, rows: list[list[int]]):
        """Right-padded batch forward; returns log-softmax over the vocabulary, [batch, time, vocab]."""
        import torch

        width = max(len(r) for r in rows)
        pad = self._tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.inference_mode():
            logits = self._model(input_ids=input_ids, attention_mask=attention).logits.float()
        self.forward_calls += 1
        return torch.log_softmax(logits, dim=-1)

    def _verdicts(self, prompts: list[list[int]]) -> list[float]:
        import torch

        log_probs = self._forward(prompts)
        last = torch.tensor([len(p) - 1 for p in prompts])
        next_token = log_probs[torch.arange(len(prompts)), last]
        yes = torch.logsumexp(next_token[:, self._yes_ids], dim=-1)
        no = torch.logsumexp(next_token[:, self._no_ids], dim=-1)
        return (yes - no).tolist()

    def _mean_logprobs(self, items: list[tuple[list[int], list[int]]]) -> list[float]:
        """Mean log-probability of each answer's tokens after its prefix."""
        rows = [(prefix + answer)[-self.max_length:] for prefix, answer in items]
        log_probs = self._forward(rows)
        means = []
        for i, ((_, answer), row) in enumerate(zip(items, rows)):
            n = min(len(answer), len(row) - 1)
            if n <= 0:  # an empty answer: as unlikely as it gets, not a crash
                means.append(-30.0)
                continue
            positions = range(len(row) - n - 1, len(row) - 1)  # logits at t predict token t+1
            means.append(sum(float(log_probs[i, t, row[t + 1]]) for t in positions) / n)
        return means


def _first_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for word in words:
        encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
        if encoded and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids
