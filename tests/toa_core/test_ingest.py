"""Prompt ingestion: every format, normalisation to chat messages, quarantine, strictness, dedup, sampling."""
from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.store import LocalStore
from toa_core.ingest import (
    IngestConfig, IngestError, load_prompts, prompts_from_table, prompts_to_table, read_prompts, write_prompts,
)
from toa_core.records import prompt_id_for


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ingest(path, **options):
    return load_prompts(IngestConfig(source=str(path), **options))


def user(text):
    return [{"role": "user", "content": text}]


# -- formats ---------------------------------------------------------------------------------------------

ROWS = [{"prompt": "What is 2+2?"}, {"instruction": "Summarise this.", "input": "A long text."},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}]
EXPECTED = [user("What is 2+2?"), user("Summarise this.\n\nA long text."),
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]


def test_jsonl(tmp_path):
    report = ingest(write_jsonl(tmp_path / "p.jsonl", ROWS))
    assert [p.messages for p in report.prompts] == EXPECTED
    assert [p.metadata["line"] for p in report.prompts] == [1, 2, 3]
    assert report.prompts[0].prompt_id == prompt_id_for(user("What is 2+2?"))
    assert report.prompts[0].source == str(tmp_path / "p.jsonl")
    assert report.summary() == {"rows": 3, "prompts": 3, "quarantined": 0, "duplicates": 0, "sampled_out": 0}


def test_json_list_and_wrapped_list(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(ROWS, indent=2))
    assert [p.messages for p in ingest(tmp_path / "p.json").prompts] == EXPECTED
    (tmp_path / "w.json").write_text(json.dumps({"data": ROWS}))
    assert [p.messages for p in ingest(tmp_path / "w.json").prompts] == EXPECTED
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))  # JSONL named .json
    assert [p.messages for p in ingest(tmp_path / "lines.json").prompts] == EXPECTED
    (tmp_path / "one.json").write_text(json.dumps({"messages": user("single")}))  # one record, not a wrapper
    assert [p.messages for p in ingest(tmp_path / "one.json").prompts] == [user("single")]


def test_parquet(tmp_path):
    table = pa.table({"prompt": ["one", "two", None], "instruction": [None, None, "three"]})
    pq.write_table(table, tmp_path / "p.parquet")
    report = ingest(tmp_path / "p.parquet")
    assert [p.messages for p in report.prompts] == [user("one"), user("two"), user("three")]


def test_parquet_messages_column(tmp_path):
    pq.write_table(pa.table({"messages": [user("a"), user("b")], "id": ["x1", "x2"]}), tmp_path / "m.parquet")
    report = ingest(tmp_path / "m.parquet", id_field="id")
    assert [p.messages for p in report.prompts] == [user("a"), user("b")]
    assert [p.metadata["source_id"] for p in report.prompts] == ["x1", "x2"]


def test_csv_and_tsv(tmp_path):
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question"])
        writer.writerow(["1", "multi\nline, with comma"])
        writer.writerow(["2", ""])
        writer.writerow(["3", "third"])
    report = ingest(tmp_path / "p.csv", prompt_field="question")
    assert [p.messages for p in report.prompts] == [user("multi\nline, with comma"), user("third")]
    assert [p.metadata["line"] for p in report.prompts] == [2, 5]
    assert [(q["line"], q["field"], q["reason"]) for q in report.quarantined] == [(4, "question", "empty prompt")]
    (tmp_path / "p.tsv").write_text("prompt\textra\nhello\tx\n", encoding="utf-8")
    assert [p.messages for p in ingest(tmp_path / "p.tsv").prompts] == [user("hello")]


def test_csv_messages_as_json_text(tmp_path):
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(user("from csv"))])
    assert ingest(tmp_path / "m.csv").prompts[0].messages == user("from csv")


def test_hf_save_to_disk_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]),
                 "test": Dataset.from_list([{"prompt": "c"}])}).save_to_disk(str(tmp_path / "dd"))
    assert [p.messages for p in ingest(tmp_path / "dd", split="test").prompts] == [user("c")]
    with pytest.raises(IngestError, match="no split 'validation'; available: train, test"):
        ingest(tmp_path / "dd", split="validation")
    Dataset.from_list([{"prompt": "solo"}]).save_to_disk(str(tmp_path / "single"))
    assert [p.messages for p in ingest(tmp_path / "single").prompts] == [user("solo")]


def test_folder_of_data_files_by_split(tmp_path):
    folder = tmp_path / "ds" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["t1", "t2"]}), folder / "train-00000.parquet")
    write_jsonl(folder / "train-00001.jsonl", [{"prompt": "t3"}, {"prompt": ""}])
    pq.write_table(pa.table({"prompt": ["x"]}), folder / "test-00000.parquet")
    report = ingest(tmp_path / "ds")
    assert [p.messages[0]["content"] for p in report.prompts] == ["t1", "t2", "t3"]
    assert report.quarantined[0]["source"].endswith("ds/data/train-00001.jsonl")
    assert report.quarantined[0]["line"] == 2
    assert [p.messages[0]["content"] for p in ingest(tmp_path / "ds", split="test").prompts] == ["x"]


