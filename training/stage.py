"""What the SFT and DPO recipes share: the stage's place in the store, its scratch folder, the Trainer
arguments common to both, publishing the result, and the command-line entry of a stage process.

A stage writes runs/<run_id>/models/<stage>/ (published with `upload_dir`; its marker file means "done"):
    adapter_model.safetensors + adapter_config.json   (LoRA)  or  model*.safetensors + config.json (full)
    tokenizer files, training_metrics.json (final metrics + the Trainer's log history), README.md (model card)
    merged/                                            (LoRA merged into the base, when merge_adapter is set)
    checkpoints/checkpoint-<step>/                     (while training; removed once the stage is published)

Heavy imports (transformers, trl, peft) happen inside functions, after the inputs are checked, so a stage with a
bad dataset or config fails in about a second.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from infra.manifest import one_line
from infra.run_ids import InvalidRunId, check_run_id
from infra.secrets import redact_log_records
from toa_core.credentials import redact, redact_text
from infra.store import DIR_MARKER, Store, open_store
from toa_core.folders import is_inside, private_scratch_root, remove_tree
from training.config import CommonTrainingConfig, StageConfig, StageSettings, TrainingConfigError, load_stage_settings
from training.modeling import Precision, TrainingSetupError

log = logging.getLogger(__name__)

#: A failing stage process prints this prefix + one line to stderr; the parent shows that line as the error.
ERROR_PREFIX = "toaflow-stage-error: "
METRICS_FILE = "training_metrics.json"
TRACKING_PREFIX = "tracking/tensorboard/"


def model_prefix(run_id: str, stage: str) -> str:
    """Store folder of a stage's published model."""
    return f"runs/{run_id}/models/{stage}"


