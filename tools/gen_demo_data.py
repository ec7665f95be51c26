"""Write the demo's instruction-constraint prompts: synthesis prompts and a held-out evaluation set of the same kind.

    .venv/bin/python tools/gen_demo_data.py            # rewrite both files
    .venv/bin/python tools/gen_demo_data.py --check    # exit 1 if the committed files differ from what this writes

Every prompt asks for a short answer about a topic under one IFEval-style constraint that a checker can decide
(toa_core/verifiers): a word limit (8, 10 or 12 words), no commas, a given first word, avoiding the word "the".
These four were chosen because the untrained SmolLM2-135M satisfies them sometimes (measured on 8 topics, 40 new
tokens: greedy 1-2 of 8 per constraint, sampled at temperature 0.8 between 1 in 8 and 1 in 2), so a search finds
passing answers to learn from while the base model still fails most of the held-out items; "all lower case" and a
closing phrase (never or almost never satisfied) and a required word (almost always) were dropped. The two files use
the same constraint templates over disjoint topic lists, so the held-out set measures the constraint-following the
synthesized data teaches, not memorised prompts (tests/runconfig/test_demo_config.py checks that no topic or prompt
is shared). Deterministic: no randomness beyond a fixed-seed shuffle.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYNTHESIS_FILE = ROOT / "data" / "prompts" / "constraints_synthesis.jsonl"
HELDOUT_FILE = ROOT / "evaluation" / "data" / "constraints_heldout.jsonl"

SYNTHESIS_TOPICS = [
    "the moon", "coffee", "bicycles", "rain", "libraries", "volcanoes", "honey bees", "lighthouses", "chess",
    "bread", "glaciers", "owls", "trains", "gardens", "thunderstorms", "maps", "penguins", "candles",
    "deserts", "violins", "bridges", "tea", "snow", "kites", "sunflowers", "kangaroos", "volleyball", "pizza",
    "harbors", "lightning", "butterflies", "telescopes", "pyramids", "snails", "orchards", "skyscrapers",
    "submarines", "cookies", "ponds", "spiders",
]
HELDOUT_TOPICS = [
    "the sun", "chocolate", "sailing boats", "wind", "museums", "earthquakes", "ants", "castles", "football",
    "cheese", "rivers", "foxes", "airplanes", "forests", "rainbows", "clocks", "dolphins", "lanterns",
    "mountains", "pianos", "tunnels", "milk", "fog", "balloons", "islands", "wolves", "buses", "farms",
    "comets", "umbrellas", "whales", "markets", "caves", "guitars", "parks", "frogs", "deserted beaches",
    "windmills", "apples", "stars", "horses", "newspapers", "waterfalls", "tigers", "boats", "schools",
    "clouds", "rabbits", "cameras", "bakeries", "oceans", "robots", "sandcastles", "trumpets", "meadows",
    "squirrels", "hot air balloons", "lakes", "pencils", "festivals",
]
WORD_LIMITS = [8, 10, 12]
FIRST_WORDS = ["Today", "Many", "Every", "Sometimes", "People", "Yes"]

# (family, prompt template, checks); {topic}, {limit} and {first} are filled in. "avoid" comes last in the
# rotation so that no topic starting with "the" (index 0 of each list) gets it.
TEMPLATES = [
    ("short", "Describe {topic} in at most {limit} words.", [{"kind": "word_count", "min": 1, "max": "{limit}"}]),
    ("nocomma", "Write one sentence about {topic}. Do not use any commas.", [{"kind": "no_commas"}]),
    ("start", "Write one sentence about {topic}. Start your answer with the word \"{first}\".",
     [{"kind": "starts_with", "text": "{first}"}]),
    ("avoid", "Write one sentence about {topic} without using the word \"the\".",
     [{"kind": "keywords", "exclude": ["the"]}]),
]


def records(topics: list[str], prefix: str) -> list[dict]:
    """One prompt per topic, the constraint families taking turns so each file holds them in equal shares."""
    rows = []
    for index, topic in enumerate(topics):
        family, template, checks = TEMPLATES[index % len(TEMPLATES)]
        turn = index // len(TEMPLATES)  # the family's own counter: limits and first words rotate within a family
        limit, first = WORD_LIMITS[turn % len(WORD_LIMITS)], FIRST_WORDS[turn % len(FIRST_WORDS)]
        fill = lambda text: text.replace("{topic}", topic).replace("{first}", first).replace(  # noqa: E731
            "{limit}", str(limit))

        def value_of(value):
            if value == "{limit}":
                return limit
            return [fill(v) for v in value] if isinstance(value, list) else fill(value) if isinstance(value, str) else value

        verify = [{key: value_of(value) for key, value in check.items()} for check in checks]
        rows.append({"id": f"{prefix}-{index:03d}-{family}", "prompt": fill(template), "verify": verify})
    random.Random(0).shuffle(rows)
    return rows


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args(argv)
    if set(SYNTHESIS_TOPICS) & set(HELDOUT_TOPICS):
        raise SystemExit(f"topics shared by both files: {sorted(set(SYNTHESIS_TOPICS) & set(HELDOUT_TOPICS))}")
    outputs = {SYNTHESIS_FILE: render(records(SYNTHESIS_TOPICS, "syn")),
               HELDOUT_FILE: render(records(HELDOUT_TOPICS, "heldout"))}
    stale = [path for path, text in outputs.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from what tools/gen_demo_data.py writes; rerun it", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)} ({text.count(chr(10))} prompts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
