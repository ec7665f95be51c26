"""Built-in model assets: the tiny models load, carry the chat template TRL needs, and builds are cached atomically."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from toa_core.backends import assets
from toa_core.backends.assets import AssetError, resolve_model


def test_tiny_llama_tokenizer_marks_assistant_tokens(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    messages = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "four"}]
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    mask = encoded["assistant_masks"]
    masked_text = tokenizer.decode([t for t, m in zip(encoded["input_ids"], mask) if m])
    assert masked_text == "four<|im_end|>"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_tiny_models_load_with_expected_heads(tiny_llama_dir, tiny_reward_dir):
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["hidden_size"] == 64
    reward = json.loads((tiny_reward_dir / "config.json").read_text())
    assert reward["architectures"] == ["LlamaForSequenceClassification"]
    assert reward["pad_token_id"] is not None and len(reward["id2label"]) == 1


def test_build_is_deterministic_and_built_once(tmp_path, monkeypatch, tiny_llama_dir):
    monkeypatch.setenv("TOAFLOW_CACHE", str(tmp_path))
    calls = []
    real_builder = assets.BUILTINS["tiny-llama"]

    def counting_builder(out):
        calls.append(out)
        real_builder(out)

    monkeypatch.setitem(assets.BUILTINS, "tiny-llama", counting_builder)
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: resolve_model("builtin:tiny-llama"), range(3)))
    assert len(set(paths)) == 1 and len(calls) == 1
    assert (paths[0] / "model.safetensors").read_bytes() == (tiny_llama_dir / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if "building" in p.name]  # no staging leftovers


def test_local_folder_and_bad_specs(tiny_llama_dir, tmp_path):
    assert resolve_model(str(tiny_llama_dir)) == tiny_llama_dir.resolve()
    with pytest.raises(AssetError, match="known: builtin:tiny-llama"):
        resolve_model("builtin:nope")
    with pytest.raises(AssetError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(AssetError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_hub_id_offline_says_how_to_fix():
    with pytest.raises(AssetError, match="(?s)not in the local hub cache.*local folder"):
        resolve_model("someorg/some-model-that-is-not-cached")
