"""Decontamination in a run: the index built from benchmark files in their official formats, the command,
the run's index (shipped + config's evaluation sets), and chosen answers that overlap an evaluation set."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa

from infra.store import open_store
from runconfig import load_config
from evaluation.decontamination_sources import build_index_from_sources
from tasks.decontamination import rank_without_contaminated_answers, run_index
from tests.fixtures.models import tiny_config_file
from toa_core.decontamination import DecontaminationIndex, check_prompts
from toa_core.ranking import build_datasets
from toa_core.records import CANDIDATE_COLUMNS, Candidate, Prompt

# Our own texts, written in the benchmarks' official file formats.
ARENA = "Write a shell script that renames every photo in a folder by the date it was taken and logs each rename"
MATH = "A bakery sells muffins in boxes of six and of nine. What is the largest number of muffins it cannot sell?"
GSM = "Tom has four crates with twelve apples each and gives away fifteen apples. How many apples are left for him?"
WMT_DE = "Der kleine Hafen am Ende der Straße wird im nächsten Frühling endlich renoviert werden."
TRUTHFUL = "What happens if you swallow chewing gum?"


def write_sources(folder: Path) -> None:
    def jsonl(name, rows):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    jsonl("arena_hard_v0.1_question.jsonl", [{"uid": "u1", "category": "arena-hard-v0.1", "cluster": "x",
                                              "prompt": ARENA}])
    jsonl("math500_test.jsonl", [{"problem": MATH, "solution": "...", "answer": "43", "subject": "Number Theory",
                                  "level": 3, "unique_id": "test/number_theory/1.json"}])
    jsonl("gsm8k_test.jsonl", [{"question": GSM, "answer": "4*12=48, 48-15=33\n#### 33"}])
    for lang in ("cs", "de", "is", "ru", "zh"):
        jsonl(f"wmt22_{lang}_to_en.jsonl", [{"id": 7, lang: WMT_DE if lang == "de" else f"text {lang}",
                                             "en": "reference", "dataset": "wmt22"}])
    with open(folder / "truthfulqa.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Type", "Category", "Question", "Best Answer"])
        writer.writeheader()
        writer.writerow({"Type": "Adversarial", "Category": "Health", "Question": TRUTHFUL, "Best Answer": "..."})


def test_index_from_official_formats_reports_missing_files(tmp_path):
    write_sources(tmp_path)
    lines = []
    index, missing = build_index_from_sources(tmp_path, report=lines.append)
    assert set(missing) == {"alpaca_eval", "arena_hard_v2.0", "mt_bench", "ifeval"}
    assert any("skipped alpaca_eval" in line for line in lines)
    matches = index.check([ARENA, "solve: " + MATH, GSM.upper(), WMT_DE, TRUTHFUL, "An unrelated question?"])
    assert [(m.benchmark, m.item_id) if m else None for m in matches] == [
        ("arena_hard_v0.1", "u1"), ("math500", "test/number_theory/1.json"), ("gsm8k_test", "0"),
        ("wmt22", "de-7"), ("truthfulqa", "0"), None]


def test_toa_decontam_build_and_check(tmp_path, capsys):
    from toaflow.cli import main

    (tmp_path / "myeval.jsonl").write_text(json.dumps({"question": GSM}) + "\n")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": GSM.lower()}) + "\n" +
                                            json.dumps({"prompt": "Tell me a joke about owls."}) + "\n")
    assert main(["decontam", "build-index", "--add", f"myeval={tmp_path / 'myeval.jsonl'}:question",
                 "--out", str(tmp_path / "mine.npz")]) == 0
    assert "1 benchmarks" in capsys.readouterr().out
    assert main(["decontam", "check", str(tmp_path / "prompts.jsonl"), "--index", str(tmp_path / "mine.npz")]) == 0
    out, err = capsys.readouterr()
    [record] = [json.loads(line) for line in out.splitlines()]
    assert (record["benchmark"], record["item_id"], record["line"]) == ("myeval", "0", 1)
    assert "1 of 2 prompts" in err
    assert main(["decontam", "build-index", "--add", "oops", "--out", str(tmp_path / "x.npz")]) == 2
    assert "NAME=FILE:FIELD" in capsys.readouterr().err
    assert main(["decontam", "show"]) == 0 and "alpaca_eval" in capsys.readouterr().out


def test_run_index_adds_the_configured_evaluation_sets(tmp_path):
    own = tmp_path / "own_gsm8k.jsonl"
    own.write_text(json.dumps({"question": GSM, "answer": "#### 33"}) + "\n")
    config = tiny_config_file(tmp_path, evaluation={"benchmarks": [
        {"name": "mine", "kind": "gsm8k", "source": str(own)},
        {"name": "offline", "kind": "math500", "source": "someone/not-on-this-machine"}]})
    cfg = load_config(config, {"synthesis.decontaminate": {"shipped_index": False}})
    index, unchecked = run_index(cfg)
    assert [b.name for b in index.benchmarks] == ["eval:mine"]
    assert [u["benchmark"] for u in unchecked] == ["offline"]
    prompts = [Prompt.from_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": GSM}]),
               Prompt.from_messages([{"role": "user", "content": "Name a bird."}])]
    [record] = check_prompts(index, prompts)
    assert (record["prompt_id"], record["benchmark"]) == (prompts[0].prompt_id, "eval:mine")
    assert load_config(config, {"synthesis.decontaminate": False}).synthesis.decontaminate.enabled is False


def test_a_chosen_answer_that_copies_an_evaluation_item_is_replaced(tmp_path):
    item = ("Ravi buys three notebooks at four dollars each and a pen for two dollars. How much does he spend "
            "on the notebooks and the pen together?")
    index = DecontaminationIndex()
    index.add_benchmark("mathy", [("q1", item)])
    index_file = index.save(tmp_path / "mathy.npz")
    cfg = load_config(tiny_config_file(tmp_path), {"synthesis.decontaminate": {
        "shipped_index": False, "evaluation_sets": False, "index_files": [str(index_file)]}})
    store = open_store(cfg.store)

    def row(i, reward, text):
        return Candidate("p1", f"p1-{i}", None, "fresh", "m", 1, text, reward, reward, 1, 1, 0.1, "stop", "toa",
                         0).to_row()

    table = pa.Table.from_pylist([row(0, 9.0, f"Sure. {item} He spends 14 dollars."), row(1, 5.0, "14 dollars."),
                                  row(2, 1.0, "12")]).select(list(CANDIDATE_COLUMNS))
    prompts = {"p1": [{"role": "user", "content": "a question"}]}
    sft, _, dpo, _, stats = rank_without_contaminated_answers(
        cfg, store, "r1", lambda excluded: build_datasets([table], prompts, cfg.synthesis.ranking.model_copy(
            update={"test_fraction": 0.0}), "r1", excluded))
    assert sft.to_pylist()[0]["candidate_id"] == "p1-1" and stats.candidates_excluded == 1
    assert dpo.to_pylist()[0]["chosen_candidate_id"] == "p1-1"
    [flagged] = [json.loads(line) for line in store.read_text("runs/r1/decontamination/answers.jsonl").splitlines()]
    assert (flagged["candidate_id"], flagged["benchmark"], flagged["item_id"]) == ("p1-0", "mathy", "q1")
