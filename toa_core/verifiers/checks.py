"""A prompt's `verify` field: which checks an answer to it must pass, read and run.

The field lives in the prompt's metadata (`metadata.verify`, filled at ingestion from the row's `verify` column
or from `synthesis.prompts.answer_field`; docs/data_formats.md). It is a list of checks, each a mapping with
`kind` and that kind's parameters (a single mapping is read as a list of one):

    {"kind": "math_answer", "answer": "\\frac{3}{4}"}    # gold final answer, compared with math-verify
    {"kind": "word_count", "max": 40}                   # also sentence_count, paragraph_count, bullet_count,
                                                        #   heading_count: `min`, `max` or both
    {"kind": "keywords", "include": ["ocean"], "exclude": ["blue"]}
    {"kind": "case", "mode": "lower"}                   # or "upper"
    {"kind": "json"}   {"kind": "no_commas"}   {"kind": "quoted"}
    {"kind": "starts_with", "text": "Dear"}   {"kind": "ends_with", "text": "Is there anything else?"}

An answer passes when every check passes. A field that is missing or that a checker cannot use raises
VerifySpecError naming the field (`metadata.verify[1].max`), never a silent failing score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from toa_core.verifiers.constraints import CONSTRAINTS, constraint_problem

VERIFY_FIELD = "verify"
MATH_KIND = "math_answer"
CHECK_KINDS = (MATH_KIND, *CONSTRAINTS)


class VerifySpecError(ValueError):
    """A prompt's `verify` field is missing or unusable. `field` is the dotted path at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Check:
    kind: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class CheckOutcome:
    kind: str
    passed: bool
    detail: str


def gold_math_answer(answer: Any) -> str:
    """The gold answer to compare with: GSM8K's worked solutions ("... #### 72") are read as what follows ####."""
    text = str(answer).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    return text


def parse_checks(value: Any, where: str = f"metadata.{VERIFY_FIELD}") -> list[Check]:
    """The checks a `verify` value asks for; VerifySpecError names `where[i].param` when one is unusable."""
    if value is None:
        raise VerifySpecError(where, "missing; the verifier reward needs the checks each prompt's answer must "
                                     "pass (a `verify` list in the prompt record, or synthesis.prompts.answer_field "
                                     "for a gold math answer; docs/data_formats.md)")
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list) or not items:
        raise VerifySpecError(where, f"must be a non-empty list of checks ({{kind: ...}}), got {value!r}")
    checks = []
    for index, item in enumerate(items):
        here = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise VerifySpecError(here, f"a check is a mapping with `kind`, got {item!r}")
        kind = item.get("kind")
        if kind not in CHECK_KINDS:
            raise VerifySpecError(f"{here}.kind", f"unknown check {kind!r}; known: {', '.join(CHECK_KINDS)}")
        params = {key: val for key, val in item.items() if key != "kind"}
        known = {"answer"} if kind == MATH_KIND else set(CONSTRAINTS[kind][1])
        unknown = sorted(set(params) - known)
        if unknown:
            raise VerifySpecError(f"{here}.{unknown[0]}", f"'{kind}' takes no `{unknown[0]}`; it takes: "
                                                          f"{', '.join(sorted(known)) or 'nothing'}")
        if kind == MATH_KIND:
            if params.get("answer") is None or not gold_math_answer(params["answer"]):
                raise VerifySpecError(f"{here}.answer", "'math_answer' needs the gold `answer`")
        else:
            problem = constraint_problem(kind, params)
            if problem is not None:
                raise VerifySpecError(f"{here}.{problem[0]}", problem[1])
        checks.append(Check(kind, params))
    return checks


def checks_for_metadata(metadata: Mapping[str, Any], prompt_id: str = "") -> list[Check]:
    """The checks of a prompt from its metadata; the error says which prompt and which field."""
    try:
        return parse_checks(metadata.get(VERIFY_FIELD))
    except VerifySpecError as error:
        if prompt_id:
            raise VerifySpecError(error.field, f"prompt {prompt_id}: {str(error).split(': ', 1)[1]}") from None
        raise


def run_check(check: Check, response: str) -> CheckOutcome:
    if check.kind == MATH_KIND:
        from toa_core.verifiers.math_answers import score_math  # sympy only when math is checked

        judgment = score_math(response, gold_math_answer(check.params["answer"]))
        return CheckOutcome(check.kind, bool(judgment["correct"]),
                            f"extracted {judgment['extracted']!r} vs gold {judgment['gold']!r} ({judgment['method']})")
    checker, _ = CONSTRAINTS[check.kind]
    passed, detail = checker(response, **check.params)
    return CheckOutcome(check.kind, passed, detail)


def run_checks(checks: list[Check], response: str | None) -> list[CheckOutcome]:
    """Every check's outcome, in order. An empty or blank answer fails every check (no comma in nothing is no
    instruction followed)."""
    if response is None or not response.strip():
        return [CheckOutcome(check.kind, False, "empty answer") for check in checks]
    return [run_check(check, response) for check in checks]
