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
