"""`toa preflight`: each check reports a broken config as a problem with the fix, a healthy one as all ok, and
every shipped config passes with the metadata this machine has (no hub)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from infra.config import ServerSpec
from infra.preflight import check_gpu_memory, check_server_flags, problems, report, run_preflight
from tests.fixtures.models import REMOTE_CODE_SOURCE, build_remote_code_reward, tiny_config_file
from toaflow.cli import main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


def _copy(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _problem(checks, text: str):
    found = [check for check in problems(checks) if text in check.detail]
    assert found, report(checks)
    return found[0]


def test_a_healthy_config_reports_all_ok(tmp_path, tiny_llama_dir, tiny_reward_dir):
    checks = run_preflight(tiny_config_file(tmp_path))
    assert checks and all(check.status == "ok" for check in checks), report(checks)
    subjects = " ".join(check.subject for check in checks)
    assert "versions" in subjects and "reward" in subjects and "training base model" in subjects


def test_max_model_len_over_the_models_positions(tmp_path, tiny_llama_dir, tiny_reward_dir):
    folder = _copy(tiny_llama_dir, tmp_path / "chat")
    positions = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    config = tiny_config_file(
        tmp_path, servers={"managed": True, "servers": [
            {"name": "chat", "kind": "vllm", "model": str(folder), "gpus": [0], "max_model_len": positions * 2}]},
        models=[{"name": "a", "backend": "openai", "model": str(folder), "served_by": "chat"}])
    problem = _problem(run_preflight(config), f"max_model_len {positions * 2} exceeds the model's {positions}")
    assert problem.subject.startswith("server chat") and f"at most {positions}" in problem.fix


def test_template_without_generation_markers_while_assistant_only_loss_is_on(tmp_path, tiny_llama_dir, tiny_reward_dir):
    folder = _copy(tiny_llama_dir, tmp_path / "unmarked")
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            path.write_text(path.read_text().replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    data = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    training = {**data["training"], "common": {**data["training"]["common"], "base_model": str(folder)},
                "sft": {**data["training"]["sft"], "assistant_only_loss": "on"}}
    checks = run_preflight(tiny_config_file(tmp_path, training=training))
    problem = _problem(checks, "has no {% generation %} markers while training.sft.assistant_only_loss is on")
    assert "training.common.chat_template" in problem.fix and problem.subject.startswith("training base model")


def _without_pad_token(source: Path, folder: Path, keep_spare: bool = False) -> Path:
    """A copy of the tiny reward model with no pad token anywhere (and, unless `keep_spare`, no unused special
    token the reward could pad with instead)."""
    _copy(source, folder)
    _edit_json(folder / "config.json", pad_token_id=None)
    _edit_json(folder / "tokenizer_config.json", pad_token=None)
    if not keep_spare:
        data = json.loads((folder / "tokenizer.json").read_text())
        for token in data["added_tokens"]:
            if token["content"] == "<|pad|>":
                token["special"] = False
        (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


def test_classifier_without_a_pad_token(tmp_path, tiny_llama_dir, tiny_reward_dir):
    spare = _without_pad_token(tiny_reward_dir, tmp_path / "spare", keep_spare=True)
    checks = run_preflight(tiny_config_file(tmp_path, reward={"kind": "hf_classifier", "model": str(spare)}))
    assert not problems(checks) and any("batches pad with <|pad|>" in check.detail for check in checks)

    folder = _without_pad_token(tiny_reward_dir, tmp_path / "no-pad")
    checks = run_preflight(tiny_config_file(tmp_path, reward={"kind": "hf_classifier", "model": str(folder)}))
    problem = _problem(checks, "sequence classifier without a pad token")
    assert "pad_token_id" in problem.fix and problem.subject.startswith("reward")


def test_remote_code_that_fails_to_import_and_code_the_shim_repairs(tmp_path, tiny_llama_dir, tiny_reward_dir):
    repaired = build_remote_code_reward(tiny_reward_dir, tmp_path / "armorm-like")
    broken = build_remote_code_reward(tiny_reward_dir, tmp_path / "broken", REMOTE_CODE_SOURCE.replace(
        "LLAMA_INPUTS_DOCSTRING, LlamaModel", "LLAMA_INPUTS_DOCSTRING, LlamaHelperRemovedLongAgo, LlamaModel"))
    remote = {"kind": "hf_classifier", "model": None, "head": "score", "trust_remote_code": True}

    checks = run_preflight(tiny_config_file(tmp_path, reward={**remote, "model": str(broken)}))
    problem = _problem(checks, "remote code does not import")
    assert "LlamaHelperRemovedLongAgo" in problem.detail and "remote_code_compat" in problem.fix

    checks = run_preflight(tiny_config_file(tmp_path, reward={**remote, "model": str(repaired)}))
    assert not problems(checks), report(checks)
    assert any("remote code imports" in check.detail and "shim" in check.detail for check in checks)

    checks = run_preflight(tiny_config_file(tmp_path, reward={**remote, "model": str(repaired),
                                                              "trust_remote_code": False}))
    assert "trust_remote_code" in _problem(checks, "its own code (auto_map)").fix


def test_gpu_memory_and_shared_gpus():
    big = ServerSpec(name="big", model="Qwen/Qwen2-72B-Instruct", gpus=[0])
    small = ServerSpec(name="small", model="meta-llama/Llama-3.1-8B-Instruct", gpus=[0])
    checks = check_gpu_memory([big, small])
    assert "tensor_parallel_size to at least 3" in _problem(checks, "no room left for the KV cache").fix
    assert "sum stays at most 0.95" in _problem(checks, "GPU 0 is also declared by server(s) 'big'").fix
    halves = [spec.model_copy(update={"gpu_memory_utilization": 0.45}) for spec in (small, small)]
    assert not problems(check_gpu_memory(halves))  # two servers may share a GPU when their shares fit
    fine = check_gpu_memory([ServerSpec(name="big", model="Qwen/Qwen2-72B-Instruct", gpus=[0, 1, 2, 3],
                                        tensor_parallel_size=4)])
    assert [check.status for check in fine] == ["ok"]


def test_router_flags_are_parsed_by_the_installed_router():
    pytest.importorskip("vllm_router")
    replica = ServerSpec(name="a", model="org/m", gpus=[0])
    router = ServerSpec(name="r", kind="router", replicas=["a"])
    vllm_check, router_check = check_server_flags([replica, router])
    assert vllm_check.status in ("note", "ok")  # vLLM itself is not installed in this environment
    assert router_check.status == "ok" and "--disable-retries" in router_check.detail
    bad = router.model_copy(update={"extra_args": ["--no-such-router-flag"]})
    (_, refused) = check_server_flags([replica, bad])
    assert refused.status == "problem" and "no-such-router-flag" in refused.detail


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_passes_with_local_metadata(path, tiny_llama_dir, tiny_reward_dir):
    checks = run_preflight(path)
    assert not problems(checks), report(checks)


def test_the_command_prints_one_line_per_check_and_fails_on_a_problem(tmp_path, capsys, tiny_llama_dir,
                                                                      tiny_reward_dir):
    assert main(["preflight", "--config", str(tiny_config_file(tmp_path))]) == 0
    healthy = capsys.readouterr().out
    assert healthy.splitlines()[-1].startswith("preflight: 0 problem(s)")
    folder = _without_pad_token(tiny_reward_dir, tmp_path / "no-pad")
    bad = tiny_config_file(tmp_path, "bad.yaml", reward={"kind": "hf_classifier", "model": str(folder)})
    assert main(["preflight", "--config", str(bad)]) == 1
    assert "[problem] reward" in capsys.readouterr().out


def test_with_vllm_installed_its_parser_and_architecture_list_decide(monkeypatch, tmp_path, tiny_llama_dir,
                                                                      tiny_reward_dir):
    """vLLM is not installed here; a stand-in with vLLM's module layout checks the glue: the command line goes
    through vLLM's serve parser (model as --model) and the architecture through its registry."""
    import argparse
    import sys
    import types

    seen = []

    def make_arg_parser(parser):
        for flag in ("--model", "--host", "--port", "--served-model-name", "--tensor-parallel-size",
                     "--gpu-memory-utilization", "--max-model-len", "--generation-config", "--runner"):
            parser.add_argument(flag)
        original = parser.parse_args
        parser.parse_args = lambda argv: seen.append(argv) or original(argv)
        return parser

    modules = {"vllm": types.ModuleType("vllm"), "vllm.entrypoints": types.ModuleType("vllm.entrypoints"),
               "vllm.entrypoints.openai": types.ModuleType("vllm.entrypoints.openai"),
               "vllm.entrypoints.openai.cli_args": types.ModuleType("vllm.entrypoints.openai.cli_args"),
               "vllm.utils": types.ModuleType("vllm.utils"),
               "vllm.utils.argparse_utils": types.ModuleType("vllm.utils.argparse_utils")}
    modules["vllm.entrypoints.openai.cli_args"].make_arg_parser = make_arg_parser
    modules["vllm.utils.argparse_utils"].FlexibleArgumentParser = argparse.ArgumentParser
    modules["vllm"].ModelRegistry = types.SimpleNamespace(get_supported_archs=lambda: ["LlamaForCausalLM"])
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    chat = ServerSpec(name="chat", model=str(tiny_llama_dir), gpus=[0], max_model_len=1024)
    (accepted,) = check_server_flags([chat])
    assert accepted.status == "ok" and seen[-1][:2] == ["--model", str(tiny_llama_dir)]
    (refused,) = check_server_flags([chat.model_copy(update={"extra_args": ["--enable-magic"]})])
    assert refused.status == "problem" and "--enable-magic" in refused.detail

    config = tiny_config_file(tmp_path, servers={"managed": True, "servers": [
        {"name": "rm", "kind": "vllm_reward", "model": str(tiny_reward_dir), "gpus": [0], "max_model_len": 1024}]},
        reward={"kind": "http", "model": str(tiny_reward_dir), "served_by": "rm", "max_length": 1024})
    assert "vLLM does not support architecture LlamaForSequenceClassification" in \
        _problem(run_preflight(config), "vLLM does not support").detail


def test_versions_against_the_pins(tmp_path):
    from infra.preflight import check_versions

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["pyyaml==0.0.1", "no-such-package-here==1.0", '
                         '"numpy"]\n[project.optional-dependencies]\ngpu = ["another-missing-package==2.0"]\n')
    checks = check_versions(pyproject)
    assert "0 of 2 pinned" in checks[0].detail  # unpinned numpy is not counted, an extra not installed is skipped
    assert "pip install 'pyyaml==0.0.1'" in _problem(checks, "installed, pinned ==0.0.1").fix
    assert _problem(checks, "not installed (pinned ==1.0)").subject == "versions: no-such-package-here"
