"""Pairwise LLM judge over any OpenAI-compatible endpoint (or any toa_core ChatModel).

Every (model output, baseline output) pair is judged twice with the positions swapped, which cancels the judge's
position bias. A game's verdict is a probability that the model's output is better:
- from logprobs when the endpoint returns them (vLLM does): the first token's top alternatives are read, the
  probability mass on "A" and on "B" is renormalised, AlpacaEval-style (a continuous preference);
- otherwise from the reply's text: a lone letter, "[[A]]", Arena-Hard's "[[A>>B]]" ... "[[B>>A]]", or a sentence
  such as "Answer B is better". A reply that cannot be read is counted as a parse failure, never guessed.
An item's preference is the mean of its readable games; an item with none is a failed judgment.
"""
from __future__ import annotations

import asyncio
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import httpx

from evaluation.config import LLMJudgeConfig
from toa_core.interfaces import ChatModel, SamplingParams
from toa_core.records import Message

PROMPT_FILE = Path(__file__).resolve().parents[1] / "data" / "pairwise_judge.txt"
ARENA_PROMPT_FILE = Path(__file__).resolve().parents[1] / "data" / "arena_hard_judge.txt"
USER_SEPARATOR = "=== user ==="
PLACEHOLDERS = ("instruction", "output_a", "output_b")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass
class JudgeReply:
    """What the judge said: its text, and the first generated token's top logprobs when the server sent them."""
    text: str | None
    top_logprobs: list[tuple[str, float]] | None = None
    error: str | None = None


@dataclass
class Verdict:
    """One game read from a reply: probability that answer B beats answer A, how it was read, how strong."""
    prob_b_better: float | None  # None: the reply could not be read
    method: str  # "logprobs" | "text" | "unparsed" | "error"
    strong: bool = False


class JudgeClient(Protocol):
    async def complete(self, messages: list[Message], *, max_tokens: int, temperature: float,
                       logprobs: bool) -> JudgeReply: ...

    async def aclose(self) -> None: ...


class HttpJudgeClient:
    """POST /chat/completions with optional logprobs; bounded timeouts, retries with jittered backoff."""

    def __init__(self, config: LLMJudgeConfig):
        self.config = config
        self._headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"llm_judge: api_key_env names ${config.api_key_env}, which is not set")
            self._headers["Authorization"] = f"Bearer {key}"
        retry = config.retry
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(retry.read_timeout_s, connect=retry.connect_timeout_s),
                                         limits=httpx.Limits(max_connections=config.max_concurrency))
        self._url = config.endpoint.rstrip("/") + "/chat/completions"
        self._logprobs_supported = True

    async def complete(self, messages: list[Message], *, max_tokens: int, temperature: float,
                       logprobs: bool) -> JudgeReply:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": temperature}
        if logprobs and self._logprobs_supported:
            body.update(logprobs=True, top_logprobs=5)
        retry = self.config.retry
        last_error = "no attempt made"
        for attempt in range(retry.max_attempts):
            if attempt:
                await asyncio.sleep(random.uniform(0, min(retry.backoff_max_s, retry.backoff_initial_s * 2 ** attempt)))
            try:
                response = await self._client.post(self._url, json=body, headers=self._headers)
            except (httpx.TimeoutException, httpx.TransportError) as error:
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code == 400 and "logprobs" in body:
                # Some servers refuse logprobs outright: drop them for the rest of the run and read text instead.
                self._logprobs_supported = False
                del body["logprobs"], body["top_logprobs"]
                last_error = f"HTTP 400 with logprobs: {response.text[:200]}"
                continue
            if response.status_code in RETRYABLE_STATUS:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                return JudgeReply(None, error=f"HTTP {response.status_code}: {response.text[:300]}")
            try:
                return _parse_completion(response.json())
            except (ValueError, KeyError, IndexError, TypeError) as error:
                last_error = f"malformed response: {type(error).__name__}: {error}"
                continue
        return JudgeReply(None, error=f"judge failed after {retry.max_attempts} attempts: {last_error}")

    async def aclose(self) -> None:
        await self._client.aclose()


def _parse_completion(payload: dict[str, Any]) -> JudgeReply:
    choice = payload["choices"][0]
    text = choice["message"].get("content")
    top = None
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if content:
        first = content[0]
        alternatives = first.get("top_logprobs") or [{"token": first.get("token"), "logprob": first.get("logprob")}]
        top = [(str(alt["token"]), float(alt["logprob"])) for alt in alternatives
               if alt.get("token") is not None and alt.get("logprob") is not None]
    return JudgeReply(text if isinstance(text, str) else None, top or None)


class ChatModelJudgeClient:
    """Any toa_core ChatModel as a judge (no logprobs: verdicts are read from text)."""

    def __init__(self, model: ChatModel, seed: int = 0):
        self.model = model
        self.seed = seed

    async def complete(self, messages: list[Message], *, max_tokens: int, temperature: float,
                       logprobs: bool) -> JudgeReply:
        generation = await self.model.generate(messages, SamplingParams(temperature=temperature, top_p=1.0,
                                                                        max_tokens=max_tokens, seed=self.seed))
        return JudgeReply(generation.text, None, generation.error)

    async def aclose(self) -> None:
        await self.model.aclose()


