"""Each IFEval-style constraint on hand-made answers that pass and answers that fail."""
from __future__ import annotations

import pytest

from toa_core.verifiers.checks import Check, run_check, run_checks

CASES = [
    # (check, passing answer, failing answer)
    ({"kind": "word_count", "min": 3, "max": 5}, "Well-known cats don't bark.", "Cats."),
    ({"kind": "word_count", "max": 4}, "Short and sweet.", "This answer has far too many words in it."),
    ({"kind": "sentence_count", "min": 2, "max": 2}, "One idea. Another idea!", "Only one idea here."),
    ({"kind": "sentence_count", "max": 1}, "A single sentence without a full stop", "First. Second. Third."),
    ({"kind": "paragraph_count", "min": 2}, "First paragraph.\n\nSecond paragraph.", "Just one paragraph.\nSame one."),
    ({"kind": "paragraph_count", "max": 1, "min": 1}, "One block.", "Part one.\n***\nPart two."),
    ({"kind": "bullet_count", "min": 3, "max": 3}, "Fruits:\n- apple\n* pear\n1. plum", "- apple\n- pear"),
    ({"kind": "heading_count", "min": 1}, "# Title\nText under it.", "#NoSpace is not a heading"),
    ({"kind": "keywords", "include": ["ocean", "salt water"]}, "The Ocean is salt water.", "The oceanic shelf is wet."),
    ({"kind": "keywords", "exclude": ["blue"]}, "The sea looks bluish grey.", "The sea is Blue today."),
    ({"kind": "case", "mode": "lower"}, "all lower case, 42 times.", "Not all lower case."),
    ({"kind": "case", "mode": "upper"}, "SHOUTING 101!", "SHOUTING mostly"),
    ({"kind": "json"}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ({"kind": "json"}, ' [1, "two", null] ', "Here is JSON: {\"a\": 1}"),
    ({"kind": "starts_with", "text": "Dear friend"}, "  dear friend, hello.", "Hello, dear friend."),
    ({"kind": "ends_with", "text": "Is there anything else?"}, "Done. Is there anything else?\n",
     "Is there anything else? Done."),
    ({"kind": "no_commas"}, "No commas at all.", "Yes, one comma."),
    ({"kind": "quoted"}, '"All in quotes."', '"Half quoted.'),
]


@pytest.mark.parametrize("spec,good,bad", CASES, ids=[f"{c[0]['kind']}-{i}" for i, c in enumerate(CASES)])
def test_constraint_passes_and_fails(spec, good, bad):
    check = Check(spec["kind"], {k: v for k, v in spec.items() if k != "kind"})
    passed = run_check(check, good)
    assert passed.passed, passed.detail
    failed = run_check(check, bad)
    assert not failed.passed, failed.detail
    assert failed.detail  # a reader can see why it failed


def test_an_empty_answer_fails_every_check_even_those_nothing_satisfies():
    checks = [Check("no_commas", {}), Check("word_count", {"max": 5}), Check("keywords", {"exclude": ["x"]})]
    for empty in ("", "  \n", None):
        assert [o.passed for o in run_checks(checks, empty)] == [False, False, False]
    assert not run_check(Check("case", {"mode": "lower"}), "123").passed  # no letters: not lower case
