"""Defences: a published defence applied and written as a loadable model, with a record of what it did.

A defence is one of three registered things, by when it acts: an *edit* after fine-tuning (safe_lora, safemerge,
resta: the defended fine-tune W_ref + Δ̃), a *transform* before it (lox: W_ref', which the recipes then fine-tune),
or a fine-tuning *constraint* during it (asft: `finetune --constraint`). `defend` writes an edit's defended
fine-tune (a checkpoint, or a LoRA adapter where the edit has an adapter form and the fine-tune is an adapter) or a
transform's W_ref' to a new directory, loadable as it is, with DIR/defence.json: the defence, its options, the models
by content fingerprint and, per module, its gate cosine, whether it was edited and the energy kept
‖Δ̃‖²/‖Δ_T‖² (a transform: the energy added ‖W_ref' − W_ref‖²/‖Δ_A/S‖²), and the pooled figures. A study applies
the same edits in memory (`LiveModel.apply(..., others=...)`) and summarises `edit.records()` with
`defence_summary`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import __version__, layout, linalg
from .analyses import RunSettings
from .checkpoints import DEFAULT_SHARD_BYTES, Checkpoint, TensorFilter, check_compatible, write_checkpoint
from .edits import EDITS, Edit, EditInputs, check_reads, make_edit
from .edits.apply import edited_state
from .errors import UserError
from .files import output_lock
from .registry import Registry, Spec
from .subspaces import AlignmentSubspaces
from .transforms import TRANSFORMS, Transform, make_transform, transformed_state

KINDS = ("edit", "transform", "constraint")
WHEN = {"edit": "after fine-tuning", "transform": "before fine-tuning", "constraint": "during fine-tuning"}


def registries() -> dict[str, Registry]:
    """The registry of each kind of defence."""
    from .finetune.constraints import CONSTRAINTS

    return {"edit": EDITS, "transform": TRANSFORMS, "constraint": CONSTRAINTS}


def defence_kind(name: str, where: str = "defend") -> str:
    """edit, transform or constraint: the kind of registered thing a defence name is (a UserError naming them else)."""
    found = [kind for kind, registry in registries().items() if name in registry]
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"{where}: {name!r} names a {' and a '.join(found)}; rename one of them")
    listing = "; ".join(f"{kind}s: {', '.join(registry.names())}" for kind, registry in registries().items())
    raise UserError(f"{where}: unknown defence {name!r} ({listing})")


def flag(name: str) -> str:
    """The command-line flag of another checkpoint an edit reads (safety_update -> --safety-update)."""
    return "--" + name.replace("_", "-")


def energy_ratio(kept: float | None, total: float | None) -> float | None:
    """kept / total, None where there is nothing to compare (no record, or a zero update: JSON has no NaN)."""
    if kept is None or total is None or total <= 0:
        return None
    return linalg.energy_kept(kept, total)


def defence_summary(records: Sequence[Mapping[str, Any]], ratio: str = "energy_kept") -> dict[str, Any]:
    """Per-module entries (name, layer, cosine, edited, the energy ratio kept/total) and the pooled figures.

    A module whose update is zero (a tensor a LoRA adapter does not adapt) has no ratio (null).
    """
    modules = []
    for record in records:
        entry = {key: value for key, value in record.items() if key not in ("kept", "total")}
        entry[ratio] = energy_ratio(record.get("kept"), record.get("total"))
        modules.append(entry)
    measured = [r for r in records if r.get("kept") is not None]
    pooled = {"modules": len(records), "edited": sum(1 for r in records if r.get("edited")),
              ratio: energy_ratio(sum(r["kept"] for r in measured), sum(r["total"] for r in measured))
              if measured else None}
    return {"modules": modules, "pooled": pooled}


@dataclass
class DefendConfig(RunSettings):
    """Everything `defend` needs (paths as given by the user)."""

    defence: str
    base: str
    reference: str
    out: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    reference_kind: str = "aligned"
    finetuned: str | None = None
    others: Mapping[str, str] = field(default_factory=dict)  # other checkpoints an edit reads, e.g. harmful=PATH
    seed: int = 0
    shard_bytes: int = DEFAULT_SHARD_BYTES


@dataclass
class DefenceResult:
    """A written defence: where, what form (checkpoint or adapter), and the record in DIR/defence.json."""

    out: Path
    form: str
    record: dict[str, Any]


def build_defence(name: str, options: Mapping[str, Any], where: str = "defend") -> tuple[str, Edit | Transform]:
    """(kind, the built edit or transform) of a defence and its options; a constraint is refused with a pointer."""
    kind = defence_kind(name, where)
    if kind == "constraint":
        raise UserError(f"{name} acts during fine-tuning: use finetune --constraint {name} (or a study recipe's "
                        f"constraint: {name})")
    if kind == "edit":
        return kind, make_edit(Spec(EDITS.canonical(name), dict(options)), where)
    return kind, make_transform(Spec(TRANSFORMS.canonical(name), dict(options)), where)


def check_models(kind: str, built: Edit | Transform, config: DefendConfig) -> None:
    """The models a defence needs are given, and no other (a UserError naming the flag)."""
    if kind == "transform":
        if config.finetuned is not None:
            raise UserError(f"{built.name} changes the {config.reference_kind} model before fine-tuning; it takes no "
                            "--finetuned")
        check_reads(built, config.others, flag)  # type: ignore[arg-type]
        return
    if config.finetuned is None:
        raise UserError(f"{built.name} edits a fine-tune: give --finetuned F (a checkpoint or a LoRA adapter of the "
                        f"{config.reference_kind} model)")
    check_reads(built, config.others, flag)  # type: ignore[arg-type]


def check_out(out: Path) -> None:
    """The output is new or an empty directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output {out} exists and is not an empty directory; choose a new --out")


