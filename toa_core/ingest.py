"""Prompt ingestion: read prompts from a file, folder or dataset; validate; normalise to chat messages.

Pure and local: the caller makes the source a local path first (`infra.store.fetch_source` downloads
s3:// URIs). Formats: JSONL, JSON (a list), Parquet, CSV/TSV, a local Hugging Face dataset folder
(`save_to_disk`, or a folder of parquet/json/jsonl/csv files), or a dataset name for `datasets.load_dataset`.

Each row becomes a `Prompt` whose messages are [system?, ..., user]:
- a `messages` list is validated (roles, non-empty text contents, system only first, ends with a user turn);
- else a `prompt` string, else an `instruction` string (with the Alpaca-style `input` appended) becomes
  [system?, user], `system` coming from `IngestConfig.system_prompt`;
- a bare string row is a prompt string.
Rows that cannot be used (bad JSON, bytes that are not UTF-8, text holding a lone surrogate, a truncated last
line, empty or non-text content, wrong types, over-long prompts) are quarantined with the source, line, field, reason and raw text;
`strict: true` turns any of them into an IngestError listing the first few, before any sampling.
Duplicates (same prompt_id, the stable hash of the messages) are dropped and counted.
"""
from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import pyarrow as pa
from pydantic import Field

from toa_core.config import Section
from toa_core.records import Message, Prompt, is_valid_unicode, prompt_id_for
from toa_core.verifiers.checks import MATH_KIND, VERIFY_FIELD, VerifySpecError, gold_math_answer, parse_checks

FORMATS = ("auto", "jsonl", "json", "parquet", "csv", "hf_folder", "hf_dataset")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
                   ".csv": "csv", ".tsv": "csv"}
_ROLES = ("system", "user", "assistant")
_RAW_CHARS = 500  # how much of a bad row the quarantine keeps
_PROBLEMS_SHOWN = 5
#: Where IngestConfig sits in a run config: hints name the keys a user can actually set.
CONFIG_KEY = "synthesis.prompts"
_NO_PROMPT = "no prompt"


class IngestError(ValueError):
    """The prompt source cannot be used; the message names the file, line and field, and what to do."""


class IngestConfig(Section):
    """Where the prompts come from and how their fields map to chat messages."""
    source: str = Field(..., description="local file or folder, s3:// URI, or a Hugging Face dataset name")
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "hf_folder", "hf_dataset"] = "auto"
    split: str = Field("train", description="split of a dataset folder or hub dataset")
    messages_field: str = Field("messages", description="column with a list of {role, content} messages")
    prompt_field: str = Field("prompt", description="column with the prompt as one string")
    instruction_field: str = Field("instruction", description="column with an instruction string (Alpaca style)")
    input_field: str | None = Field("input", description="optional extra input appended to the instruction")
    id_field: str | None = Field(None, description="column kept as metadata.source_id (the prompt_id is a hash)")
    verify_field: str | None = Field("verify", description="column with the checks an answer must pass (kept as "
                                                           "metadata.verify; reward kind verifier reads it)")
    answer_field: str | None = Field(None, description="column with a gold math answer, added to metadata.verify "
                                                       "as a math_answer check (GSM8K's '... #### n' is read as n)")
    system_prompt: str | None = Field(None, description="system message added to prompts that have none")
    trim_assistant: bool = Field(False, description="drop trailing assistant turns (datasets that include answers)")
    max_prompt_chars: int = Field(32000, ge=1, description="longer prompts (all message contents) are quarantined")
    strict: bool = Field(False, description="any bad row is an error instead of being quarantined")
    limit: int | None = Field(None, ge=1, description="keep a seeded random sample of this many prompts")
    seed: int = 0
    license: str | None = Field(None, description="licence of the prompts (an HF/SPDX id such as apache-2.0 or "
                                                  "cc-by-nc-4.0), written into the dataset card")


