"""Assistant-only loss on Llama-3.1: its shipped chat template has no {% generation %} markers, so toaflow ships a
marked one (training/templates/llama-3.1.jinja). It must render what the model's own template renders, and SFT
labels built with it must be -100 on every token that is not an assistant reply."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.modeling import SHIPPED_TEMPLATES, TrainingSetupError, assistant_only_setting, load_tokenizer

# The Llama-3.1-Instruct chat template as the model ships it (TRL keeps a copy; it has no generation markers).
LLAMA31_SHIPPED = Path(__import__("trl").__file__).parent / "chat_templates" / "llama3_1.jinja"
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "the cat sees a red apple"},
    {"role": "assistant", "content": "a farmer builds the long road today."},
    {"role": "user", "content": "my teacher writes three questions"},
    {"role": "assistant", "content": "the river finds the answer quickly."},
]


@pytest.fixture(scope="module")
def llama31_style_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """The tiny model with Llama-3's special tokens and Llama-3.1's shipped (unmarked) chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("llama31-style")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS[1:],
                                  "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    tokenizer.chat_template = LLAMA31_SHIPPED.read_text()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.resize_token_embeddings(len(tokenizer))
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def test_shipped_template_renders_what_llama31s_own_template_renders(llama31_style_dir):
    ours = load_tokenizer(llama31_style_dir, "builtin:llama-3.1")
    theirs = load_tokenizer(llama31_style_dir)
    for conversation in (CONVERSATION, CONVERSATION[1:], CONVERSATION[:2]):
        for prompt in (False, True):
            assert (ours.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt)
                    == theirs.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt))


def test_unmarked_template_with_assistant_only_loss_on_names_the_fix(llama31_style_dir):
    shipped = load_tokenizer(llama31_style_dir)
    with pytest.raises(TrainingSetupError, match="no \\{% generation %\\} markers.*builtin:llama-3.1"):
        assistant_only_setting(shipped, "on")
    assert assistant_only_setting(shipped, "auto") is False  # what silently happened before
    assert assistant_only_setting(load_tokenizer(llama31_style_dir, "builtin:llama-3.1"), "auto") is True
    with pytest.raises(TrainingSetupError, match="unknown template"):
        load_tokenizer(llama31_style_dir, "builtin:nope")


def test_sft_labels_mask_every_non_assistant_token(tmp_path, llama31_style_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(llama31_style_dir, "builtin:llama-3.1")
    assert assistant_only_setting(tokenizer, "on") is True
    args = SFTConfig(output_dir=str(tmp_path / "out"), assistant_only_loss=True, bf16=False, max_length=512,
                     per_device_train_batch_size=1, report_to=[], use_cpu=True, activation_checkpointing=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(llama31_style_dir), args=args,
                         train_dataset=Dataset.from_list([{"messages": CONVERSATION}]), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = [token for token, label in zip(ids, labels) if label != -100]
    assert all(label in (-100, token) for token, label in zip(ids, labels))

    # The trained tokens are exactly the two replies, each with its end-of-turn token (the model learns to stop) ...
    expected = [tokenizer(turn["content"] + "<|eot_id|>", add_special_tokens=False)["input_ids"]
                for turn in CONVERSATION if turn["role"] == "assistant"]
    assert trained == expected[0] + expected[1]
    # ... and everything else, system header, date, user turns and assistant headers, is masked.
    masked_text = tokenizer.decode([token for token, label in zip(ids, labels) if label == -100])
    for text in ("Cutting Knowledge Date", "You answer briefly.", "the cat sees a red apple",
                 "my teacher writes three questions", "<|start_header_id|>assistant<|end_header_id|>"):
        assert text in masked_text
    assert len(trained) < len(ids) / 2
