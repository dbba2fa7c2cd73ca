"""Weight-space MSO on tiny real checkpoints: exactness against direct computation, aggregation, caching, outputs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from support import factories
from safety_subspaces import linalg
from safety_subspaces.checkpoints import Checkpoint
from safety_subspaces.errors import UserError
from safety_subspaces.files import read_csv
from safety_subspaces.analyses.weight_overlap import WeightOverlapConfig, run_weight_overlap
from safety_subspaces.subspaces import AlignmentSubspaces

Q0 = "model.layers.0.self_attn.q_proj.weight"
SIGMA = torch.tensor([2.0, math.sqrt(3.0), math.sqrt(2.0), 1.0])  # σ² = 4, 3, 2, 1: total 10


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """A reference and updates: two low-rank-plus-noise fine-tunes, a 'base', an MLP-only one and a known-spectrum one."""
    root = tmp_path_factory.mktemp("weights-zoo")
    model, tokenizer = factories.tiny_model(layers=3), factories.tiny_tokenizer()
    paths = {"reference": factories.save(model, root / "A", tokenizer=tokenizer)}
    for name, seed, options in (("useful", 1, {}), ("harmful", 2, {}), ("base", 3, {"scale": 0.1, "rank": 3}),
                                ("mlp_only", 4, {"only": "mlp"})):
        updated = factories.perturbed(model, seed=seed, **{"rank": 2, **options})
        paths[name] = factories.save(updated, root / name, tokenizer=tokenizer)
    known = copy.deepcopy(model)
    frame = linalg.haar_frame(32, 4, 7)
    right = linalg.haar_frame(32, 4, 8)
    with torch.no_grad():
        known.get_parameter(Q0).add_(frame @ torch.diag(SIGMA) @ right.T)
    paths["known"] = factories.save(known, root / "known", tokenizer=tokenizer)
    partial = copy.deepcopy(model)  # only 3 input columns of Q0 moved: an update of rank 3 of r = 32
    with torch.no_grad():
        partial.get_parameter(Q0)[:, :3] += torch.randn(32, 3, generator=torch.Generator().manual_seed(9))
    paths["partial"] = factories.save(partial, root / "partial", tokenizer=tokenizer)
    return paths


def run(zoo, tmp_path, updates, **options):
    """Run the analysis on named updates of the zoo."""
    config = WeightOverlapConfig(reference=str(zoo["reference"]), updates={n: str(zoo[k]) for n, k in updates.items()},
                                 out=tmp_path / "run", cache_dir=tmp_path / "cache", **options)
    return run_weight_overlap(config)


def delta(zoo, update: str, name: str) -> torch.Tensor:
    """W_update − W_reference of one tensor, straight from the files."""
    return (Checkpoint(zoo[update]).read(name).float() - Checkpoint(zoo["reference"]).read(name).float())


def test_update_with_itself_is_one_and_rows_match_direct_bases(zoo, tmp_path):
    etas = [0.1, 0.5, 0.9, 0.99]
    result = run(zoo, tmp_path, {"useful": "useful", "again": "useful", "harmful": "harmful"}, etas=etas)
    tensors = [row for row in result.rows if row["scope"] == "tensor"]
    same = [row for row in tensors if row["pair"] == "useful vs again"]
    assert same and all(row["mso"] == pytest.approx(1.0, abs=1e-5) for row in same)
    assert all(row["k_a"] == row["k_b"] for row in same)
    other = [row for row in tensors if row["pair"] == "useful vs harmful"]
    assert max(row["mso"] for row in other) < 0.9
    # every row of one tensor equals MSO of bases computed directly from the files
    name = "model.layers.1.mlp.down_proj.weight"
    a, b = delta(zoo, "useful", name), delta(zoo, "harmful", name)
    for row in (r for r in other if r["name"] == name):
        qa, qb = linalg.energy_basis(a, row["eta"]), linalg.energy_basis(b, row["eta"])
        assert (row["k_a"], row["k_b"], row["d"]) == (qa.shape[1], qb.shape[1], a.shape[0])
        assert row["mso"] == pytest.approx(linalg.mso(qa, qb), abs=1e-5)
        assert row["mso_random"] == pytest.approx(max(qa.shape[1], qb.shape[1]) / a.shape[0])
    assert result.pairs == ["useful vs again", "useful vs harmful", "again vs harmful"]


def test_layer_rows_are_means_of_matrix_tensors_and_depth_rows_follow_the_rule(zoo, tmp_path):
    result = run(zoo, tmp_path, {"useful": "useful", "harmful": "harmful", "base": "base"}, etas=[0.5, 0.9],
                 percentiles=[40, 85])
    tensors = [r for r in result.rows if r["scope"] == "tensor"]
    assert not any(".norm" in r["name"] or "layernorm" in r["name"] for r in tensors)  # 1-D tensors are skipped
    for layer_row in (r for r in result.rows if r["scope"] == "layer"):
        members = [r for r in tensors if r["layer"] == layer_row["layer"] and r["pair"] == layer_row["pair"]
                   and r["eta"] == layer_row["eta"]]
        assert layer_row["tensors"] == len(members) == 7
        for column in ("mso", "mso_random", "k_a", "k_b", "d"):
            assert layer_row[column] == pytest.approx(sum(r[column] for r in members) / 7)
    assert result.depth_layers == {"p40": 1, "p85": 2}  # floor(0.40 · 3) = 1, floor(0.85 · 3) = 2
    depth = [r for r in result.rows if r["scope"] == "depth"]
    assert {(r["name"], r["layer"]) for r in depth} == {("p40", 1), ("p85", 2)}
    assert len(depth) == 2 * 3 * 2  # percentiles × pairs × η


def test_energy_ranks_use_the_exact_total(zoo, tmp_path):
    result = run(zoo, tmp_path, {"known": "known", "useful": "useful"}, etas=[0.39, 0.5, 0.71, 1.0], tensors="q_proj",
                 layers=[0])
    rows = [r for r in result.rows if r["scope"] == "tensor" and r["name"] == Q0]
    # cumulative σ² / total = 0.4, 0.7, 0.9, 1.0
    assert [r["k_a"] for r in rows] == [1, 2, 3, 4]


def test_untouched_tensors_have_empty_bases_and_are_left_out_of_layer_means(zoo, tmp_path):
    result = run(zoo, tmp_path, {"mlp": "mlp_only", "useful": "useful"}, etas=[0.5])
    attention = [r for r in result.rows if r["scope"] == "tensor" and "self_attn" in r["name"]]
    assert attention and all(r["k_a"] == 0 and math.isnan(r["mso"]) and math.isnan(r["mso_random"]) for r in attention)
    mlp = [r for r in result.rows if r["scope"] == "tensor" and "mlp" in r["name"]]
    assert all(math.isfinite(r["mso"]) for r in mlp)
    assert {r["tensors"] for r in result.rows if r["scope"] == "layer"} == {3}


def test_cache_avoids_recomputation_and_reuses_the_projection_engines_delta_align(zoo, tmp_path):
    cache = tmp_path / "cache"
    # the project engine caches Δ_A = W_reference − W_base; overlap needs W_base − W_reference = −Δ_A: same spectrum
    engine = AlignmentSubspaces(Checkpoint(zoo["base"]), Checkpoint(zoo["reference"]), cache_root=cache)
    names = [n for n in Checkpoint(zoo["reference"]).names if len(Checkpoint(zoo["reference"]).infos[n].shape) == 2]
    for name in names:
        engine.spectrum(name)
    updates = {"useful": "useful", "harmful": "harmful", "base": "base"}
    first = run(zoo, tmp_path, updates, etas=[0.5])
    assert (first.decompositions, first.cache_hits) == (2 * len(names), len(names))
    config = WeightOverlapConfig(reference=str(zoo["reference"]), updates={n: str(zoo[k]) for n, k in updates.items()},
                                 out=tmp_path / "second", cache_dir=cache, etas=[0.1, 0.9])
    second = run_weight_overlap(config)
    assert (second.decompositions, second.cache_hits) == (0, 3 * len(names))
    by_key = {(r["pair"], r["name"]): r["mso"] for r in first.rows if r["scope"] == "tensor"}
    base_row = next(r for r in first.rows if r["scope"] == "tensor" and r["pair"] == "useful vs base")
    a, b = delta(zoo, "useful", base_row["name"]), delta(zoo, "base", base_row["name"])
    assert by_key[("useful vs base", base_row["name"])] == pytest.approx(
        linalg.mso(linalg.energy_basis(a, 0.5), linalg.energy_basis(b, 0.5)), abs=1e-5)


def test_run_directory_csv_figure_and_identity(zoo, tmp_path):
    updates = {"useful": "useful", "harmful": "harmful"}
    result = run(zoo, tmp_path, updates, etas=[0.5, 0.9])
    out = tmp_path / "run"
    rows = read_csv(out / "weight_overlap.csv")
    assert list(rows[0])[:9] == ["pair", "name", "layer", "eta", "k_a", "k_b", "d", "mso", "mso_random"]
    assert len(rows) == len(result.rows)
    png = (out / "figures" / "weight_overlap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "mean over the block's matrix (2-D) tensors" in (out / "manifest.json").read_text()
    run(zoo, tmp_path, updates, etas=[0.5, 0.9])  # the same run again into the same directory is fine
    with pytest.raises(UserError, match="different run"):
        run(zoo, tmp_path, updates, etas=[0.5])


def test_rank_deficient_update_counts_its_null_directions(zoo, tmp_path):
    result = run(zoo, tmp_path, {"partial": "partial", "useful": "useful"}, etas=[0.5, 1.0], tensors="q_proj", layers=[0])
    (row_half, row_full) = [r for r in result.rows if r["scope"] == "tensor" and r["name"] == Q0]
    assert (row_full["rank_a"], row_full["null_dirs_a"]) == (3, 29)
    assert (row_full["rank_b"], row_full["null_dirs_b"]) == (32, 0)
    assert row_full["k_a"] == 3  # η = 1 takes the whole numerical rank, never more
    # MSO against numpy's float64 bases of the same differences
    a, b = delta(zoo, "partial", Q0).double().numpy(), delta(zoo, "useful", Q0).double().numpy()
    u_a, u_b = np.linalg.svd(a)[0], np.linalg.svd(b)[0]
    for row in (row_half, row_full):
        expected = float(np.sum((u_a[:, : row["k_a"]].T @ u_b[:, : row["k_b"]]) ** 2)) / min(row["k_a"], row["k_b"])
        assert row["mso"] == pytest.approx(expected, abs=1e-6)
    assert result.ranks["partial"][Q0] == (3, 32)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["numerical_rank"]["partial"]["by_tensor"] == {Q0: 29}
    assert manifest["numerical_rank"]["useful"]["tensors_with_null_dirs"] == 0
    csv_row = next(r for r in read_csv(tmp_path / "run" / "weight_overlap.csv") if r["scope"] == "tensor")
    assert (csv_row["rank_a"], csv_row["null_dirs_a"]) == ("3", "29")