# --------------------------------------------------------------------------------------------- verdicts

_ARENA = re.compile(r"\[\[\s*(A>>B|A>B|A=B|B>A|B>>A|A|B|TIE)\s*\]\]", re.IGNORECASE)
_LEADING = re.compile(r"^[\W_]*(?:(?:answer|response|output|option)\s*)?\(?([AB])\)?(?![A-Za-z0-9])", re.IGNORECASE)
_NAMED = re.compile(r"\b(?:answer|response|output|option)\s*\(?([AB])\)?(?![A-Za-z0-9])", re.IGNORECASE)
_TIE = re.compile(r"\b(tie|equally good|both (?:are )?equally)\b", re.IGNORECASE)


def parse_verdict_text(text: str | None) -> Verdict:
    """Read a verdict from text; a reply naming both answers without a clear pick is unparsed."""
    if not text or not text.strip():
        return Verdict(None, "unparsed")
    arena = _ARENA.findall(text)
    if arena:
        verdict = arena[-1].upper()
        table = {"A>>B": (0.0, True), "A>B": (0.0, False), "A=B": (0.5, False), "TIE": (0.5, False),
                 "B>A": (1.0, False), "B>>A": (1.0, True), "A": (0.0, False), "B": (1.0, False)}
        prob, strong = table[verdict]
        return Verdict(prob, "text", strong)
    named = {m.upper() for m in _NAMED.findall(text)}
    leading = _LEADING.match(text.strip())
    # "A" the letter, not "a good answer..."; and a reply that goes on to name the other answer is ambiguous.
    if leading and not re.match(r"^\s*a\s+[a-z]", text.strip()) and named <= {leading.group(1).upper()}:
        return Verdict(1.0 if leading.group(1).upper() == "B" else 0.0, "text")
    if len(named) == 1:
        return Verdict(1.0 if named.pop() == "B" else 0.0, "text")
    if _TIE.search(text):
        return Verdict(0.5, "text")
    return Verdict(None, "unparsed")


def verdict_from_reply(reply: JudgeReply) -> Verdict:
    """Logprobs first (continuous preference), the text when the logprobs carry no A/B mass or are absent."""
    if reply.error is not None:
        return Verdict(None, "error")
    if reply.top_logprobs:
        mass = {"A": 0.0, "B": 0.0}
        for token, logprob in reply.top_logprobs:
            letter = token.strip().strip("[(*").upper()
            if letter in mass and math.isfinite(logprob):
                mass[letter] += math.exp(logprob)
        total = mass["A"] + mass["B"]
        if total > 0:
            return Verdict(mass["B"] / total, "logprobs")
    return parse_verdict_text(reply.text)


# --------------------------------------------------------------------------------------------- judging

def load_prompt(config: LLMJudgeConfig | None = None) -> str:
    path = Path(config.prompt_file) if config and config.prompt_file else PROMPT_FILE
    template = path.read_text(encoding="utf-8")
    missing = [field for field in ("{instruction}", "{output_a}", "{output_b}") if field not in template]
    if missing:
        raise ValueError(f"{path}: judge prompt lacks placeholder(s) {', '.join(missing)}")
    return template


