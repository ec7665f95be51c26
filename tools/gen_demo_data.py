"""Write the demo's instruction-constraint prompts: synthesis prompts and a held-out evaluation set of the same kind.

    .venv/bin/python tools/gen_demo_data.py            # rewrite both files
    .venv/bin/python tools/gen_demo_data.py --check    # exit 1 if the committed files differ from what this writes

Every prompt asks for a short answer about a topic under one IFEval-style constraint that a checker can decide
(toa_core/verifiers): all lower case, a fixed closing phrase, a word limit, a required word. The two files use the
same constraint templates over disjoint topic lists, so the held-out set measures the constraint-following the
synthesized data teaches, not memorised prompts (tests/configs check that no topic or prompt is shared).
Deterministic: no randomness beyond a fixed-seed shuffle.
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
    "deserts", "violins", "bridges", "tea", "snow", "kites",
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
KEYWORDS = ["bright", "quiet", "ancient", "gentle", "busy", "golden"]
CLOSING = "That is all."

# (family, prompt template, checks); {topic} and {keyword} are filled in.
TEMPLATES = [
    ("lowercase", "Write one sentence about {topic}. Use only lowercase letters: no capital letters at all.",
     [{"kind": "case", "mode": "lower"}]),
    ("closing", f"Write one sentence about {{topic}}, then end your answer with the exact words \"{CLOSING}\"",
     [{"kind": "ends_with", "text": CLOSING}]),
    ("short", "Describe {topic} in at most 12 words.", [{"kind": "word_count", "min": 1, "max": 12}]),
    ("keyword", "Write one sentence about {topic} that uses the word \"{keyword}\".",
     [{"kind": "keywords", "include": ["{keyword}"]}]),
]


def records(topics: list[str], prefix: str) -> list[dict]:
    """One prompt per topic, the constraint families taking turns so each file holds them in equal shares."""
    rows = []
    for index, topic in enumerate(topics):
        family, template, checks = TEMPLATES[index % len(TEMPLATES)]
        keyword = KEYWORDS[index % len(KEYWORDS)]
        fill = lambda text: text.replace("{topic}", topic).replace("{keyword}", keyword)  # noqa: E731
        verify = [{key: ([fill(v) for v in value] if isinstance(value, list) else
                         fill(value) if isinstance(value, str) else value) for key, value in check.items()}
                  for check in checks]
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
