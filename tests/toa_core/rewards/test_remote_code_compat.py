"""The transformers-5 shim for remote reward code written for 4.x (ArmoRM): a tiny model whose modelling file
imports LLAMA_INPUTS_DOCSTRING fails to load without it and scores with it, in process and behind the server."""
from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path

from toa_core.rewards import remote_code_compat
from toa_core.rewards.hf_classifier import HFClassifierReward

REPO = Path(__file__).resolve().parents[3]

LOAD_WITHOUT_SHIM = """
import sys
from transformers import AutoModelForSequenceClassification
try:
    AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True)
except ImportError as error:
    print("IMPORT-ERROR", error)
else:
    print("LOADED")
"""


def test_without_the_shim_the_remote_code_cannot_import(remote_code_reward_dir):
    # A fresh interpreter: this test process may already carry the shim.
    out = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_SHIM, str(remote_code_reward_dir)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "IMPORT-ERROR" in out.stdout and "LLAMA_INPUTS_DOCSTRING" in out.stdout, out.stdout + out.stderr


def test_the_in_process_reward_loads_and_scores_the_remote_code_model(remote_code_reward_dir):
    reward = HFClassifierReward(remote_code_reward_dir, head="score", trust_remote_code=True, device="cpu")
    messages = [{"role": "user", "content": "What is two plus two?"}]
    scores = asyncio.run(reward.score_batch([(messages, "Four."), (messages, "It is four, of course.")]))
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    assert scores[0] != scores[1]
    assert type(reward._model).__name__ == "GatedRewardModel"  # the folder's own class, not a stock one


def test_the_shim_restores_only_missing_names_and_is_idempotent():
    import transformers.models.llama.modeling_llama as llama

    remote_code_compat.apply()
    assert isinstance(llama.LLAMA_INPUTS_DOCSTRING, str)
    assert remote_code_compat.missing_names() == {}
    assert remote_code_compat.apply() == {}  # a second call adds nothing
    assert llama.LlamaModel is not None  # names transformers still defines are untouched


def test_a_tokenizer_without_pad_token_pads_with_an_unused_special_token(tiny_reward_dir):
    """Llama-3 tokenizers have no pad token; EOS (the usual stand-in) is also the end-of-turn token, and ArmoRM's
    code reads the score just before the first pad id: a reserved special token is used instead."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from toa_core.rewards.hf_classifier import choose_pad_token

    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_dir)
    reserved = "<|reserved_special_token_0|>"
    tokenizer.add_special_tokens({"additional_special_tokens": [reserved]})
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}], tokenize=False)
    choose_pad_token(tokenizer, SimpleNamespace(pad_token_id=None))
    assert tokenizer.pad_token in ("<|pad|>", reserved)  # the tiny tokenizer's own unused pad token comes first
    assert tokenizer.pad_token not in rendered and tokenizer.eos_token in rendered

    tokenizer.pad_token = None
    choose_pad_token(tokenizer, SimpleNamespace(pad_token_id=tokenizer.convert_tokens_to_ids(tokenizer.bos_token)))
    assert tokenizer.pad_token == tokenizer.bos_token  # the model config's own pad id wins