@dataclass
class IngestReport:
    """What ingestion produced. `quarantined` rows: {source, line, field, reason, raw}; `line` is the line
    number in text files (JSONL, CSV) and the 1-based row number otherwise."""
    prompts: list[Prompt]
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    rows: int = 0  # rows read (blank JSONL lines excluded)
    sampled_out: int = 0  # valid prompts left out by `limit`

    def summary(self) -> dict[str, int]:
        return {"rows": self.rows, "prompts": len(self.prompts), "quarantined": len(self.quarantined),
                "duplicates": self.duplicates, "sampled_out": self.sampled_out}


class _BadRow(Exception):
    """A row that cannot become a prompt: the field at fault and why."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


# ----------------------------------------------------------------------------------------------------------
# Entry point


def load_prompts(cfg: IngestConfig, local_path: str | Path | None = None) -> IngestReport:
    """Read, validate and normalise the prompts of `cfg.source` (already local at `local_path`, if given).

    Raises IngestError for an unusable source (missing, empty, unknown format, no usable prompt at all) and,
    with `strict`, for any bad row.
    """
    path = Path(local_path) if local_path is not None else Path(cfg.source)
    fmt = _resolve_format(cfg, path, explicit_path=local_path is not None)
    source_name = cfg.source
    report = IngestReport(prompts=[])
    seen: set[str] = set()

    for row_source, line, row in _rows(fmt, path, cfg, source_name, report):
        report.rows += 1
        try:
            messages, metadata = _normalise(row, cfg)
        except _BadRow as bad:
            report.quarantined.append(_quarantine(row_source, line, bad.field, bad.reason, row))
            continue
        prompt_id = prompt_id_for(messages)
        if prompt_id in seen:
            report.duplicates += 1
            continue
        seen.add(prompt_id)
        metadata["line"] = line
        if row_source != source_name:
            metadata["file"] = row_source
        report.prompts.append(Prompt(prompt_id=prompt_id, messages=messages, source=source_name, metadata=metadata))

    if cfg.strict and report.quarantined:
        raise IngestError(_problems_message(source_name, report, "strict ingestion refuses bad rows", strict=True))
    if not report.prompts:
        if report.rows == 0:
            raise IngestError(f"{source_name}: no rows found (empty file or split); pass a file with prompts")
        raise IngestError(_problems_message(source_name, report, "no usable prompt", strict=False))
    if cfg.limit is not None and len(report.prompts) > cfg.limit:
        keep = sorted(random.Random(cfg.seed).sample(range(len(report.prompts)), cfg.limit))
        report.sampled_out = len(report.prompts) - cfg.limit
        report.prompts = [report.prompts[i] for i in keep]  # source order is kept
    return report


def _problems_message(source: str, report: IngestReport, headline: str, strict: bool) -> str:
    """The first problems, then only the fixes that would help: a column mapping when rows had no prompt column,
    leniency when strictness is what refused them."""
    lines = [f"{source}: {headline}: {len(report.quarantined)} of {report.rows} rows are unusable. First problems:"]
    for item in report.quarantined[:_PROBLEMS_SHOWN]:
        lines.append(f"  - {item['source']} line {item['line']}, field '{item['field']}': {item['reason']}")
    fixes = ["fix those rows"]
    if any(item["reason"].startswith(_NO_PROMPT) for item in report.quarantined):
        fixes.append(f"map the right columns ({CONFIG_KEY}.prompt_field / instruction_field / messages_field)")
    if strict:
        fixes.append(f"set {CONFIG_KEY}.strict: false to skip bad rows (they are kept in quarantine.jsonl)")
    lines.append(("Fix: " + ", or ".join(fixes) + ".") if len(fixes) > 1 else "Fix those rows.")
    return "\n".join(lines)


def _quarantine(source: str, line: int, field_name: str, reason: str, raw: Any) -> dict[str, Any]:
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", errors="backslashreplace")
    elif isinstance(raw, str):
        text = raw
    else:
        try:
            text = json.dumps(raw, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(raw)
    # Lone surrogates (and any other code point UTF-8 cannot hold) are written as escapes: the quarantine file
    # must be writable whatever the row held.
    return {"source": source, "line": line, "field": field_name, "reason": _escaped(reason),
            "raw": _escaped(text[:_RAW_CHARS])}


def _escaped(text: str) -> str:
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _check_unicode(text: str, where: str) -> str:
    """`text` unchanged, or _BadRow when it holds a lone surrogate: JSON's "\\ud800" escape decodes to one, and
    no later step (hashing, Parquet, an HTTP request) can encode it."""
    if not is_valid_unicode(text):
        at = next(i for i, char in enumerate(text) if 0xD800 <= ord(char) <= 0xDFFF)
        raise _BadRow(where, f"invalid Unicode: a lone surrogate (U+{ord(text[at]):04X}) at character {at}; fix "
                             "the text or drop the row")
    return text


# ----------------------------------------------------------------------------------------------------------
# Formats


def _resolve_format(cfg: IngestConfig, path: Path, explicit_path: bool) -> str:
    if cfg.format == "hf_dataset":
        return "hf_dataset"
    if not path.exists():
        if cfg.format == "auto" and not explicit_path and "/" in cfg.source and not cfg.source.startswith((".", "/")) \
                and "://" not in cfg.source and not Path(cfg.source).suffix:
            return "hf_dataset"  # looks like "owner/name"
        raise IngestError(f"{path}: prompt source not found; pass an existing file or folder "
                          "(or format: hf_dataset for a dataset name)")
    if cfg.format != "auto":
        return cfg.format
    if path.is_dir():
        return "hf_folder"
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise IngestError(f"{path}: cannot tell the format from the suffix '{path.suffix}'; set {CONFIG_KEY}.format "
                          f"to one of {', '.join(FORMATS[1:])}")
    return _sniff_json(path) if fmt == "json" else fmt


def _sniff_json(path: Path) -> str:
    """A .json file is "jsonl" when its first line is a whole JSON value and more lines follow, else "json"."""
    with open(path, "rb") as handle:
        first = handle.readline().strip().removeprefix(b"\xef\xbb\xbf")
        if first.startswith(b"["):
            return "json"
        try:
            json.loads(first)
        except ValueError:
            return "json"  # a pretty-printed document
        rest = handle.read(4096)
        return "jsonl" if rest.strip() else "json"


Row = tuple[str, int, Any]  # (source file, line or row number, the row)


def _rows(fmt: str, path: Path, cfg: IngestConfig, source: str, report: IngestReport) -> Iterator[Row]:
    """Yield (source, line or row number, row); rows that are unreadable go to the quarantine directly."""
    if fmt == "hf_dataset":
        for number, row in _hub_rows(cfg):
            yield source, number, row
        return
    if fmt == "hf_folder":
        yield from _folder_rows(path, cfg, source, report)
        return
    if path.is_dir():
        raise IngestError(f"{path}: is a folder; use format hf_folder (or auto) for dataset folders")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: the file is empty; pass a file with prompts")
    readers = {"jsonl": lambda: _jsonl_rows(path, source, report), "json": lambda: _json_rows(path, cfg),
               "parquet": lambda: _parquet_rows(path), "csv": lambda: _csv_rows(path, source, report)}
    if fmt not in readers:
        raise IngestError(f"{path}: format '{fmt}' is not supported for a file; use one of jsonl, json, parquet, csv")
    for number, row in readers[fmt]():
        yield source, number, row


def _jsonl_rows(path: Path, source: str, report: IngestReport) -> Iterator[tuple[int, Any]]:
    """Stream a JSONL file line by line (bytes first, so a bad byte costs one line, not the file)."""
    with open(path, "rb") as handle:
        line_number = 0
        for raw in handle:
            line_number += 1
            complete = raw.endswith(b"\n")
            stripped = raw.strip()
            if line_number == 1:
                stripped = stripped.removeprefix(b"\xef\xbb\xbf")
            if not stripped:
                continue
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError as error:
                report.rows += 1
                report.quarantined.append(_quarantine(
                    source, line_number, "<line>",
                    f"not valid UTF-8 (bad byte at column {error.start + 1}); re-encode the file as UTF-8", stripped))
                continue
            try:
                yield line_number, json.loads(text)
            except json.JSONDecodeError as error:
                report.rows += 1
                if not complete:  # only the last line can lack its newline
                    reason = (f"truncated last line (no newline, JSON ends early: {error.msg}); the file was "
                              "probably cut off while being written: re-export it")
                else:
                    reason = f"not valid JSON ({error.msg} at column {error.colno}); fix or remove the line"
                report.quarantined.append(_quarantine(source, line_number, "<line>", reason, text))


def _json_rows(path: Path, cfg: IngestConfig) -> Iterator[tuple[int, Any]]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except UnicodeDecodeError as error:
        raise IngestError(f"{path}: not valid UTF-8 (byte {error.start}); re-encode the file as UTF-8") from None
    except json.JSONDecodeError as error:
        raise IngestError(f"{path}: line {error.lineno}, column {error.colno}: not valid JSON ({error.msg}); "
                          "fix the file or use JSONL so one bad record does not spoil the rest") from None
    if isinstance(data, dict):
        # {"data": [...]}-style wrapper: the one value that is a list; otherwise the object is one record
        lists = [value for value in data.values() if isinstance(value, list)]
        wrapper = len(data) == 1 and len(lists) == 1 and cfg.messages_field not in data
        data = lists[0] if wrapper else [data]
    if not isinstance(data, list):
        raise IngestError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, row in enumerate(data, start=1):
        yield index, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise IngestError(f"{path}: not a readable parquet file ({error})") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            index += 1
            yield index, row


def _csv_rows(path: Path, source: str, report: IngestReport) -> Iterator[tuple[int, Any]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            if not reader.fieldnames:
                raise IngestError(f"{path}: no header row; the first line must name the columns")
            line = reader.line_num + 1
            for row in reader:
                if None in row:  # more cells than header names
                    report.rows += 1
                    report.quarantined.append(_quarantine(
                        source, line, "<row>", f"{len(row[None])} more cells than header columns; quote "
                        "fields that contain the delimiter", row.pop(None)))
                else:
                    yield line, row
                line = reader.line_num + 1
    except UnicodeDecodeError as error:
        raise IngestError(f"{path}: not valid UTF-8 (byte {error.start}); re-encode the file as UTF-8") from None
    except csv.Error as error:
        raise IngestError(f"{path}: line {reader.line_num}: malformed CSV ({error})") from None


def _folder_rows(path: Path, cfg: IngestConfig, source: str, report: IngestReport) -> Iterator[Row]:
    """A dataset folder: `save_to_disk` output (DatasetDict or Dataset), or data files (optionally per split)."""
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file() \
            or (path / "state.json").is_file():
        from datasets import DatasetDict, load_from_disk

        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if cfg.split not in dataset:
                raise IngestError(f"{path}: no split '{cfg.split}'; available: {', '.join(dataset)}; "
                                  f"set {CONFIG_KEY}.split")
            dataset = dataset[cfg.split]
        for index, row in enumerate(dataset, start=1):
            yield source, index, row
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIX_FORMATS
                   and not p.name.startswith("."))
    split_files = [p for p in files if cfg.split in p.relative_to(path).as_posix()]
    files = split_files or files
    if not files:
        raise IngestError(f"{path}: no data files (parquet, json, jsonl, csv) in this folder")
    for file in files:  # line numbers are per file; the source names the file
        fmt = _SUFFIX_FORMATS[file.suffix.lower()]
        if fmt == "json":
            fmt = _sniff_json(file)
        yield from _rows(fmt, file, cfg, f"{source.rstrip('/')}/{file.relative_to(path).as_posix()}", report)


def _hub_rows(cfg: IngestConfig) -> Iterator[tuple[int, Any]]:
    try:
        from datasets import load_dataset

        dataset = load_dataset(cfg.source, split=cfg.split)
    except Exception as error:  # noqa: BLE001 - offline, missing, or private: one answer for the user
        raise IngestError(
            f"cannot load dataset '{cfg.source}' (split '{cfg.split}') from the Hugging Face hub: "
            f"{type(error).__name__}: {str(error)[:300]}. The hub is unreachable from here (offline or no "
            "network): download the data where the hub is reachable and pass a local file or folder as "
            f"{CONFIG_KEY}.source (JSONL, JSON, Parquet, CSV or a save_to_disk folder)."
        ) from None
    for index, row in enumerate(dataset, start=1):
        yield index, row


# ----------------------------------------------------------------------------------------------------------
# Normalisation


def _verify_checks(row: dict[str, Any], cfg: IngestConfig) -> list[dict[str, Any]]:
    """The row's checks (its `verify_field`, plus a math_answer check from `answer_field`), validated."""
    checks: list[dict[str, Any]] = []
    value = row.get(cfg.verify_field) if cfg.verify_field else None
    if isinstance(value, str):  # CSV cells and flat parquet columns hold the list as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise _BadRow(cfg.verify_field, "not a JSON list of checks (docs/data_formats.md, 'Checks')") from None
    if value is not None:
        try:
            parse_checks(value, where=cfg.verify_field)
        except VerifySpecError as error:
            raise _BadRow(error.field, str(error).split(": ", 1)[1]) from None
        checks.extend([dict(item) for item in ([value] if isinstance(value, dict) else value)])
    if cfg.answer_field:
        answer = row.get(cfg.answer_field)
        if answer is None or isinstance(answer, (dict, list)) or not gold_math_answer(answer):
            raise _BadRow(cfg.answer_field, f"gold answer field '{cfg.answer_field}' is missing or empty "
                                            f"({CONFIG_KEY}.answer_field)")
        checks.append({"kind": MATH_KIND, "answer": str(answer)})
    return checks


