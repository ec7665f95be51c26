"""The evaluate flow end to end on the tiny models with the project's own benchmark: `toa evaluate` twice.

Run 1 evaluates the run's trained model (a LoRA adapter in runs/r1/models/dpo, merged in memory), run 2 a plain
folder; both with the tiny reward model (which also "guided synthesis": circular) and a scripted pairwise judge on
loopback; the base model is evaluated once and cached.
"""
from __future__ import annotations

import json

import pytest
import yaml

from evaluation.scores import gate_table, gated_metrics, load_scores
from infra.store import open_store
from tests.evaluation.fake_judge import FakeJudge, completion
from toaflow.cli import main
from runconfig import load_config


@pytest.fixture(scope="module")
def judge():
    def script(body):  # prefers the longer answer, with logprobs
        text = body["messages"][0]["content"]
        a, b = text.split("### Answer A", 1)[1].split("### Answer B", 1)
        winner, loser = ("A", "B") if len(a) >= len(b) else ("B", "A")
        return 200, completion(winner, [(winner, -0.2), (loser, -1.7)])
    with FakeJudge(script) as fake:
        yield fake


def artifact_types(run_id: str, *keys: str) -> list[str]:
    """Types of the Prefect artifacts with these keys that `run_id` published (its id is in their description)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))
    return sorted(a.type for a in artifacts if f"run {run_id}" in (a.description or ""))


def write_adapter(tiny_llama_dir, out):
    """What the training flow publishes for a LoRA run: adapter, tokenizer, training_metrics.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    torch.manual_seed(0)  # the same adapter every session: its merge is cached by content, not re-done per run
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_llama_dir)).save_pretrained(str(out))
    (out / "training_metrics.json").write_text(json.dumps({"base_model": "builtin:tiny-llama"}))


def test_toa_evaluate_end_to_end(tmp_path, prefect_harness, tiny_llama_dir, tiny_reward_dir, judge):
    store_root = tmp_path / "store"
    config = {
        "name": "evaltest",
        "store": {"root": str(store_root)},
        "models": [{"name": "tiny", "backend": "transformers", "model": "builtin:tiny-llama"}],
        "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
        "evaluation": {
            "benchmarks": [{"name": "mini", "kind": "toaflow_mini"}],
            "judges": {"reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
                       "llm_judge": {"endpoint": judge.endpoint, "model": "fake-judge", "max_concurrency": 4}},
            "generation": {"max_tokens": 8, "temperature": 0.0},
            "base_model": "builtin:tiny-llama",
            "bootstrap_samples": 100,
            "gate": {"metrics": ["mini.rm_win_rate", "mini.math_accuracy", "mini.bleu"]},
        },
    }
    config_path = tmp_path / "eval.yaml"
    config_path.write_text(yaml.safe_dump(config))
    store = open_store(str(store_root))
    adapter = tmp_path / "adapter"
    write_adapter(tiny_llama_dir, adapter)
    store.upload_dir(adapter, "runs/r1/models/dpo")

    assert main(["evaluate", "--config", str(config_path), "--run-id", "r1"]) == 0
    prefix = "runs/r1/eval/mini"
    names = {key.rsplit("/", 1)[1] for key in store.list(prefix + "/")}
    assert {"outputs.jsonl", "judgments.jsonl", "scores.json", "report.md", "comparison.png", "comparison.json"} <= names
    scores = store.read_json(f"{prefix}/scores.json")
    assert scores["model"] == "runs/r1/models/dpo" and scores["n_items"] == 48
    metrics = scores["metrics"]
    for name in ("rm_mean_reward", "rm_win_rate", "rm_lc_win_rate", "judge_win_rate", "judge_lc_win_rate",
                 "math_accuracy", "bleu", "chrf"):
        assert metrics[name]["value"] is not None and metrics[name]["n"] > 0, name
    # failed generations stay in n (as losses); only items the judge could not score are excluded
    assert metrics["rm_win_rate"]["n"] + metrics["rm_win_rate"]["n_excluded"] == 30
    judge_counts = scores["diagnostics"]["llm_judge"]
    assert judge_counts["games_logprobs"] == judge_counts["games"] == 2 * (30 - judge_counts["generation_failed"])
    assert scores["circularity"]["circular"] is True
    report = store.read_text(f"{prefix}/report.md")
    assert "circular evaluation" in report and "Base model: `builtin:tiny-llama`" in report
    manifest = store.read_json("runs/r1/manifest.json")
    assert manifest["stages"]["evaluate"]["status"] == "finished"
    assert artifact_types("r1", "evaluation-mini", "evaluation-mini-report", "evaluation-mini-plot") == [
        "markdown", "markdown", "table"]

    # Run 2: another model; the report compares with run 1, the base model's scores come from the cache.
    assert main(["evaluate", "--config", str(config_path), "--model", str(tiny_llama_dir), "--run-id", "r2"]) == 0
    report2 = store.read_text("runs/r2/eval/mini/report.md")
    assert "Previous evaluated run: `r1`" in report2
    assert len([k for k in store.list("eval_cache/") if k.endswith("/scores.json")]) == 1

    gated = gated_metrics(store, "r2", load_config(config_path).evaluation)
    assert set(gated) == {"mini.rm_win_rate", "mini.math_accuracy", "mini.bleu"}
    for entry in gated.values():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"] and entry["n"] > 0
    assert set(gate_table(load_scores(store, "r1"))) >= set(gated)


def test_toa_evaluate_user_errors(tmp_path, capsys):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump({
        "store": {"root": str(tmp_path / "s")},
        "models": [{"name": "t", "backend": "transformers", "model": "builtin:tiny-llama"}],
        "reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"},
        "evaluation": {"benchmarks": [{"name": "m", "kind": "toaflow_mini", "limit": 2}]}}))
    assert main(["evaluate", "--config", str(config_path)]) == 2
    assert "pass --model" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_path.read_text().replace("toaflow_mini", "toaflow_maxi"))
    assert main(["evaluate", "--config", str(bad), "--model", "builtin:tiny-llama"]) == 2
    assert "evaluation.benchmarks.0.kind" in capsys.readouterr().err
