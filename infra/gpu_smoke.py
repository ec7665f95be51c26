"""The GPU smoke test: the first thing to run on a machine with a GPU (`toa gpu-smoke`, docs/operations.md).

From local weights only, on one GPU (an H100 takes under 10 minutes with a 1B-class policy):
  1. `toa preflight` of the generated config;
  2. `toa sample`: 8 prompts with TOA over a vLLM chat server (two agents on it) scored by a vLLM reward server;
  3. `toa synthesize` of the same 8 prompts into SFT/DPO datasets;
  4. `toa train`: 10 LoRA SFT steps, then 10 LoRA DPO steps of the policy model;
  5. `toa evaluate`: the trained model on 16 prompts of the project's mini benchmark, judged by the reward model.
Each step is a `toa` subprocess; a failed step stops the smoke. One report (report.md and report.json in the output
folder) says what ran, how long each step took, the sampling throughput, and every warning line the steps printed.

The plan (`smoke_config`, `smoke_steps`) is pure and tested on CPU; `run_smoke` runs it (on a GPU host).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from infra.model_metadata import local_metadata

REPO = Path(__file__).resolve().parents[1]
SMOKE_PROMPTS = 8
SMOKE_BUDGET = 12  # generations per prompt: enough for TOA to refine, small enough for minutes
TRAIN_STEPS = 10
EVAL_PROMPTS = 16
CONTEXT = 4096  # per server; capped at each model's own positions
TARGET_MINUTES = 10
_WARNING = re.compile(r"\bwarn(ing)?\b", re.IGNORECASE)


class SmokeError(ValueError):
    """The smoke cannot be planned (a model folder is missing or is not a model); the message names the option."""


@dataclass(frozen=True)
class SmokeOptions:
    chat_model: str  # local folder of a small chat model (served by vLLM)
    reward_model: str  # local folder of a sequence-classification reward model (served by vLLM, pooling)
    policy_model: str | None = None  # local folder of the 1B-class model to train; default the chat model
    out: str = "gpu-smoke"
    vllm: str = "vllm"  # the `vllm` executable of vLLM's own environment
    gpu: int = 0
    reward_gpu: int | None = None  # default: the chat server's GPU (two servers share one H100)
    prompts: str = str(REPO / "data" / "prompts" / "mixed_instructions.jsonl")
    run_id: str = "gpu-smoke"


@dataclass
class StepResult:
    name: str
    argv: list[str]
    returncode: int | None = None
    seconds: float = 0.0
    output_tail: str = ""
    warnings: list[str] = field(default_factory=list)


def _folder(option: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise SmokeError(f"--{option} {value}: not a model folder (no config.json); the smoke runs from local "
                         "weights only: download the model first (huggingface-cli download ... --local-dir DIR)")
    return path.resolve()


def _context(folder: Path) -> int:
    metadata = local_metadata(str(folder))
    positions = metadata.positions if metadata else None
    return min(CONTEXT, positions) if positions else CONTEXT


def training_template(folder: Path) -> tuple[str, str]:
    """(training.common.chat_template, training.sft.assistant_only_loss) for the policy: its own template when it is
    marked, toaflow's marked Llama-3.1 template for a Llama-3 chat format, else its own with `auto` (whole-
    conversation loss; the report says so)."""
    metadata = local_metadata(str(folder))
    template = (metadata.chat_template if metadata else None) or ""
    if metadata and metadata.template_marks_assistant:
        return "model", "on"
    if "<|start_header_id|>" in template and "<|eot_id|>" in template:
        return "builtin:llama-3.1", "on"
    return "model", "auto"


def smoke_config(options: SmokeOptions) -> dict[str, Any]:
    """The run config of the smoke (a mapping that validates as a RunConfig)."""
    chat = _folder("chat-model", options.chat_model)
    reward = _folder("reward-model", options.reward_model)
    policy = _folder("policy-model", options.policy_model) if options.policy_model else chat
    reward_gpu = options.gpu if options.reward_gpu is None else options.reward_gpu
    shared = reward_gpu == options.gpu
    chat_context, reward_context = _context(chat), _context(reward)
    template, assistant_only = training_template(policy)
    out = Path(options.out).expanduser().resolve()
    return {
        "name": "gpu-smoke",
        "store": {"root": str(out / "store")},
        "servers": {"managed": True, "restart_on_crash": False, "servers": [
            {"name": "chat", "kind": "vllm", "model": str(chat), "gpus": [options.gpu], "executable": options.vllm,
             "gpu_memory_utilization": 0.45 if shared else 0.9, "max_model_len": chat_context,
             "startup_timeout_s": 600.0},
            {"name": "reward", "kind": "vllm_reward", "model": str(reward), "gpus": [reward_gpu],
             "executable": options.vllm, "gpu_memory_utilization": 0.4 if shared else 0.9,
             "max_model_len": reward_context, "startup_timeout_s": 600.0},
        ]},
        "models": [
            {"name": "steady", "backend": "openai", "model": str(chat), "served_by": "chat", "temperature": 0.5},
            {"name": "bold", "backend": "openai", "model": str(chat), "served_by": "chat", "temperature": 1.0,
             "system_prompt": "Answer thoroughly, with an example."},
        ],
        "reward": {"kind": "http", "model": str(reward), "served_by": "reward", "api": "classify",
                   "max_length": reward_context, "batch_size": 32},
        "search": {"strategy": "toa", "budget": SMOKE_BUDGET, "tau": 1.0, "alpha": 0.05,
                   "max_tokens": min(512, chat_context // 2), "prompt_concurrency": SMOKE_PROMPTS},
        "synthesis": {"prompts": {"source": str(Path(options.prompts).expanduser().resolve())},
                      "ranking": {"dpo_rejected_rank": SMOKE_BUDGET // 2, "test_fraction": 0.0},
                      "shard_size": SMOKE_PROMPTS},
        "training": {
            "common": {"base_model": str(policy), "max_length": 1024, "save_steps": 50, "timeout_s": 900,
                       "logging_steps": 1, "chat_template": template},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
            "sft": {"learning_rate": 2.0e-4, "max_steps": TRAIN_STEPS, "per_device_batch_size": 2,
                    "warmup_ratio": 0.0, "assistant_only_loss": assistant_only, "evaluate": False},
            "dpo": {"learning_rate": 5.0e-6, "max_steps": TRAIN_STEPS, "per_device_batch_size": 2,
                    "warmup_ratio": 0.0, "evaluate": False},
        },
        "evaluation": {
            "benchmarks": [{"name": "mini", "kind": "toaflow_mini", "limit": EVAL_PROMPTS, "seed": 0}],
            "judges": {"reward": {"kind": "hf_classifier", "model": str(reward), "head": "logits",
                                  "max_length": reward_context}},
            "generation": {"max_tokens": 256, "temperature": 0.0},
            "gate": {"metrics": []},
        },
    }


def smoke_steps(options: SmokeOptions, config_path: Path, toa: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(name, argv) of every step, in order."""
    toa = toa or [sys.executable, "-m", "toaflow.cli"]
    out = Path(options.out).expanduser().resolve()
    config = str(config_path)
    return [
        ("preflight", [*toa, "preflight", "--config", config]),
        ("sample", [*toa, "sample", "--config", config, "--prompts", str(Path(options.prompts).expanduser().resolve()),
                    "--strategy", "toa", "--budget", str(SMOKE_BUDGET), "--limit", str(SMOKE_PROMPTS),
                    "--out", str(out / "samples.parquet")]),
        ("synthesize", [*toa, "synthesize", "--config", config, "--run-id", options.run_id,
                        "--limit", str(SMOKE_PROMPTS)]),
        ("train", [*toa, "train", "--config", config, "--run-id", options.run_id]),
        ("evaluate", [*toa, "evaluate", "--config", config, "--run-id", options.run_id]),
    ]


