"""The pairwise LLM judge against a scripted OpenAI-compatible endpoint on loopback and a scripted ChatModel."""
from __future__ import annotations

import asyncio
import math

import pytest

from evaluation.config import LLMJudgeConfig
from evaluation.judges.llm_judge import (ChatModelJudgeClient, HttpJudgeClient, JudgeReply, fill_template, judge_arena,
                                         judge_pairs, judgment_counts, load_arena_prompt, load_prompt,
                                         parse_verdict_text, verdict_from_reply)
from toa_core.records import Generation
from tests.evaluation.fake_judge import FakeJudge, completion

PAIRS = [{"item_id": f"i{k}", "instruction": f"question {k}", "output": f"MODEL answer {k}",
          "baseline": f"BASE answer {k}"} for k in range(4)]


def _positions(body):
    """Which position holds the model's answer in this request ('A' or 'B')."""
    text = body["messages"][0]["content"]
    return "A" if text.index("MODEL answer") < text.index("BASE answer") else "B"


def judge_config(endpoint: str, **kwargs) -> LLMJudgeConfig:
    return LLMJudgeConfig(endpoint=endpoint, model="judge", retry={"max_attempts": 3, "backoff_initial_s": 0.01,
                                                                    "backoff_max_s": 0.02, "read_timeout_s": 10}, **kwargs)


def run_judge(endpoint: str, pairs=PAIRS, **kwargs):
    config = judge_config(endpoint, **kwargs)

    async def go():
        client = HttpJudgeClient(config)
        try:
            return await judge_pairs(client, pairs, template=load_prompt(config), max_tokens=config.max_tokens,
                                     use_logprobs=config.use_logprobs, max_concurrency=2)
        finally:
            await client.aclose()
    return asyncio.run(go())


@pytest.mark.parametrize("text, prob, strong", [
    ("A", 0.0, False), ("B", 1.0, False), (" b.", 1.0, False), ("**B**", 1.0, False),
    ("[[B>>A]]", 1.0, True), ("My verdict: [[A>B]]", 0.0, False), ("[[A=B]]", 0.5, False),
    ("Answer B is better because it is correct.", 1.0, False), ("Output (A)", 0.0, False),
    ("It's a tie.", 0.5, False),
])
def test_parse_verdict_text(text, prob, strong):
    verdict = parse_verdict_text(text)
    assert verdict.prob_b_better == prob and verdict.strong == strong and verdict.method == "text"


@pytest.mark.parametrize("text", ["", None, "I cannot decide", "Answer A is short but answer B is long",
                                  "a good question, really"])
def test_unreadable_verdicts_are_unparsed(text):
    assert parse_verdict_text(text).prob_b_better is None


def test_logprob_verdict_is_continuous_and_ignores_other_tokens():
    reply = JudgeReply("B", [("B", math.log(0.6)), ("A", math.log(0.2)), (" The", math.log(0.2))])
    verdict = verdict_from_reply(reply)
    assert verdict.method == "logprobs" and verdict.prob_b_better == pytest.approx(0.75)
    # logprobs with no A/B mass fall back to the text
    assert verdict_from_reply(JudgeReply("A", [("Sure", -0.1)])).method == "text"
    assert verdict_from_reply(JudgeReply(None, error="HTTP 500")).method == "error"


def test_positions_are_swapped_and_logprobs_averaged():
    # A judge that likes the model 80/20 whatever the position; logprobs requested and returned.
    def script(body):
        assert body["logprobs"] is True and body["top_logprobs"] == 5
        model_at = _positions(body)
        other = "B" if model_at == "A" else "A"
        return 200, completion(model_at, [(model_at, math.log(0.8)), (other, math.log(0.2))])

    with FakeJudge(script) as judge:
        judgments = run_judge(judge.endpoint)
        assert len(judge.requests) == 2 * len(PAIRS)
    for j in judgments:
        assert [g["model_position"] for g in j["games"]] == ["B", "A"]
        assert j["preference"] == pytest.approx(0.8)
    assert judgment_counts(judgments)["games_logprobs"] == 8


def test_position_biased_judge_cancels_out():
    # Always says "A": the model wins the game where it is A and loses the other -> preference 0.5.
    with FakeJudge(lambda body: (200, completion("A"))) as judge:
        judgments = run_judge(judge.endpoint, use_logprobs=False)
    assert all(j["preference"] == 0.5 for j in judgments)
    assert judgment_counts(judgments)["position_consistent_items"] == 0


def test_malformed_verdicts_and_missing_logprobs_are_counted_not_guessed():
    def script(body):
        question = body["messages"][0]["content"]
        if "question 0" in question:
            return 200, completion("I refuse to choose.")            # unreadable, both games
        if "question 1" in question:
            return 200, completion("[[B>>A]]" if _positions(body) == "B" else "[[A>>B]]")  # strong, text only
        if "question 2" in question and _positions(body) == "A":
            return 200, completion("hmm")                              # one game unreadable
        return 200, completion("B" if _positions(body) == "B" else "A")
    with FakeJudge(script) as judge:
        judgments = run_judge(judge.endpoint)
    by_id = {j["item_id"]: j for j in judgments}
    assert by_id["i0"]["preference"] is None
    assert by_id["i1"]["preference"] == 1.0 and all(g["strong"] for g in by_id["i1"]["games"])
    assert by_id["i2"]["preference"] == 1.0  # the one readable game
    counts = judgment_counts(judgments)
    assert counts["parse_failures"] == 3 and counts["items_failed"] == 1 and counts["games_logprobs"] == 0


