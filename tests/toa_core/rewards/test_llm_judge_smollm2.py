"""The CPU demo's judge on the real SmolLM2-135M-Instruct: right answers outscore wrong ones on easy pairs."""
from __future__ import annotations

import asyncio

import pytest

from toa_core.rewards.llm_judge import LLMJudgeReward

EASY_PAIRS = [  # (question, right answer, wrong or useless answer)
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 7."),
    ("How many legs does a dog have?", "A dog has four legs.", "A dog has ten legs."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day.", "Bananas are yellow."),
    ("Write a haiku about the sea.",
     "Waves fold into foam\nsalt wind carries gull voices\nthe tide breathes and sleeps", "I don't know."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system.",
     "The largest planet is the Moon."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'.",
     "'Thank you' in Spanish is 'bonjour'."),
    ("Name a primary color.", "Red is a primary color.", "Seven is a primary color."),
]


@pytest.mark.slow
def test_smollm2_judge_prefers_right_answers(smollm2_dir):
    judge = LLMJudgeReward(smollm2_dir, batch_size=8)
    pairs = []
    for question, right, wrong in EASY_PAIRS:
        messages = [{"role": "user", "content": question}]
        pairs += [(messages, right), (messages, wrong)]
    scores = asyncio.run(judge.score_batch(pairs))
    margins = [scores[2 * i] - scores[2 * i + 1] for i in range(len(EASY_PAIRS))]
    assert all(m > 0 for m in margins), dict(zip([q for q, _, _ in EASY_PAIRS], margins))
