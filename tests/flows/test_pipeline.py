"""The pipeline flow's wiring: incremental prompts, accumulated training data, the promotion gate, resume.

The three stage flows are replaced by small stand-ins that write what the real ones write (samples, datasets,
scores.json), so these tests check the pipeline itself in seconds. The real flows run end to end in
test_deployments.py.
"""
from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from prefect import flow

import flows.pipeline as pipeline_module
from infra.incremental import synthesized_prompt_ids
from infra.manifest import Manifest
from infra.registry import latest_run_id, promotion_history
from infra.store import open_store
from tests.fixtures.hub import hub_standin  # noqa: F401 - the fixture
from tests.fixtures.prefect import api_client, flow_run_inputs, flow_runs_named


class StageStubs:
    """Stand-ins for synthesize/train/evaluate; the test sets the prompt source and the next scores."""

    def __init__(self, store_root: Path):
        self.store = open_store(str(store_root))
        self.source: list[str] = []
        self.next_win_rate = 0.5
        self.next_failed = 0              # failed generations among the 40 items of the next evaluation
        self.base_win_rate: float | None = None  # the base model's score, written where evaluate caches it
        self.trained: list[tuple[str, str, int]] = []  # (run_id, data_run_id, sft rows seen)
        self.fail_training = False
        self.publish_model = False  # train publishes a model folder (adapter + merged/) as the real flow does

    def write_parquet(self, key: str, columns: dict) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns), buffer)
        self.store.write_bytes(key, buffer.getvalue())

    def install(self, monkeypatch) -> None:
        stubs = self

        @flow(name="synthesize")
        def synthesize(config: str, run_id: str, incremental: bool = False, overrides: dict | None = None) -> dict:
            seen = synthesized_prompt_ids(stubs.store, exclude_runs=[run_id]) if incremental else set()
            new = [p for p in stubs.source if p not in seen]
            Manifest.open(stubs.store, run_id)  # the real flow creates the run's manifest (or resumes it)
            if new:
                stubs.write_parquet(f"runs/{run_id}/samples/shard-00000.parquet",
                                    {"prompt_id": new, "error": [None] * len(new)})
                stubs.write_parquet(f"runs/{run_id}/datasets/sft/train.parquet", {
                    "prompt_id": new,
                    "messages": [[{"role": "user", "content": p}, {"role": "assistant", "content": f"{p} ({run_id})"}]
                                 for p in new]})
            return {"run_id": run_id}

        @flow(name="train")
        def train(config: str, run_id: str, data_run_id: str | None = None, overrides: dict | None = None) -> dict:
            if stubs.fail_training:
                raise RuntimeError("training blew up")
            key = f"runs/{data_run_id or run_id}/datasets/sft/train.parquet"
            rows = pq.read_table(io.BytesIO(stubs.store.read_bytes(key))).num_rows
            stubs.trained.append((run_id, data_run_id, rows))
            if stubs.publish_model:  # what the train flow publishes: adapter, card, metrics, merged/ weights
                import tempfile

                with tempfile.TemporaryDirectory() as folder:
                    files = {"adapter_config.json": "{}", "adapter_model.safetensors": f"weights of {run_id}",
                             "README.md": f"# toaflow DPO model — run `{run_id}`\n",
                             "training_metrics.json": '{"base_model": "builtin:tiny-llama", "weights": "lora_adapter"}',
                             "merged/config.json": "{}", "merged/model.safetensors": f"merged weights of {run_id}"}
                    for name, text in files.items():
                        (Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
                        (Path(folder) / name).write_text(text)
                    stubs.store.upload_dir(Path(folder), f"runs/{run_id}/models/dpo")
            else:
                stubs.store.write_json(f"runs/{run_id}/models/dpo/metrics.json", {"rows": rows})
            return {}

        @flow(name="evaluate")
        def evaluate(config: str, run_id: str, overrides: dict | None = None) -> dict:
            value = stubs.next_win_rate
            stubs.store.write_json(f"runs/{run_id}/eval/mini/scores.json", {"metrics": {
                "rm_win_rate": {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 40,
                                "n_failed": stubs.next_failed, "higher_is_better": True},
                "mean_reward": {"value": 1.0, "ci_low": 0.9, "ci_high": 1.1, "n": 40, "higher_is_better": True}}})
            if stubs.base_win_rate is not None:
                from evaluation.scores import base_cache_prefix
                from runconfig import load_config

                evaluation = load_config(config).evaluation
                base = stubs.base_win_rate
                stubs.store.write_json(f"{base_cache_prefix(evaluation, evaluation.benchmarks[0])}/scores.json", {
                    "metrics": {"rm_win_rate": {"value": base, "ci_low": base - 0.05, "ci_high": base + 0.05,
                                                "n": 40, "higher_is_better": True}}})
            return {}

        monkeypatch.setattr(pipeline_module, "synthesize", synthesize)
        monkeypatch.setattr(pipeline_module, "train", train)
        monkeypatch.setattr(pipeline_module, "evaluate", evaluate)


@pytest.fixture
def setup(tmp_path, monkeypatch, prefect_harness):
    root = tmp_path / "artifacts"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "pipe",
        "store": {"root": str(root)},
        "models": [{"name": "a", "backend": "transformers", "model": "builtin:tiny-llama"}],
        "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
        "evaluation": {"gate": {"metrics": ["mini.rm_win_rate"]}},
    }))
    stubs = StageStubs(root)
    stubs.install(monkeypatch)
    return str(config), stubs


