"""Refinement leakage: answers from refine/aggregate steps that talk about the revision instead of answering.

A refine prompt shows a model an earlier answer; small models (and large ones, less often) then open with
"Here's a revised answer that corrects any mistakes...", close with "The changes I made were: ...", or speak of
"the original response". A model trained on such targets learns to talk about revisions nobody asked for.

The rules are data: `toa_core/rules/leakage.yaml` (preamble, postscript and mention patterns, see its header),
extended or replaced from config (`LeakageConfig`). `check_answer(text, rules)` gives one of three verdicts:
- "clean": nothing found;
- "stripped": a preamble (first line, or its part up to a colon) and/or a postscript (a line that starts talk
  about the changes, and everything after it) were removed and what is left is a real answer without mentions;
  the verdict carries the kept span [start, end) of the original text, so the original stays in the candidate
  record and datasets take `text[start:end]`;
- "inseparable": nothing is left after stripping, or what is left still refers to the earlier answer(s): the
  answer may stay a DPO "rejected" but is never an SFT target or a DPO "chosen".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from toa_core.config import Section

RULES_FILE = Path(__file__).resolve().parent / "rules" / "leakage.yaml"
Verdict = Literal["clean", "stripped", "inseparable"]
CHECKED_KINDS = ("refine", "aggregate")

# Markdown decoration that may precede a preamble or a postscript heading ("**Changes made:**", "## Note", "> ...").
_DECORATION = re.compile(r"^[\s#*>_\-]*")
_SEPARATOR_LINE = re.compile(r"^\s*([-*_=]\s*){3,}$")
# Line-start rules see a line with its whitespace runs collapsed to one space and cut to its first
# _LINE_START_CHARS characters: a preamble or postscript is told by its opening words, and the bound keeps a
# config's own (extra_*) patterns from taking quadratic time on a line of 20,000 spaces or one huge line.
_WHITESPACE_RUN = re.compile(r"\s+")
_LINE_START_CHARS = 400


class LeakageError(ValueError):
    """A rules file or pattern that cannot be used; the message names the file or key and the pattern."""


class LeakageConfig(Section):
    """Which answers are checked for talk about the revision process, and with which rules."""
    enabled: bool = Field(True, description="check refine/aggregate answers (false: take them as they are)")
    rules_file: str | None = Field(None, description="a rules YAML replacing the shipped toa_core/rules/leakage.yaml")
    extra_preamble: list[str] = Field(default_factory=list, description="more preamble regexes (line starts)")
    extra_postscript: list[str] = Field(default_factory=list, description="more postscript regexes (line starts)")
    extra_mention: list[str] = Field(default_factory=list, description="more regexes that make an answer inseparable")
    kinds: list[Literal["fresh", "refine", "aggregate"]] = Field(
        default_factory=lambda: list(CHECKED_KINDS), description="candidate kinds that are checked")

    @field_validator("extra_preamble", "extra_postscript", "extra_mention")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"not a valid regular expression {pattern!r}: {error}") from None
        return patterns


@dataclass(frozen=True)
class LeakageRules:
    """Compiled rules (case-insensitive)."""
    preamble: tuple[re.Pattern[str], ...]
    postscript: tuple[re.Pattern[str], ...]
    mention: tuple[re.Pattern[str], ...]
    source: str


@dataclass(frozen=True)
class LeakageVerdict:
    verdict: Verdict
    start: int = 0  # kept span of the original text (stripped verdicts); the whole text otherwise
    end: int | None = None
    rule: str | None = None  # "preamble: <pattern>" / "postscript: ..." / "mention: ..." that decided it

    def kept(self, text: str) -> str:
        return text[self.start:self.end if self.end is not None else len(text)]


def load_rules(cfg: LeakageConfig | None = None) -> LeakageRules:
    """The shipped rules (or `cfg.rules_file`) plus the config's extra patterns, compiled."""
    cfg = cfg or LeakageConfig()
    return _load_rules(cfg.rules_file, tuple(cfg.extra_preamble), tuple(cfg.extra_postscript),
                       tuple(cfg.extra_mention))


