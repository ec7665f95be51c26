"""The policy agent's wiring without a GPU: the pinned record, the vLLM LoRA server it asks for, the reserved
budget share, and the config errors."""
from __future__ import annotations

import pytest
import yaml

from infra.policy import pin_policy
from infra.servers import server_command
from infra.store import open_store
from runconfig import ConfigError, load_config
from tasks.policy import model_versions, with_policy_agent
from tests.fixtures.models import tiny_config_file


def published_adapter(store, run_id, tmp_path):
    folder = tmp_path / f"adapter-{run_id}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"lora")
    (folder / "training_metrics.json").write_text('{"base_model": "meta-llama/Llama-3.1-8B-Instruct", '
                                                  '"weights": "lora_adapter"}')
    store.upload_dir(folder, f"runs/{run_id}/models/dpo")


def config_with(tmp_path, **policy):
    path = tiny_config_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["synthesis"]["policy_agent"] = {"enabled": True, **policy}
    data["search"]["strategy"] = "ab_mcts"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_vllm_lora_policy_agent_and_its_reserved_share(tmp_path, monkeypatch):
    monkeypatch.setenv("TOAFLOW_WORKDIR", str(tmp_path / "work"))
    cfg = config_with(tmp_path, serve="vllm_lora", budget_share=0.3, gpus=[1], max_lora_rank=16)
    store = open_store(cfg.store)
    assert with_policy_agent(cfg, store, "night-1") is cfg  # nothing is `latest` yet: the configured agents only
    assert store.read_json("runs/night-1/policy.json")["run_id"] is None

    published_adapter(store, "night-1", tmp_path)
    store.write_json("registry/latest.json", {"run_id": "night-1", "promoted_at": "2026-01-01T02:00:00Z"})
    augmented = with_policy_agent(cfg, store, "night-2")
    assert [m.name for m in cfg.models] == ["tiny-a", "tiny-b", "tiny-c"]  # the loaded config is left alone
    policy = augmented.models[-1]
    assert (policy.name, policy.model, policy.backend) == ("policy", "policy", "openai")
    server = augmented.servers.servers[-1]
    assert augmented.servers.managed and server.kind == "vllm" and server.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert policy.endpoints == [f"http://127.0.0.1:{server.port}/v1"]
    argv = server_command(server, server.port, model=server.model).argv
    adapter = argv[argv.index("--lora-modules") + 1]
    assert adapter.startswith("policy=") and adapter.endswith("policy-adapter")
    assert argv[argv.index("--max-lora-rank") + 1] == "16" and "--enable-lora" in argv
    assert augmented.search.ab_mcts.exploration_floor == {"tiny-a": 0.1, "tiny-b": 0.1, "tiny-c": 0.1, "policy": 0.3}
    assert model_versions(augmented, pin_policy(store, "night-2"))["policy"] == "runs/night-1/models/dpo"

    # The run keeps the version it pinned, even when `latest` moves.
    store.write_json("registry/latest.json", {"run_id": "other", "promoted_at": "later"})
    assert pin_policy(store, "night-2")["run_id"] == "night-1"


def test_policy_agent_config_errors(tmp_path):
    for policy, strategy, message in (
            ({"enabled": True, "name": "tiny-a"}, "toa", "also the name of one of the models"),
            ({"enabled": True, "budget_share": 0.2}, "toa", "budget_share is reserved through AB-MCTS"),
            ({"pairs": "on_policy"}, "toa", "pairs / budget_share apply to the policy agent")):
        path = tiny_config_file(tmp_path, name=f"{strategy}-{len(policy)}-{policy.get('name', '')}.yaml")
        data = yaml.safe_load(path.read_text())
        data["synthesis"]["policy_agent"] = policy
        data["search"]["strategy"] = strategy
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_on_policy_chosen_answers_are_checked_for_contamination_too():
    import pyarrow as pa

    from tasks.decontamination import chosen_outside_targets

    def message(text):
        return [{"role": "assistant", "content": text}]

    sft = pa.table({"candidate_id": ["a-1"], "prompt_id": ["a"], "model": ["m1"], "messages": [message("x")]})
    dpo = pa.table({"prompt_id": ["a", "b"], "chosen_candidate_id": ["a-1", "b-7"], "chosen_model": ["m1", "policy"],
                    "chosen": [message("x"), message("copied benchmark answer")]})
    extra = chosen_outside_targets([sft], [dpo])
    assert [t.to_pylist() for t in extra] == [[{"prompt_id": "b", "candidate_id": "b-7", "model": "policy",
                                                "messages": message("copied benchmark answer")}]]
    assert chosen_outside_targets([sft], [dpo.slice(0, 1)]) == []  # the usual ranking: chosen = target


def test_vllm_merged_serves_full_weights_under_the_agent_name(tmp_path, tiny_llama_dir):
    cfg = config_with(tmp_path, serve="vllm_merged")
    store = open_store(cfg.store)
    store.upload_dir(tiny_llama_dir, "runs/night-1/models/dpo")  # a full-weights `latest`
    store.write_json("registry/latest.json", {"run_id": "night-1"})
    augmented = with_policy_agent(cfg, store, "night-2")
    assert pin_policy(store, "night-2")["weights"] == "full"
    server, agent = augmented.servers.servers[-1], augmented.models[-1]
    assert (server.kind, server.served_model_name, agent.served_by, agent.model) == (
        "vllm", "policy", "policy-server", "policy")
    argv = server_command(server, 8000, model=server.model).argv
    assert argv[argv.index("--served-model-name") + 1] == "policy" and argv[2] == server.model

    (tmp_path / "lora").mkdir()
    lora = config_with(tmp_path / "lora", serve="vllm_lora")
    lora_store = open_store(lora.store)
    lora_store.upload_dir(tiny_llama_dir, "runs/night-1/models/dpo")
    lora_store.write_json("registry/latest.json", {"run_id": "night-1"})
    with pytest.raises(ValueError, match="has full weights, not a LoRA adapter; use serve: vllm_merged"):
        with_policy_agent(lora, lora_store, "night-2")
