"""Decontamination: normalisation, the n-gram index (build, files, merge) and the shipped index's verdicts on
seeded benchmark items and unrelated prompts."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from toa_core.decontamination import (SHIPPED_INDEX, DecontaminationError, DecontaminationIndex, load_indexes,
                                      normalise)

REPO = Path(__file__).resolve().parents[2]

# Five AlpacaEval instructions (tatsu-lab/alpaca_eval, CC BY-NC 4.0; ids = positions among the 805) and five
# MATH-500 problems (MIT; ids = unique_id), quoted as test data: the shipped index must find each of them.
ALPACA_EVAL = {
    "0": "What are the names of some famous actors that started their careers on Broadway?",
    "1": "How did US states get their names?",  # 7 tokens: matched as a whole message only
    "3": "What is some cool music from the 1920s?",  # 8 tokens: matched as a contiguous run
    "10": "do you think retinoid is effective on removing the acne? because I have a lot of it",
    "42": "How did mankind discover that the earth was spherical, and why did they initially believe it to be flat?",
}
MATH_500 = {
    "test/precalculus/807.json": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter "
                                 "your answer in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
    "test/intermediate_algebra/1994.json": "Define\n\\[p = \\sum_{k = 1}^\\infty \\frac{1}{k^2} \\quad \\text{and} "
                                           "\\quad q = \\sum_{k = 1}^\\infty \\frac{1}{k^3}.\\]Find a way to write\n"
                                           "\\[\\sum_{j = 1}^\\infty \\sum_{k = 1}^\\infty \\frac{1}{(j + k)^3}\\]in "
                                           "terms of $p$ and $q.$",
    "test/algebra/2584.json": "If $f(x) = \\frac{3x-2}{x-2}$, what is the value of $f(-2) +f(-1)+f(0)$? Express "
                              "your answer as a common fraction.",
    "test/number_theory/572.json": "How many positive whole-number divisors does 196 have?",
    "test/algebra/1349.json": "The results of a cross-country team's training run are graphed below. Which student "
                              "has the greatest average speed? [asy]\nfor ( int i = 1; i <= 7; ++i )\n{\n\n"
                              "draw((i,0)--(i,6));\n}\n",
}


def mangled(text: str) -> str:
    """The same text with other whitespace and case."""
    return "  " + "\n\t ".join(text.swapcase().split(" ")) + " \n"


def unrelated_prompts() -> list[str]:
    """200 prompts of our own that share no benchmark item: the shipped demo prompts and templated requests."""
    shipped = [json.loads(line)["instruction"] for line in
               (REPO / "data" / "prompts" / "mixed_instructions.jsonl").read_text().splitlines()]
    asks = ["Write a short poem about", "Give me three facts about", "Explain to a ten-year-old how",
            "List the pros and cons of", "Draft a polite email to my landlord about"]
    topics = ["the tides of the Baltic sea", "sourdough starters that smell of acetone", "a bike chain that skips",
              "our neighbourhood's new recycling rules", "the history of the paperclip", "compost in a small flat",
              "learning to juggle at forty", "a cat that ignores its scratching post"]
    closings = ["", " Keep it under fifty words.", " Use a friendly tone.", " Add one example."]
    templated = [f"{a} {t}.{c}" for a, t, c in itertools.product(asks, topics, closings)]
    prompts = (shipped + templated)[:200]
    assert len(prompts) == 200
    return prompts


@pytest.fixture(scope="module")
def shipped():
    return DecontaminationIndex.load(SHIPPED_INDEX)


def test_normalisation_ignores_case_whitespace_and_punctuation():
    assert normalise("Hello,   WORLD!\n  It's\tme.") == ["hello", "world", "it", "s", "me"]
    assert normalise("Ｆｕｌｌｗｉｄｔｈ") == ["fullwidth"]  # NFKC
    assert normalise("月相为盈凸月 ok") == ["月", "相", "为", "盈", "凸", "月", "ok"]  # one token per CJK character


def test_seeded_benchmark_items_are_all_found_and_unrelated_prompts_are_not(shipped):
    seeded = [("alpaca_eval", i, t) for i, t in ALPACA_EVAL.items()] + [("math500", i, t) for i, t in MATH_500.items()]
    texts = [t for _, _, t in seeded] + [mangled(t) for _, _, t in seeded]
    matches = shipped.check(texts + unrelated_prompts())
    found = matches[:len(texts)]
    assert all(m is not None for m in found), [t for t, m in zip(texts, found) if m is None]
    assert [(m.benchmark, m.item_id) for m in found] == [(b, i) for b, i, _ in seeded] * 2
    assert all(m.ngram and m.tokens >= 7 for m in found)
    assert [t for t, m in zip(unrelated_prompts(), matches[len(texts):]) if m is not None] == []


def test_items_inside_longer_prompts(shipped):
    long_item = ALPACA_EVAL["42"]
    embedded = f"My teacher asked us this today. {long_item} Please answer in two paragraphs."
    [match] = shipped.check([embedded])
    assert (match.benchmark, match.item_id) == ("alpaca_eval", "42") and len(match.ngram.split()) == 13
    # a 7-token item inside a longer message is no evidence of a copy
    assert shipped.check([f"My friend wondered: {ALPACA_EVAL['1']} I said I had no idea."]) == [None]


def test_the_shipped_index_covers_the_named_benchmarks(shipped):
    names = {b.name: b.items for b in shipped.benchmarks}
    assert names["alpaca_eval"] == 805 and names["math500"] == 500 and names["gsm8k_test"] == 1319
    assert names["arena_hard_v0.1"] == 500 and names["arena_hard_v2.0"] == 750 and names["wmt22"] > 8000
    assert shipped.ngram == 13
    assert SHIPPED_INDEX.stat().st_size < 2_000_000  # hashes only: no benchmark text is shipped
    assert b"Broadway" not in SHIPPED_INDEX.read_bytes()


def small_index(**options) -> DecontaminationIndex:
    index = DecontaminationIndex(**options)
    index.add_benchmark("bench", [
        ("a", "the quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree "
              "and the sun sets slowly behind the distant purple hills of the quiet valley"),
        ("b", "name three rivers that flow into the black sea"),  # 9 tokens
        ("c", "is it raining"),  # 3 tokens
    ], source="test", license="mit")
    return index


def test_stride_finds_any_shared_run_of_n_plus_stride_minus_one_tokens():
    index = small_index()
    tokens = "the quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree and the sun " \
             "sets slowly behind the distant purple hills of the quiet valley".split()
    for start in range(len(tokens) - 16 + 1):
        run = " ".join(tokens[start:start + 16])
        [match] = index.check([f"unrelated words first {run} and unrelated words after"])
        assert match is not None and match.item_id == "a", start
    assert index.check(["Name three rivers that flow into the Black Sea, please."])[0].item_id == "b"
    assert index.check(["Is it raining?"])[0].item_id == "c"
    assert index.check(["Is it raining in Paris?", "three rivers that flow into"]) == [None, None]


def test_boilerplate_shared_by_many_items_is_dropped():
    index = DecontaminationIndex(max_items_per_ngram=2)
    shared = "your entire response should be in english and in all lowercase letters no capitals allowed"
    index.add_benchmark("ifeval-like", [(str(i), f"topic number {i} is here. {shared}") for i in range(5)])
    assert index.check([shared]) == [None]


def test_save_load_merge(tmp_path):
    index = small_index()
    path = index.save(tmp_path / "one.npz")
    other = DecontaminationIndex()
    other.add_benchmark("other", [("z", "completely different words that make up a long enough item for "
                                        "thirteen grams to exist at all")])
    other_path = other.save(tmp_path / "two.npz")
    merged = load_indexes([path, other_path], shipped=False)
    assert [b.name for b in merged.benchmarks] == ["bench", "other"]
    [a, z] = merged.check(["Is it raining", "Completely different words that make up a long enough item for "
                                            "thirteen grams to exist"])
    assert (a.benchmark, a.item_id, z.benchmark, z.item_id) == ("bench", "c", "other", "z")
    with pytest.raises(DecontaminationError, match="in both indexes"):
        merged.merge(DecontaminationIndex.load(path))
    with pytest.raises(DecontaminationError, match="not found"):
        DecontaminationIndex.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an index")
    with pytest.raises(DecontaminationError, match="not a decontamination index"):
        DecontaminationIndex.load(tmp_path / "bad.npz")


def test_hashes_are_stable_across_processes():
    """The index is a file: token and window hashes must not depend on the process (no Python hash())."""
    import subprocess
    import sys

    code = ("from toa_core.decontamination import _TokenHasher, window_hashes, normalise;"
            "print(int(window_hashes(_TokenHasher()(normalise('a b c d e f g h i j k l m')), 13)[0]))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=REPO).stdout for _ in range(2)}
    assert len(outputs) == 1 and int(outputs.pop()) > 0
