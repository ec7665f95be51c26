"""The texts of evaluation sets for the decontamination index (toa_core.decontamination).

`build_index_from_sources` (behind `toa decontam build-index`) reads benchmark files in their official formats,
through the loaders of evaluation/benchmarks.py where there is one (so the index sees exactly the items that
evaluation scores), and indexes the question of each item without toaflow's own prompt templates.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from evaluation.benchmarks import LOADERS, MATH_INSTRUCTION, BenchmarkError, EvalItem, read_records
from evaluation.config import BenchmarkConfig
from toa_core.decontamination import DecontaminationIndex




def item_text(item: EvalItem) -> str:
    """What a training prompt would copy from an evaluation item: the question itself, without our templates."""
    if item.task == "translation" and item.source_text:
        return item.source_text
    prefix = MATH_INSTRUCTION.format(problem="")
    if item.task == "math" and item.instruction.startswith(prefix):
        return item.instruction[len(prefix):]
    return item.instruction


def benchmark_items(config: BenchmarkConfig) -> list[tuple[str, str]]:
    """All (item_id, text) of a benchmark of the evaluation config (every item, not the evaluated subset)."""
    return [(item.item_id, item_text(item)) for item in LOADERS[config.kind](config)]


def _field_rows(path: Path, field: str, id_field: str | None) -> Iterator[tuple[str, str]]:
    """(id, text) from a JSON/JSONL/Parquet/CSV file; a list field (MT-Bench `turns`) gives one item per entry."""
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows: Iterable[dict[str, Any]] = list(csv.DictReader(handle))
    else:
        rows = read_records(path)
    for number, row in enumerate(rows):
        if field not in row:
            raise BenchmarkError(f"{path}: record {number + 1} has no field '{field}' (keys: {', '.join(sorted(row))})")
        item_id = str(row.get(id_field, number)) if id_field else str(number)
        value = row[field]
        if isinstance(value, list):
            for turn, text in enumerate(value):
                yield f"{item_id}/{turn}", str(text)
        else:
            yield item_id, str(value)


@dataclass(frozen=True)
class SourceSpec:
    """One benchmark of the shipped index: where its file comes from and how to read it."""
    name: str
    files: tuple[str, ...]  # relative to the sources folder
    origin: str  # repository @ commit : path
    license: str
    kind: str | None = None  # an evaluation loader kind, or None for a plain field
    field: str | None = None
    id_field: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def items(self, folder: Path) -> list[tuple[str, str]]:
        paths = [folder / f for f in self.files]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(", ".join(missing))
        if self.kind == "wmt":
            template = str(folder / self.files[0].replace("_cs_", "_{lang}_"))
            config = BenchmarkConfig(name=self.name, kind="wmt", source=template, **dict(self.options))
            return benchmark_items(config)
        if self.kind is not None:
            return benchmark_items(BenchmarkConfig(name=self.name, kind=self.kind, source=str(paths[0]),
                                                   **dict(self.options)))
        return [pair for path in paths for pair in _field_rows(path, self.field or "prompt", self.id_field)]


# The benchmarks of toa_core/data/decontamination/index.npz (toa_core/data/decontamination/README.md says where
# each file comes from; the files themselves are not part of toaflow).
SHIPPED_SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("alpaca_eval", ("alpaca_eval_instructions.jsonl",),
               "tatsu-lab/alpaca_eval (the 805 AlpacaEval instructions)", "cc-by-nc-4.0", field="instruction",
               id_field="index"),
    SourceSpec("arena_hard_v0.1", ("arena_hard_v0.1_question.jsonl",),
               "lmarena/arena-hard-auto@196f6b8:data/arena-hard-v0.1/question.jsonl", "apache-2.0", kind="arena_hard"),
    SourceSpec("arena_hard_v2.0", ("arena_hard_v2.0_question.jsonl",),
               "lmarena/arena-hard-auto@196f6b8:data/arena-hard-v2.0/question.jsonl", "apache-2.0", kind="arena_hard",
               options=(("version", "v2.0"),)),
    SourceSpec("math500", ("math500_test.jsonl",), "MATH-500 (openai/prm800k split; copy in oceanypt/TOA@8ae41d5:"
               "data/math/math_test_openai_500.jsonl)", "mit", kind="math500"),
    SourceSpec("gsm8k_test", ("gsm8k_test.jsonl",), "openai/grade-school-math@3101c7d:grade_school_math/data/test.jsonl",
               "mit", kind="gsm8k"),
    SourceSpec("wmt22", tuple(f"wmt22_{lang}_to_en.jsonl" for lang in ("cs", "de", "is", "ru", "zh")),
               "WMT'22 general test sources cs/de/is/ru/zh->en (oceanypt/TOA@8ae41d5:data/wmt22_test/)",
               "wmt-research-only", kind="wmt"),
    SourceSpec("truthfulqa", ("truthfulqa.csv",), "sylinrl/TruthfulQA:TruthfulQA.csv (817 questions)", "apache-2.0",
               field="Question"),
    SourceSpec("mt_bench", ("mt_bench_question.jsonl",),
               "lm-sys/FastChat@0e6d3e4:fastchat/llm_judge/data/mt_bench/question.jsonl (both turns)", "apache-2.0",
               field="turns", id_field="question_id"),
    SourceSpec("ifeval", ("ifeval_input_data.jsonl",), "google-research IFEval input_data.jsonl", "apache-2.0",
               field="prompt", id_field="key"),
)


def build_index_from_sources(folder: str | Path, extra: Iterable[tuple[str, str, str]] = (),
                             ngram: int = 13, stride: int = 4,
                             report: Callable[[str], None] = print) -> tuple[DecontaminationIndex, list[str]]:
    """Index every shipped benchmark whose files are in `folder`, plus `extra` (name, file, field) entries.

    Returns the index and the names of the shipped benchmarks whose files were missing."""
    folder = Path(folder)
    index = DecontaminationIndex(ngram=ngram, stride=stride)
    missing = []
    for spec in SHIPPED_SOURCES:
        try:
            items = spec.items(folder)
        except FileNotFoundError as error:
            missing.append(spec.name)
            report(f"skipped {spec.name}: file not found ({error})")
            continue
        index.add_benchmark(spec.name, items, source=spec.origin, license=spec.license)
        report(f"{spec.name}: {len(items)} items")
    for name, path, field in extra:
        items = list(_field_rows(Path(path), field, None))
        index.add_benchmark(name, items, source=str(path))
        report(f"{name}: {len(items)} items from {path}")
    return index, missing
