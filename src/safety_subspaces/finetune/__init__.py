"""Fine-tuning recipes: full and LoRA SFT (own torch loop, response-only loss) and DPO (TRL); complete checkpoints out."""

from .recipe import Recipe, lr_factor, recipe_from
from .run import MANIFEST, FinetuneResult, check_output_dir, check_start_model, finetune, versions

__all__ = ["MANIFEST", "FinetuneResult", "Recipe", "check_output_dir", "check_start_model", "finetune", "lr_factor",
           "recipe_from", "versions"]
