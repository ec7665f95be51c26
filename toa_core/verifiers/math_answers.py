"""Math answers: decide whether a solution's final answer equals the gold answer.

`score_math` asks HF's `math-verify` first (`parse` the gold and the output, `verify` them: LaTeX and plain
expressions, symbolic equivalence such as \\frac{\\sqrt{3}}{2} = \\sqrt{3}/2, the result of "3 + 4 = 7", "18,").
Only when math-verify finds no answer in the output (or cannot read the gold) does toaflow's own extraction and
normalisation below decide; the judgment records which one did (`method`).

Our fallback's extraction order (the first that matches wins):
1. the last \\boxed{...} / \\fbox{...} (nested braces allowed),
2. GSM8K's "#### n",
3. "the (final) answer is X" / "Answer: X",
4. the last number in the text (with sign, thousands commas, decimals, a/b fractions, percent).

Normalisation makes "\\frac{1}{2}", "1/2", "0.5" and "\\dfrac12" equal, drops "$", "\\text{...}" wrappers, units
after a number ("18 dollars", "5\\text{ cm}"), degree signs, "\\%" / "%", thousands commas, "x = " prefixes and
trailing periods; numbers are compared exactly as fractions (decimals with a 1e-6 relative tolerance).
"""
from __future__ import annotations

