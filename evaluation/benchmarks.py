"""Benchmarks: load each one from a local file in its official format, or by dataset name through `datasets`.

Every loader returns a `Benchmark` of `EvalItem`s. An item knows its task ("chat" items are judged against a
baseline's output, "math" items against a gold answer, "translation" items against a reference), so one
benchmark can mix tasks (the project's own `toaflow_mini` does).

Formats read (the files the upstream projects publish):
- alpaca_eval: a JSON list of {instruction, output, generator, dataset} (the baseline's model_outputs.json, which
  carries the 805 instructions too) or a JSONL of {instruction, dataset, id}; baseline = model_outputs.json.
- arena_hard: question.jsonl {uid, category, cluster | subcategory, prompt}; baseline answers jsonl
  {uid, model, messages: [..., {role: assistant, content: {answer}}]} (older files: choices[0].turns[0].content).
- wmt: JSONL {id, instruction, en, <src>, dataset} per language; `source` may hold a "{lang}" placeholder
  (files, or local dataset folders).
  By name: "haoranxu/WMT22-Test", config "<src>-en", rows {"<src>-en": {"<src>": ..., "en": ...}}.
- gsm8k: {question, answer "... #### n"} (openai/gsm8k) or {instruction, gold_answer, ...}.
- math500: {problem, solution, answer, subject, level, unique_id}.
- toaflow_mini: JSONL {id, task, instruction, reference?, baseline_output?, source?, source_lang?}.
- verifiable: JSONL {id, prompt | instruction | messages, verify: [checks]} (the checks of docs/data_formats.md,
  "Checks"); default: evaluation/data/constraints_heldout.jsonl, the demo's held-out constraint prompts.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from evaluation.config import BenchmarkConfig
from toa_core.records import Message

Task = Literal["chat", "math", "translation", "checked"]
DATA_DIR = Path(__file__).resolve().parent / "data"
MINI_FILE = DATA_DIR / "toaflow_mini.jsonl"
CONSTRAINTS_FILE = DATA_DIR / "constraints_heldout.jsonl"

LANGUAGE_NAMES = {"cs": "Czech", "de": "German", "is": "Icelandic", "ru": "Russian", "zh": "Chinese", "en": "English"}
MATH_INSTRUCTION = "Solve the problem step by step, then give only the final answer inside \\boxed{{}}.\n\n{problem}"
TRANSLATE_INSTRUCTION = "Translate this {language} text into English. Reply with the English translation only.\n\n{text}"

# Dataset names and splits used when `source` is unset (they need the network or a filled HF cache).
DEFAULT_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "alpaca_eval": ("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline", "eval"),
    "arena_hard": ("lmarena-ai/arena-hard-auto-v0.1", None, "train"),
    "wmt": ("haoranxu/WMT22-Test", None, "test"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
}


class BenchmarkError(ValueError):
    """A benchmark that cannot be loaded; the message names the file or dataset and what to do."""


@dataclass
class EvalItem:
    """One thing to evaluate: the prompt, and what its output is compared with."""
    item_id: str
    task: Task
    messages: list[Message]
    reference: str | None = None        # gold answer (math) or reference translation
    baseline_output: str | None = None  # chat: the baseline's answer to the same prompt
    source_text: str | None = None      # translation: the source sentence (COMET needs it)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def instruction(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class Benchmark:
    name: str
    kind: str
    items: list[EvalItem]

    def tasks(self) -> list[str]:
        return sorted({item.task for item in self.items})


# ----------------------------------------------------------------------------------------------- file reading

def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .json (list, or {"data": list}), .jsonl or .parquet file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: file not found; pass an existing file as the benchmark `source`/`baseline`")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise BenchmarkError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise BenchmarkError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: \u2028 may sit inside a string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchmarkError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise BenchmarkError(f"{path}: line {number}: expected a JSON object per line")
        rows.append(row)
    return rows


def _field(row: dict[str, Any], names: Iterable[str], where: str) -> Any:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    raise BenchmarkError(f"{where}: missing field; expected one of {', '.join(names)} (got keys: {', '.join(sorted(row))})")


def load_hf_dataset(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a dataset through `datasets`, with an error that says what to do when it is not reachable."""
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a core dependency
        raise BenchmarkError(f"loading '{name}' needs the `datasets` package: {error}") from None
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # noqa: BLE001 - datasets raises many types (ConnectionError, FileNotFoundError, ...)
        raise BenchmarkError(
            f"could not load dataset '{name}'" + (f" (config '{config}')" if config else "") + f" split '{split}': "
            f"{type(error).__name__}: {str(error)[:300]}. Offline machines (HF_DATASETS_OFFLINE=1) need the dataset "
            f"in the local HF cache, or a local file in the official format as the benchmark `source`."
        ) from None
    return [dict(row) for row in dataset]


