"""Resolving the model under test (endpoint, builtin, store folder, LoRA adapter merge) and generating outputs."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from evaluation.benchmarks import EvalItem
from evaluation.config import GenerationConfig
from evaluation.generation import ModelSourceError, generate_outputs, merge_adapter, resolve_model_under_test
from infra.store import open_store
from tests.evaluation.scripted import ScriptedChatModel


def test_endpoint_needs_a_served_name():
    model = resolve_model_under_test("http://127.0.0.1:8000/v1#policy", GenerationConfig(concurrency=3))
    assert model.config.backend == "openai" and model.config.model == "policy"
    assert model.config.endpoints == ["http://127.0.0.1:8000/v1"] and model.config.max_concurrency == 3
    named = resolve_model_under_test("http://h/v1", GenerationConfig(served_model="dpo"))
    assert named.config.model == "dpo"
    with pytest.raises(ModelSourceError, match="served model name"):
        resolve_model_under_test("http://h/v1", GenerationConfig())


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match="no such folder or store location"):
        resolve_model_under_test("runs/nope/models/dpo", GenerationConfig(), open_store(str(tmp_path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError, match="neither a LoRA adapter"):
        resolve_model_under_test(str(empty), GenerationConfig())


def _adapter(tiny_llama_dir, out):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_llama_dir)).save_pretrained(str(out))
    return model


def test_adapter_is_merged_once_and_matches_the_peft_model(tmp_path, monkeypatch, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TOAFLOW_CACHE", str(tmp_path / "cache"))
    peft_model = _adapter(tiny_llama_dir, tmp_path / "adapter")
    merged_dir = merge_adapter(tmp_path / "adapter", base_override=str(tiny_llama_dir))
    assert (merged_dir / "config.json").is_file() and (merged_dir / "tokenizer_config.json").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-5)
    assert merge_adapter(tmp_path / "adapter", base_override=str(tiny_llama_dir)) == merged_dir  # cached


def _publish_merged(store, tiny_llama_dir):
    store.upload_dir(tiny_llama_dir, "runs/r/models/dpo/merged")
    store.write_text("runs/r/models/dpo/adapter_config.json", "{}")  # would fail if it were merged again


def test_local_store_folder_is_used_in_place_and_merged_weights_win(tmp_path, tiny_llama_dir):
    store = open_store(str(tmp_path / "store"))
    _publish_merged(store, tiny_llama_dir)
    model = resolve_model_under_test("runs/r/models/dpo", GenerationConfig(), store)
    assert model.label == "runs/r/models/dpo" and model.config.backend == "transformers"
    assert model.config.model == store.uri("runs/r/models/dpo/merged")
    again = resolve_model_under_test(store.uri("runs/r/models/dpo"), GenerationConfig(), store)
    assert again.config.model == model.config.model


def test_s3_store_folder_is_downloaded_once(tmp_path, monkeypatch, tiny_llama_dir, s3_store_config):
    monkeypatch.setenv("TOAFLOW_CACHE", str(tmp_path / "cache"))
    store = open_store(s3_store_config)
    _publish_merged(store, tiny_llama_dir)
    store.write_text("runs/r/models/dpo/checkpoints/checkpoint-2/optimizer.pt", "not needed for evaluation")
    model = resolve_model_under_test(store.uri("runs/r/models/dpo"), GenerationConfig(), store)
    folder = Path(model.config.model)
    assert model.label == "runs/r/models/dpo"
    assert (tmp_path / "cache" / "eval-models") in folder.parents and (folder / "config.json").is_file()
    assert not list(folder.parent.glob("**/optimizer.pt"))
    assert resolve_model_under_test("runs/r/models/dpo", GenerationConfig(), store).config.model == str(folder)
    with pytest.raises(ModelSourceError, match="not inside the run's store"):
        resolve_model_under_test("s3://other-bucket/runs/r/models/dpo", GenerationConfig(), store)


def test_generate_outputs_keeps_failures_and_adds_the_system_prompt():
    seen = []

    def answer(text):
        seen.append(text)
        return "ok"

    class Recording(ScriptedChatModel):
        async def generate(self, messages, params):
            assert messages[0] == {"role": "system", "content": "Be brief."}
            assert params.temperature == 0.0 and params.max_tokens == 7
            return await super().generate(messages, params)

    items = [EvalItem("a", "chat", [{"role": "user", "content": "hello"}]),
             EvalItem("b", "chat", [{"role": "user", "content": "please FAIL"}])]
    rows = asyncio.run(generate_outputs(Recording(answer, fail_on="FAIL"), items,
                                        GenerationConfig(max_tokens=7, system_prompt="Be brief.")))
    assert rows[0]["output"] == "ok" and rows[0]["error"] is None
    assert rows[1]["output"] is None and "503" in rows[1]["error"]


def test_openai_compatible_endpoint_answers_through_the_synthesis_client():
    from evaluation.generation import build_chat_model
    from tests.evaluation.fake_judge import FakeJudge, completion

    def script(body):
        assert body["model"] == "policy" and body["max_tokens"] == 16
        return 200, completion("echo: " + body["messages"][-1]["content"])

    items = [EvalItem(f"i{k}", "chat", [{"role": "user", "content": f"q{k}"}]) for k in range(3)]
    with FakeJudge(script) as server:
        generation = GenerationConfig(max_tokens=16)
        resolved = resolve_model_under_test(f"{server.endpoint}#policy", generation)

        async def go():
            model = build_chat_model(resolved.config)
            try:
                return await generate_outputs(model, items, generation)
            finally:
                await model.aclose()
        rows = asyncio.run(go())
    assert [row["output"] for row in rows] == ["echo: q0", "echo: q1", "echo: q2"]


def test_merged_cache_keeps_only_the_newest(tmp_path):
    import os

    from evaluation.generation import MERGED_MARKER, _prune_merged

    for age, name in enumerate(["new", "mid", "old", "oldest"]):
        folder = tmp_path / name
        folder.mkdir()
        (folder / MERGED_MARKER).write_text("{}")
        os.utime(folder / MERGED_MARKER, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (tmp_path / ".merge-in-progress").mkdir()  # a merge being written by another process: not ours to delete
    _prune_merged(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".merge-in-progress", "mid", "new"]