def _normalise(row: Any, cfg: IngestConfig) -> tuple[list[Message], dict[str, Any]]:
    """Turn one row into validated chat messages plus metadata; raise _BadRow with the field at fault."""
    metadata: dict[str, Any] = {}
    if isinstance(row, str):
        messages = _from_text(row, cfg.prompt_field, cfg)
    elif isinstance(row, dict):
        if cfg.id_field:
            value = row.get(cfg.id_field)
            if value is None or isinstance(value, (dict, list)):
                raise _BadRow(cfg.id_field, f"id field '{cfg.id_field}' is missing or not a scalar")
            metadata["source_id"] = _check_unicode(str(value), cfg.id_field)
        if row.get(cfg.messages_field) is not None:
            messages = _from_messages(row[cfg.messages_field], cfg)
        elif row.get(cfg.prompt_field) is not None:
            messages = _from_text(row[cfg.prompt_field], cfg.prompt_field, cfg)
        elif row.get(cfg.instruction_field) is not None:
            instruction = row[cfg.instruction_field]
            extra = row.get(cfg.input_field) if cfg.input_field else None
            if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
                instruction = f"{instruction.rstrip()}\n\n{extra.strip()}"
            messages = _from_text(instruction, cfg.instruction_field, cfg)
        else:
            keys = ", ".join(sorted(map(str, row))[:10]) or "none"
            raise _BadRow("<row>", f"{_NO_PROMPT}: none of '{cfg.messages_field}', '{cfg.prompt_field}', "
                                   f"'{cfg.instruction_field}' is set (columns: {keys}); map the right column "
                                   f"with {CONFIG_KEY}.prompt_field / instruction_field / messages_field")
    else:
        raise _BadRow("<row>", f"a row must be an object or a string, got {type(row).__name__}")

    if isinstance(row, dict):
        checks = _verify_checks(row, cfg)
        if checks:
            metadata[VERIFY_FIELD] = checks
    total = sum(len(m["content"]) for m in messages)
    if total > cfg.max_prompt_chars:
        raise _BadRow("<prompt>", f"prompt has {total} characters, more than {CONFIG_KEY}.max_prompt_chars="
                                  f"{cfg.max_prompt_chars}; shorten it or raise the limit")
    return messages, metadata


