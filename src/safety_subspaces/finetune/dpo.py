"""Direct preference optimisation through TRL's DPOTrainer, driven by the same recipe."""

from __future__ import annotations

import copy
import tempfile
from typing import Mapping, Sequence

from .. import progress
from .recipe import Recipe
from .sft import resolve_precision, uses_chat


def preference_dataset(tokenizer, records: Sequence[Mapping[str, str]], recipe: Recipe):
    """A datasets.Dataset of prompt/chosen/rejected, conversational when the chat template is used."""
    import datasets

    if uses_chat(tokenizer, recipe):
        rows = [
            {
                "prompt": [{"role": "user", "content": str(r["prompt"])}],
                "chosen": [{"role": "assistant", "content": str(r["chosen"])}],
                "rejected": [{"role": "assistant", "content": str(r["rejected"])}],
            }
            for r in records
        ]
    else:
        rows = [{"prompt": str(r["prompt"]), "chosen": str(r["chosen"]), "rejected": str(r["rejected"])} for r in records]
    return datasets.Dataset.from_list(rows)


def _scheduler_settings(recipe: Recipe) -> dict:
    """TrainingArguments scheduler fields equivalent to the recipe's."""
    if recipe.scheduler == "constant":
        return {"lr_scheduler_type": "constant_with_warmup"}
    if recipe.scheduler == "cosine" and recipe.min_lr_ratio > 0:
        return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": recipe.min_lr_ratio}}
    return {"lr_scheduler_type": recipe.scheduler}


def dpo_config(recipe: Recipe, *, device: str, output_dir: str):
    """TRL's DPOConfig equivalent to the recipe (our progress bar instead of TRL's logging and tqdm)."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.lr,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        warmup_steps=recipe.warmup,
        weight_decay=recipe.weight_decay,
        adam_beta1=recipe.adam_beta1,
        adam_beta2=recipe.adam_beta2,
        adam_epsilon=recipe.adam_eps,
        max_grad_norm=recipe.max_grad_norm or 0.0,
        max_length=recipe.max_length,
        beta=recipe.dpo_beta,
        bf16=resolve_precision(recipe.precision, device) == "bf16",
        seed=recipe.seed,
        data_seed=recipe.seed,
        use_cpu=device == "cpu",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **_scheduler_settings(recipe),
    )


def progress_callback(update):
    """A TrainerCallback feeding the trainer's loss and steps to our progress bar."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Feed the trainer's loss to our progress bar."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                update(0, status=f"loss {logs['loss']:.4f}")

        def on_step_end(self, args, state, control, **kwargs):
            update(1)

    return Progress()


def frozen_reference(model, peft_config):
    """The frozen starting model DPO compares against (None with LoRA: TRL disables the adapter instead)."""
    if peft_config is not None:
        return None
    return copy.deepcopy(model).eval().requires_grad_(False)


def train_dpo(model, tokenizer, records: Sequence[Mapping[str, str]], recipe: Recipe, *, device: str, total: int,
              description: str, peft_config=None):
    """Train with DPO (reference = the starting model); return (trained model, per-step losses)."""
    import datasets
    from transformers import PrinterCallback
    from trl import DPOTrainer

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="ss-dpo-") as scratch, progress.bar(description, total) as update:
        trainer = DPOTrainer(
            model=model,
            ref_model=frozen_reference(model, peft_config),
            args=dpo_config(recipe, device=device, output_dir=scratch),
            train_dataset=preference_dataset(tokenizer, records, recipe),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[progress_callback(update)],
        )
        trainer.remove_callback(PrinterCallback)  # our progress bar shows the loss
        trainer.train()
        losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
        trained = trainer.model
    trained.eval()
    return trained, losses
