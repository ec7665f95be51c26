"""Prompt templates: packaged defaults, overrides from files, placeholder validation, message layout."""
from __future__ import annotations

import pytest

from toa_core.config import SearchConfig
from toa_core.prompts import PROMPTS_VERSION, TEMPLATE_PLACEHOLDERS, PromptTemplateError, load_templates, pack_answers
from toa_core.records import Prompt
from toa_core.simulated import ScriptedChatModel, ScriptedReward
from toa_core.strategies import SearchContext

SINGLE = Prompt.from_messages([{"role": "user", "content": "Why is the sky blue?"}])
MULTI = Prompt.from_messages([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Why is the sky blue?"},
])


def test_packaged_templates_load_and_use_exactly_their_placeholders():
    templates = load_templates()
    assert templates.task == "chat" and PROMPTS_VERSION
    filled = templates.refine.format(question="Q?", answer="A!")
    assert "Q?" in filled and "A!" in filled and "{" not in filled
    assert "{source}" in templates.translate and "{translation}" in templates.refine_translation
    assert len(templates.fingerprint()) == 12 and templates.fingerprint() == load_templates().fingerprint()
    assert set(TEMPLATE_PLACEHOLDERS) == {"refine", "aggregate", "translate", "refine_translation",
                                          "aggregate_translation"}


def test_an_override_file_replaces_one_template(tmp_path):
    (tmp_path / "mine.txt").write_text("Improve this.\nQ: {question}\nA: {answer}\n")
    templates = load_templates({"refine": "mine.txt"}, base_dir=tmp_path)
    assert templates.refine == "Improve this.\nQ: {question}\nA: {answer}"  # the file's last newline is dropped
    assert templates.aggregate == load_templates().aggregate
    assert templates.fingerprint() != load_templates().fingerprint()


def test_search_context_applies_search_prompts_overrides(tmp_path):
    path = tmp_path / "refine.txt"
    path.write_text("R {question} | {answer}")
    ctx = SearchContext([ScriptedChatModel("A")], ScriptedReward(default=1.0),
                        SearchConfig(prompts={"refine": str(path)}))
    assert ctx.templates.refine_messages(SINGLE, "blue light scatters") == [
        {"role": "user", "content": "R Why is the sky blue? | blue light scatters"}]


@pytest.mark.parametrize("text, message", [
    ("Q: {question}", r"'refine' \(.*bad.txt\): missing \{answer\}"),
    ("Q: {question} A: {answer} {feedback}", r"unknown \{feedback\}"),
    ("Q: {question} A: {answer} {", r"literal braces as '\{\{' and '\}\}'"),
    ("{question}{answer}{0}", r"unknown \{0\}"),
])
def test_a_template_with_wrong_placeholders_is_rejected_with_the_fix(tmp_path, text, message):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(PromptTemplateError, match=message):
        load_templates({"refine": str(tmp_path / "bad.txt")})


def test_literal_braces_may_be_written_doubled(tmp_path):
    (tmp_path / "json.txt").write_text('Answer as {{"answer": ...}}.\n{question}\n{answer}')
    templates = load_templates({"refine": str(tmp_path / "json.txt")})
    assert templates.refine.format(question="q", answer="a").startswith('Answer as {"answer": ...}.')


def test_unknown_template_names_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(PromptTemplateError, match="unknown template name.*refinement.*known: refine, aggregate"):
        load_templates({"refinement": "x.txt"})
    with pytest.raises(PromptTemplateError, match=r"search.prompts.aggregate: cannot read template file '.*nope.txt'"):
        load_templates({"aggregate": str(tmp_path / "nope.txt")})
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(PromptTemplateError, match="'aggregate'.*is empty"):
        load_templates({"aggregate": str(tmp_path / "empty.txt")})


def test_fresh_and_refine_messages_for_chat():
    templates = load_templates()
    assert templates.fresh_messages(MULTI) == MULTI.messages
    refine = templates.refine_messages(MULTI, "Rayleigh scattering.")
    # Earlier turns are kept; the last user turn becomes the refine prompt; the answer is not a message of its own.
    assert refine[:3] == MULTI.messages[:3]
    assert refine[3]["role"] == "user" and len(refine) == 4
    assert refine[3]["content"] == templates.refine.format(question="Why is the sky blue?",
                                                          answer="Rayleigh scattering.")
    assert templates.refine_messages(SINGLE, "x") == [
        {"role": "user", "content": templates.refine.format(question=SINGLE.question, answer="x")}]


def test_answers_with_braces_are_inserted_verbatim():
    templates = load_templates()
    content = templates.refine_messages(SINGLE, "use {question} and {{x}}")[0]["content"]
    assert "use {question} and {{x}}" in content


def test_aggregate_messages_for_chat_pack_the_answers_into_the_system_message():
    templates = load_templates()
    messages = templates.aggregate_messages(MULTI, ["first", "second\n"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("Be brief.\n\n" + templates.aggregate)
    assert system.endswith("## Response 1:\nfirst\n\n## Response 2:\nsecond")
    assert messages[1:] == MULTI.messages[1:]
    with pytest.raises(ValueError, match="at least one answer"):
        templates.aggregate_messages(MULTI, [])


def test_translation_messages_fill_source_and_translation():
    templates = load_templates(task="translation")
    source = Prompt.from_messages([{"role": "user", "content": "Guten Morgen"}])
    assert templates.fresh_messages(source) == [
        {"role": "user", "content": templates.translate.format(source="Guten Morgen")}]
    (refine,) = templates.refine_messages(source, "Good morning")
    assert refine["content"] == templates.refine_translation.format(source="Guten Morgen", translation="Good morning")
    (aggregate,) = templates.aggregate_messages(source, ["Good morning", "Morning"])
    assert aggregate["content"] == templates.aggregate_translation.format(
        source="Guten Morgen", translation=pack_answers(["Good morning", "Morning"], header="Translation"))


def test_context_rejects_templates_for_another_task():
    with pytest.raises(ValueError, match="templates are for task 'chat' but search.task is 'translation'"):
        SearchContext([ScriptedChatModel("A")], ScriptedReward(default=1.0), SearchConfig(task="translation"),
                      templates=load_templates())


def test_context_rejects_duplicate_agent_names():
    with pytest.raises(ValueError, match="unique; repeated: A"):
        SearchContext([ScriptedChatModel("A"), ScriptedChatModel("A")], ScriptedReward(), SearchConfig())