def has_adapter_form(edit: Edit) -> bool:
    """Whether an edit can be written back as a LoRA adapter."""
    return type(edit).adapter is not Edit.adapter


def defend(config: DefendConfig) -> DefenceResult:
    """Apply a defence and write it to config.out with its defence.json (all of it, or nothing)."""
    from .adapters import AdapterFinetune, open_finetune

    started = time.time()
    kind, built = build_defence(config.defence, config.options)
    check_models(kind, built, config)
    check_out(config.out)
    roles = {"base": config.base, config.reference_kind: config.reference}
    opened: dict[str, Any] = {role: Checkpoint(path, role=role.replace("_", "-"), allow_pickle=config.allow_pickle,
                                               trust_remote_code=config.trust_remote_code) for role, path in roles.items()}
    reference = opened[config.reference_kind]
    paths = {"finetuned": config.finetuned} if config.finetuned is not None else {}
    for role, path in {**paths, **config.others}.items():
        opened[role] = open_finetune(path, reference, role=role.replace("_", "-"), allow_pickle=config.allow_pickle,
                                     trust_remote_code=config.trust_remote_code)
    check_compatible(opened)
    subspaces = AlignmentSubspaces(opened["base"], reference, seed=config.seed, cache_root=config.cache_dir,
                                   method=config.svd_method, device=config.device)
    record: dict[str, Any] = {
        "defence": built.name, "kind": kind, "when": WHEN[kind], "options": built.options(),
        "reference": config.reference_kind, "seed": config.seed, "svd_method": config.svd_method,
        "models": {role: {"path": str(c.path), "fingerprint": c.fingerprint()} for role, c in opened.items()},
        "tool": f"safety-subspaces {__version__}",
    }

    def note() -> str:
        """defence.json, asked once every tensor is written."""
        ratio = "energy_added" if kind == "transform" else "energy_kept"
        record.update(defence_summary(built.records(), ratio), seconds=round(time.time() - started, 3))
        return json.dumps(record, indent=2, allow_nan=False) + "\n"

    finetune = opened.get("finetuned")
    with output_lock(Path(config.out)):
        check_out(config.out)
        if kind == "transform":
            form = "checkpoint"
            write_checkpoint(config.out, transformed_state(built, subspaces), template=reference,  # type: ignore[arg-type]
                             shard_bytes=config.shard_bytes, extra_files={layout.DEFENCE_RECORD: note})
        else:
            inputs = EditInputs(subspaces, finetune, {name: opened[name] for name in config.others})
            if isinstance(finetune, AdapterFinetune) and has_adapter_form(built):  # type: ignore[arg-type]
                form = "adapter"
                write_defended_adapter(built, inputs, finetune, config.out, note)  # type: ignore[arg-type]
            else:
                form = "checkpoint"
                template = reference if isinstance(finetune, AdapterFinetune) else finetune
                write_checkpoint(config.out, edited_state(built, inputs, TensorFilter()), template=template,  # type: ignore[arg-type]
                                 shard_bytes=config.shard_bytes, extra_files={layout.DEFENCE_RECORD: note})
    record["form"] = form
    return DefenceResult(Path(config.out), form, record)


def write_defended_adapter(edit: Edit, inputs: EditInputs, finetune: Any, out: Path, note: Any) -> None:
    """An adapter fine-tune edited in its adapter form (B ← C B for Safe LoRA), written back as an adapter."""
    from .adapters import write_adapter

    reference = inputs.reference
    names = [n for n in reference.names if reference.infos[n].dtype.is_floating_point]
    edit.prepare(inputs, names)

    def factors():
        for name in finetune.targets:
            if edit.exact(inputs, name) is None:  # the merged view's Δ̃ records the module's energy
                edit.delta(inputs, name, inputs.delta_task(name))
            b, a = finetune.adapter.factors(name)
            yield name, edit.adapter(inputs, name, b, a)

    write_adapter(out, finetune.adapter, factors(), tokenizer_from=reference.path, extra_files={layout.DEFENCE_RECORD: note})