def test_nightly_runs_are_incremental_accumulate_gate_and_resume(setup):
    config, stubs = setup
    run = pipeline_module.pipeline

    # Night 1: everything is new; the first model is promoted without comparison.
    stubs.source = ["p1", "p2"]
    first = run(config=config, run_id="night-1")
    assert first["promotion"]["promoted"] and "first run" in first["promotion"]["reason"]
    assert first["data_run_id"] == "night-1" and first["new_prompts"] == 2
    assert stubs.trained[-1] == ("night-1", "night-1", 2)
    assert first["scores"]["mini.rm_win_rate"]["value"] == 0.5

    # Night 2: one new prompt; only it is sampled, training sees all three; a better score is promoted.
    stubs.source = ["p1", "p2", "p3"]
    stubs.next_win_rate = 0.7
    second = run(config=config, run_id="night-2")
    assert second["new_prompts"] == 1
    assert stubs.trained[-1] == ("night-2", "night-2-accumulated", 3)
    assert second["promotion"]["promoted"] and latest_run_id(stubs.store) == "night-2"
    assert stubs.store.read_json("runs/night-2-accumulated/lineage.json")["from_runs"] == ["night-1", "night-2"]

    # Night 3: a regression beyond the interval is blocked; `latest` stays and the record names the metric.
    stubs.source = ["p1", "p2", "p3", "p4"]
    stubs.next_win_rate = 0.4
    third = run(config=config, run_id="night-3")
    assert stubs.trained[-1] == ("night-3", "night-3-accumulated", 4)
    assert not third["promotion"]["promoted"]
    assert third["promotion"]["blocking_metrics"] == ["mini.rm_win_rate"]
    assert "mini.rm_win_rate" in third["promotion"]["reason"]
    assert latest_run_id(stubs.store) == "night-2"
    assert [(r["run_id"], r["promoted"]) for r in promotion_history(stubs.store)] == [
        ("night-1", True), ("night-2", True), ("night-3", False)]
    manifest = stubs.store.read_json("runs/night-3/manifest.json")
    assert manifest["stages"]["promote"]["counts"] == {"promoted": 0}

    # Resuming night 3 does not decide again (one record per run).
    again = run(config=config, run_id="night-3")
    assert again["promotion"]["decided_at"] == third["promotion"]["decided_at"]
    assert len(promotion_history(stubs.store, "night-3")) == 1

    # Night 4: a new prompt, but training fails; the run fails and `latest` stays.
    stubs.source.append("p5")
    stubs.fail_training = True
    with pytest.raises(RuntimeError, match="training blew up"):
        run(config=config, run_id="night-4")
    assert latest_run_id(stubs.store) == "night-2"

    # Night 5: nothing new in the source, but night 4's prompt never reached an evaluated model: train on it.
    stubs.fail_training = False
    stubs.next_win_rate = 0.72
    fifth = run(config=config, run_id="night-5")
    assert fifth["new_prompts"] == 0 and not fifth.get("skipped")
    assert stubs.trained[-1] == ("night-5", "night-5-accumulated", 5)
    assert fifth["promotion"]["promoted"] and latest_run_id(stubs.store) == "night-5"

    # Night 6: nothing new at all -> every prompt already trained a judged model; skip training.
    sixth = run(config=config, run_id="night-6")
    assert sixth["new_prompts"] == 0 and sixth["skipped"]
    assert stubs.trained[-1][0] == "night-5"

    # Full mode samples every prompt again and trains on this run's data only; no-promote leaves `latest`.
    full = run(config=config, run_id="manual-full", incremental=False, promote=False)
    assert full["new_prompts"] == 5 and full["data_run_id"] == "manual-full"
    assert stubs.trained[-1] == ("manual-full", "manual-full", 5)
    assert full["promotion"] is None and latest_run_id(stubs.store) == "night-5"

    # In the UI: each pipeline run is named by its run id and ends with a state that says what happened; no task
    # run received a subflow's result object (the UI cannot render a task run page with a `flow_run` input).
    with api_client() as client:
        pipeline_runs = sorted((r for r in flow_runs_named(client, "night-1", "night-3", "night-6", "manual-full")
                                if r.parent_task_run_id is None), key=lambda r: r.created)
        assert [r.name for r in pipeline_runs] == ["night-1", "night-3", "night-3", "night-6", "manual-full"]
        runs = {r.name: r for r in reversed(pipeline_runs)}  # the first run of each id
        resumed = pipeline_runs[2]
        # Runs that skipped their work or were blocked end "Completed" (the UI's run lists show no other names of
        # the Completed type), open their message with what happened, and carry a tag saying it.
        assert resumed.state.name == "Completed" and resumed.state.message.startswith("Nothing new: already complete")
        assert resumed.tags == ["nothing-new"]
        assert runs["night-1"].state.message.startswith("promoted to latest: first run")
        assert runs["night-1"].state.name == "Completed" and runs["night-1"].tags == []
        assert runs["night-3"].state.message.startswith(
            "Blocked: NOT promoted (latest unchanged): blocked by mini.rm_win_rate")
        assert runs["night-3"].state.name == "Completed" and runs["night-3"].tags == ["blocked"]
        assert runs["night-6"].state.name == "Completed" and runs["night-6"].tags == ["nothing-new"]
        assert runs["night-6"].state.message.startswith("Nothing new: 0 new prompts; every synthesized prompt")
        inputs = flow_run_inputs(client, [r.id for r in runs.values()])
        assert ("data_run_id", "task_run") in {(param, kind) for _, param, kind in inputs}  # tracking still works
        assert [entry for entry in inputs if entry[2] == "flow_run"] == []