import re
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_PHRASE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^\s*answer\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_LATEX_FRACTION = re.compile(r"-?\\[dt]?frac\s*(?:\{[^{}]*\}|\w)\s*(?:\{[^{}]*\}|\w)")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?%?|-?\.\d+%?")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the {...} group opening at text[start], with nesting; None if unbalanced."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:index], index + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or "\\boxed 5") in `text`."""
    matches = list(_BOXED.finditer(text))
    for match in reversed(matches):
        group = _braced(text, match.end())
        if group is not None:
            return group[0]
        bare = re.match(r"([^\s$]+)", text[match.end():])
        if bare:
            return bare.group(1)
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer written in a solution, or None when there is none."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().splitlines()[0].strip() if text.rsplit("####", 1)[1].strip() else None
    for pattern in (_ANSWER_LINE, _ANSWER_PHRASE):
        found = pattern.findall(text)
        if found:
            answer = found[-1].strip().splitlines()[0].strip().rstrip(".")
            number = _NUMBER.findall(answer)
            # "The answer is 42 apples" -> 42; "The answer is \frac{3}{4}" keeps the latex.
            if number and not re.search(r"\\[a-z]+|[\^{]", answer):
                return number[0]
            return answer
    # The last number, unless a latex fraction ends later ("... so x = -\\frac{3}{4}").
    numbers = list(_NUMBER.finditer(text))
    fractions = list(_LATEX_FRACTION.finditer(text))
    if fractions and (not numbers or fractions[-1].end() >= numbers[-1].end()):
        return fractions[-1].group(0).strip()
    return numbers[-1].group(0).strip() if numbers else None


def _strip_text_wrappers(s: str) -> str:
    # \text{cm} -> cm, \mathrm{x} -> x, \mbox{..} -> ..; repeated for nesting.
    previous = None
    while previous != s:
        previous = s
        s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", s)
    return s


def _frac_to_slash(s: str) -> str:
    """\\frac{a}{b}, \\dfrac{a}{b}, \\tfrac12 -> (a)/(b) (parentheses only when needed)."""
    out, index = [], 0
    pattern = re.compile(r"\\[dt]?frac")
    while True:
        match = pattern.search(s, index)
        if not match:
            out.append(s[index:])
            return "".join(out)
        out.append(s[index:match.start()])
        cursor = match.end()
        parts = []
        for _ in range(2):
            while cursor < len(s) and s[cursor] == " ":
                cursor += 1
            group = _braced(s, cursor)
            if group is not None:
                parts.append(_frac_to_slash(group[0]))
                cursor = group[1]
            elif cursor < len(s):
                parts.append(s[cursor])  # \frac12: single-character arguments
                cursor += 1
        if len(parts) < 2:
            out.append(s[match.start():])
            return "".join(out)
        wrap = lambda p: p if re.fullmatch(r"-?[\w.]+", p) else f"({p})"  # noqa: E731
        out.append(f"{wrap(parts[0])}/{wrap(parts[1])}")
        index = cursor


def normalize_answer(answer: str | None) -> str:
    """A canonical string for comparison (see the module docstring for what is removed)."""
    if answer is None:
        return ""
    s = str(answer).strip()
    s = _strip_text_wrappers(s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\;", "")
    s = s.replace("\\ ", " ").replace("\\displaystyle", "")
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree", "", s)
    s = s.replace("\\%", "%")
    s = _frac_to_slash(s)
    s = re.sub(r"^\s*[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = s.strip().rstrip(".").strip()
    # A number followed by unit words: "18 dollars", "5 cm", "3 hours per day" -> the number.
    unit = re.fullmatch(r"(-?[\d,]*\.?\d+(?:/\d+)?%?)\s*[a-zA-Z][a-zA-Z .]*", s)
    if unit:
        s = unit.group(1)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators, not tuple commas
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)  # "(C)" -> "C"
    s = s.replace(" ", "")
    s = s.rstrip("%") if re.fullmatch(r"-?[\d.]+%", s) else s
    return s.lower() if re.fullmatch(r"[A-Za-z]+", s) else s


def _as_number(s: str) -> Fraction | None:
    s = s.strip("()") if re.fullmatch(r"\(-?[\d./]+\)", s) else s
    try:
        if re.fullmatch(r"-?\d+(?:\.\d+)?/-?\d+(?:\.\d+)?", s):
            numerator, denominator = s.split("/")
            return Fraction(numerator) / Fraction(denominator)
        if re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)", s):
            return Fraction(s)
        match = re.fullmatch(r"\((-?[\d.]+)\)/\((-?[\d.]+)\)", s)
        if match:
            return Fraction(match.group(1)) / Fraction(match.group(2))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """True when the predicted answer equals the gold one after normalisation (numbers compared as values)."""
    a, b = normalize_answer(predicted), normalize_answer(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    if x is not None and y is not None:
        return x == y or abs(float(x) - float(y)) <= 1e-6 * max(1.0, abs(float(y)))
    return False


def _math_verify_parse(text: str, timeout: int | None) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=timeout)


def _parse_gold(gold: str, timeout: int | None) -> list:
    """A bare gold answer ("\\sqrt{3}/2", "\\frac12") is often only read once it is marked as math."""
    for text in (gold, f"${gold}$", f"\\boxed{{{gold}}}"):
        parsed = _math_verify_parse(text, timeout)
        if parsed:
            return parsed
    return []


def verify_with_math_verify(output: str, gold: str) -> tuple[bool | None, str | None]:
    """(correct, extracted) by math-verify; (None, None) when it finds no answer in the output or the gold.

    math-verify's timeouts use signal.alarm, which only works in the main thread; elsewhere (Prefect task
    threads) it runs without them."""
    import threading

    from math_verify import verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = _parse_gold(gold, timeout)
    predicted = _math_verify_parse(output, timeout)
    if not gold_parsed or not predicted:
        return None, None
    extracted = str(predicted[-1]) if isinstance(predicted[-1], str) else str(predicted[0])
    return bool(verify(gold_parsed, predicted, timeout_seconds=timeout)), extracted


def score_math(output: str | None, gold: str) -> dict:
    """Extraction and verdict for one output (kept in the judgments file so a reader can audit each one).

    A failed or empty generation is wrong (`method: "no_output"`), never left out."""
    if not output or not output.strip():
        return {"extracted": None, "gold": gold, "correct": False, "method": "no_output"}
    correct, extracted = verify_with_math_verify(output, gold)
    if correct is not None:
        return {"extracted": extracted, "gold": gold, "correct": correct, "method": "math_verify"}
    extracted = extract_answer(output)
    return {"extracted": extracted, "gold": gold, "correct": answers_match(extracted, gold), "method": "fallback"}
