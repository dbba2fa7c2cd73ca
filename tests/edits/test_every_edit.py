"""Every registered subspace kind × every registered edit on a tiny cast: a valid edited checkpoint, energies that
agree with the energy table (and parallel + orthogonal = 1) or with the edit's own records, and an in-memory
apply / restore that is bit-exact.

The parameters come from the registries, so a new kind or edit (a built-in module or a plugin) is covered at once;
an edit that reads other checkpoints (`Edit.reads`) gets other fine-tunes of the cast, and its global `prepare`
pass (a defence's gate) runs on both paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from safety_subspaces import linalg
from safety_subspaces.analyses.energy import energy_table
from safety_subspaces.checkpoints import Checkpoint, TensorFilter, write_checkpoint
from safety_subspaces.edits import EDITS, EditInputs, make_edit
from safety_subspaces.edits.apply import LiveModel, edited_state
from safety_subspaces.edits.projections import is_projection
from safety_subspaces.registry import Spec
from safety_subspaces.subspaces import SUBSPACES, AlignmentSubspaces
from support.factories import make_cast, state

FRACTION = 0.5
PAIRS = [(kind, edit) for kind in SUBSPACES.names() for edit in EDITS.names()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny tied Qwen2 cast, its checkpoints and alignment subspaces (an SVD cache of its own)."""
    root = tmp_path_factory.mktemp("every-edit")
    cast = make_cast(root / "cast")
    base, aligned, harmful = (Checkpoint(cast[role], role=role) for role in ("base", "aligned", "harmful"))
    subspaces = AlignmentSubspaces(base, aligned, seed=7, cache_root=root / "svd")
    names = [n for n in aligned.names if aligned.infos[n].dtype.is_floating_point]
    return {"root": root, "cast": cast, "aligned": aligned, "harmful": harmful, "subspaces": subspaces, "names": names}


def spec_for(edit: str, kind: str) -> Spec:
    """The edit with the kind as its subspace where it takes one, and the fraction where it needs one (defaults else)."""
    entry = EDITS.get(edit)
    options = {"subspace": kind} if entry.accepts("subspace") else {}
    if entry.accepts("fraction") and entry.option("fraction").required:
        options["fraction"] = FRACTION
    return Spec(edit, options)


def others_for(world, built) -> dict[str, Checkpoint]:
    """A checkpoint of the cast for every other checkpoint the edit reads (never the fine-tune being edited)."""
    spare = [Checkpoint(world["cast"][role], role=role) for role in ("contaminated", "useful")]
    return {name: spare[i % len(spare)] for i, name in enumerate(built.reads)}


def pooled_energy(world, edited: dict[str, torch.Tensor]) -> float:
    """Σ‖W_edited − W_ref‖² / Σ‖Δ_T‖² over the floating tensors, from stored weights."""
    aligned, harmful = world["aligned"], world["harmful"]
    kept = sum(linalg.frobenius_sq(edited[n].float() - aligned.read(n).float()) for n in world["names"])
    total = sum(linalg.frobenius_sq(harmful.read(n).float() - aligned.read(n).float()) for n in world["names"])
    return kept / total


@pytest.mark.parametrize("kind,edit", PAIRS, ids=[f"{k}-{e}" for k, e in PAIRS])
def test_every_kind_and_edit(world, kind, edit, tmp_path):
    from transformers import AutoModelForCausalLM

    aligned, harmful, subspaces = world["aligned"], world["harmful"], world["subspaces"]
    spec = spec_for(edit, kind)
    built = make_edit(spec)
    others = others_for(world, built)
    inputs = EditInputs(subspaces, harmful, others)

    # a valid checkpoint: written atomically, loadable by transformers, finite, every stored tensor of the layout
    out = write_checkpoint(tmp_path / built.label, edited_state(built, inputs, TensorFilter()), template=aligned)
    written = state(out)
    assert set(written) == set(state(world["cast"]["aligned"]))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # energies: what the written weights keep equals the energy table's row (for projection schemes)
    kept = pooled_energy(world, written)
    assert 0.0 <= kept
    if is_projection(edit):
        rows, _ = energy_table(subspaces, {"harmful": harmful}, world["names"], kinds=[kind], fractions=[FRACTION],
                               schemes=sorted({edit, "parallel", "orthogonal"}))
        model_rows = {r["scheme"]: r for r in rows if r["scope"] == "model"}
        assert kept == pytest.approx(model_rows[edit]["energy_kept"], rel=1e-4, abs=1e-7)
        assert model_rows["parallel"]["energy_kept"] + model_rows["orthogonal"]["energy_kept"] == pytest.approx(1.0, abs=1e-9)
    records = built.records()
    if records:  # a defence's records: its modules' ‖Δ̃‖² and ‖Δ_T‖² are what the written weights show
        for record in records:
            name = record["name"]
            total = linalg.frobenius_sq(harmful.read(name).float() - aligned.read(name).float())
            kept_written = linalg.frobenius_sq(written[name].float() - aligned.read(name).float())
            assert record["total"] == pytest.approx(total, rel=1e-5, abs=1e-9)
            assert record["kept"] == pytest.approx(kept_written, rel=1e-4, abs=1e-8)
            assert record["edited"] or torch.equal(written[name], harmful.read(name))

    # in memory: apply gives the written weights bit for bit, restore gives the reference back bit for bit
    live_model = AutoModelForCausalLM.from_pretrained(world["cast"]["aligned"])
    live = LiveModel(live_model, subspaces, aligned.names)
    live.apply(harmful, spec, others=others)
    params = dict(live_model.named_parameters())
    assert all(torch.equal(params[name], written[name]) for name in aligned.names)
    live.restore()
    params = dict(live_model.named_parameters())
    assert all(torch.equal(params[name], aligned.read(name)) for name in aligned.names)
