"""`toa gpu-smoke` cannot run here (it needs a GPU and vLLM); what it plans can: the generated config validates and
passes the preflight, the steps are the documented ones, and the report says what ran and what failed."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from infra.gpu_smoke import SmokeError, SmokeOptions, run_smoke, smoke_config, smoke_steps, training_template
from infra.preflight import problems, report, run_preflight
from runconfig import parse_config
from toaflow.cli import main


def _options(tmp_path, chat: Path, reward: Path, **extra) -> SmokeOptions:
    return SmokeOptions(chat_model=str(chat), reward_model=str(reward), out=str(tmp_path / "smoke"), **extra)


def test_the_config_validates_and_fits_the_models_and_one_gpu(tmp_path, tiny_llama_dir, tiny_reward_dir):
    config = smoke_config(_options(tmp_path, tiny_llama_dir, tiny_reward_dir, vllm="/opt/vllm/bin/vllm"))
    cfg = parse_config(config, "smoke")
    chat, reward = cfg.servers.servers
    assert (chat.kind, reward.kind) == ("vllm", "vllm_reward") and chat.gpus == reward.gpus == [0]
    assert chat.gpu_memory_utilization + reward.gpu_memory_utilization <= 0.9  # both fit on one GPU
    assert chat.max_model_len == reward.max_model_len == 2048  # capped at the tiny models' positions
    assert chat.executable == "/opt/vllm/bin/vllm" and chat.generation_config == "vllm"
    assert cfg.search.strategy == "toa" and cfg.training.sft.max_steps == cfg.training.dpo.max_steps == 10
    assert cfg.training.common.full_finetune is False and cfg.evaluation.gate.metrics == []
    separate = parse_config(smoke_config(_options(tmp_path, tiny_llama_dir, tiny_reward_dir, reward_gpu=1)), "s")
    assert [s.gpus for s in separate.servers.servers] == [[0], [1]]


def test_a_missing_model_folder_names_the_option(tmp_path, tiny_reward_dir):
    with pytest.raises(SmokeError, match="--chat-model .*no config.json"):
        smoke_config(_options(tmp_path, tmp_path / "nowhere", tiny_reward_dir))


def test_the_policy_trains_with_a_marked_template(tmp_path, tiny_llama_dir):
    assert training_template(tiny_llama_dir) == ("model", "on")  # already marked
    folder = tmp_path / "llama3-style"
    import shutil

    shutil.copytree(tiny_llama_dir, folder)
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            path.write_text(path.read_text().replace("{% generation %}", "").replace("{% endgeneration %}", "")
                            .replace("<|im_start|>", "<|start_header_id|>").replace("<|im_end|>", "<|eot_id|>"))
    assert training_template(folder) == ("builtin:llama-3.1", "on")


def test_dry_run_writes_a_config_the_preflight_passes(tmp_path, capsys, tiny_llama_dir, tiny_reward_dir):
    out = tmp_path / "dry"
    assert main(["gpu-smoke", "--chat-model", str(tiny_llama_dir), "--reward-model", str(tiny_reward_dir),
                 "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed[1:]] == ["preflight", "sample", "synthesize", "train", "evaluate"]
    assert "--strategy toa --budget 12 --limit 8" in printed[2]
    checks = run_preflight(out / "smoke.yaml")
    assert not problems(checks), report(checks)
    assert not (out / "report.md").exists()  # nothing ran


def test_the_report_says_what_ran_and_stops_at_the_failed_step(tmp_path, tiny_llama_dir, tiny_reward_dir):
    options = _options(tmp_path, tiny_llama_dir, tiny_reward_dir)
    ran = []

    def fake_runner(argv, log_path):
        step = argv[argv.index("toaflow.cli") + 1]
        ran.append(step)
        if step == "sample":
            out = Path(argv[argv.index("--out") + 1])
            pq.write_table(pa.table({"error": [None] * 90 + ["timeout"] * 6}), out)
            return 0, "wrote 96 candidates\nWARNING: a reward pair was truncated\n"
        if step == "train":
            return 1, "sft: training ...\nRuntimeError: CUDA out of memory\n"
        return 0, "fine\n"

    result = run_smoke(options, runner=fake_runner)
    assert ran == ["preflight", "sample", "synthesize", "train"] and result["not_run"] == ["evaluate"]
    assert result["passed"] is False
    assert result["sampling"]["generations"] == 96 and result["sampling"]["failed"] == 6
    assert result["warnings"] == ["sample: WARNING: a reward pair was truncated"]
    markdown = (Path(options.out) / "report.md").read_text()
    assert "FAILED" in markdown and "| train | FAILED (exit 1) |" in markdown and "| evaluate | not run |" in markdown
    assert "CUDA out of memory" in markdown
    assert yaml.safe_load((Path(options.out) / "smoke.yaml").read_text())["name"] == "gpu-smoke"


def test_the_steps_use_one_config_and_one_run_id(tmp_path, tiny_llama_dir, tiny_reward_dir):
    steps = dict(smoke_steps(_options(tmp_path, tiny_llama_dir, tiny_reward_dir, run_id="first-gpu"),
                             tmp_path / "c.yaml", toa=["toa"]))
    assert all(argv[argv.index("--config") + 1] == str(tmp_path / "c.yaml") for argv in steps.values())
    assert all(argv[argv.index("--run-id") + 1] == "first-gpu" for name, argv in steps.items()
               if name in ("synthesize", "train", "evaluate"))
