"""Prompt templates (refine, aggregate, translate) and the messages the strategies send.

The templates are text files packaged in `toa_core/prompts/` and written in our own words. A run can
replace any of them with its own file through `search.prompts` (`{name: path}`), e.g.
`prompts: {refine: configs/prompts/my_refine.txt}`. Every template is checked when it is loaded: it must use
exactly its placeholders (`{question}`/`{answer}`, `{source}`/`{translation}`), and literal braces must be
doubled (`{{`, `}}`) because templates are filled with `str.format`.

How messages are built (the layout of toa_method.md section 2):
- fresh, chat: the prompt's own messages, unchanged.
- fresh, translation: one user message, the `translate` template filled with the source (the prompt's question).
- refine: the prompt's earlier turns (system message, previous turns), then ONE user message: the refine template
  filled with (question, answer). For single-turn prompts that is exactly one user message, as in the reference.
- aggregate, chat: a system message = the aggregate template + the packed responses ("## Response i:" blocks),
  then the prompt's non-system messages (an original system prompt is put in front of the aggregate text).
- aggregate, translation: one user message, the `aggregate_translation` template with the packed translations.
"""
from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Mapping, Sequence

from toa_core.records import Message, Prompt

PROMPTS_VERSION = "1"  # bump when a packaged template's wording changes (it is recorded in manifests)

# name -> the placeholders the template must use, no more, no fewer
TEMPLATE_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "refine": frozenset({"question", "answer"}),
    "aggregate": frozenset(),
    "translate": frozenset({"source"}),
    "refine_translation": frozenset({"source", "translation"}),
    "aggregate_translation": frozenset({"source", "translation"}),
}

Task = Literal["chat", "translation"]


class PromptTemplateError(ValueError):
    """A template file is missing, unreadable, or uses the wrong placeholders."""


def _placeholders(text: str, name: str, origin: str) -> set[str]:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as exc:  # e.g. a lone "{" or "}"
        raise PromptTemplateError(
            f"prompt template '{name}' ({origin}): {exc}; write literal braces as '{{{{' and '}}}}'"
        ) from None
    return fields


def validate_template(name: str, text: str, origin: str = "<string>") -> str:
    """Check that `text` uses exactly the placeholders of template `name`; return it unchanged."""
    if name not in TEMPLATE_PLACEHOLDERS:
        raise PromptTemplateError(
            f"unknown prompt template '{name}' ({origin}); known: {', '.join(TEMPLATE_PLACEHOLDERS)}"
        )
    expected = TEMPLATE_PLACEHOLDERS[name]
    found = _placeholders(text, name, origin)
    problems = []
    if missing := expected - found:
        problems.append("missing " + ", ".join("{" + f + "}" for f in sorted(missing)))
    if unknown := found - expected:
        problems.append("unknown " + ", ".join("{" + f + "}" for f in sorted(unknown)))
    if problems:
        wanted = ", ".join("{" + f + "}" for f in sorted(expected)) or "no placeholders"
        raise PromptTemplateError(
            f"prompt template '{name}' ({origin}): {'; '.join(problems)}. It must use {wanted}; "
            "write literal braces as '{{' and '}}'."
        )
    if not text.strip():
        raise PromptTemplateError(f"prompt template '{name}' ({origin}) is empty")
    return text


def _packaged_text(name: str) -> str:
    return (resources.files("toa_core") / "prompts" / f"{name}.txt").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Templates:
    """The five validated template texts plus the task they are used for."""
    refine: str
    aggregate: str
    translate: str
    refine_translation: str
    aggregate_translation: str
    task: Task = "chat"

    def fingerprint(self) -> str:
        """A short hash of all template texts, for manifests (which wording produced a dataset)."""
        digest = hashlib.sha256()
        for name in TEMPLATE_PLACEHOLDERS:
            digest.update(name.encode() + b"\0" + getattr(self, name).encode("utf-8") + b"\0")
        return digest.hexdigest()[:12]

    # --- messages -------------------------------------------------------------------------------------

    def fresh_messages(self, prompt: Prompt) -> list[Message]:
        """What a model answering from scratch receives."""
        if self.task == "translation":
            return [{"role": "user", "content": self.translate.format(source=prompt.question)}]
        return [dict(m) for m in prompt.messages]

    def refine_messages(self, prompt: Prompt, answer: str) -> list[Message]:
        """What a model improving `answer` receives (no feedback, no reward: 'refine without feedback')."""
        if self.task == "translation":
            return [{"role": "user", "content": self.refine_translation.format(source=prompt.question, translation=answer)}]
        content = self.refine.format(question=prompt.question, answer=answer)
        return _earlier_turns(prompt) + [{"role": "user", "content": content}]

    def aggregate_messages(self, prompt: Prompt, answers: Sequence[str]) -> list[Message]:
        """What a MoA aggregator receives: the previous layer's answers, in the order given."""
        if not answers:
            raise ValueError("aggregate_messages needs at least one answer")
        if self.task == "translation":
            packed = pack_answers(answers, header="Translation")
            return [{"role": "user", "content": self.aggregate_translation.format(source=prompt.question, translation=packed)}]
        system_parts = [m["content"] for m in prompt.messages if m["role"] == "system"]
        system_parts.append(self.aggregate.format() + "\n\n" + pack_answers(answers, header="Response"))
        rest = [dict(m) for m in prompt.messages if m["role"] != "system"]
        return [{"role": "system", "content": "\n\n".join(system_parts)}] + rest


def pack_answers(answers: Sequence[str], header: str = "Response") -> str:
    """'## Response 1:' blocks, 1-based, one per answer, separated by blank lines."""
    return "\n\n".join(f"## {header} {i}:\n{text.strip()}" for i, text in enumerate(answers, start=1))


def _earlier_turns(prompt: Prompt) -> list[Message]:
    """The messages before the last user turn (system prompt, earlier conversation)."""
    for position in range(len(prompt.messages) - 1, -1, -1):
        if prompt.messages[position]["role"] == "user":
            return [dict(m) for m in prompt.messages[:position]]
    raise ValueError(f"prompt {prompt.prompt_id} has no user message")


def load_templates(
    overrides: Mapping[str, str | Path] | None = None,
    *,
    task: Task = "chat",
    base_dir: str | Path | None = None,
) -> Templates:
    """Load the packaged templates, replacing any named in `overrides` (name -> file path).

    Relative override paths are resolved against `base_dir` (default: the working directory). Every template,
    packaged or not, is validated; errors name the template, the file and the fix.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(TEMPLATE_PLACEHOLDERS))
    if unknown:
        raise PromptTemplateError(
            f"search.prompts: unknown template name(s) {', '.join(unknown)}; "
            f"known: {', '.join(TEMPLATE_PLACEHOLDERS)}"
        )
    texts: dict[str, str] = {}
    for name in TEMPLATE_PLACEHOLDERS:
        if name in overrides:
            path = Path(overrides[name]).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PromptTemplateError(
                    f"search.prompts.{name}: cannot read template file '{path}': {exc}"
                ) from None
            origin = str(path)
        else:
            text, origin = _packaged_text(name), f"packaged toa_core/prompts/{name}.txt"
        # A trailing newline of the file is not part of the prompt.
        texts[name] = validate_template(name, text.rstrip("\n"), origin)
    return Templates(task=task, **texts)
