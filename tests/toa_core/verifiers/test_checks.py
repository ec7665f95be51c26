"""The `verify` field: parsing (errors name the field), math answers through math-verify."""
from __future__ import annotations

import pytest

from toa_core.verifiers.checks import (Check, VerifySpecError, checks_for_metadata, parse_checks, run_check,
                                       run_checks)


@pytest.mark.parametrize("gold,answer", [
    ("\\frac{\\sqrt{3}}{2}", "So the value is $\\boxed{\\sqrt{3}/2}$."),
    ("0.5", "The answer is \\boxed{\\frac{1}{2}}"),
    ("1/2", "Half: $\\dfrac12$"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "48 + 24 = 72, so she sold \\boxed{72} clips."),
    ("18", "She makes 9 * 2 = $18 every day."),
])
def test_math_answer_accepts_equivalent_forms(gold, answer):
    outcome = run_check(Check("math_answer", {"answer": gold}), answer)
    assert outcome.passed, outcome.detail


@pytest.mark.parametrize("gold,answer", [
    ("\\frac{\\sqrt{3}}{2}", "So the value is $\\boxed{\\sqrt{2}/2}$."),
    ("#### 72", "She sold \\boxed{70} clips."),
    ("18", "I do not know."),
    ("18", ""),
])
def test_math_answer_rejects_wrong_answers(gold, answer):
    assert not run_check(Check("math_answer", {"answer": gold}), answer).passed


def test_every_check_runs_and_reports_in_order():
    checks = parse_checks([{"kind": "math_answer", "answer": "4"}, {"kind": "ends_with", "text": "Done."}])
    outcomes = run_checks(checks, "2 + 2 = \\boxed{4}. Done.")
    assert [(o.kind, o.passed) for o in outcomes] == [("math_answer", True), ("ends_with", True)]
    assert [o.passed for o in run_checks(checks, "\\boxed{5}. Done.")] == [False, True]


def test_a_single_mapping_is_one_check():
    assert parse_checks({"kind": "json"}) == [Check("json", {})]


@pytest.mark.parametrize("value,field", [
    (None, "metadata.verify"),
    ([], "metadata.verify"),
    (["word_count"], "metadata.verify[0]"),
    ([{"kind": "json"}, {"kind": "sentences"}], "metadata.verify[1].kind"),
    ([{"kind": "word_count"}], "metadata.verify[0].min"),
    ([{"kind": "word_count", "min": 9, "max": 3}], "metadata.verify[0].max"),
    ([{"kind": "word_count", "max": "ten"}], "metadata.verify[0].max"),
    ([{"kind": "math_answer"}], "metadata.verify[0].answer"),
    ([{"kind": "math_answer", "answer": "3", "tolerance": 1}], "metadata.verify[0].tolerance"),
    ([{"kind": "case", "mode": "title"}], "metadata.verify[0].mode"),
    ([{"kind": "keywords"}], "metadata.verify[0].include"),
    ([{"kind": "ends_with"}], "metadata.verify[0].text"),
])
def test_unusable_field_is_an_error_naming_it(value, field):
    with pytest.raises(VerifySpecError) as caught:
        parse_checks(value)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


def test_missing_field_names_the_prompt_and_the_field():
    with pytest.raises(VerifySpecError, match=r"metadata.verify: prompt abc123: missing"):
        checks_for_metadata({"line": 3}, "abc123")