Runner = Callable[[list[str], Path], tuple[int, str]]


def run_step(argv: list[str], log_path: Path) -> tuple[int, str]:
    """Run one step, its output into `log_path`; (return code, output)."""
    with open(log_path, "wb") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              cwd=REPO).returncode
    return code, log_path.read_text(errors="replace")


def run_smoke(options: SmokeOptions, runner: Runner = run_step) -> dict[str, Any]:
    """Write the config, run the steps until one fails, write report.md / report.json; returns the report."""
    out = Path(options.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = smoke_config(options)
    config_path = out / "smoke.yaml"
    config_path.write_text("# Generated by `toa gpu-smoke` (infra/gpu_smoke.py).\n" + yaml.safe_dump(config, sort_keys=False))
    results: list[StepResult] = []
    started = time.monotonic()
    for name, argv in smoke_steps(options, config_path):
        step = StepResult(name, argv)
        begin = time.monotonic()
        step.returncode, output = runner(argv, out / f"{name}.log")
        step.seconds = round(time.monotonic() - begin, 1)
        step.output_tail = output[-1500:]
        step.warnings = [line.strip()[:300] for line in output.splitlines() if _WARNING.search(line)][:20]
        results.append(step)
        if step.returncode != 0:
            break
    report = _report(options, config, results, time.monotonic() - started, out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_markdown(report))
    return report


def _report(options: SmokeOptions, config: dict[str, Any], results: list[StepResult], seconds: float,
            out: Path) -> dict[str, Any]:
    throughput = None
    samples = out / "samples.parquet"
    sample_step = next((r for r in results if r.name == "sample" and r.returncode == 0), None)
    if sample_step and samples.is_file():
        import pyarrow.parquet as pq

        rows = pq.read_table(samples, columns=["error"]).column("error").to_pylist()
        throughput = {"generations": len(rows), "failed": sum(1 for e in rows if e),
                      "seconds": sample_step.seconds,
                      "generations_per_s": round(len(rows) / sample_step.seconds, 2) if sample_step.seconds else None}
    warnings = [f"{r.name}: {w}" for r in results for w in r.warnings]
    if config["training"]["sft"]["assistant_only_loss"] == "auto":
        warnings.append("train: the policy's chat template has no {% generation %} markers and is not Llama-3's: "
                        "SFT trained on whole conversations")
    planned = [name for name, _ in smoke_steps(options, out / "smoke.yaml")]
    passed = len(results) == len(planned) and all(r.returncode == 0 for r in results)
    return {"passed": passed, "minutes": round(seconds / 60, 2), "target_minutes": TARGET_MINUTES,
            "steps": [asdict(r) for r in results], "not_run": planned[len(results):],
            "sampling": throughput, "warnings": warnings, "config": str(out / "smoke.yaml"),
            "models": {"chat": config["models"][0]["model"], "reward": config["reward"]["model"],
                       "policy": config["training"]["common"]["base_model"]}}


def report_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: verdict, steps with times, sampling throughput, warnings, failed step's output."""
    lines = [f"# GPU smoke: {'PASSED' if report['passed'] else 'FAILED'} in {report['minutes']} min "
             f"(target < {report['target_minutes']} min)", "",
             f"chat model `{report['models']['chat']}`, reward model `{report['models']['reward']}`, "
             f"policy `{report['models']['policy']}`; config `{report['config']}`", "",
             "| step | result | seconds |", "|---|---|---|"]
    for step in report["steps"]:
        lines.append(f"| {step['name']} | {'ok' if step['returncode'] == 0 else 'FAILED (exit %s)' % step['returncode']} "
                     f"| {step['seconds']} |")
    lines += [f"| {name} | not run | |" for name in report["not_run"]]
    if report["sampling"]:
        s = report["sampling"]
        lines += ["", f"Sampling: {s['generations']} generations ({s['failed']} failed) in {s['seconds']} s = "
                  f"{s['generations_per_s']} generations/s, server start-up included."]
    lines += ["", f"## Warnings ({len(report['warnings'])})", ""] + [f"- {w}" for w in report["warnings"]]
    failed = [step for step in report["steps"] if step["returncode"] != 0]
    if failed:
        lines += ["", f"## Output of the failed step ({failed[0]['name']})", "", "```", failed[0]["output_tail"], "```"]
    return "\n".join(lines) + "\n"
