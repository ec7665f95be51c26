"""Math answer extraction and matching on the cases that break naive checkers."""
from __future__ import annotations

import pytest

from toa_core.verifiers.math_answers import answers_match, extract_answer, normalize_answer, score_math


@pytest.mark.parametrize("text, expected", [
    ("First 3, then 4, so \\boxed{12}.", "12"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
    ("two boxes \\boxed{1} and finally \\boxed{2}", "2"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5 is it", "5"),
    ("48/2 = 24\n#### 24", "24"),
    ("#### 1,128", "1,128"),
    ("So the final answer is 42 apples.", "42"),
    ("Answer: -3", "-3"),
    ("We get 10 then 12.5 and then -7.", "-7"),
    ("so x = -\\frac{3}{4}", "-\\frac{3}{4}"),
    ("about 1,000,000 people", "1,000,000"),
    ("The rate is 45%", "45%"),
    ("no digits here", None),
    ("", None),
])
def test_extract(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("predicted, gold", [
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac12", "1/2"),
    ("\\tfrac{7}{8}", "\\frac{7}{8}"),
    ("1,200", "1200"),
    ("$18.00", "18"),
    ("\\$18", "18"),
    ("5\\text{ cm}", "5"),
    ("18 dollars", "18"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("50\\%", "50"),
    ("50%", "50"),
    ("x = -2", "-2"),
    ("-\\frac{9}{2}", "-4.5"),
    ("\\text{(C)}", "C"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("(1,2)", "(1, 2)"),
    ("0.333333333", "0.333333333"),
])
def test_equivalent(predicted, gold):
    assert answers_match(predicted, gold), (normalize_answer(predicted), normalize_answer(gold))


@pytest.mark.parametrize("predicted, gold", [
    ("3", "4"),
    ("-2", "2"),
    ("1/3", "0.33"),         # exact fractions: 0.33 is not one third
    ("(1,2)", "(2,1)"),
    ("12", "1,2"),           # a tuple comma is not a thousands separator
    (None, "3"),
    ("", "3"),
])
def test_not_equivalent(predicted, gold):
    assert not answers_match(predicted, gold)


def test_score_math_keeps_the_evidence():
    verdict = score_math("Half of 24 is \\boxed{12}.", "12")
    assert verdict == {"extracted": "12", "gold": "12", "correct": True, "method": "math_verify"}
    assert score_math(None, "12") == {"extracted": None, "gold": "12", "correct": False, "method": "no_output"}
    assert score_math("   ", "12")["correct"] is False


@pytest.mark.parametrize("output, gold", [
    ("So the total is 18,", "18"),                       # trailing punctuation is not part of the answer
    ("3 + 4 = 7", "7"),                                  # the final result, not the first number
    ("$\\frac{\\sqrt{3}}{2}$", "\\sqrt{3}/2"),              # LaTeX equivalence, not string equality
])
def test_math_verify_decides_in_the_default_path(output, gold):
    verdict = score_math(output, gold)
    assert verdict["method"] == "math_verify" and verdict["correct"] is True, verdict


def test_math_verify_says_wrong_and_fallback_reads_what_it_cannot():
    assert score_math("3 + 4 = 8", "7") == {"extracted": "8", "gold": "7", "correct": False, "method": "math_verify"}
    fallback = score_math("The answer is (C)", "C")  # a multiple-choice letter: not math-verify's kind of answer
    assert fallback["method"] == "fallback" and fallback["correct"] is True


def test_a_verifier_is_not_a_chat_judge():
    import pytest

    from evaluation.config import JudgesConfig

    with pytest.raises(ValueError, match="benchmark of kind `verifiable`"):
        JudgesConfig(reward={"kind": "verifier"})