def _is_local(source: str) -> bool:
    """A local file (or a file pattern with {lang}); anything else, local dataset folders included, goes to `datasets`."""
    return Path(source.replace("{lang}", "xx")).suffix.lower() in (".json", ".jsonl", ".parquet") or Path(source).is_file()


def _rows(config: BenchmarkConfig, default_config: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """Rows from `source` (local file or dataset name) and a label for error messages."""
    name, dataset_config, split = DEFAULT_DATASETS[config.kind]
    source = config.source or name
    if _is_local(source):
        return read_records(source), source
    return load_hf_dataset(source, config.dataset_config or default_config or dataset_config,
                           config.split or split), source


# ----------------------------------------------------------------------------------------------- loaders

def _user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def load_alpaca_eval(config: BenchmarkConfig) -> list[EvalItem]:
    rows, where = _rows(config)
    baseline_by_instruction: dict[str, str] = {}
    if config.baseline:
        for path in _as_list(config.baseline):
            for number, row in enumerate(read_records(path), start=1):
                baseline_by_instruction[_field(row, ["instruction"], f"{path}: record {number}")] = \
                    _field(row, ["output"], f"{path}: record {number}")
    items = []
    for number, row in enumerate(rows, start=1):
        here = f"{where}: record {number}"
        instruction = _field(row, ["instruction"], here)
        baseline = baseline_by_instruction.get(instruction, row.get("output") if not config.baseline else None)
        items.append(EvalItem(
            item_id=str(row.get("id", number - 1)), task="chat", messages=_user(instruction),
            baseline_output=baseline,
            # AlpacaEval's instruction index (its position in the evaluation set): the key of the LC difficulty
            metadata={"dataset": row.get("dataset", ""), "baseline_generator": row.get("generator", ""),
                      "alpaca_eval_index": int(row.get("index", number - 1))},
        ))
    if config.baseline:
        missing = [item.item_id for item in items if item.baseline_output is None]
        if missing:
            raise BenchmarkError(f"{config.baseline}: no baseline output for {len(missing)} instruction(s) "
                                 f"(first ids: {', '.join(missing[:5])}); the baseline must answer the same instructions")
    return items


def _arena_answer(row: dict[str, Any], where: str) -> str:
    """The assistant's answer in either arena-hard answer layout."""
    if "messages" in row:
        for message in reversed(row["messages"]):
            if message.get("role") == "assistant":
                content = message.get("content")
                return content.get("answer", "") if isinstance(content, dict) else str(content)
    if "choices" in row:
        return row["choices"][0]["turns"][0]["content"]
    raise BenchmarkError(f"{where}: no assistant answer (expected `messages` or `choices`)")


ARENA_DEFAULT_CATEGORY = {"v0.1": "arena-hard-v0.1"}  # v0.1 files written before categories existed


def _arena_baseline_files(config: BenchmarkConfig, categories: set[str]) -> list[tuple[str, set[str] | None]]:
    """(file, the categories it answers) for every baseline file; None = decided by the file's `model` field."""
    if isinstance(config.baseline, dict):
        unknown = sorted(set(config.baseline) - categories)
        if unknown:
            raise BenchmarkError(f"benchmark '{config.name}': baseline for category {', '.join(unknown)}, which no "
                                 f"question has (categories: {', '.join(sorted(categories))})")
        return [(path, {category}) for category, paths in config.baseline.items() for path in _as_list(paths)]
    return [(path, None) for path in _as_list(config.baseline)]


def _categories_of_file(path: str, rows: list[dict[str, Any]], categories: set[str]) -> set[str]:
    """The categories a listed baseline file answers: the only category, or those whose official baseline
    (CATEGORY_BASELINES, arena-hard-auto's judge settings) is the model that wrote the file."""
    from evaluation.metrics.arena_hard import CATEGORY_BASELINES

    if len(categories) == 1:
        return set(categories)
    models = sorted({str(row.get("model", "")) for row in rows})
    served = {c for c in categories if CATEGORY_BASELINES.get(c) in models}
    if len(models) != 1 or not served:
        expected = ", ".join(f"{c}: {CATEGORY_BASELINES.get(c, '?')}" for c in sorted(categories))
        raise BenchmarkError(f"{path}: written by {', '.join(models) or 'no model'}, which is not the baseline of "
                             f"one of this benchmark's categories ({expected}); name its category: "
                             f"baseline: {{<category>: {path}}}")
    return served


def load_arena_hard(config: BenchmarkConfig) -> list[EvalItem]:
    """Questions with their category's baseline answer (v2.0: hard_prompt and creative_writing each have one).

    Baseline answers are keyed by (category, question): a baseline file that answers a question of a category
    it is not the baseline of is refused, naming both, instead of one file's answer replacing another's."""
    default_name = "lmarena-ai/arena-hard-auto-v0.1" if config.version == "v0.1" else "lmarena-ai/arena-hard-auto"
    if config.source is None:
        config = config.model_copy(update={"source": default_name})
    rows, where = _rows(config)
    questions: list[tuple[dict[str, Any], str, str, str]] = []  # row, uid, category, where
    for number, row in enumerate(rows, start=1):
        here = f"{where}: line {number}"
        category = row.get("category") or ARENA_DEFAULT_CATEGORY.get(config.version)
        if not category:
            raise BenchmarkError(f"{here}: missing `category` (arena-hard {config.version} scores each category "
                                 f"against its own baseline: hard_prompt, creative_writing)")
        questions.append((row, str(_field(row, ["uid", "question_id"], here)), str(category), here))
    category_of = {uid: category for _, uid, category, _ in questions}
    categories = set(category_of.values())
    answers: dict[tuple[str, str], tuple[str, str, str]] = {}  # (category, uid) -> answer, model, file
    for path, named in _arena_baseline_files(config, categories):
        records = read_records(path)
        served = named if named is not None else _categories_of_file(path, records, categories)
        for number, row in enumerate(records, start=1):
            here = f"{path}: line {number}"
            uid = str(_field(row, ["uid", "question_id"], here))
            if uid not in category_of:
                continue  # an answer to a question this benchmark does not ask
            category = category_of[uid]
            if category not in served:
                raise BenchmarkError(
                    f"{here}: baseline file for {', '.join(sorted(served))} answers question {uid}, which is "
                    f"{category} (its baseline is another file); give each category a file with only its questions")
            if (category, uid) in answers:
                raise BenchmarkError(f"{here}: question {uid} ({category}) already has a baseline answer in "
                                     f"{answers[(category, uid)][2]}; one baseline answer per question")
            answers[(category, uid)] = (_arena_answer(row, here), row.get("model", ""), path)
    items = []
    for row, uid, category, here in questions:
        prompt = row.get("prompt") or (row.get("turns") or [{}])[0].get("content")
        if not prompt:
            raise BenchmarkError(f"{here}: missing `prompt` (v0.1/v2.0) or `turns[0].content` (older files)")
        answer, baseline_model, _ = answers.get((category, uid), (None, "", ""))
        items.append(EvalItem(
            item_id=uid, task="chat", messages=_user(prompt), baseline_output=answer,
            metadata={"category": category, "cluster": row.get("cluster") or row.get("subcategory", ""),
                      "baseline_generator": baseline_model},
        ))
    if config.baseline:
        missing = [item for item in items if item.baseline_output is None]
        if missing:
            by_category = sorted({item.metadata["category"] for item in missing})
            raise BenchmarkError(f"{config.baseline}: no baseline answer for {len(missing)} question(s) of "
                                 f"{', '.join(by_category)} (first uids: {', '.join(i.item_id for i in missing[:5])})")
    return items


def load_wmt(config: BenchmarkConfig) -> list[EvalItem]:
    items = []
    for lang in config.languages:
        pair = f"{lang}-en"
        if config.source and _is_local(config.source):
            path = config.source.replace("{lang}", lang)
            if "{lang}" not in config.source and len(config.languages) > 1:
                rows = [r for r in read_records(path) if lang in r]  # one file holding several languages
            else:
                rows = read_records(path)
            where = path
        else:
            name = (config.source or DEFAULT_DATASETS["wmt"][0]).replace("{lang}", lang)
            # A hub dataset has one config per pair; a local dataset folder (one per pair via {lang}) has none.
            per_pair_config = None if Path(name).is_dir() else pair
            rows = load_hf_dataset(name, config.dataset_config or per_pair_config, config.split or "test")
            where = name
        for number, row in enumerate(rows, start=1):
            here = f"{where}: record {number}"
            if pair in row and isinstance(row[pair], dict):  # haoranxu/WMT22-Test layout
                row = {**row[pair], "id": row.get("id", number - 1)}
            source_text = _field(row, [lang, "source", "src"], here)
            reference = _field(row, ["en", "reference", "ref"], here)
            prompt = TRANSLATE_INSTRUCTION.format(language=LANGUAGE_NAMES[lang], text=source_text)
            items.append(EvalItem(
                item_id=f"{lang}-{row.get('id', number - 1)}", task="translation", messages=_user(prompt),
                reference=reference, source_text=source_text, metadata={"language_pair": pair},
            ))
    return items


def load_gsm8k(config: BenchmarkConfig) -> list[EvalItem]:
    from toa_core.verifiers.math_answers import extract_answer

    rows, where = _rows(config)
    items = []
    for number, row in enumerate(rows, start=1):
        here = f"{where}: record {number}"
        question = _field(row, ["question", "instruction"], here)
        gold = row.get("gold_answer")
        if gold in (None, ""):
            gold = extract_answer(_field(row, ["answer", "gold_response"], here))
        items.append(EvalItem(
            item_id=str(row.get("id", number - 1)), task="math",
            messages=_user(MATH_INSTRUCTION.format(problem=question)), reference=str(gold),
        ))
    return items


def load_math500(config: BenchmarkConfig) -> list[EvalItem]:
    rows, where = _rows(config)
    items = []
    for number, row in enumerate(rows, start=1):
        here = f"{where}: record {number}"
        items.append(EvalItem(
            item_id=str(row.get("unique_id", number - 1)), task="math",
            messages=_user(MATH_INSTRUCTION.format(problem=_field(row, ["problem"], here))),
            reference=str(_field(row, ["answer"], here)),
            metadata={"subject": row.get("subject", ""), "level": row.get("level", "")},
        ))
    return items


def load_toaflow_mini(config: BenchmarkConfig) -> list[EvalItem]:
    path = config.source or str(MINI_FILE)
    items = []
    for number, row in enumerate(read_records(path), start=1):
        here = f"{path}: line {number}"
        task = _field(row, ["task"], here)
        instruction = _field(row, ["instruction"], here) if task in ("chat", "math") else None
        if task == "chat":
            item = EvalItem(str(row.get("id", number)), "chat", _user(instruction),
                            baseline_output=_field(row, ["baseline_output"], here))
        elif task == "math":
            item = EvalItem(str(row.get("id", number)), "math", _user(MATH_INSTRUCTION.format(problem=instruction)),
                            reference=str(_field(row, ["reference"], here)))
        elif task == "translation":
            lang = _field(row, ["source_lang"], here)
            source_text = _field(row, ["source"], here)
            item = EvalItem(str(row.get("id", number)), "translation",
                            _user(TRANSLATE_INSTRUCTION.format(language=LANGUAGE_NAMES.get(lang, lang), text=source_text)),
                            reference=_field(row, ["reference"], here), source_text=source_text,
                            metadata={"language_pair": f"{lang}-en"})
        else:
            raise BenchmarkError(f"{here}: task must be chat, math or translation, got {task!r}")
        items.append(item)
    return items


def load_verifiable(config: BenchmarkConfig) -> list[EvalItem]:
    """Items whose answers are scored by their own checks (`verify`), as the verifier reward scores synthesis."""
    from toa_core.verifiers.checks import VERIFY_FIELD, VerifySpecError, parse_checks

    path = config.source or str(CONSTRAINTS_FILE)
    items = []
    for number, row in enumerate(read_records(path), start=1):
        here = f"{path}: line {number}"
        if isinstance(row.get("messages"), list) and row["messages"]:
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
        else:
            messages = _user(str(_field(row, ["prompt", "instruction"], here)))
        try:
            checks = parse_checks(row.get(VERIFY_FIELD), where=VERIFY_FIELD)
        except VerifySpecError as error:
            raise BenchmarkError(f"{here}: {error}") from None
        items.append(EvalItem(str(row.get("id", number)), "checked", messages,
                              metadata={VERIFY_FIELD: [{"kind": c.kind, **c.params} for c in checks]}))
    return items


LOADERS: dict[str, Callable[[BenchmarkConfig], list[EvalItem]]] = {
    "alpaca_eval": load_alpaca_eval,
    "arena_hard": load_arena_hard,
    "wmt": load_wmt,
    "gsm8k": load_gsm8k,
    "math500": load_math500,
    "toaflow_mini": load_toaflow_mini,
    "verifiable": load_verifiable,
}


def _as_list(value: str | list[str] | None) -> list[str]:
    """One path or several, as a list."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def subset(items: list[EvalItem], limit: int | None, seed: int) -> list[EvalItem]:
    """A seeded random subset of `limit` items, in the benchmark's own order (the same seed, the same subset).

    A benchmark mixing tasks is sampled per task in proportion to its size (each task keeps at least one item
    when `limit` allows), so a small demo subset still exercises every judge."""
    if limit is None or limit >= len(items):
        return items
    rng = random.Random(seed)
    by_task: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_task.setdefault(item.task, []).append(index)
    tasks = sorted(by_task)
    quota = {t: (1 if limit >= len(tasks) else 0) for t in tasks}
    remaining = limit - sum(quota.values())
    # Largest-remainder allocation of what is left, proportional to each task's size.
    shares = {t: remaining * len(by_task[t]) / len(items) for t in tasks}
    for t in tasks:
        quota[t] += int(shares[t])
    leftover = limit - sum(quota.values())
    for t in sorted(tasks, key=lambda t: shares[t] - int(shares[t]), reverse=True)[:leftover]:
        quota[t] += 1
    chosen = []
    for t in tasks:
        chosen.extend(rng.sample(by_task[t], min(quota[t], len(by_task[t]))))
    return [items[i] for i in sorted(chosen)]


def load_benchmark(config: BenchmarkConfig) -> Benchmark:
    """Load, check and subset one benchmark."""
    items = LOADERS[config.kind](config)
    if not items:
        raise BenchmarkError(f"benchmark '{config.name}' ({config.kind}): no items in {config.source or 'its default source'}")
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise BenchmarkError(f"benchmark '{config.name}': item ids repeat ({', '.join(repeated)}); ids must be unique")
    return Benchmark(name=config.name, kind=config.kind, items=subset(items, config.limit, config.seed))
