"""configs/demo.yaml (the embedded default, `make demo`) and its shipped data: valid, verifier-rewarded, gated on
held-out pass rate, with synthesis prompts and held-out items that share no prompt and no topic."""
from __future__ import annotations

import importlib.util
import json
import sys

from evaluation.benchmarks import CONSTRAINTS_FILE, load_benchmark
from runconfig import load_config
from runconfig.parameters import PROJECT_DIR
from toa_core.ingest import load_prompts
from toa_core.verifiers.checks import parse_checks

DEMO = PROJECT_DIR / "configs" / "demo.yaml"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_demo_data", PROJECT_DIR / "tools" / "gen_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen_demo_data = _load_generator()


def test_demo_config_is_valid_and_rewards_with_the_verifier():
    cfg = load_config(DEMO)
    assert cfg.reward.kind == "verifier" and cfg.reward.ranker is None
    assert [(b.name, b.kind) for b in cfg.evaluation.benchmarks] == [("heldout", "verifiable")]
    assert cfg.evaluation.gate.metrics == ["heldout.pass_rate"] and cfg.evaluation.base_model == cfg.training.common.base_model
    assert cfg.training.lora is not None and cfg.training.sft.max_steps > 0 and cfg.training.dpo.max_steps > 0
    assert load_config(PROJECT_DIR / "configs" / "demo_translation.yaml").reward.kind == "llm_judge"  # the old demo


def test_demo_data_is_what_the_generator_writes_and_the_split_is_disjoint():
    assert gen_demo_data.main(["--check"]) == 0
    cfg = load_config(DEMO)
    synthesis = load_prompts(cfg.synthesis.prompts.model_copy(update={"source": str(PROJECT_DIR / cfg.synthesis.prompts.source)}))
    assert not synthesis.quarantined and all(parse_checks(p.metadata["verify"]) for p in synthesis.prompts)
    heldout = load_benchmark(cfg.evaluation.benchmarks[0])
    assert len(heldout.items) >= 60  # a 95% interval of about +-12 points at a 50% pass rate
    synthesis_texts = {p.question for p in synthesis.prompts}
    heldout_texts = {item.instruction for item in heldout.items}
    assert not synthesis_texts & heldout_texts
    assert not set(gen_demo_data.SYNTHESIS_TOPICS) & set(gen_demo_data.HELDOUT_TOPICS)
    for topic in gen_demo_data.SYNTHESIS_TOPICS:  # no held-out prompt is about a synthesis topic
        assert not [text for text in heldout_texts if f" {topic} " in f" {text.replace('.', ' ').replace(',', ' ')} "]
    rows = [json.loads(line) for line in CONSTRAINTS_FILE.read_text().splitlines()]
    families = {row["id"].rsplit("-", 1)[1] for row in rows}
    assert families == {"short", "nocomma", "start", "avoid"}