@dataclass
class StageRun:
    """One stage of one run: where it reads and writes, and its local scratch folder.

    Everything the stage deletes locally lies inside `scratch_root` (the configured work_dir, or a temporary
    folder of its own): run ids are checked first, and every removal re-checks the resolved path.
    """
    settings: StageSettings
    stage: str
    run_id: str
    data_run_id: str
    store: Store
    workdir: Path
    scratch_root: Path
    _owns_workdir: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, settings: StageSettings, stage: str, run_id: str, data_run_id: str | None = None,
             store: Store | None = None) -> "StageRun":
        check_run_id(run_id)
        if data_run_id is not None:
            check_run_id(data_run_id, "data run id")
        # The same path in every process of an `accelerate launch`: ZeRO-3/FSDP ranks save their checkpoint
        # shards into one shared output_dir, and the main process uploads it.
        common = settings.training.common
        if common.work_dir:
            root, owns = Path(common.work_dir).expanduser(), False
        else:
            # Keyed by the store too, so the same run id in two stores never shares a folder.
            store_tag = hashlib.sha256(settings.store.root.encode()).hexdigest()[:10]
            root, owns = private_scratch_root("toaflow-training") / store_tag, True
        workdir = root / run_id / stage
        if not is_inside(workdir, root):  # a symlinked run folder pointing elsewhere
            raise TrainingSetupError(f"scratch folder {workdir} resolves outside {root}; remove the link")
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(settings=settings, stage=stage, run_id=run_id, data_run_id=data_run_id or run_id,
                   store=store or open_store(settings.store), workdir=workdir, scratch_root=root,
                   _owns_workdir=owns)

    # -- where things are --------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return model_prefix(self.run_id, self.stage)

    @property
    def trainer_dir(self) -> Path:
        """The Trainer's output_dir: checkpoints land here before being synced to the store."""
        return self.workdir / "trainer"

    @property
    def final_dir(self) -> Path:
        return self.workdir / "final"

    def is_published(self) -> bool:
        return self.store.dir_complete(self.prefix)

    def published_metrics(self) -> dict[str, Any]:
        return self.store.read_json(f"{self.prefix}/{METRICS_FILE}")

    # -- experiment trackers -----------------------------------------------------------------------------
    @property
    def tensorboard_dir(self) -> Path:
        return self.workdir / "tensorboard"

    def tracking_prefix(self) -> str:
        """Store folder of this stage's TensorBoard events: `tensorboard --logdir <store>/tracking/tensorboard`."""
        return f"{TRACKING_PREFIX}{self.run_id}/{self.stage}"

    def tracker_arguments(self) -> dict[str, Any]:
        """Trainer arguments for `training.common.report_to`: the trackers, with the run id as the run's name."""
        trackers = list(self.settings.training.common.report_to)
        if not trackers:
            return {"report_to": "none"}
        if "tensorboard" in trackers:
            # transformers' TensorBoard callback writes here (uploaded to the store when the stage is published).
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.tensorboard_dir)
        if "mlflow" in trackers:
            os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "toaflow")
            os.environ["MLFLOW_TAGS"] = json.dumps({"toaflow.stage": self.stage, "toaflow.run_id": self.run_id,
                                                    "toaflow.data_run_id": self.data_run_id})
        return {"report_to": trackers, "run_name": self.run_id}

    def upload_tracking(self) -> str | None:
        """Copy the TensorBoard events to the store (main process); returns their store URI, or None."""
        if not self.tensorboard_dir.is_dir() or not any(self.tensorboard_dir.rglob("events.out.tfevents.*")):
            return None
        self.store.upload_dir(self.tensorboard_dir, self.tracking_prefix())
        return self.store.uri(self.tracking_prefix())

    # -- iterative training ------------------------------------------------------------------------------
    def latest_start(self) -> tuple[Path, dict[str, Any]] | None:
        """The promoted model this run trains on from (`training.common.start_from: latest`): (its downloaded
        folder, the policy record pinned in runs/<run_id>/policy.json), or None before the first promotion."""
        from infra.policy import pin_policy

        record = pin_policy(self.store, self.run_id)
        if not record.get("run_id"):
            log_line(f"{self.stage}: start_from latest, but no model is `latest` yet: starting from the base model")
            return None
        base = self.settings.training.common.base_model
        if record.get("base_model") and record["base_model"] != base:
            raise TrainingSetupError(
                f"`latest` ({record['model']}) was trained from '{record['base_model']}' but training.common.base_model "
                f"is '{base}'; iterative training needs the same base model (or start_from: base)")
        folder = download_published(self.store, record["model"], self.workdir / "latest")
        return folder, record

    # -- resume --------------------------------------------------------------------------------------------
    def callbacks(self) -> list[Any]:
        """Store sync first, then the user's extra callbacks (`training.common.callbacks`)."""
        from training.checkpoints import StoreCheckpointSync, checkpoints_prefix

        extra = [_import_callback(spec)() for spec in self.settings.training.common.callbacks]
        return [StoreCheckpointSync(self.store, checkpoints_prefix(self.run_id, self.stage)), *extra]

    def restore_checkpoint(self) -> Path | None:
        """The newest complete checkpoint from the store, downloaded under trainer_dir; None to start fresh."""
        from accelerate import PartialState

        from training.checkpoints import checkpoints_prefix, complete_checkpoints, restore_latest_checkpoint

        prefix = checkpoints_prefix(self.run_id, self.stage)
        state = PartialState()
        with state.main_process_first():  # the main process downloads; the others wait, then use its copy
            if state.is_main_process:
                remove_tree(self.trainer_dir, self.workdir, ignore_errors=True)  # leftovers of a crashed attempt
                return restore_latest_checkpoint(self.store, prefix, self.trainer_dir)
            found = complete_checkpoints(self.store, prefix)
            local = self.trainer_dir / f"checkpoint-{found[-1][0]}" if found else None
            return local if local is not None and local.is_dir() else None

    # -- the end -------------------------------------------------------------------------------------------
    def publish(self, trainer: Any, tokenizer: Any, *, base_model: str, resumed_from: Path | None,
                extra_metrics: dict[str, Any]) -> dict[str, Any]:
        """Save weights, tokenizer, metrics and model card; upload them; drop the stored checkpoints.

        Every process must call this (saving gathers sharded weights); only the main one writes the store.
        """
        from training.checkpoints import checkpoints_prefix, delete_checkpoints

        common = self.settings.training.common
        trainer.save_model(str(self.final_dir))  # gathers ZeRO-3/FSDP shards; a PeftModel saves its adapters
        if not trainer.is_world_process_zero():
            return {}
        # DPO on a LoRA policy keeps a frozen copy of the SFT adapter named "ref": it is the SFT model itself.
        remove_tree(self.final_dir / "ref", self.final_dir, ignore_errors=True)
        tokenizer.save_pretrained(str(self.final_dir))
        is_adapter = (self.final_dir / "adapter_config.json").is_file()
        if common.merge_adapter and is_adapter:
            merge_adapter(self.final_dir, self.final_dir / "merged", tokenizer)
        metrics = self._metrics(trainer, base_model, resumed_from, is_adapter, extra_metrics)
        (self.final_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        (self.final_dir / "README.md").write_text(model_card(metrics, self.settings))
        tracking = self.upload_tracking()  # before the model: a published stage has its curves in place
        if tracking:
            metrics["tensorboard"] = tracking
            (self.final_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        self.store.upload_dir(self.final_dir, self.prefix)
        if not common.keep_checkpoints:
            delete_checkpoints(self.store, checkpoints_prefix(self.run_id, self.stage))
        print(f"{self.stage} model published to {self.store.uri(self.prefix)}", flush=True)
        return metrics

    def _metrics(self, trainer: Any, base_model: str, resumed_from: Path | None, is_adapter: bool,
                 extra: dict[str, Any]) -> dict[str, Any]:
        state = trainer.state
        history = list(state.log_history)
        train_losses = [entry["loss"] for entry in history if "loss" in entry]
        summary = next((entry for entry in reversed(history) if "train_runtime" in entry), {})
        return {
            "stage": self.stage,
            "run_id": self.run_id,
            "data_run_id": self.data_run_id,
            "base_model": base_model,
            "weights": "lora_adapter" if is_adapter else "full",
            "global_step": state.global_step,
            "resumed_from_step": int(resumed_from.name.split("-")[-1]) if resumed_from else None,
            "epoch": state.epoch,
            "first_loss": train_losses[0] if train_losses else None,
            "final_loss": train_losses[-1] if train_losses else None,
            "train_runtime_s": summary.get("train_runtime"),
            **extra,
            "log_history": history,
        }

    def __enter__(self) -> "StageRun":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Remove the scratch folder (checkpoints worth keeping are in the store already); the main process does."""
        if self._owns_workdir and is_main_process():
            remove_tree(self.workdir, self.scratch_root, ignore_errors=True)
            for parent in (self.workdir.parent, self.scratch_root):  # <run_id>/, <store tag>/ when empty
                try:
                    parent.rmdir()
                except OSError:
                    break


def download_published(store: Store, prefix: str, local_dir: Path) -> Path:
    """Download the files a published stage folder lists in its marker (so stray checkpoints are skipped)."""
    marker = f"{prefix}/{DIR_MARKER}"
    if not store.exists(marker):
        raise TrainingSetupError(f"no finished model at {store.uri(prefix)}/ (its {DIR_MARKER} is missing)")
    for name in store.read_json(marker)["files"]:
        store.download_file(f"{prefix}/{name}", local_dir / name)
    return local_dir


def merge_adapter(adapter_dir: Path, out_dir: Path, tokenizer: Any) -> None:
    """Fold a LoRA adapter into its base weights (for servers that cannot apply adapters)."""
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), dtype="auto")  # the base's own dtype
    model.merge_and_unload().save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def trainer_arguments(stage_cfg: StageConfig, common: CommonTrainingConfig, precision: Precision,
                      output_dir: Path, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments both TRL configs share, from our config (names differ on purpose: ours are shorter)."""
    return dict(
        output_dir=str(output_dir),
        seed=common.seed,
        data_seed=common.seed,
        learning_rate=stage_cfg.learning_rate,
        num_train_epochs=stage_cfg.epochs,
        max_steps=stage_cfg.max_steps or -1,
        per_device_train_batch_size=stage_cfg.per_device_batch_size,
        per_device_eval_batch_size=stage_cfg.per_device_batch_size,
        gradient_accumulation_steps=stage_cfg.grad_accum,
        warmup_steps=stage_cfg.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        lr_scheduler_type=stage_cfg.lr_scheduler,
        weight_decay=stage_cfg.weight_decay,
        max_grad_norm=stage_cfg.max_grad_norm,
        bf16=precision.bf16,  # TRL defaults to True, which fails on CPU
        fp16=False,
        activation_checkpointing=precision.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        max_length=common.max_length,
        logging_steps=common.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=common.save_steps,
        save_total_limit=1,  # older local checkpoints are useless once the newer one is in the store
        eval_strategy="no",  # evaluated once at the end (cheaper, and the curve we plot is the train curve)
        do_eval=has_eval,
        report_to="none",
        disable_tqdm=True,  # progress bars garble a streamed log; the log lines carry the progress
        dataloader_num_workers=0,
        dataloader_pin_memory=precision.device == "cuda",  # pinning is meaningless (and warns) on CPU
    )


def _import_callback(spec: str) -> Callable[[], Any]:
    module_name, _, class_name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise TrainingSetupError(f"training.common.callbacks: cannot import '{spec}' ({error}); use 'module:Class'") from None


def model_card(metrics: dict[str, Any], settings: StageSettings) -> str:
    """A short README.md: what this is, where it came from, how to load it, the config it was trained with."""
    stage = metrics["stage"]
    training = settings.training
    lines = [
        f"# toaflow {stage.upper()} model — run `{metrics['run_id']}`",
        "",
        f"- **Stage:** {stage.upper()} ({'LoRA adapter' if metrics['weights'] == 'lora_adapter' else 'full weights'})",
        f"- **Base model:** `{metrics['base_model']}`",
        *([f"- **Started from:** `{metrics['started_from']}`"] if metrics.get("started_from") not in
          (None, metrics["base_model"]) else []),
        f"- **Data run:** `{metrics['data_run_id']}` (runs/{metrics['data_run_id']}/datasets/{stage}/)",
        f"- **Steps:** {metrics['global_step']}" + (f" (resumed from step {metrics['resumed_from_step']})"
                                                    if metrics.get("resumed_from_step") else ""),
        f"- **Train loss:** first {_fmt(metrics.get('first_loss'))}, final {_fmt(metrics.get('final_loss'))}",
    ]
    if stage == "dpo":
        lines += [f"- **Reward accuracy:** first {_fmt(metrics.get('first_reward_accuracy'))}, "
                  f"final {_fmt(metrics.get('final_reward_accuracy'))}",
                  "- **Reference policy:** " + str(metrics.get("reference", "the SFT policy"))]
    if metrics["weights"] == "lora_adapter":
        lines += ["", "Load with `peft.AutoPeftModelForCausalLM.from_pretrained(<this folder>)` (the adapter config "
                      "names the base weights' local path; the base model above is the portable name)."]
    lines += ["", "## Training config", "", "```json",
              json.dumps(redact(training.model_dump(mode="json")), indent=2), "```", ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


# ----------------------------------------------------------------------------------------------------------
# The stage process


def stage_main(stage: str, run: Callable[..., dict[str, Any]], argv: list[str] | None = None) -> int:
    """`python -m training.<stage> --config C --run-id R [--data-run-id D] [--force]`.

    Exit 0 on success. On failure, print one line `toaflow-stage-error: <what went wrong>` to stderr (the parent
    task reports it) after the traceback, and exit 1 (2 for a config or setup problem the user must fix).
    """
    parser = argparse.ArgumentParser(prog=f"python -m training.{stage}", description=f"Run the {stage.upper()} stage.")
    parser.add_argument("--config", required=True, help="run config YAML (its store and training sections are used)")
    parser.add_argument("--run-id", required=True, help="the run whose models/ folder receives the result")
    parser.add_argument("--data-run-id", default=None, help="the run holding the datasets (default: --run-id)")
    parser.add_argument("--force", action="store_true", help="train again even if the stage is already published")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_log_records()
    try:
        check_run_id(args.run_id, "--run-id")  # before anything touches the disk or the store
        if args.data_run_id is not None:
            check_run_id(args.data_run_id, "--data-run-id")
        settings = load_stage_settings(args.config)
        run(settings, run_id=args.run_id, data_run_id=args.data_run_id, force=args.force)
    except (TrainingConfigError, TrainingSetupError, InvalidRunId) as error:
        print(f"{ERROR_PREFIX}{redact_text(_one_line(error))}", file=sys.stderr, flush=True)
        return 2
    except Exception as error:  # noqa: BLE001 - the process boundary: report anything, briefly
        print(redact_text(traceback.format_exc()), file=sys.stderr, end="", flush=True)
        print(f"{ERROR_PREFIX}{type(error).__name__}: {redact_text(_one_line(error))}", file=sys.stderr, flush=True)
        return 1
    return 0


def _one_line(error: BaseException) -> str:
    return one_line(str(error)) or type(error).__name__


def log_line(message: str) -> None:
    """Progress for the parent's log: plain stdout lines (the Trainer's own logs go through `logging`)."""
    print(message, flush=True)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