def test_gate_blocks_a_first_run_worse_than_its_base_model_and_a_run_that_fails_items(setup, tmp_path):
    config, stubs = setup
    data = yaml.safe_load(Path(config).read_text())
    data["evaluation"]["base_model"] = "builtin:tiny-llama"
    Path(config).write_text(yaml.safe_dump(data))
    run = pipeline_module.pipeline

    # Night 1: no `latest` yet, but the base model scored 0.5 and the candidate 0.45: never promoted.
    stubs.source, stubs.base_win_rate, stubs.next_win_rate = ["p1"], 0.5, 0.45
    first = run(config=config, run_id="base-1")
    assert not first["promotion"]["promoted"] and first["promotion"]["blocking_metrics"] == ["mini.rm_win_rate"]
    assert "worse than the base model" in first["promotion"]["reason"]
    assert first["promotion"]["base_scores"]["mini.rm_win_rate"]["value"] == 0.5
    assert latest_run_id(stubs.store) is None
    assert "base model" in stubs.store.read_text("runs/base-1/reports/promotion.md")

    # Night 2: better than the base, but 12 of 40 items failed (30%): blocked, the failure rate named.
    stubs.source, stubs.next_win_rate, stubs.next_failed = ["p1", "p2"], 0.7, 12
    second = run(config=config, run_id="base-2")
    assert not second["promotion"]["promoted"]
    assert "failure rate 30% (12 of 40 items failed or empty)" in second["promotion"]["reason"]

    # Night 3: better than the base and nothing failed: promoted, the reason says what it was compared with.
    stubs.source, stubs.next_failed = ["p1", "p2", "p3"], 0
    third = run(config=config, run_id="base-3")
    assert third["promotion"]["promoted"] and "compared with the base model" in third["promotion"]["reason"]
    assert latest_run_id(stubs.store) == "base-3"


