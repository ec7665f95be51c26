"""SFT recipe: fine-tune the base model on the best response per prompt (TRL SFTTrainer, LoRA by default).

    python -m training.sft --config configs/train_llama31_8b.yaml --run-id R [--data-run-id D]

Reads runs/<D>/datasets/sft/{train,test}.parquet, writes runs/<R>/models/sft/ (see training/stage.py).
"""
from __future__ import annotations

import sys
from typing import Any

from training.config import StageSettings
from training.data import fetch_stage_dataset
from training.modeling import (assistant_only_setting, choose_precision, limit_cpu_threads, load_starting_policy,
                               load_tokenizer, resolve_base_model, trainable_parameters)
from training.stage import StageRun, log_line, stage_main, trainer_arguments

STAGE = "sft"


def run(settings: StageSettings, run_id: str, data_run_id: str | None = None, force: bool = False) -> dict[str, Any]:
    """Train the SFT stage of `run_id` and publish it to the store; returns the final metrics."""
    cfg, common = settings.training.sft, settings.training.common
    with StageRun.open(settings, STAGE, run_id, data_run_id) as stage:
        if stage.is_published() and not force:
            log_line(f"sft: {stage.store.uri(stage.prefix)} is already published; skipping (pass --force to retrain)")
            return stage.published_metrics()

        # 1. Everything that can be wrong is checked before the model is loaded.
        data = fetch_stage_dataset(stage.store, stage.data_run_id, STAGE, stage.workdir / "data", cfg.max_train_samples)
        precision = choose_precision(common)
        base_dir = resolve_base_model(common.base_model)
        # Iterative training: on from the promoted model (pinned in runs/<run_id>/policy.json) when there is one.
        latest = stage.latest_start() if common.start_from == "latest" else None
        start_dir = latest[0] if latest else None
        started_from = latest[1]["model"] if latest else common.base_model
        tokenizer = load_tokenizer(start_dir or base_dir, common.chat_template)
        assistant_only = assistant_only_setting(tokenizer, cfg.assistant_only_loss)
        log_line(f"sft: {len(data['train'])} train rows, {len(data['test']) if data['test'] else 0} test rows; "
                 f"base {common.base_model}, starting from {started_from}; "
                 f"{'full fine-tuning' if common.full_finetune else 'LoRA'}; "
                 f"{'bf16' if precision.bf16 else 'fp32'} on {precision.device}; assistant-only loss {assistant_only}")

        # 2. Model and trainer. The arguments come first: under DeepSpeed ZeRO-3 creating them makes
        #    from_pretrained load the weights already sharded.
        from transformers import set_seed
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(
            **{**trainer_arguments(cfg, common, precision, stage.trainer_dir, has_eval=data["test"] is not None),
               **stage.tracker_arguments()},
            assistant_only_loss=assistant_only,
            packing=cfg.packing,
        )
        limit_cpu_threads(common, precision)
        set_seed(common.seed)  # before the model: LoRA weights are initialised randomly
        label = f"the promoted model of run {latest[1]['run_id']}" if latest else "the base model"
        model, peft_config, _ = load_starting_policy(start_dir, base_dir, common, settings.training.lora, precision,
                                                     label)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data["train"],
            eval_dataset=data["test"],
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=stage.callbacks(),
        )
        trainable, total = trainable_parameters(trainer.model)
        log_line(f"sft: training {trainable:,} of {total:,} parameters")

        # 3. Train (resuming from the newest checkpoint in the store, if a previous attempt left one).
        resume = stage.restore_checkpoint()
        if resume is not None:
            log_line(f"sft: resuming from {resume.name}")
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        eval_metrics = trainer.evaluate() if (cfg.evaluate and data["test"] is not None) else {}

        # 4. Publish weights, tokenizer, metrics and model card.
        metrics = stage.publish(trainer, tokenizer, base_model=common.base_model, resumed_from=resume, extra_metrics={
            "eval": eval_metrics, "trainable_parameters": trainable, "total_parameters": total,
            "precision": "bf16" if precision.bf16 else "fp32", "assistant_only_loss": assistant_only,
            "train_rows": len(data["train"]), "started_from": started_from,
        })
        return metrics


if __name__ == "__main__":
    sys.exit(stage_main(STAGE, run))
