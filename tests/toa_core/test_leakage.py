"""Leakage rules: what is stripped, what is inseparable, what is left alone; bad rules are clear errors."""
from __future__ import annotations

import pytest

from toa_core.leakage import LeakageConfig, LeakageError, check_answer, load_rules

RULES = load_rules()


@pytest.mark.parametrize("text, kept", [
    ("Here's a rewritten version of the user's request that is clearer:\n\nList three tips for plants.",
     "List three tips for plants."),
    ("**Here is an improved answer:** Water boils at 100 °C at sea level.", "Water boils at 100 °C at sea level."),
    ("Sure! Here's a more complete explanation:\n\nRayleigh scattering makes the sky blue.",
     "Rayleigh scattering makes the sky blue."),
    ("Rayleigh scattering makes the sky blue.\n\n---\n\n**Changes made:**\n- fixed a typo",
     "Rayleigh scattering makes the sky blue."),
    ("Use a list.\n\nIn this revised version, I added an example.", "Use a list."),
    # from a demo run (SmolLM2 refining itself)
    ("Here's a modified version of the request that addresses the initial question:\n\nDivide distance by time.",
     "Divide distance by time."),
])
def test_separable_talk_is_stripped(text, kept):
    verdict = check_answer(text, RULES)
    assert verdict.verdict == "stripped" and verdict.kept(text) == kept


@pytest.mark.parametrize("text", [
    "I have revised the answer to be clearer and more accurate.",
    "The changes I made were: fixed grammar, added an example.",
    "Here is an improved version:",
    "Tuples are immutable. The original response wrongly said they can be changed.",
    "Response 2 is more accurate, so the answer is 12.",
    # from a demo run
    "You've already provided a clear answer to the request. I'll just add a bit more detail to the earlier answer:",
    "The earlier answer is incorrect as it assumes the total distance is a multiple of the average speed.",
    "### Original response\nThe first step is to start.\n\n### Improved response\nStart small.",
])
def test_inseparable_talk_makes_the_answer_ineligible(text):
    assert check_answer(text, RULES).verdict == "inseparable"


@pytest.mark.parametrize("text", [
    "The first version of Python came out in 1991; Python 3 followed in 2008.",
    "Here is a better way to water plants: check the soil first.",
    "Changes to the tax code in 2020 affected many households.",
    "This is a new feature of Python 3.10: structural pattern matching.",
    "The original version of the song was recorded in 1962.",
])
def test_ordinary_answers_are_left_alone(text):
    assert check_answer(text, RULES).verdict == "clean"


def test_bad_patterns_are_named(tmp_path):
    with pytest.raises(ValueError, match="not a valid regular expression"):
        LeakageConfig(extra_mention=["(unclosed"])
    bad = tmp_path / "rules.yaml"
    bad.write_text("preamble: ['(oops']\n")
    with pytest.raises(LeakageError, match="rules.yaml: preamble pattern"):
        load_rules(LeakageConfig(rules_file=str(bad)))
    with pytest.raises(LeakageError, match="not found"):
        load_rules(LeakageConfig(rules_file=str(tmp_path / "missing.yaml")))