def test_server_errors_are_retried_then_reported():
    calls = {"n": 0}

    def script(body):
        calls["n"] += 1
        if "question 0" in body["messages"][0]["content"]:
            return 503, {"error": {"message": "overloaded"}}          # never recovers
        if calls["n"] % 2:
            return 500, "not json"
        return 200, completion("B" if _positions(body) == "B" else "A")

    with FakeJudge(script) as judge:
        judgments = run_judge(judge.endpoint, pairs=PAIRS[:2])
    by_id = {j["item_id"]: j for j in judgments}
    assert by_id["i0"]["preference"] is None
    assert by_id["i0"]["games"][0]["error"].startswith("judge failed after 3 attempts: HTTP 503")
    assert by_id["i1"]["preference"] == 1.0
    assert judgment_counts(judgments)["judge_errors"] == 2


def test_server_refusing_logprobs_falls_back_to_text():
    def script(body):
        if body.get("logprobs"):
            return 400, {"error": {"message": "logprobs are not supported"}}
        return 200, completion("B" if _positions(body) == "B" else "A")
    with FakeJudge(script) as judge:
        judgments = run_judge(judge.endpoint, pairs=PAIRS[:1])
    assert judgments[0]["preference"] == 1.0
    assert {g["method"] for g in judgments[0]["games"]} == {"text"}


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("JUDGE_KEY_FOR_TEST", raising=False)
    with pytest.raises(ValueError, match="JUDGE_KEY_FOR_TEST"):
        HttpJudgeClient(judge_config("http://127.0.0.1:9/v1", api_key_env="JUDGE_KEY_FOR_TEST"))


class ScriptedChatJudge:
    """A ChatModel judge whose replies come from a list (malformed ones included)."""
    name = "scripted-judge"

    def __init__(self, replies):
        self.replies = list(replies)

    async def generate(self, messages, params):
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            return Generation(text=None, error=str(reply))
        return Generation(text=reply)

    async def aclose(self):
        pass


def test_chat_model_judge_without_logprobs():
    client = ChatModelJudgeClient(ScriptedChatJudge(["B", "A", "nonsense", RuntimeError("boom")]))
    judgments = asyncio.run(judge_pairs(client, PAIRS[:2], template=load_prompt(), max_concurrency=1))
    assert judgments[0]["preference"] == 1.0
    assert judgments[1]["preference"] is None
    counts = judgment_counts(judgments)
    assert counts["parse_failures"] == 1 and counts["judge_errors"] == 1


def test_custom_prompt_needs_its_placeholders(tmp_path):
    bad = tmp_path / "prompt.txt"
    bad.write_text("Compare {output_a} with {output_b}")
    with pytest.raises(ValueError, match="instruction"):
        load_prompt(judge_config("http://x/v1", prompt_file=str(bad)))


def test_placeholders_are_filled_in_one_pass():
    # An answer that itself contains "{output_b}" (or any placeholder) must reach the judge exactly as written.
    template = load_prompt()
    tricky_a = "Use {output_b} and {instruction} literally; in code: def f(x): return {x: 1}"
    text = fill_template(template, instruction="Q {output_a}", output_a=tricky_a, output_b="B's answer")
    assert tricky_a in text and "Q {output_a}" in text
    assert text.count("B's answer") == 1


def test_arena_judge_reads_verdict_labels_and_sends_answers_unchanged():
    seen = []

    def script(body):
        seen.append(body)
        user = body["messages"][-1]["content"]
        model_is_a = user.index("MODEL") < user.index("BASE")
        if "question 0" in user:
            return 200, completion("Long reasoning... My final verdict is [[B>>A]]" if not model_is_a
                                   else "Reasoning. Final: [[A>>B]]")
        if "question 1" in user:
            return 200, completion("I cannot decide.")                 # no label: the question is dropped
        return 200, completion("[[A=B]]")

    pairs = [{"item_id": "q0", "instruction": "question 0", "output": "MODEL says {output_b}", "baseline": "BASE"},
             {"item_id": "q1", "instruction": "question 1", "output": "MODEL", "baseline": "BASE"},
             {"item_id": "q2", "instruction": "question 2", "output": "", "baseline": "BASE"}]
    system, template = load_arena_prompt()
    with FakeJudge(script) as judge:
        client = HttpJudgeClient(judge_config(judge.endpoint))
        judgments = asyncio.run(judge_arena(client, pairs, system=system, template=template, max_tokens=4096))
        asyncio.run(client.aclose())
    by_id = {j["item_id"]: j for j in judgments}
    assert by_id["q0"]["labels"] == ["B>>A", "A>>B"] and by_id["q0"]["preference"] == 1.0
    assert by_id["q1"]["preference"] is None
    assert by_id["q2"]["generation_failed"] and by_id["q2"]["preference"] == 0.0   # empty answer: a loss, not sent
    assert len(seen) == 4 and all(body["max_tokens"] == 4096 for body in seen)
    assert seen[0]["messages"][0]["role"] == "system" and "[[A>>B]]" in seen[0]["messages"][0]["content"]
    assert any("MODEL says {output_b}" in body["messages"][-1]["content"] for body in seen)