def test_hub_dataset_offline_is_a_clear_error():
    with pytest.raises(IngestError, match="hub is unreachable.*pass a local file or folder"):
        load_prompts(IngestConfig(source="someone/some-dataset"))
    with pytest.raises(IngestError, match="hub is unreachable"):
        load_prompts(IngestConfig(source="plainname", format="hf_dataset"))


def test_source_problems(tmp_path):
    with pytest.raises(IngestError, match="not found"):
        ingest(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(IngestError, match="empty"):
        ingest(tmp_path / "empty.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    with pytest.raises(IngestError, match="no rows found"):
        ingest(tmp_path / "blank.jsonl")
    (tmp_path / "p.txt").write_text("hello")
    with pytest.raises(IngestError, match="set synthesis.prompts.format"):
        ingest(tmp_path / "p.txt")
    (tmp_path / "bad.json").write_text('[{"prompt": "a"},\n {"prompt": ]')
    with pytest.raises(IngestError, match="line 2, column"):
        ingest(tmp_path / "bad.json")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(IngestError, match="not a readable parquet"):
        ingest(tmp_path / "bad.parquet")


def test_explicit_local_path_for_a_remote_source(tmp_path):
    local = write_jsonl(tmp_path / "downloaded.jsonl", [{"prompt": "x"}])
    report = load_prompts(IngestConfig(source="s3://bucket/prompts.jsonl"), local)
    assert report.prompts[0].source == "s3://bucket/prompts.jsonl"


# -- quarantine ------------------------------------------------------------------------------------------

def test_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"prompt": "good one"}).encode(),
        b'{"prompt": "broken',                                   # 2: bad JSON
        json.dumps({"prompt": ""}).encode(),                      # 3: empty
        b'{"prompt": "caf\xe9"}',                                 # 4: latin-1 byte, not UTF-8
        json.dumps({"prompt": 42}).encode(),                      # 5: wrong type
        json.dumps({"text": "no mapped field"}).encode(),         # 6: no prompt field
        json.dumps([1, 2]).encode(),                              # 7: not an object
        b"",                                                      # 8: blank, skipped silently
        json.dumps({"prompt": "x" * 101}).encode(),               # 9: too long
        json.dumps({"prompt": "good two"}).encode(),              # 10
        b'{"prompt": "cut off mid-wri',                           # 11: truncated last line (no newline)
    ]
    path.write_bytes(b"\n".join(lines))
    report = ingest(path, max_prompt_chars=100)
    assert [p.messages[0]["content"] for p in report.prompts] == ["good one", "good two"]
    got = {q["line"]: (q["field"], q["reason"]) for q in report.quarantined}
    assert sorted(got) == [2, 3, 4, 5, 6, 7, 9, 11]
    assert got[2][0] == "<line>" and "not valid JSON" in got[2][1]
    assert got[3] == ("prompt", "empty prompt")
    assert "not valid UTF-8" in got[4][1]
    assert got[5] == ("prompt", "expected text, got int")
    assert "no prompt" in got[6][1] and "columns: text" in got[6][1]
    assert "must be an object or a string" in got[7][1]
    assert got[9][0] == "<prompt>" and "max_prompt_chars=100" in got[9][1]
    assert "truncated last line" in got[11][1]
    quarantined = {q["line"]: q for q in report.quarantined}
    assert quarantined[4]["raw"] == '{"prompt": "caf\\xe9"}' and quarantined[2]["source"] == str(path)
    assert report.rows == 10


@pytest.mark.parametrize("messages, field, reason", [
    ([], "messages", "no messages"),
    ("not a list", "messages", "expected a list"),
    ([{"role": "robot", "content": "x"}], "messages[0].role", "not one of"),
    ([{"role": "user", "content": "   "}], "messages[0].content", "empty content"),
    ([{"role": "user", "content": None}], "messages[0].content", "expected text, got NoneType"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content", "non-text content part (image_url)"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "messages[1].role",
     "last message must be from the user"),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "user", "content": "q2"}],
     "messages[1].role", "system message may only come first"),
    (["just a string"], "messages[0]", "must be an object"),
])
def test_invalid_messages(tmp_path, messages, field, reason):
    report = ingest(write_jsonl(tmp_path / "m.jsonl", [{"messages": messages}, {"prompt": "ok"}]))
    assert len(report.prompts) == 1
    assert report.quarantined[0]["field"] == field and reason in report.quarantined[0]["reason"]


def test_text_parts_are_joined_and_trailing_answers_trimmed_on_request(tmp_path):
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                          {"role": "assistant", "content": "answer"}]}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    assert ingest(path, trim_assistant=True).prompts[0].messages == user("ab")
    with pytest.raises(IngestError, match="set synthesis.prompts.trim_assistant: true"):
        ingest(path)  # without trimming the only row is unusable, and the message says how to fix it