def fill_template(template: str, **values: str) -> str:
    """Replace {instruction}, {output_a}, {output_b} in one pass over the template.

    One pass matters: text put in by one placeholder is never scanned again, so an answer that itself contains
    "{output_b}" (or braces of code and LaTeX) reaches the judge exactly as written."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _render(template: str, instruction: str, output_a: str, output_b: str) -> list[Message]:
    return [{"role": "user", "content": fill_template(template, instruction=instruction, output_a=output_a,
                                                       output_b=output_b)}]


def load_arena_prompt(path: str | Path | None = None) -> tuple[str, str]:
    """(system message, user template) of an Arena-Hard judge prompt file (`=== user ===` separates them)."""
    path = Path(path) if path else ARENA_PROMPT_FILE
    text = path.read_text(encoding="utf-8")
    if USER_SEPARATOR not in text:
        raise ValueError(f"{path}: an Arena-Hard judge prompt needs a line '{USER_SEPARATOR}' between the system "
                         f"message and the user template")
    system, user = (part.strip("\n") for part in text.split(USER_SEPARATOR, 1))
    missing = [f"{{{name}}}" for name in PLACEHOLDERS if f"{{{name}}}" not in user]
    if missing:
        raise ValueError(f"{path}: the user template lacks placeholder(s) {', '.join(missing)}")
    return system.strip(), user


async def judge_pairs(client: JudgeClient, pairs: Sequence[dict[str, Any]], *, template: str, max_tokens: int = 8,
                      temperature: float = 0.0, use_logprobs: bool = True, max_concurrency: int = 8) -> list[dict[str, Any]]:
    """Judge each {item_id, instruction, output, baseline} twice (baseline first, then model first).

    Returns one judgment per pair: the two games (prob that the model wins, method, strength, raw reply) and
    `preference` = mean over readable games (None when neither could be read)."""
    semaphore = asyncio.Semaphore(max_concurrency)

    async def game(instruction: str, first: str, second: str) -> tuple[Verdict, JudgeReply]:
        async with semaphore:
            reply = await client.complete(_render(template, instruction, first, second), max_tokens=max_tokens,
                                          temperature=temperature, logprobs=use_logprobs)
        return verdict_from_reply(reply), reply

    async def judge(pair: dict[str, Any]) -> dict[str, Any]:
        (v1, r1), (v2, r2) = await asyncio.gather(
            game(pair["instruction"], pair["baseline"], pair["output"]),   # game 1: model is B
            game(pair["instruction"], pair["output"], pair["baseline"]),   # game 2: model is A
        )
        model_wins = [v1.prob_b_better, None if v2.prob_b_better is None else 1.0 - v2.prob_b_better]
        games = [
            {"model_position": "B", "prob_model_better": model_wins[0], "method": v1.method, "strong": v1.strong,
             "reply": r1.text, "error": r1.error},
            {"model_position": "A", "prob_model_better": model_wins[1], "method": v2.method, "strong": v2.strong,
             "reply": r2.text, "error": r2.error},
        ]
        readable = [p for p in model_wins if p is not None]
        return {"item_id": pair["item_id"], "games": games,
                "preference": sum(readable) / len(readable) if readable else None}

    return list(await asyncio.gather(*(judge(pair) for pair in pairs)))


async def judge_arena(client: JudgeClient, pairs: Sequence[dict[str, Any]], *, system: str, template: str,
                      max_tokens: int, temperature: float = 0.0, max_concurrency: int = 8) -> list[dict[str, Any]]:
    """Arena-Hard's protocol for each {item_id, instruction, output (None = failed generation), baseline,
    category (optional, copied to the judgment)}.

    Two games (baseline as A, then the model as A); the judge reasons and ends with a verdict label. A failed
    or empty generation is not sent: both its games are recorded as strong losses ("generation_failed"), which
    is how a judge rules on an empty answer. Returns one judgment per pair with `labels` (game 1, game 2, from
    A's side), the replies, the style counts of both answers, and `preference` = the model's mean outcome over
    the two games (None when a game has no verdict: arena-hard drops such questions)."""
    from evaluation.metrics.arena_hard import LABELS, parse_arena_verdict, style_of

    semaphore = asyncio.Semaphore(max_concurrency)

    async def game(instruction: str, answer_a: str, answer_b: str) -> tuple[str | None, JudgeReply]:
        messages: list[Message] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": fill_template(template, instruction=instruction,
                                                                  output_a=answer_a, output_b=answer_b)})
        async with semaphore:
            reply = await client.complete(messages, max_tokens=max_tokens, temperature=temperature, logprobs=False)
        return (None if reply.error else parse_arena_verdict(reply.text)), reply

    async def judge(pair: dict[str, Any]) -> dict[str, Any]:
        style = {"model": style_of(pair["output"]), "baseline": style_of(pair["baseline"])}
        if not pair["output"] or not pair["output"].strip():
            return {"item_id": pair["item_id"], "category": pair.get("category"), "labels": ["A>>B", "B>>A"],
                    "games": [], "style": style, "preference": 0.0, "generation_failed": True}
        (l1, r1), (l2, r2) = await asyncio.gather(
            game(pair["instruction"], pair["baseline"], pair["output"]),   # game 1: model is B
            game(pair["instruction"], pair["output"], pair["baseline"]),   # game 2: model is A
        )
        games = [{"model_position": "B", "label": l1, "reply": r1.text, "error": r1.error},
                 {"model_position": "A", "label": l2, "reply": r2.text, "error": r2.error}]
        preference = None
        if l1 is not None and l2 is not None:
            preference = ((1.0 - LABELS[l1][0]) + LABELS[l2][0]) / 2
        return {"item_id": pair["item_id"], "category": pair.get("category"), "labels": [l1, l2], "games": games,
                "style": style, "preference": preference, "generation_failed": False}

    return list(await asyncio.gather(*(judge(pair) for pair in pairs)))


def judgment_counts(judgments: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How the games were read: parse failures and transport errors are counted, not hidden."""
    games = [game for judgment in judgments for game in judgment["games"]]
    readable = [j for j in judgments if j["preference"] is not None]
    consistent = sum(1 for j in judgments
                     if len(j["games"]) == 2 and all(g["prob_model_better"] is not None for g in j["games"])
                     and (j["games"][0]["prob_model_better"] - 0.5) * (j["games"][1]["prob_model_better"] - 0.5) > 0)
    return {
        "games": len(games),
        "games_logprobs": sum(1 for g in games if g["method"] == "logprobs"),
        "games_text": sum(1 for g in games if g["method"] == "text"),
        "parse_failures": sum(1 for g in games if g["method"] == "unparsed"),
        "judge_errors": sum(1 for g in games if g["method"] == "error"),
        "items_judged": len(readable),
        "items_failed": len(judgments) - len(readable),
        "generation_failed": sum(1 for j in judgments if j.get("generation_failed")),
        "position_consistent_items": consistent,
    }
