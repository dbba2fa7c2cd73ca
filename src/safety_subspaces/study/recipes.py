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


def trained_defences(study: Any) -> list[tuple[Any, str, str, str, str]]:
    """(entry, fine-tune, defence or control, subspace kind, role of the model it makes) of every defence that acts
    before or during fine-tuning (lox, asft): one model per fine-tune x variant, trained by the fine-tune's recipe.

    Controls of these defences use the study seed only (one fine-tune per control, whatever random_seeds says)."""
    out = []
    for entry in study.defences:
        if entry.kind == "edit":
            continue
        published = entry.options.get("subspace", "top_k")
        variants = [("defence", published), *(("control", kind) for kind in entry.controls or [])]
        for finetune in entry.finetunes:
            for role, kind in variants:
                out.append((entry, finetune, role, kind, f"{finetune}-{entry.name}-{kind}"))
    return out


def run_defence_recipes(study: Any, run_dir: Path, paths: dict[str, str]) -> dict[str, str]:
    """The given paths plus the models the training-time defences make under run_dir/models (reused if there):
    lox writes W_ref' (`defend`) and runs the fine-tune's recipe from it; asft runs the recipe with the constraint."""
    from .. import layout
    from ..defend import DefendConfig, defend

    paths = dict(paths)
    models = Path(run_dir) / layout.MODELS
    for entry, finetune, role, kind, made in trained_defences(study):
        recipe = dict(study.finetunes[finetune].recipe)
        options = dict(entry.options) if role == "defence" else {**entry.options, "subspace": kind}
        start = paths[study.reference]
        if entry.kind == "transform":
            transformed = models / f"{study.reference}-{entry.name}-{kind}"
            if not (transformed / layout.DEFENCE_RECORD).exists():
                defend(DefendConfig(defence=entry.name, base=paths["base"], reference=paths[study.reference],
                                    out=transformed, options=options, reference_kind=study.reference, seed=study.seed,
                                    allow_pickle=study.allow_pickle))
            start = str(transformed)
            recipe.pop("from", None)
        else:
            recipe["constraint"] = {"name": entry.name, **options}
        paths[made] = str(run_recipe(made, recipe, start, models / made, allow_pickle=study.allow_pickle,
                                     base=paths["base"], seed=study.seed))
    return paths