@lru_cache(maxsize=16)
def _load_rules(rules_file: str | None, preamble: tuple[str, ...], postscript: tuple[str, ...],
                mention: tuple[str, ...]) -> LeakageRules:
    import yaml

    path = Path(rules_file) if rules_file else RULES_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise LeakageError(f"{path}: leakage rules file not found; fix synthesis.ranking.leakage.rules_file") from None
    except yaml.YAMLError as error:
        raise LeakageError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise LeakageError(f"{path}: expected a mapping with preamble, postscript and mention lists")

    def compiled(key: str, extra: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
        patterns = data.get(key) or []
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise LeakageError(f"{path}: '{key}' must be a list of regular expressions (strings)")
        out = []
        for pattern in list(patterns) + list(extra):
            try:
                out.append(re.compile(pattern, re.IGNORECASE))
            except re.error as error:
                raise LeakageError(f"{path}: {key} pattern {pattern!r} is not a valid regular expression: {error}") \
                    from None
        return tuple(out)

    return LeakageRules(compiled("preamble", preamble), compiled("postscript", postscript),
                        compiled("mention", mention), str(path))


def check_answer(text: str, rules: LeakageRules) -> LeakageVerdict:
    """Classify one answer (see the module doc). Pure and cheap: line starts are matched, mentions searched once."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    start, end, rule = 0, len(text), None

    # Preamble: the first non-empty line.
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None:
        line = lines[first]
        body, lead = _undecorated(line)
        pattern = _match_start(rules.preamble, body)
        if pattern is not None:
            rule = f"preamble: {pattern.pattern}"
            colon = line.find(":", lead)
            rest_of_line = line[colon + 1:].strip() if colon >= 0 else ""
            if colon >= 0 and len(rest_of_line.strip("*_ ")) > 0:
                start = offsets[first] + colon + 1  # "Here is the improved answer: The sky is blue because..."
                while start < len(text) and text[start] in " \t*_":  # the closing "**" of a bold preamble
                    start += 1
            else:
                start = offsets[first + 1]

    # Postscript: the first line after the preamble that starts talk about the changes; it and the rest go
    # (when that is the first line of the answer, nothing is left: the answer is only talk about changes).
    for i in range(len(lines)):
        if offsets[i + 1] <= start or not lines[i].strip():
            continue
        body, _ = _undecorated(lines[i] if offsets[i] >= start else text[start:offsets[i + 1]])
        pattern = _match_start(rules.postscript, body)
        if pattern is not None:
            end = max(offsets[i], start)
            rule = rule or f"postscript: {pattern.pattern}"
            break

    kept = _trim(text, start, end)
    if kept is None:
        return LeakageVerdict("inseparable", rule=rule)
    start, end = kept
    for pattern in rules.mention:
        if pattern.search(text, start, end):
            return LeakageVerdict("inseparable", rule=f"mention: {pattern.pattern}")
    if rule is None:
        return LeakageVerdict("clean")
    return LeakageVerdict("stripped", start=start, end=end, rule=rule)


def _undecorated(line: str) -> tuple[str, int]:
    lead = _DECORATION.match(line).end()
    return line[lead:].rstrip(), lead


def _match_start(patterns: tuple[re.Pattern[str], ...], body: str) -> re.Pattern[str] | None:
    body = _WHITESPACE_RUN.sub(" ", body)[:_LINE_START_CHARS]
    for pattern in patterns:
        if pattern.match(body):
            return pattern
    return None


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The kept span without surrounding blank space and trailing separator lines (---); None when empty."""
    while True:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start >= end:
            return None
        last_line_start = text.rfind("\n", start, end) + 1
        if last_line_start > start and _SEPARATOR_LINE.match(text[last_line_start:end]):
            end = last_line_start
            continue
        return start, end
