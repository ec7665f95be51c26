"""Running a stage as its own process: build the command line, stream its output, enforce a timeout, and turn a
failure into one readable message.

Why a process per stage: the GPU memory of SFT is entirely returned before DPO starts, a crash (OOM, NCCL)
cannot take the orchestrator down with it, and multi-GPU runs need `accelerate launch` anyway.
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from infra.processes import stop_process_group
from training.config import CommonTrainingConfig
from training.stage import ERROR_PREFIX

STDERR_TAIL_LINES = 12


class StageFailed(RuntimeError):
    """A stage process exited non-zero or timed out. `str()` is the stage's own error line (or the tail of its
    stderr), never the whole traceback; `stderr_tail` keeps the last lines for whoever wants more."""

    def __init__(self, message: str, returncode: int | None, stderr_tail: list[str]):
        super().__init__(message)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


def stage_argv(stage: str, config_path: str | Path, run_id: str, data_run_id: str | None,
               common: CommonTrainingConfig, python: str = sys.executable, force: bool = False) -> list[str]:
    """The command that runs one stage: `python -m training.<stage> ...`, or the same module under
    `accelerate launch` (with the DeepSpeed/FSDP config file and process count) when the launcher says so."""
    if stage not in ("sft", "dpo"):
        raise ValueError(f"unknown training stage {stage!r}; expected 'sft' or 'dpo'")
    stage_args = ["--config", str(config_path), "--run-id", run_id]
    if data_run_id:
        stage_args += ["--data-run-id", data_run_id]
    if force:
        stage_args.append("--force")
    if common.launcher == "python":
        return [python, "-m", f"training.{stage}", *stage_args]
    launch = [python, "-m", "accelerate.commands.launch"]
    if common.accelerate_config:
        launch += ["--config_file", str(common.accelerate_config)]
    elif common.num_processes > 1:
        launch.append("--multi_gpu")  # plain DDP; a config file says DeepSpeed/FSDP itself
    launch += ["--num_processes", str(common.num_processes)]
    return [*launch, "-m", f"training.{stage}", *stage_args]


def run_stage_process(argv: Sequence[str], *, timeout_s: float, log: Callable[[str], None] = print,
                      env: dict[str, str] | None = None, cwd: str | Path | None = None) -> None:
    """Run `argv`, passing every output line to `log` as it arrives; raise StageFailed on failure or timeout.

    The child runs in its own process group so a timeout stops it and anything it started (accelerate's workers).
    """
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # The stage modules must be importable however the parent was started.
    repo_root = str(Path(__file__).resolve().parents[1])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, child_env.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1,
        env=child_env, cwd=str(cwd) if cwd else None, start_new_session=True,
    )
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    error_lines: list[str] = []

    def pump(stream, is_stderr: bool) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            if is_stderr:
                if line.startswith(ERROR_PREFIX):
                    error_lines.append(line[len(ERROR_PREFIX):])
                    continue
                if line.strip():
                    stderr_tail.append(line)
            log(line)
        stream.close()

    readers = [threading.Thread(target=pump, args=(process.stdout, False), daemon=True),
               threading.Thread(target=pump, args=(process.stderr, True), daemon=True)]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        stop_process_group(process, grace_s=10.0)
    except BaseException:  # interrupted (Ctrl-C, task cancelled): never leave the stage running
        stop_process_group(process, grace_s=10.0)
        raise
    for reader in readers:
        reader.join(timeout=10)
    name = next((arg for arg in argv if arg.startswith("training.")), Path(argv[0]).name)  # e.g. training.sft
    if timed_out:
        raise StageFailed(f"{name} timed out after {timeout_s:.0f}s and was stopped "
                          "(raise training.common.timeout_s if it needs longer)", None, list(stderr_tail))
    if process.returncode != 0:
        reason = error_lines[-1] if error_lines else " | ".join(list(stderr_tail)[-3:]) or "no error output"
        raise StageFailed(f"{name} failed (exit {process.returncode}): {reason}", process.returncode, list(stderr_tail))

