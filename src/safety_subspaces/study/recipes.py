"""Fine-tuning recipes inside a study: data options plus Recipe knobs, run once into the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError

DATA_OPTIONS = ("source", "useful_source", "harmful_source", "fields", "useful_fields", "harmful_fields", "percent", "limit")
RECIPE_KEYS = ("data", "from", *DATA_OPTIONS)


def start_of(study: Any, role: str, source: Any) -> str:
    """The model a recipe fine-tunes: its `from`, else the base (for the aligned and safety-tuned roles) or the reference."""
    return source.recipe.get("from", "base" if role in ("aligned", "safety_tuned") else study.reference)


def split_recipe(recipe: Mapping[str, Any], where: str):
    """(data name, data options, validated Recipe) of a study recipe block."""
    from ..finetune import recipe_from

    knobs = {key: value for key, value in recipe.items() if key not in RECIPE_KEYS}
    try:
        validated = recipe_from(knobs)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    options = {key: recipe[key] for key in DATA_OPTIONS if key in recipe}
    return recipe["data"], options, validated


def run_recipe(role: str, recipe: Mapping[str, Any], start: str, out: Path, *, allow_pickle: bool = False,
               base: str | None = None, seed: int = 0) -> Path:
    """Fine-tune `start` by the recipe into out (reused when a finished checkpoint is already there).

    A recipe's `constraint` (asft) reads Δ = start − base; its random-subspace controls are seeded by the study seed.
    """
    from ..data import load_training_data
    from ..finetune import MANIFEST, finetune

    out = Path(out)
    if (out / MANIFEST).exists():
        return out
    data, options, validated = split_recipe(recipe, f"{role}.recipe")
    records, info = load_training_data(data, seed=validated.seed, method=validated.method, **options)
    finetune(start, records, out, validated, data=info, name=role, allow_pickle=allow_pickle, base=base,
             subspace_seed=seed)
    return out
