"""The run manifest: created with a redacted config, updated per stage, merged on resume."""
from __future__ import annotations

import pytest

from infra.manifest import Manifest, manifest_key, package_versions
from infra.store import LocalStore, StoreKeyNotFound, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "artifacts")
    return open_store(request.getfixturevalue("s3_store_config"))


def test_create_records_config_versions_git_and_seeds(store, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-value-12345")
    config = {"models": [{"name": "a", "api_key_env": "MY_KEY", "api_key": "sk-secret-value-12345"}]}
    manifest = Manifest.open(store, "run-1", config=config, seeds={"search": 7})
    stored = store.read_json(manifest_key("run-1"))
    assert stored["run_id"] == "run-1"
    assert stored["config"]["models"][0] == {"name": "a", "api_key_env": "MY_KEY", "api_key": "***"}
    assert "sk-secret-value-12345" not in store.read_text(manifest_key("run-1"))
    assert stored["seeds"] == {"search": 7}
    assert stored["versions"]["python"] and stored["versions"]["pyarrow"] == package_versions()["pyarrow"]
    assert stored["git"] is None or len(stored["git"]["sha"]) == 40
    assert stored["stages"] == {} and stored["lineage"] == [] and stored["resumes"] == []
    assert manifest.uri == store.uri("runs/run-1/manifest.json")


def test_stage_lifecycle_counts_lineage_retries(store):
    manifest = Manifest.open(store, "run-2", config={"a": 1})
    manifest.start_stage("ingest")
    assert store.read_json(manifest_key("run-2"))["stages"]["ingest"]["status"] == "running"
    manifest.finish_stage("ingest", counts={"prompts": 10, "quarantined": 2}, outputs=["s3://b/p/prompts/part-0.parquet"])
    manifest.add_lineage("ingest", ["/data/prompts.jsonl"], ["s3://b/p/prompts/part-0.parquet"])
    manifest.add_lineage("ingest", ["/data/prompts.jsonl"], ["s3://b/p/prompts/part-0.parquet"])  # kept once
    manifest.add_counts(generations=160, errors=1)
    manifest.add_counts(generations=160)
    manifest.add_retries("store", 2)
    manifest.add_retries("store", 1)
    manifest.add_retries("reward", 0)
    manifest.start_stage("sample")
    manifest.fail_stage("sample", RuntimeError("server down"))

    stored = Manifest.load(store, "run-2").data
    ingest = stored["stages"]["ingest"]
    assert ingest["status"] == "finished" and ingest["counts"] == {"prompts": 10, "quarantined": 2}
    assert ingest["outputs"] == ["s3://b/p/prompts/part-0.parquet"] and ingest["attempts"] == 1
    assert stored["counts"] == {"ingest.prompts": 10, "ingest.quarantined": 2, "generations": 320, "errors": 1}
    assert stored["lineage"] == [{"stage": "ingest", "inputs": ["/data/prompts.jsonl"],
                                  "outputs": ["s3://b/p/prompts/part-0.parquet"]}]
    assert stored["retries"] == {"store": 3}
    assert stored["stages"]["sample"]["status"] == "failed"
    assert stored["stages"]["sample"]["error"] == "RuntimeError: server down"
    assert manifest.stage_finished("ingest") and not manifest.stage_finished("sample")


def test_resume_keeps_finished_stages_and_notes_config_changes(store):
    first = Manifest.open(store, "run-3", config={"budget": 160}, seeds={"search": 1})
    first.start_stage("ingest")
    first.finish_stage("ingest", counts={"prompts": 5})
    first.start_stage("sample")
    first.fail_stage("sample", "killed")

    again = Manifest.open(store, "run-3", config={"budget": 160})
    assert again.stage_finished("ingest") and again.stage("ingest")["counts"] == {"prompts": 5}
    assert again.data["created_at"] == first.data["created_at"]
    assert again.data["resumes"][-1]["config_changed"] is False
    again.start_stage("sample")
    assert again.stage("sample")["attempts"] == 2 and again.stage("sample")["error"] is None
    again.start_stage("sample")  # attempt 2 died without a word (SIGKILL): attempt 3 says so
    assert [h["status"] for h in again.stage("sample")["history"]] == ["failed", "interrupted", "running"]

    changed = Manifest.open(store, "run-3", config={"budget": 12})
    assert changed.data["resumes"][-1]["config_changed"] is True
    assert changed.data["config"] == {"budget": 160}  # the original config stays the record
    assert len(changed.data["resumes"]) == 2


def test_updates_merge_with_the_stored_manifest(store):
    """Two handles on one run (e.g. flow and a task) do not erase each other's stages."""
    one = Manifest.open(store, "run-4")
    two = Manifest.load(store, "run-4")
    one.finish_stage("a", counts={"n": 1})
    two.finish_stage("b", counts={"n": 2})
    stages = Manifest.load(store, "run-4").data["stages"]
    assert set(stages) == {"a", "b"}


def test_failure_text_is_redacted_and_bounded(store, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_tokenvalue_abcdef")
    manifest = Manifest.open(store, "run-5")
    manifest.fail_stage("train", ValueError("bad token hf_tokenvalue_abcdef " + "x" * 10_000))
    error = Manifest.load(store, "run-5").stage("train")["error"]
    assert "hf_tokenvalue_abcdef" not in error and "***" in error and len(error) <= 4000


def test_load_missing_run(store):
    with pytest.raises(StoreKeyNotFound):
        Manifest.load(store, "never-ran")


def test_stage_attempts_keep_cumulative_counts_and_a_history(store):
    manifest = Manifest.open(store, "run-5", config={})
    with manifest.stage_attempt("sample") as attempt:
        attempt.counts = {"candidates_generated": 320, "failed_generations": 83}
        attempt.attempt_counts = {"candidates_generated": 320}
    with pytest.raises(ValueError, match="bad rows"):
        with manifest.stage_attempt("sample") as attempt:
            attempt.attempt_counts = {"candidates_generated": 0}
            raise ValueError("bad rows:\n  - line 1\n  - line 2")
    stage = Manifest.load(store, "run-5").stage("sample")
    assert stage["status"] == "failed" and stage["error"] == "ValueError: bad rows: | - line 1 | - line 2"
    assert stage["counts"] == {"candidates_generated": 320, "failed_generations": 83}  # a failed resume keeps them
    assert [(h["attempt"], h["status"], h["counts"]) for h in stage["history"]] == [
        (1, "finished", {"candidates_generated": 320}), (2, "failed", {"candidates_generated": 0})]
    assert stage["history"][1]["error"] == stage["error"]
    with pytest.raises(KeyboardInterrupt):
        with manifest.stage_attempt("rank"):
            raise KeyboardInterrupt
    assert Manifest.load(store, "run-5").stage("rank")["error"] == "interrupted (KeyboardInterrupt)"


def test_the_trust_record_says_who_started_each_attempt_and_what_ran_code(store):
    from runconfig.parameters import resolve_config
    from tasks.run_inputs import RunInputs

    inputs = RunInputs(resolve_config("tiny.yaml", operator=False), from_deployment=True)
    trust = inputs.trust({"reward": {"kind": "hf_classifier", "trust_remote_code": True}, "servers": {"servers": []}})
    assert trust == {"started_from": "deployment", "config": "tiny.yaml", "config_source": "config folder",
                     "code_running_settings": ["reward.trust_remote_code"]}
    manifest = Manifest.open(store, "r", config={"a": 1})
    manifest.record_trust(trust)
    manifest.record_trust(trust)  # a resume from the same place adds nothing
    operator = {**trust, "started_from": "operator"}
    Manifest.open(store, "r", config={"a": 1}).record_trust(operator)
    assert store.read_json(manifest_key("r"))["trust"] == [trust, operator]
