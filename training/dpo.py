"""DPO recipe: preference-tune the SFT policy on (prompt, chosen, rejected) pairs (TRL DPOTrainer).

    python -m training.dpo --config configs/train_llama31_8b.yaml --run-id R [--data-run-id D]

Reads runs/<D>/datasets/dpo/{train,test}.parquet and runs/<R>/models/sft/, writes runs/<R>/models/dpo/.

Where DPO starts (decided here, documented in docs/training.md):
- LoRA (default): the SFT adapter is loaded on the base weights and trained further; TRL keeps a frozen copy
  of it (adapter "ref") as the reference. So the reference is exactly the SFT policy, as DPO prescribes, the
  result is ONE adapter over the untouched base model (vLLM serves it with --lora-modules), and no merged copy
  of the base weights (16 GB for 8B) is ever written. Merging first and training a fresh LoRA would need that
  copy and would leave a two-layer artifact (merged SFT weights + DPO adapter).
- Full fine-tuning: the SFT weights are the policy, and TRL loads them a second time as the frozen reference.
- `dpo.from_sft: false` starts from common.base_model instead (reference = the base model), or, with
  `common.start_from: latest` (iterative DPO), from the promoted model pinned in runs/<R>/policy.json (reference =
  that model). With from_sft and start_from latest, SFT itself started from the promoted model (training/sft.py).
"""
from __future__ import annotations

import json
import sys
from typing import Any

from training.config import StageSettings
from training.data import fetch_stage_dataset
from training.modeling import (TrainingSetupError, choose_precision, limit_cpu_threads, load_starting_policy,
                               load_tokenizer, resolve_base_model, trainable_parameters)
from training.stage import StageRun, download_published, log_line, model_prefix, stage_main, trainer_arguments

STAGE = "dpo"


def run(settings: StageSettings, run_id: str, data_run_id: str | None = None, force: bool = False) -> dict[str, Any]:
    """Train the DPO stage of `run_id` (from its SFT model) and publish it to the store; returns the final metrics."""
    cfg, common = settings.training.dpo, settings.training.common
    with StageRun.open(settings, STAGE, run_id, data_run_id) as stage:
        if stage.is_published() and not force:
            log_line(f"dpo: {stage.store.uri(stage.prefix)} is already published; skipping (pass --force to retrain)")
            return stage.published_metrics()

        # 1. Everything that can be wrong is checked before the model is loaded.
        data = fetch_stage_dataset(stage.store, stage.data_run_id, STAGE, stage.workdir / "data", cfg.max_train_samples)
        precision = choose_precision(common)
        start_dir = _starting_point(stage) if cfg.from_sft else None
        label, started_from = "the SFT policy", f"runs/{run_id}/models/sft" if start_dir else common.base_model
        if start_dir is None and common.start_from == "latest":  # iterative DPO straight from the promoted model
            latest = stage.latest_start()
            if latest is not None:
                start_dir, record = latest
                label, started_from = f"the promoted model of run {record['run_id']}", record["model"]
        base_dir = resolve_base_model(common.base_model)
        tokenizer = load_tokenizer(start_dir or base_dir, common.chat_template)
        log_line(f"dpo: {len(data['train'])} train pairs, {len(data['test']) if data['test'] else 0} test pairs; "
                 f"starting from {started_from}; "
                 f"{'bf16' if precision.bf16 else 'fp32'} on {precision.device}; beta {cfg.beta}")

        # 2. Policy (and with it the reference), then the trainer. Arguments first (ZeRO-3 sharded loading).
        from transformers import set_seed
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(
            **{**trainer_arguments(cfg, common, precision, stage.trainer_dir, has_eval=data["test"] is not None),
               **stage.tracker_arguments()},
            beta=cfg.beta,
            loss_type=[cfg.loss_type],
        )
        limit_cpu_threads(common, precision)
        set_seed(common.seed)
        model, peft_config, reference = _policy(settings, start_dir, base_dir, precision, label)
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=data["train"],
            eval_dataset=data["test"],
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=stage.callbacks(),
        )
        trainable, total = trainable_parameters(trainer.model)
        log_line(f"dpo: training {trainable:,} of {total:,} parameters; reference = {reference}")

        # 3. Train (resuming from the newest checkpoint in the store, if a previous attempt left one).
        resume = stage.restore_checkpoint()
        if resume is not None:
            log_line(f"dpo: resuming from {resume.name}")
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        eval_metrics = trainer.evaluate() if (cfg.evaluate and data["test"] is not None) else {}

        # 4. Publish.
        accuracies = [entry["rewards/accuracies"] for entry in trainer.state.log_history if "rewards/accuracies" in entry]
        metrics = stage.publish(trainer, tokenizer, base_model=common.base_model, resumed_from=resume, extra_metrics={
            "eval": eval_metrics, "trainable_parameters": trainable, "total_parameters": total,
            "precision": "bf16" if precision.bf16 else "fp32", "beta": cfg.beta, "reference": reference,
            "started_from": started_from,
            "first_reward_accuracy": accuracies[0] if accuracies else None,
            "final_reward_accuracy": accuracies[-1] if accuracies else None,
            "train_rows": len(data["train"]),
        })
        return metrics


def _starting_point(stage: StageRun):
    """Download this run's published SFT model; it must come from the same base model as configured."""
    sft_prefix = model_prefix(stage.run_id, "sft")
    if not stage.store.dir_complete(sft_prefix):
        raise TrainingSetupError(
            f"no finished SFT model at {stage.store.uri(sft_prefix)}/: run the SFT stage for run '{stage.run_id}' "
            "first, or set training.dpo.from_sft: false to start DPO from the base model")
    sft_dir = download_published(stage.store, sft_prefix, stage.workdir / "sft")
    sft_base = json.loads((sft_dir / "training_metrics.json").read_text())["base_model"]
    base = stage.settings.training.common.base_model
    if sft_base != base:
        raise TrainingSetupError(
            f"the SFT model of run '{stage.run_id}' was trained from '{sft_base}' but training.common.base_model is "
            f"'{base}'; use the same base model for both stages")
    return sft_dir


def _policy(settings: StageSettings, start_dir, base_dir, precision, label: str = "the SFT policy"
            ) -> tuple[Any, Any, str]:
    """(model, peft_config for the trainer, a description of the reference policy)."""
    return load_starting_policy(start_dir, base_dir, settings.training.common, settings.training.lora, precision, label)


if __name__ == "__main__":
    sys.exit(stage_main(STAGE, run))
