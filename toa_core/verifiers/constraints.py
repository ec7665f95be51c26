"""IFEval-style instruction constraints, checked on the answer's text alone.

Each checker takes the response and its parameters and returns (passed, detail); `detail` says what was found,
so a reader of the candidate table can see why an answer failed. Written here rather than taken from a package:
IFEval's reference code ships inside lm-eval / google-research with nltk data and langdetect downloads; these
checks need neither and run offline.

Counting rules (stated so a prompt author knows what "50 words" means):
- a word is a run of letters/digits, with inner apostrophes or hyphens ("don't", "well-known" count once);
- a sentence ends at '.', '!' or '?' followed by whitespace or the end (abbreviations such as "e.g." count);
- paragraphs are separated by blank lines (or by a line of '***', IFEval's separator);
- a bullet is a line starting with '-', '*', '+' or 'N.' / 'N)' and a space; a heading a line starting with
  1-6 '#' and a space;
- keywords match whole words, case-insensitively; start/end phrases ignore case and surrounding whitespace.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n|\n\s*\*\*\*\s*\n")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S", re.MULTILINE)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.MULTILINE)
_JSON_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL | re.IGNORECASE)

Outcome = tuple[bool, str]


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    """Sentences by the end marks; a last sentence without one counts too."""
    pieces = _SENTENCE_END.split(text.strip())
    return sum(1 for piece in pieces if _WORD.search(piece))


def count_paragraphs(text: str) -> int:
    return sum(1 for piece in _PARAGRAPH_SPLIT.split(text.strip()) if piece.strip())


def _bounded(found: int, minimum: int | None, maximum: int | None, what: str) -> Outcome:
    passed = (minimum is None or found >= minimum) and (maximum is None or found <= maximum)
    wanted = (f"{minimum}..{maximum}" if minimum is not None and maximum is not None
              else f">= {minimum}" if minimum is not None else f"<= {maximum}")
    return passed, f"{found} {what} (wanted {wanted})"


def word_count(response: str, min: int | None = None, max: int | None = None) -> Outcome:  # noqa: A002
    return _bounded(count_words(response), min, max, "words")


def sentence_count(response: str, min: int | None = None, max: int | None = None) -> Outcome:  # noqa: A002
    return _bounded(count_sentences(response), min, max, "sentences")


def paragraph_count(response: str, min: int | None = None, max: int | None = None) -> Outcome:  # noqa: A002
    return _bounded(count_paragraphs(response), min, max, "paragraphs")


def bullet_count(response: str, min: int | None = None, max: int | None = None) -> Outcome:  # noqa: A002
    return _bounded(len(_BULLET.findall(response)), min, max, "bullet points")


def heading_count(response: str, min: int | None = None, max: int | None = None) -> Outcome:  # noqa: A002
    return _bounded(len(_HEADING.findall(response)), min, max, "markdown headings")


def _has_word(text: str, keyword: str) -> bool:
    return re.search(rf"(?<![^\W_]){re.escape(keyword.strip())}(?![^\W_])", text, re.IGNORECASE) is not None


def keywords(response: str, include: list[str] | None = None, exclude: list[str] | None = None) -> Outcome:
    missing = [word for word in include or [] if not _has_word(response, word)]
    present = [word for word in exclude or [] if _has_word(response, word)]
    problems = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + \
               ([f"contains forbidden {', '.join(map(repr, present))}"] if present else [])
    return not problems, "; ".join(problems) or "keywords as required"


def case(response: str, mode: str) -> Outcome:
    letters = [c for c in response if c.isalpha()]
    if not letters:
        return False, "no letters"
    wrong = sum(1 for c in letters if (c.isupper() if mode == "lower" else c.islower()))
    return wrong == 0, f"{wrong} letter(s) not {mode}case"


def json_format(response: str) -> Outcome:
    """The whole answer is one JSON value (a ```json fence around it is allowed, as IFEval allows)."""
    text = response.strip()
    fenced = _JSON_FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        json.loads(text)
    except ValueError as error:
        return False, f"not JSON: {error}"
    return True, "valid JSON"


def starts_with(response: str, text: str) -> Outcome:
    passed = response.strip().lower().startswith(text.strip().lower())
    return passed, f"starts with {response.strip()[:len(text.strip())]!r} (wanted {text.strip()!r})"


def ends_with(response: str, text: str) -> Outcome:
    stripped = response.strip()
    passed = stripped.lower().endswith(text.strip().lower())
    return passed, f"ends with {stripped[-len(text.strip()):]!r} (wanted {text.strip()!r})"


def no_commas(response: str) -> Outcome:
    found = response.count(",")
    return found == 0, f"{found} comma(s)"


def quoted(response: str) -> Outcome:
    text = response.strip()
    passed = len(text) >= 2 and text[0] == text[-1] == '"'
    return passed, "wrapped in double quotes" if passed else "not wrapped in double quotes"


# kind -> (checker, {parameter: (type, required)}); "min"/"max" checkers need at least one of the two.
CONSTRAINTS: dict[str, tuple[Callable[..., Outcome], dict[str, tuple[type, bool]]]] = {
    "word_count": (word_count, {"min": (int, False), "max": (int, False)}),
    "sentence_count": (sentence_count, {"min": (int, False), "max": (int, False)}),
    "paragraph_count": (paragraph_count, {"min": (int, False), "max": (int, False)}),
    "bullet_count": (bullet_count, {"min": (int, False), "max": (int, False)}),
    "heading_count": (heading_count, {"min": (int, False), "max": (int, False)}),
    "keywords": (keywords, {"include": (list, False), "exclude": (list, False)}),
    "case": (case, {"mode": (str, True)}),
    "json": (json_format, {}),
    "starts_with": (starts_with, {"text": (str, True)}),
    "ends_with": (ends_with, {"text": (str, True)}),
    "no_commas": (no_commas, {}),
    "quoted": (quoted, {}),
}


def constraint_problem(kind: str, params: dict[str, Any]) -> tuple[str, str] | None:
    """(parameter, what is wrong) for a constraint whose parameters its checker cannot use, else None."""
    _, schema = CONSTRAINTS[kind]
    for name, (expected, required) in schema.items():
        value = params.get(name)
        if value is None:
            if required:
                return name, f"'{kind}' needs `{name}` ({expected.__name__})"
            continue
        if expected is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return name, f"must be a whole number >= 0, got {value!r}"
        if expected is str and (not isinstance(value, str) or not value.strip()):
            return name, f"must be a non-empty string, got {value!r}"
        if expected is list and (not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value)):
            return name, f"must be a list of non-empty strings, got {value!r}"
    if "min" in schema:
        low, high = params.get("min"), params.get("max")
        if low is None and high is None:
            return "min", f"'{kind}' needs `min`, `max` or both"
        if low is not None and high is not None and low > high:
            return "max", f"max {high} is below min {low}"
    if kind == "keywords" and not (params.get("include") or params.get("exclude")):
        return "include", "'keywords' needs a non-empty `include` or `exclude` list"
    if kind == "case" and params.get("mode") not in ("lower", "upper"):
        return "mode", f"must be 'lower' or 'upper', got {params.get('mode')!r}"
    return None