def test_toa_pipeline_prints_run_folder_scores_verdict_and_ui(setup, capsys, monkeypatch):
    from toaflow.cli import main

    config, stubs = setup
    stubs.source = ["p1"]
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the UI hint for the local database
    assert main(["pipeline", "--config", config, "--run-id", "cli-1"]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {stubs.store.uri('runs/cli-1/')}" in out
    assert "mini.rm_win_rate: 0.5 [0.45, 0.55] (n=40)" in out
    assert "promotion: promoted to latest: first run" in out
    assert "make ui" in out and "http://127.0.0.1:4200/runs/flow-run/" in out

    assert main(["pipeline", "--config", config, "--run-id", "../escape"]) == 2
    assert "error: invalid --run-id '../escape'" in capsys.readouterr().err


def test_a_window_of_two_nights_leaves_night_one_out_of_night_three_and_the_card_says_so(setup):
    config, stubs = setup
    data = yaml.safe_load(Path(config).read_text())
    data["pipeline"] = {"accumulate": {"window_nights": 2}}
    Path(config).write_text(yaml.safe_dump(data))
    run = pipeline_module.pipeline
    for night, prompts in enumerate((["p1", "p2"], ["p3"], ["p4"]), start=1):
        stubs.source += prompts
        stubs.next_win_rate = 0.5 + night / 10
        run(config=config, run_id=f"win-{night}")

    def prompts_of(key):
        return set(pq.read_table(io.BytesIO(stubs.store.read_bytes(key)))["prompt_id"].to_pylist())

    assert stubs.trained[-2] == ("win-2", "win-2-accumulated", 3)  # night 2: nights 1 and 2 fit the window
    assert stubs.trained[-1] == ("win-3", "win-3-accumulated", 2)  # night 3: nights 2 and 3 only
    assert prompts_of("runs/win-3-accumulated/datasets/sft/train.parquet") == {"p3", "p4"}
    lineage = stubs.store.read_json("runs/win-3-accumulated/lineage.json")
    assert lineage["from_runs"] == ["win-2", "win-3"]
    assert [(entry["run_id"], entry["used"]) for entry in lineage["plan"]] == [
        ("win-1", False), ("win-2", True), ("win-3", True)]
    card = stubs.store.read_text("runs/win-3-accumulated/datasets/README.md")
    assert "the newest 2 night(s) only" in card
    assert "| win-1 | 2 | 0 | - | - | left out: 2 night(s) old, outside the window of the newest 2 night(s)" in card
    assert "| win-2 | 1 | 1 | 1 / 1 | 0 / 0 | 1 night(s) old: all rows |" in card
    assert "Not used at all: win-1 (their rows are not in this training set)." in card


def test_a_promoted_model_is_published_and_a_failed_push_never_unpromotes(setup, hub_standin, monkeypatch):
    """Publishing against a LOCAL STAND-IN for the Hub's HTTP API (tests/fixtures/hub.py): no real Hub here."""
    config, stubs = setup
    token = "hf_pipeline_secret_987654321"
    monkeypatch.setenv("TOAFLOW_HUB_TOKEN", token)
    data = yaml.safe_load(Path(config).read_text())
    data["pipeline"] = {"publish": {"enabled": True, "model_repo": "team/policy", "merged_repo": "team/policy-merged",
                                    "dataset_repo": "team/nightly-data", "token_env": "TOAFLOW_HUB_TOKEN"}}
    Path(config).write_text(yaml.safe_dump(data))
    stubs.publish_model = True
    stubs.store.write_text("runs/pub-1/datasets/README.md", "---\nlicense: other\n---\n# dataset card\n")

    stubs.source = ["p1", "p2"]
    first = pipeline_module.pipeline(config=config, run_id="pub-1")
    assert first["promotion"]["promoted"] and not first["publish"]["failed"]
    assert {p["repo"] for p in first["publish"]["pushed"]} == {"team/policy", "team/policy-merged", "team/nightly-data"}
    model = hub_standin.files["model:team/policy"]
    assert set(model) == {"adapter_config.json", "adapter_model.safetensors", "README.md", "training_metrics.json"}
    merged = hub_standin.files["model:team/policy-merged"]
    assert merged["model.safetensors"] == b"merged weights of pub-1"
    assert b"merged into the base model `builtin:tiny-llama`" in merged["README.md"] and b"`team/policy`" in merged["README.md"]
    data_repo = hub_standin.files["dataset:team/nightly-data"]
    assert "sft/train.parquet" in data_repo and data_repo["README.md"].startswith(b"---\nlicense: other")
    assert all(r["authorization"] == f"Bearer {token}" for r in hub_standin.requests)

    # Night 2: the merged repo's storage is down (and its error echoes the token): the model is promoted anyway,
    # the failure is reported, and the token is in no report.
    hub_standin.failing.add("team/policy-merged")
    stubs.source, stubs.next_win_rate = ["p1", "p2", "p3"], 0.7
    second = pipeline_module.pipeline(config=config, run_id="pub-2")
    assert second["promotion"]["promoted"] and latest_run_id(stubs.store) == "pub-2"
    assert [f["repo"] for f in second["publish"]["failed"]] == ["team/policy-merged"]
    assert "storage is down" in second["publish"]["failed"][0]["error"]
    assert {p["repo"] for p in second["publish"]["pushed"]} == {"team/policy", "team/nightly-data"}
    record = stubs.store.read_text("runs/pub-2/publish.json")
    assert "team/policy-merged" in record and token not in record and "***" in record
    with api_client() as client:
        run = next(r for r in flow_runs_named(client, "pub-2") if r.parent_task_run_id is None)
        assert run.state.name == "Completed" and "publishing FAILED for team/policy-merged" in run.state.message
        assert token not in run.state.message


def test_a_preflight_problem_stops_the_pipeline_before_anything_starts(setup, tmp_path, tiny_reward_dir):
    """The nightly run's first task is `toa preflight`: a reward model without a pad token fails the run with the
    report (the problem and its fix) before synthesis is called."""
    import json
    import shutil

    from tasks.preflight import PreflightFailed

    config, stubs = setup
    folder = tmp_path / "reward-without-pad"
    shutil.copytree(tiny_reward_dir, folder)
    for name, key in (("config.json", "pad_token_id"), ("tokenizer_config.json", "pad_token")):
        data = json.loads((folder / name).read_text())
        data.pop(key, None)
        (folder / name).write_text(json.dumps(data))
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    for token in tokenizer["added_tokens"]:  # and no unused special token to pad with instead
        token["special"] = token["special"] and token["content"] != "<|pad|>"
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    data = yaml.safe_load(Path(config).read_text())
    data["reward"]["model"] = str(folder)
    Path(config).write_text(yaml.safe_dump(data))
    stubs.source = ["p1"]
    with pytest.raises(PreflightFailed, match=r"(?s)\[problem\] reward .*pad token.*-> fix:"):
        pipeline_module.pipeline(config=config, run_id="night-bad")
    assert stubs.trained == [] and not stubs.store.exists("runs/night-bad/manifest.json")
