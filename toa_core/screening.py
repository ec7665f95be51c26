"""Which usable candidates may become an SFT target or a DPO "chosen", and which text the datasets take.

Ranking (toa_core.ranking) orders every usable candidate by reward; this module screens them shard by shard:
- truncated: `finish_reason == "length"` (the answer was cut off at max_tokens) is never a target unless
  `ranking.allow_truncated`; it may still be a DPO "rejected";
- refinement leakage (toa_core.leakage): refine/aggregate answers with a separable preamble/postscript keep
  their place in the ranking and datasets take the stripped text; inseparable ones are never a target;
- excluded ids: candidates ruled out from outside (e.g. a chosen answer that overlaps an evaluation set,
  tasks/decontamination.py) are never a target.
Everything is counted, in total and per model, so reports can show who leaks or truncates.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from toa_core.leakage import LeakageConfig, LeakageRules, check_answer, load_rules

SCREEN_COLUMNS = ["kind", "finish_reason", "text"]
# Per-model counters (also the keys of ScreeningCounts.per_model[model]).
PER_MODEL_KEYS = ("usable", "truncated", "leak_checked", "leak_stripped", "leak_inseparable")


@dataclass
class ScreeningCounts:
    """What screening found among usable candidates."""
    truncated: int = 0
    leak_checked: int = 0
    leak_stripped: int = 0
    leak_inseparable: int = 0
    excluded_by_id: int = 0
    per_model: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: dict.fromkeys(
        PER_MODEL_KEYS, 0)))
    examples: list[dict[str, str]] = field(default_factory=list)  # a few leaks, for reports


class Screen:
    """Screens candidate tables for ranking; one instance per ranking run (it accumulates the counts)."""

    MAX_EXAMPLES = 5

    def __init__(self, allow_truncated: bool = False, leakage: LeakageConfig | None = None,
                 excluded_ids: Collection[str] = ()) -> None:
        self.allow_truncated = allow_truncated
        self.leakage = leakage or LeakageConfig()
        self.rules: LeakageRules | None = load_rules(self.leakage) if self.leakage.enabled else None
        self.excluded = pa.array(sorted(set(excluded_ids)), pa.string())
        self.counts = ScreeningCounts()

    def screen(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the usable rows of one source (columns: candidate_id, model, kind, finish_reason, text), return
        (chosen_ok bool[n], text_start int32[n], text_end int32[n]; -1 = to the end)."""
        n = table.num_rows
        ok = np.ones(n, dtype=bool)
        start = np.zeros(n, dtype=np.int32)
        end = np.full(n, -1, dtype=np.int32)
        models = table["model"].to_pylist()
        for model in models:
            self.counts.per_model[model]["usable"] += 1

        truncated = pc.fill_null(pc.equal(table["finish_reason"], "length"), False).to_numpy(zero_copy_only=False)
        self.counts.truncated += int(truncated.sum())
        for row in np.flatnonzero(truncated):
            self.counts.per_model[models[row]]["truncated"] += 1
        if not self.allow_truncated:
            ok &= ~truncated

        if len(self.excluded):
            excluded = pc.is_in(table["candidate_id"], value_set=self.excluded).to_numpy(zero_copy_only=False)
            self.counts.excluded_by_id += int(excluded.sum())
            ok &= ~excluded

        if self.rules is not None:
            checked = pc.is_in(table["kind"], value_set=pa.array(self.leakage.kinds, pa.string()))
            rows = np.flatnonzero(pc.fill_null(checked, False).to_numpy(zero_copy_only=False))
            texts = table["text"].take(pa.array(rows, pa.int64())).to_pylist() if len(rows) else []
            for row, text in zip(rows, texts):
                per_model = self.counts.per_model[models[row]]
                per_model["leak_checked"] += 1
                self.counts.leak_checked += 1
                verdict = check_answer(text, self.rules)
                if verdict.verdict == "clean":
                    continue
                per_model[f"leak_{verdict.verdict}"] += 1
                if verdict.verdict == "stripped":
                    self.counts.leak_stripped += 1
                    start[row] = verdict.start
                    end[row] = verdict.end if verdict.end is not None else -1
                else:
                    self.counts.leak_inseparable += 1
                    ok[row] = False
                if len(self.counts.examples) < self.MAX_EXAMPLES:
                    self.counts.examples.append({"model": models[row], "verdict": verdict.verdict,
                                                 "rule": verdict.rule or "", "text": text[:300]})
        return ok, start, end


def apply_span(text: str, start: int, end: int) -> str:
    """The dataset text of a candidate: its kept span (end -1 = to the end of the text)."""
    return text[start:] if end < 0 else text[start:end]


def same_answer(first: str, second: str) -> bool:
    """Near-duplicates for pairing: the same text after whitespace and case normalisation."""
    return " ".join(first.split()).casefold() == " ".join(second.split()).casefold()
