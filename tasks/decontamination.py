"""Decontamination in a run: the index (shipped + config's evaluation sets), the prompt check, the answer check.

- `decontaminate_prompts` (a task, after ingest): every prompt message is checked; matched prompts are written to
  `runs/<id>/decontamination/prompts.jsonl` (prompt id, source line, benchmark, item id, the matching n-gram)
  and left out of the shard plan. The summary is `decontamination/summary.json` (reused on resume).
- `contaminated_targets` (called by ranking): SFT targets / DPO chosen that overlap an evaluation set; ranking
  is redone with them excluded, and they are written to `decontamination/answers.jsonl`.
- `build_index_from_sources` (behind `toa decontam build-index`): reads benchmark files in their official
  formats (evaluation/benchmarks.py loaders where there is one) and writes an index of hashes.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from evaluation.benchmarks import LOADERS, MATH_INSTRUCTION, BenchmarkError, EvalItem, read_records
from evaluation.config import BenchmarkConfig
from infra.store import Store, open_store
from toa_core.decontamination import DecontaminationConfig, DecontaminationIndex, Match, load_indexes
from toa_core.ingest import read_prompts
from runconfig import RunConfig

log = logging.getLogger(__name__)
PROMPTS_FILE = "decontamination/prompts.jsonl"
ANSWERS_FILE = "decontamination/answers.jsonl"
SUMMARY_FILE = "decontamination/summary.json"


# ----------------------------------------------------------------------------------------------------------
# Benchmark texts


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


# ----------------------------------------------------------------------------------------------------------
# The run's index


def run_index(cfg: RunConfig) -> tuple[DecontaminationIndex, list[dict[str, str]]]:
    """The index a run checks against, and the evaluation sets it could not read (name, reason)."""
    settings: DecontaminationConfig = cfg.synthesis.decontaminate
    index = load_indexes(settings.index_files, shipped=settings.shipped_index)
    unchecked = []
    if settings.evaluation_sets:
        for benchmark in cfg.evaluation.benchmarks:
            name = f"eval:{benchmark.name}"
            try:
                items = benchmark_items(benchmark)
            except BenchmarkError as error:
                unchecked.append({"benchmark": benchmark.name, "reason": str(error)[:300]})
                log.warning("decontamination: evaluation set '%s' could not be read (%s); only the shipped index "
                            "covers it", benchmark.name, str(error)[:200])
                continue
            extra = DecontaminationIndex(index.ngram, index.min_tokens, index.stride, index.max_items_per_ngram)
            extra.add_benchmark(name, items, source=benchmark.source or benchmark.kind)
            index.merge(extra)
    return index, unchecked


def _prompt_texts(prompts) -> tuple[list[str], list[int]]:
    texts, owners = [], []
    for number, prompt in enumerate(prompts):
        for message in prompt.messages:
            if message["role"] in ("user", "system"):
                texts.append(message["content"])
                owners.append(number)
    return texts, owners


def check_prompts(index: DecontaminationIndex, prompts) -> list[dict[str, Any]]:
    """Quarantine records of the prompts that overlap the index."""
    texts, owners = _prompt_texts(prompts)
    records: dict[int, dict[str, Any]] = {}
    for owner, match in zip(owners, index.check(texts)):
        if match is not None and owner not in records:
            prompt = prompts[owner]
            records[owner] = {"prompt_id": prompt.prompt_id, "line": prompt.metadata.get("line"),
                              "source": prompt.source, **match.to_dict(), "reason": _reason(match)}
    return [records[k] for k in sorted(records)]


def _reason(match: Match) -> str:
    return (f"overlaps evaluation set {match.benchmark} item {match.item_id} "
            f"({match.tokens} normalised tokens in common)")


@task(name="decontaminate-prompts", cache_policy=NO_CACHE)
def decontaminate_prompts(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """Check the run's prompts against the evaluation sets; returns the summary (with the quarantined ids)."""
    store = open_store(cfg.store)
    key = f"runs/{run_id}/{SUMMARY_FILE}"
    if store.exists(key):
        return store.read_json(key)
    settings = cfg.synthesis.decontaminate
    if not settings.enabled:
        return {"enabled": False, "checked": 0, "quarantined": 0, "by_benchmark": {}, "quarantined_ids": [],
                "index": [], "unchecked": []}
    index, unchecked = run_index(cfg)
    prompts = read_prompts(store, run_id)
    records = check_prompts(index, prompts)
    by_benchmark: dict[str, int] = {}
    for record in records:
        by_benchmark[record["benchmark"]] = by_benchmark.get(record["benchmark"], 0) + 1
    if records:
        store.write_text(f"runs/{run_id}/{PROMPTS_FILE}",
                         "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        log.warning("decontamination: %d of %d prompts overlap evaluation sets (%s); quarantined in %s",
                    len(records), len(prompts), ", ".join(f"{k}: {v}" for k, v in sorted(by_benchmark.items())),
                    store.uri(f"runs/{run_id}/{PROMPTS_FILE}"))
    summary = {"enabled": True, "checked": len(prompts), "quarantined": len(records),
               "by_benchmark": by_benchmark, "quarantined_ids": [r["prompt_id"] for r in records],
               "index": index.summary(), "unchecked": unchecked,
               "rule": f"normalised {index.ngram}-gram overlap (items of {index.min_tokens}-{index.ngram - 1} tokens: "
                       f"the whole item; shorter items: the whole message)"}
    store.write_json(key, summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Chosen answers


def contaminated_targets(index: DecontaminationIndex, sft_tables: Iterable[pa.Table]) -> list[dict[str, Any]]:
    """SFT targets (= DPO chosen) whose text overlaps the index: [{candidate_id, prompt_id, model, match...}]."""
    rows = [row for table in sft_tables for row in table.select(["prompt_id", "candidate_id", "model", "messages"])
            .to_pylist()]
    matches = index.check([row["messages"][-1]["content"] for row in rows])
    return [{"prompt_id": row["prompt_id"], "candidate_id": row["candidate_id"], "model": row["model"],
             **match.to_dict(), "reason": _reason(match)} for row, match in zip(rows, matches) if match is not None]


def rank_without_contaminated_answers(cfg: RunConfig, store: Store, run_id: str,
                                      rank: Callable[[list[str]], tuple]) -> tuple:
    """Run `rank(excluded_ids)` and, while a target overlaps an evaluation set, again with it excluded.

    Returns rank's result; flagged answers are written to decontamination/answers.jsonl."""
    settings = cfg.synthesis.decontaminate
    result = rank([])
    if not (settings.enabled and settings.check_answers):
        return result
    index, _ = run_index(cfg)
    flagged: list[dict[str, Any]] = []
    for _ in range(5):  # each pass replaces the flagged targets by the next eligible answer
        found = contaminated_targets(index, result[:2])
        if not found:
            break
        flagged.extend(found)
        result = rank([f["candidate_id"] for f in flagged])
    if flagged:
        store.write_text(f"runs/{run_id}/{ANSWERS_FILE}",
                         "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in flagged))
        log.warning("decontamination: %d chosen answers overlapped evaluation sets and were replaced", len(flagged))
    return result


def decontamination_counts(summary: dict[str, Any]) -> dict[str, int]:
    """The manifest's counts of the decontaminate stage: prompts checked, quarantined, and per benchmark."""
    counts = {"prompts_checked": summary.get("checked", 0), "prompts_quarantined": summary.get("quarantined", 0)}
    counts.update({f"quarantined.{name}": value for name, value in sorted(summary.get("by_benchmark", {}).items())})
    return counts