def _from_text(value: Any, field_name: str, cfg: IngestConfig) -> list[Message]:
    if not isinstance(value, str):
        raise _BadRow(field_name, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise _BadRow(field_name, "empty prompt")
    _check_unicode(value, field_name)
    messages: list[Message] = []
    if cfg.system_prompt:
        messages.append({"role": "system", "content": cfg.system_prompt})
    messages.append({"role": "user", "content": value})
    return messages


def _from_messages(value: Any, cfg: IngestConfig) -> list[Message]:
    name = cfg.messages_field
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV cells hold messages as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise _BadRow(name, f"messages text is not valid JSON ({error.msg})") from None
    if not isinstance(value, (list, tuple)):
        raise _BadRow(name, f"expected a list of {{role, content}} messages, got {type(value).__name__}")
    messages: list[Message] = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise _BadRow(where, f"a message must be an object with role and content, got {type(message).__name__}")
        role = message.get("role")
        if role not in _ROLES:
            raise _BadRow(f"{where}.role", f"role {role!r} is not one of {', '.join(_ROLES)}")
        content = _text_content(message.get("content"), f"{where}.content")
        if role == "system" and index != 0:
            raise _BadRow(f"{where}.role", "a system message may only come first")
        messages.append({"role": role, "content": content})
    if cfg.trim_assistant:
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
    if not messages:
        raise _BadRow(name, "no messages")
    if messages[-1]["role"] != "user":
        raise _BadRow(f"{name}[{len(messages) - 1}].role",
                      f"the last message must be from the user, got '{messages[-1]['role']}'"
                      + (f"; set {CONFIG_KEY}.trim_assistant: true to drop trailing answers"
                         if messages[-1]["role"] == "assistant" else ""))
    if cfg.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return messages


def _text_content(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of OpenAI-style text parts (joined)."""
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _BadRow(where, f"non-text content part ({kind}); only text prompts are supported")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise _BadRow(where, f"expected text, got {type(content).__name__}")
    if not content.strip():
        raise _BadRow(where, "empty content")
    return _check_unicode(content, where)


# ----------------------------------------------------------------------------------------------------------
# prompts/part-*.parquet


PROMPTS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("source", pa.string()),
    ("metadata", pa.string()),  # JSON text: metadata differs per source, a struct column could not hold it all
])


def prompts_to_table(prompts: list[Prompt]) -> pa.Table:
    """Prompts as a table with PROMPTS_SCHEMA (the layout of runs/<id>/prompts/part-*.parquet)."""
    return pa.table({
        "prompt_id": [p.prompt_id for p in prompts],
        "messages": [p.messages for p in prompts],
        "source": [p.source for p in prompts],
        "metadata": [json.dumps(p.metadata, ensure_ascii=False, default=str) for p in prompts],
    }, schema=PROMPTS_SCHEMA)


def prompts_from_table(table: pa.Table) -> list[Prompt]:
    """Inverse of `prompts_to_table`."""
    metadata = table["metadata"].to_pylist() if "metadata" in table.column_names else [None] * table.num_rows
    sources = table["source"].to_pylist() if "source" in table.column_names else [""] * table.num_rows
    return [Prompt(prompt_id=pid, messages=messages, source=source or "", metadata=json.loads(meta) if meta else {})
            for pid, messages, source, meta in zip(table["prompt_id"].to_pylist(), table["messages"].to_pylist(),
                                                   sources, metadata)]


def write_prompts(store: Any, run_id: str, prompts: list[Prompt], rows_per_part: int = 50_000) -> list[str]:
    """Write prompts to runs/<run_id>/prompts/part-00000.parquet, ... through `store` (any object with
    `write_bytes(key, data) -> uri`, e.g. infra.store.Store); returns the URIs in order."""
    import pyarrow.parquet as pq

    uris = []
    for part, start in enumerate(range(0, max(len(prompts), 1), rows_per_part)):
        buffer = io.BytesIO()
        pq.write_table(prompts_to_table(prompts[start:start + rows_per_part]), buffer)
        uris.append(store.write_bytes(f"runs/{run_id}/prompts/part-{part:05d}.parquet", buffer.getvalue()))
    return uris


def read_prompts(store: Any, run_id: str) -> list[Prompt]:
    """Read every runs/<run_id>/prompts/part-*.parquet back, in part order."""
    import pyarrow.parquet as pq

    keys = [k for k in store.list(f"runs/{run_id}/prompts/") if k.endswith(".parquet")]
    prompts: list[Prompt] = []
    for key in keys:
        prompts.extend(prompts_from_table(pq.read_table(io.BytesIO(store.read_bytes(key)))))
    return prompts
