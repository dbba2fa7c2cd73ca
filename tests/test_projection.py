"""The weight engine end to end on tiny checkpoints: energies vs an independent numpy computation, caching, writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from support import factories
from support.factories import FINETUNES, make_cast, state
from safety_subspaces import linalg
from safety_subspaces.checkpoints import Checkpoint, TensorFilter
from safety_subspaces.cli import main
from safety_subspaces.files import read_csv
from safety_subspaces.analyses.energy import ProjectConfig, WriteRequest, run_project
from safety_subspaces.edits import ProjectionSpec
from safety_subspaces.edits.apply import LiveModel
from safety_subspaces.subspaces import AlignmentSubspaces

@pytest.fixture(scope="module")
def cast(tmp_path_factory) -> dict[str, Path]:
    return make_cast(tmp_path_factory.mktemp("cast"))


def config_for(cast: dict[str, Path], out: Path, **changes) -> ProjectConfig:
    """A project config over the cast."""
    options = dict(base=str(cast["base"]), reference=str(cast["aligned"]),
                   finetunes={name: str(cast[name]) for name in FINETUNES}, out=out)
    options.update(changes)
    return ProjectConfig(**options)


def model_row(rows, finetune, subspace, scheme, fraction):
    (row,) = [r for r in rows if r["scope"] == "model" and (r["finetune"], r["subspace"], r["scheme"], r["fraction"])
              == (finetune, subspace, scheme, fraction)]
    return row


def test_energies_match_independent_numpy(cast, tmp_path):
    result = run_project(config_for(cast, tmp_path / "run", subspaces=["top_k"], fractions=[0.25, 0.5, 1.0]))
    base, aligned = state(cast["base"]), state(cast["aligned"])
    assert "lm_head.weight" not in aligned  # tied and not stored: the embedding counts once
    for name in FINETUNES:
        tuned = state(cast[name])
        for fraction in (0.25, 0.5, 1.0):
            kept = total = dot = align_sq = 0.0
            for key in aligned:
                d_align = (aligned[key].double() - base[key].double()).numpy()
                d_task = (tuned[key].double() - aligned[key].double()).numpy()
                d_align = d_align.reshape(d_align.shape[0], -1) if d_align.ndim > 1 else d_align.reshape(-1, 1)
                d_task = d_task.reshape(d_align.shape)
                u = np.linalg.svd(d_align, full_matrices=False)[0]
                k = max(1, round(fraction * min(d_align.shape)))
                kept += float(np.sum((u[:, :k] @ (u[:, :k].T @ d_task)) ** 2))
                total += float(np.sum(d_task**2))
                dot += float(np.sum(d_task * d_align))
                align_sq += float(np.sum(d_align**2))
            row = model_row(result.rows, name, "top_k", "parallel", fraction)
            assert row["energy_kept"] == pytest.approx(kept / total, abs=2e-5)
            assert row["cos_task_proj"] == pytest.approx(np.sqrt(kept / total), abs=2e-5)
            assert row["cos_task_align"] == pytest.approx(dot / np.sqrt(total * align_sq), abs=1e-5)
            orth = model_row(result.rows, name, "top_k", "orthogonal", fraction)
            assert orth["energy_kept"] + row["energy_kept"] == pytest.approx(1.0, abs=1e-6)


def test_scopes_and_columns(cast, tmp_path):
    result = run_project(config_for(cast, tmp_path / "run", fractions=[0.5]))
    scopes = {row["scope"] for row in result.rows}
    assert scopes == {"model", "layer", "tensor"}
    layers = {row["name"] for row in result.rows if row["scope"] == "layer"}
    assert layers == {"0", "1"}
    tensors = {row["name"] for row in result.rows if row["scope"] == "tensor"}
    assert "model.layers.0.self_attn.k_proj.bias" in tensors  # Qwen2 biases are 1-D (n x 1) matrices
    assert "lm_head.weight" not in tensors
    header = (tmp_path / "run" / "energy.csv").read_text().splitlines()[0].split(",")
    assert header[:10] == ["finetune", "subspace", "scheme", "fraction", "k_total", "energy_kept",
                           "cos_task_proj", "cos_task_align", "scope", "name"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["reference"] == "aligned"


def test_one_pass_cache_and_determinism(cast, tmp_path):
    cache = tmp_path / "cache"
    first = run_project(config_for(cast, tmp_path / "a", cache_dir=cache, finetunes={"useful": str(cast["useful"])}))
    assert first.decompositions > 0
    # new fine-tunes and new fractions: no SVD at all
    second = run_project(config_for(cast, tmp_path / "b", cache_dir=cache, fractions=[0.1, 0.3]))
    assert second.decompositions == 0
    again = run_project(config_for(cast, tmp_path / "c", cache_dir=cache, finetunes={"useful": str(cast["useful"])}))
    key = lambda rows: [(r["finetune"], r["subspace"], r["scheme"], r["fraction"], r["scope"], r["name"], r["energy_kept"]) for r in rows]
    assert key(again.rows) == key(first.rows)
    # a rerun into the same directory is the same run; a different config there is refused
    run_project(config_for(cast, tmp_path / "a", cache_dir=cache, finetunes={"useful": str(cast["useful"])}))


def test_random_kinds_are_nested_and_seeded(cast, tmp_path):
    rows = run_project(config_for(cast, tmp_path / "r", fractions=[0.25, 0.5, 0.75], seed=3)).rows
    for kind in ("random", "random_k"):
        values = [model_row(rows, "useful", kind, "parallel", f)["energy_kept"] for f in (0.25, 0.5, 0.75)]
        assert values == sorted(values)  # nested bases give monotone curves
    other = run_project(config_for(cast, tmp_path / "s", fractions=[0.25, 0.5, 0.75], seed=4)).rows
    assert model_row(rows, "useful", "random", "parallel", 0.5)["energy_kept"] != model_row(other, "useful", "random", "parallel", 0.5)["energy_kept"]
    assert model_row(rows, "useful", "top_k", "parallel", 0.5)["energy_kept"] == model_row(other, "useful", "top_k", "parallel", 0.5)["energy_kept"]


def test_safety_tuned_reference(cast, tmp_path, capsys):
    code = main(["project", "--base", str(cast["base"]), "--safety-tuned", str(cast["safety"]),
                 "--finetuned", f"useful={cast['useful']}", "--fractions", "0.5", "--out", str(tmp_path / "s")])
    assert code == 0
    assert "Δ_S (safety-tuned)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["reference"] == "safety_tuned" and manifest["delta"].startswith("delta_safety")


def test_written_checkpoints_load_and_match(cast, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config_for(cast, tmp_path / "run", subspaces=["top_k"], fractions=[0.5], models_out=tmp_path / "models",
                        writes=[WriteRequest.parse("useful:parallel:top_k:0.5"), WriteRequest.parse("orthogonal:random:0.5")])
    result = run_project(config)
    assert len(result.written) == 4
    directory = tmp_path / "models" / "useful" / "parallel-top_k-0.5"
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template  # chat template copied
    assert (directory / "generation_config.json").exists() and (directory / "edit.json").exists()
    # the written weights equal W_A + P Δ_T computed here
    base, aligned, tuned = (Checkpoint(cast[n], role=n) for n in ("base", "aligned", "useful"))
    subspaces = AlignmentSubspaces(base, aligned)
    name = "model.layers.1.mlp.down_proj.weight"
    delta_task = tuned.read(name).float() - aligned.read(name).float()
    left = subspaces.spectrum(name).left
    basis = left[:, : linalg.rank_from_fraction(0.5, left.shape[1])]
    expected = aligned.read(name).float() + basis @ (basis.T @ delta_task)
    torch.testing.assert_close(dict(model.named_parameters())[name].detach(), expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        logits = model(torch.tensor([[2, 5, 7]])).logits
    assert torch.isfinite(logits).all()


def test_identity_projections_are_bit_identical(tmp_path):
    cast = make_cast(tmp_path / "bf16", dtype=torch.bfloat16)
    config = config_for(cast, tmp_path / "run", subspaces=["top_k"], fractions=[0.5], models_out=tmp_path / "models",
                        tensors=r"mlp", layers=[1], writes=[WriteRequest.parse("useful:parallel:top_k:0.5")])
    run_project(config)
    written = state(tmp_path / "models" / "useful" / "parallel-top_k-0.5")
    tuned, aligned = state(cast["useful"]), state(cast["aligned"])
    assert set(written) == set(aligned)
    for key, value in written.items():
        assert value.dtype == torch.bfloat16
        if "layers.1.mlp" in key:
            assert not torch.equal(value, tuned[key])  # projected
        else:
            assert torch.equal(value, tuned[key])  # outside the filter: the fine-tuned weights, bit for bit


def test_zero_alignment_update_gives_empty_basis(tmp_path):
    base = factories.tiny_model("llama", seed=0)
    aligned = factories.perturbed(base, seed=1, rank=2, only="mlp")  # attention and norms untouched by alignment
    tuned = factories.perturbed(aligned, seed=2, rank=2, scale=0.01)
    paths = {n: factories.save(m, tmp_path / n) for n, m in {"base": base, "aligned": aligned, "useful": tuned}.items()}
    result = run_project(ProjectConfig(base=str(paths["base"]), reference=str(paths["aligned"]),
                                       finetunes={"useful": str(paths["useful"])}, out=tmp_path / "run",
                                       subspaces=["top_k"], fractions=[1.0], schemes=["parallel", "orthogonal"]))
    rows = [r for r in result.rows if r["scope"] == "tensor" and r["name"] == "model.layers.0.self_attn.q_proj.weight"]
    by_scheme = {r["scheme"]: r for r in rows}
    assert by_scheme["parallel"]["energy_kept"] == 0.0 and by_scheme["parallel"]["k_total"] == 0
    assert by_scheme["orthogonal"]["energy_kept"] == pytest.approx(1.0)
    assert "empty basis" in by_scheme["parallel"]["note"]


def test_square_full_rank_keeps_all_energy_at_full_fraction(tmp_path):
    cast = make_cast(tmp_path / "c", arch="llama", tie=False)
    rows = run_project(config_for(cast, tmp_path / "run", subspaces=["top_k"], fractions=[1.0], tensors=r"q_proj|o_proj")).rows
    for row in rows:
        if row["scheme"] == "parallel":
            assert row["energy_kept"] == pytest.approx(1.0, abs=1e-5)


def test_sharded_untied_llama_inputs(tmp_path):
    cast = make_cast(tmp_path / "sharded", arch="llama", tie=False, shard_size="20KB")
    assert (cast["aligned"] / "model.safetensors.index.json").exists()
    sharded = run_project(config_for(cast, tmp_path / "run", subspaces=["top_k"], fractions=[0.5])).rows
    names = {r["name"] for r in sharded if r["scope"] == "tensor"}
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names  # untied: both count


def test_tied_stored_twice_counts_once(tmp_path):
    from safetensors.torch import save_file

    cast = make_cast(tmp_path / "t")
    for name in ("base", "aligned", "useful"):
        path = cast[name] / "model.safetensors"
        tensors = state(cast[name])
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        save_file(tensors, str(path), metadata={"format": "pt"})
    checkpoint = Checkpoint(cast["aligned"], role="aligned")
    assert checkpoint.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in checkpoint.names
    rows = run_project(ProjectConfig(base=str(cast["base"]), reference=str(cast["aligned"]),
                                     finetunes={"useful": str(cast["useful"])}, out=tmp_path / "run",
                                     subspaces=["top_k"], fractions=[0.5], models_out=tmp_path / "m",
                                     writes=[WriteRequest.parse("parallel:top_k:0.5")])).rows
    assert "lm_head.weight" not in {r["name"] for r in rows if r["scope"] == "tensor"}
    written = state(tmp_path / "m" / "useful" / "parallel-top_k-0.5")
    assert torch.equal(written["lm_head.weight"], written["model.embed_tokens.weight"])


def test_live_model_apply_and_restore(cast):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cast["aligned"])
    original = {k: v.clone() for k, v in model.state_dict().items()}
    base, aligned, tuned = (Checkpoint(cast[n], role=n) for n in ("base", "aligned", "useful"))
    live = LiveModel(model, AlignmentSubspaces(base, aligned), aligned.names)
    live.apply(tuned, ProjectionSpec.parse("orthogonal:top_k:0.25"))
    changed = model.state_dict()
    assert not torch.equal(changed["model.layers.0.mlp.up_proj.weight"], original["model.layers.0.mlp.up_proj.weight"])
    live.apply(tuned, None)  # the fine-tune itself
    assert torch.equal(model.state_dict()["model.layers.0.mlp.up_proj.weight"], tuned.read("model.layers.0.mlp.up_proj.weight"))
    live.apply(tuned, ProjectionSpec.parse("parallel:random:0.5"), TensorFilter(layers=(0,)))
    # outside the filter the fine-tuned weights stand, as in written checkpoints
    assert torch.equal(model.state_dict()["model.layers.1.mlp.up_proj.weight"], tuned.read("model.layers.1.mlp.up_proj.weight"))
    assert not torch.equal(model.state_dict()["model.layers.0.mlp.up_proj.weight"], tuned.read("model.layers.0.mlp.up_proj.weight"))
    live.restore()
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key


EMBED, DOWN0 = "model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"


def rank_deficient_cast(root: Path) -> dict[str, Path]:
    """Alignment moved only 10 token rows of the embedding (Δ_A of rank 10 of r = 32) and 5 input columns of one
    MLP matrix (rank 5 of 32): numerically zero directions, exactly, as in real updates touching few tokens."""
    base = factories.tiny_model("llama", seed=0, tie=False)
    aligned = factories.perturbed(base, seed=1, rank=3)
    with torch.no_grad():
        aligned.get_parameter(EMBED)[10:] = base.get_parameter(EMBED)[10:]
        aligned.get_parameter(DOWN0)[:, 5:] = base.get_parameter(DOWN0)[:, 5:]
    tuned = factories.perturbed(aligned, seed=2, rank=2, scale=0.02)
    return {n: factories.save(m, root / n) for n, m in {"base": base, "aligned": aligned, "useful": tuned}.items()}


def test_rank_deficient_alignment_update_caps_k_and_counts_null_directions(tmp_path, capsys):
    paths = rank_deficient_cast(tmp_path / "cast")
    fractions = [0.25, 0.5, 0.99, 1.0]
    code = main(["project", "--base", str(paths["base"]), "--aligned", str(paths["aligned"]), "--finetuned",
                 f"useful={paths['useful']}", "--fractions", ",".join(map(str, fractions)), "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    tensors = Checkpoint(paths["aligned"]).names
    assert f"numerical rank of Δ: 2 of {len(tensors)} tensors have numerically zero directions (49 in all" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["numerical_rank"]["by_tensor"] == {EMBED: 22, DOWN0: 27}
    assert manifest["numerical_rank"]["zero_tensors"] == 0
    rows = [r for r in read_csv(tmp_path / "run" / "energy.csv") if r["scope"] == "tensor"]
    embed = [r for r in rows if r["name"] == EMBED]
    assert {(r["rank"], r["null_dirs"]) for r in embed} == {("10", "22")}
    # k = max(1, round(ϱ·32)) capped at rank 10, the same for every kind
    for row in embed:
        assert int(row["k_total"]) == min(max(1, round(float(row["fraction"]) * 32)), 10)
    assert {r["subspace"] for r in embed} == {"top_k", "random_k", "random"}
    # Δ_A's column space is exactly the span of the 10 moved rows: at ϱ >= 0.99 top_k and random_k keep exactly
    # Δ_T's energy in those rows (a completion by random vectors would keep more)
    base, aligned, tuned = (Checkpoint(paths[n]) for n in ("base", "aligned", "useful"))
    d_task = tuned.read(EMBED).double() - aligned.read(EMBED).double()
    expected = float((d_task[:10] ** 2).sum() / (d_task**2).sum())
    for row in embed:
        if row["scheme"] == "parallel" and float(row["fraction"]) >= 0.99 and row["subspace"] != "random":
            assert float(row["energy_kept"]) == pytest.approx(expected, abs=1e-6)
    # the engine's frames: rank columns, nested, random kinds drawn from the rank directions only
    subspaces = AlignmentSubspaces(base, aligned, cache_root=tmp_path / "cache")
    spectrum = subspaces.spectrum(EMBED)
    assert (spectrum.rank, spectrum.r, spectrum.null_dirs) == (10, 32, 22)
    assert spectrum.left.shape == (128, 10)
    assert float(spectrum.left[10:].abs().max()) < 1e-6  # every basis vector lies in the moved rows' span
    for kind in ("random_k", "random"):
        small, large = subspaces.frame(EMBED, kind, 4), subspaces.frame(EMBED, kind, 10)
        torch.testing.assert_close(small, large[:, :4])
        torch.testing.assert_close(large.T @ large, torch.eye(10), atol=1e-5, rtol=0)
    assert subspaces.rank(EMBED, 1.0) == 10 and subspaces.rank(EMBED, 0.25) == 8
    assert subspaces.cache.computed == 0  # the CLI run cached every spectrum (rank_bound included)


def test_svd_method_choices_are_one_set_everywhere():
    from safety_subspaces.analyses.common import check_svd_method
    from safety_subspaces.errors import UserError
    from safety_subspaces.study.config import parse_study

    study = {"name": "s", "models": {"base": "B", "aligned": "A"}, "finetunes": {"useful": "U"},
             "projection": {"grid": [{"scheme": "parallel", "finetune": "useful", "metrics": ["harm"]}]},
             "evaluation": {"harm": {"judge": "refusal"}}, "overlap": {"weights": None, "activations": None}}
    assert linalg.SVD_METHODS == ("auto", "gram", "qr", "svd")
    for method in linalg.SVD_METHODS:  # the command line, the analyses and the study check through one function
        assert check_svd_method(method) == method
        with pytest.raises(SystemExit) as parsed:
            main(["project", "--svd-method", method, "--help"])
        assert parsed.value.code == 0
        assert parse_study({**study, "projection": {**study["projection"], "svd_method": method}}).projection.svd_method == method
    with pytest.raises(UserError, match="--svd-method 'eigh': use auto, gram, qr, svd"):
        check_svd_method("eigh")
    with pytest.raises(UserError, match="projection.svd_method: 'eigh': use auto, gram, qr, svd"):
        parse_study({**study, "projection": {**study["projection"], "svd_method": "eigh"}})
    with pytest.raises(SystemExit) as parsed:
        main(["project", "--svd-method", "eigh", "--help"])
    assert parsed.value.code == 2