def test_system_prompt_is_added_where_missing(tmp_path):
    rows = [{"prompt": "q1"}, {"messages": user("q2")},
            {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "q3"}]}]
    report = ingest(write_jsonl(tmp_path / "p.jsonl", rows), system_prompt="Default system.")
    assert [p.messages[0] for p in report.prompts] == [{"role": "system", "content": "Default system."}] * 2 + [
        {"role": "system", "content": "own"}]


def test_strict_mode_lists_the_first_problems(tmp_path):
    rows = [{"prompt": "ok"}] + [{"prompt": ""}] * 7
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(IngestError) as caught:
        ingest(path, strict=True, limit=1)
    message = str(caught.value)
    assert "7 of 8 rows are unusable" in message
    assert f"{path} line 2, field 'prompt': empty prompt" in message
    assert message.count("empty prompt") == 5  # the first few, not all
    assert "synthesis.prompts.strict: false" in message


def test_nothing_usable_is_an_error_even_when_lenient(tmp_path):
    with pytest.raises(IngestError, match="no usable prompt") as caught:
        ingest(write_jsonl(tmp_path / "p.jsonl", [{"prompt": ""}, {"other": 1}]))
    message = str(caught.value)
    assert "synthesis.prompts.prompt_field" in message  # a row had no prompt column: mapping one would help
    assert "strict" not in message  # strict is already off: suggesting it would not help
    assert "ingest." not in message  # the hints name keys that exist in a run config


def test_hints_only_suggest_what_would_help(tmp_path):
    with pytest.raises(IngestError) as caught:
        ingest(write_jsonl(tmp_path / "p.jsonl", [{"prompt": ""}, {"prompt": 3}]))
    assert str(caught.value).splitlines()[-1] == "Fix those rows."


# -- duplicates, ids, sampling ---------------------------------------------------------------------------

def test_duplicates_are_dropped_and_counted(tmp_path):
    rows = [{"prompt": "same"}, {"prompt": "  same  "}, {"messages": user("same")}, {"prompt": "other"}]
    report = ingest(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [p.messages[0]["content"] for p in report.prompts] == ["same", "other"]
    assert report.duplicates == 2


def test_limit_is_a_seeded_sample_in_source_order(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(50)])
    first = ingest(path, limit=10, seed=3)
    again = ingest(path, limit=10, seed=3)
    other = ingest(path, limit=10, seed=4)
    ids = [p.prompt_id for p in first.prompts]
    assert ids == [p.prompt_id for p in again.prompts] and ids != [p.prompt_id for p in other.prompts]
    lines = [p.metadata["line"] for p in first.prompts]
    assert lines == sorted(lines) and len(set(lines)) == 10 and first.sampled_out == 40
    assert len(ingest(path, limit=100).prompts) == 50


def test_id_field_must_be_present(tmp_path):
    report = ingest(write_jsonl(tmp_path / "p.jsonl", [{"id": 7, "prompt": "a"}, {"prompt": "b"}]), id_field="id")
    assert report.prompts[0].metadata["source_id"] == "7"
    assert report.quarantined[0]["field"] == "id"


def test_large_jsonl_streams(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(20_000):
            handle.write(json.dumps({"prompt": f"question number {i}"}) + "\n")
    report = ingest(path)
    assert len(report.prompts) == 20_000 and report.prompts[-1].metadata["line"] == 20_000


# -- prompts/part-*.parquet ------------------------------------------------------------------------------

def test_prompts_table_round_trip(tmp_path):
    report = ingest(write_jsonl(tmp_path / "p.jsonl", ROWS), id_field=None)
    table = prompts_to_table(report.prompts)
    assert table.column_names == ["prompt_id", "messages", "source", "metadata"]
    assert prompts_from_table(table) == report.prompts
    store = LocalStore(tmp_path / "artifacts")
    uris = write_prompts(store, "r1", report.prompts, rows_per_part=2)
    assert [u.rsplit("/", 1)[1] for u in uris] == ["part-00000.parquet", "part-00001.parquet"]
    assert read_prompts(store, "r1") == report.prompts


def test_verify_checks_and_gold_answers_are_kept_and_bad_ones_quarantined(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Describe rain in lower case.", "verify": [{"kind": "case", "mode": "lower"}]},
        {"prompt": "How many clips?", "answer": "She sold 48 + 24 = 72.\n#### 72",
         "verify": json.dumps({"kind": "word_count", "max": 80})},
        {"prompt": "Two words.", "answer": "2", "verify": [{"kind": "word_count", "max": "two"}]},
        {"prompt": "No gold here."},
    ])
    report = load_prompts(IngestConfig(source=str(path), answer_field="answer"))
    assert [q["field"] for q in report.quarantined] == ["answer", "verify[0].max", "answer"]  # lines 1, 3, 4
    assert [p.metadata["verify"] for p in report.prompts] == [
        [{"kind": "word_count", "max": 80}, {"kind": "math_answer", "answer": "She sold 48 + 24 = 72.\n#### 72"}]]
    report = load_prompts(IngestConfig(source=str(path)))
    assert [p.metadata.get("verify") for p in report.prompts] == [
        [{"kind": "case", "mode": "lower"}], [{"kind": "word_count", "max": 80}], None]
    assert [q["field"] for q in report.quarantined] == ["verify[0].max"]
