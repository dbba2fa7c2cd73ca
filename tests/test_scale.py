"""The weight engine at its floor (issue 15): shared products, cached frames, fused passes, --profile."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from safety_subspaces import linalg, profiling
from safety_subspaces.checkpoints import Checkpoint
from safety_subspaces.cli import main
from safety_subspaces.subspaces import AlignmentSubspaces, kind_frame
from safety_subspaces.subspaces import builtin as builtin_kinds
from support.factories import make_cast

SETTINGS = settings(max_examples=25, deadline=None)


def gaussian(m: int, n: int, seed: int) -> torch.Tensor:
    """A seeded Gaussian matrix."""
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1), st.integers(1, 500))
def test_fused_norm_and_inner_equal_the_separate_passes_bit_for_bit(m, n, seed, chunk):
    a, b = gaussian(m, n, seed), gaussian(m, n, seed + 1)
    squares, dot = linalg.norm_sq_and_inner(a, b, chunk=chunk)
    assert squares == linalg.inner(a, a, chunk=chunk)
    assert dot == linalg.inner(a, b, chunk=chunk)
    assert np.isclose(dot, float(np.vdot(a.double().numpy(), b.double().numpy())), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(st.integers(2, 30), st.integers(1, 30), st.integers(0, 2**31 - 1), st.data())
def test_one_product_over_the_union_gives_every_selection_its_energies(m, n, seed, data):
    basis, _ = torch.linalg.qr(gaussian(m, min(m, n), seed).double())
    basis = basis.float()
    delta = gaussian(m, n, seed + 1)
    k = basis.shape[1]
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    top = data.draw(st.integers(0, k))
    picked = data.draw(st.integers(0, k))
    selections = {"top": torch.arange(top), "perm": order[:picked]}
    union = linalg.selection_union(selections)
    got = (linalg.split_selections(linalg.coefficient_energies(linalg.take_columns(basis, union), delta), union, k,
                                   selections) if union.numel() else {key: torch.zeros(0, dtype=torch.float64) for key in selections})
    for key, idx in selections.items():
        expected = linalg.coefficient_energies(basis[:, idx], delta)
        assert got[key].shape == expected.shape
        assert torch.allclose(got[key], expected, rtol=1e-5, atol=1e-9)
        reference = ((basis[:, idx].double().T @ delta.double()) ** 2).sum(1).numpy()
        assert np.allclose(got[key].numpy(), reference, rtol=1e-4, atol=1e-7)
    if picked == 0:  # a prefix alone multiplies exactly the prefix: the same bits as the direct product
        assert torch.equal(got["top"], linalg.coefficient_energies(basis[:, :top], delta))


def test_profile_stages_are_exclusive_and_add_up():
    with profiling.collecting() as profile:
        with profiling.stage("read"):
            time.sleep(0.02)
            with profiling.stage("decompose"):
                time.sleep(0.03)
        with profiling.stage("read"):
            pass
    rows = {row["stage"]: row for row in profile.table()}
    assert rows["read"]["calls"] == 2 and rows["decompose"]["calls"] == 1
    assert 0.015 < rows["read"]["wall_s"] < 0.028  # the nested decomposition is not counted twice
    assert rows["decompose"]["wall_s"] >= 0.025
    staged = rows["read"]["wall_s"] + rows["decompose"]["wall_s"] + rows["other"]["wall_s"]
    assert staged == pytest.approx(rows["total"]["wall_s"], abs=2e-3)
    with profiling.collecting(False) as nothing:
        with profiling.stage("read"):
            pass
    assert nothing is None and profiling.active() is None


@pytest.fixture(scope="module")
def cast(tmp_path_factory):
    return make_cast(tmp_path_factory.mktemp("cast"))


def test_dense_frames_are_built_once_per_seed_and_tensor_with_todays_bits(cast, tmp_path, monkeypatch):
    base, aligned = Checkpoint(cast["base"]), Checkpoint(cast["aligned"])
    name = next(n for n in aligned.names if aligned.infos[n].dtype.is_floating_point and len(aligned.infos[n].shape) == 2)
    calls = []
    original = builtin_kinds.haar_frame
    monkeypatch.setattr(builtin_kinds, "haar_frame", lambda *a, **k: calls.append(a) or original(*a, **k))
    frames = {}
    for seed in (0, 1):
        subspaces = AlignmentSubspaces(base, aligned, seed=seed, cache_root=tmp_path)
        spectrum = subspaces.spectrum(name)
        k = spectrum.rank
        first = subspaces.frame(name, "random", k)
        assert torch.equal(first, kind_frame("random", spectrum, k, subspaces.kind_seed(name, "random")))
        again = AlignmentSubspaces(base, aligned, seed=seed, cache_root=tmp_path).frame(name, "random", k)
        assert torch.equal(again, first)  # read back from the cache, bit for bit
        frames[seed] = first
    # built once per seed (the kind_frame comparisons above build two more), never for the cached reads
    assert len(calls) == 4
    assert not torch.allclose(frames[0], frames[1])
    stored = list((tmp_path).glob("*/frames/*.safetensors"))
    assert len(stored) == 2


def test_project_profile_in_output_and_manifest_and_warm_run_reads_frames(cast, tmp_path, capsys):
    args = ["project", "--quiet", "--base", str(cast["base"]), "--aligned", str(cast["aligned"]),
            "--finetuned", f"useful={cast['useful']}", "--finetuned", f"harmful={cast['harmful']}",
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--profile", "--json"]
    assert main([*args, "--out", str(tmp_path / "cold")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"]  # stdout stays the JSON result; the table goes to stderr
    assert "decompose" in captured.err and "products" in captured.err
    cold = {row["stage"]: row for row in json.loads((tmp_path / "cold" / "manifest.json").read_text())["profile"]}
    assert {"read", "decompose", "frames", "products", "cache", "other", "total"} <= set(cold)
    assert main([*args, "--out", str(tmp_path / "warm")]) == 0
    capsys.readouterr()
    warm = {row["stage"]: row for row in json.loads((tmp_path / "warm" / "manifest.json").read_text())["profile"]}
    assert "decompose" not in warm  # every spectrum and every Haar frame comes from the cache
    assert warm["frames"]["calls"] < cold["frames"]["calls"]
    cold_csv = (tmp_path / "cold" / "energy.csv").read_text()
    assert (tmp_path / "warm" / "energy.csv").read_text() == cold_csv


def test_run_profile_sums_job_stages_into_the_manifest(organism_zoo, tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.setenv("SAFETY_SUBSPACES_ZOO", str(organism_zoo))
    monkeypatch.setenv("SAFETY_SUBSPACES_HOME", str(tmp_path / "home"))
    config = {
        "name": "profiled", "seed": 0, "models": {"base": "organism:base", "aligned": "organism:aligned"},
        "finetunes": {"harmful": "organism:harmful"},
        "projection": {"subspaces": ["random"], "fractions": [0.25], "energy": False,
                       "grid": [{"scheme": "parallel", "finetune": "harmful", "metrics": ["harm"]}]},
        "evaluation": {"harm": {"prompts": "organism:harmful_eval", "judge": "organism", "max_new_tokens": 8,
                                "batch_size": 8, "limit": 4}},
        "overlap": {"weights": None, "activations": None},
    }
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(study), "--out", str(tmp_path / "run"), "--no-report", "--quiet", "--profile"]) == 0
    assert "swap" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    stages = {row["stage"]: row for row in manifest["profile"]["stages"]}
    assert {"load", "swap", "evaluate", "frames", "total"} <= set(stages)
    jobs = list((tmp_path / "run" / "profile").glob("*.json"))
    assert len(jobs) == manifest["jobs"]
    assert stages["total"]["wall_s"] == pytest.approx(
        sum(next(r["wall_s"] for r in json.loads(p.read_text())["stages"] if r["stage"] == "total") for p in jobs),
        abs=1e-3)


def project_args(cast, out, cache, *more) -> list[str]:
    """A small `project` run of the cast."""
    return ["project", "--quiet", "--base", str(cast["base"]), "--aligned", str(cast["aligned"]),
            "--finetuned", f"useful={cast['useful']}", "--out", str(out), "--cache-dir", str(cache), "--device", "cpu",
            *more]


def test_cache_info_clear_and_lru_eviction_under_a_budget(cast, tmp_path, monkeypatch, capsys):
    from safety_subspaces import spectra

    cache = tmp_path / "cache"
    monkeypatch.setenv(spectra.DTYPE_ENV, "float32")  # the options set these process-wide; restored afterwards
    monkeypatch.setenv(spectra.BUDGET_ENV, "20")
    assert main(project_args(cast, tmp_path / "a", cache)) == 0
    assert main(project_args(cast, tmp_path / "b", cache, "--subspaces", "top_k", "--cache-dtype", "float16")) == 0
    monkeypatch.setenv(spectra.DTYPE_ENV, "float32")
    capsys.readouterr()
    entries = spectra.cache_entries(cache)
    assert [e.meta["factor_dtype"] for e in entries] == ["float32", "float16"]  # least recently used first
    assert main(["cache", "info", "--cache-dir", str(cache), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_bytes"] == sum(e.bytes for e in entries) and len(info["entries"]) == 2
    # reading the float32 entry again makes it the most recently used; a budget below the total evicts the other
    monkeypatch.setattr(spectra, "_IN_USE", set())  # a fresh process: nothing in use yet
    budget_gb = (entries[0].bytes + 1) / 1024**3
    assert main(project_args(cast, tmp_path / "c", cache, "--cache-budget", repr(budget_gb))) == 0
    left = spectra.cache_entries(cache)
    assert [e.path for e in left] == [entries[0].path]
    assert main(["cache", "clear", "--cache-dir", str(cache), "--older-than", "1"]) == 0  # nothing that old
    assert len(spectra.cache_entries(cache)) == 1
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert spectra.cache_entries(cache) == []


def test_half_precision_factors_stay_within_their_stated_energy_error(cast, tmp_path, monkeypatch):
    import csv

    from safety_subspaces import spectra

    assert main(project_args(cast, tmp_path / "exact", tmp_path / "c32")) == 0
    monkeypatch.setenv(spectra.DTYPE_ENV, "float16")
    assert main(project_args(cast, tmp_path / "half", tmp_path / "c16")) == 0
    assert main(project_args(cast, tmp_path / "half-warm", tmp_path / "c16")) == 0
    errors = []
    for path in (tmp_path / "c16").glob("*/*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            assert handle.get_tensor("left").dtype == torch.float16
            errors.append(float(handle.metadata()["factor_error"]))
    bound = 2 * max(errors) + max(errors) ** 2
    assert 0 < max(errors) < 0.05

    def energies(run):
        with open(tmp_path / run / "energy.csv") as handle:
            return {(r["finetune"], r["subspace"], r["scheme"], r["fraction"], r["scope"], r["name"]): float(r["energy_kept"])
                    for r in csv.DictReader(handle) if r["energy_kept"] not in ("", "nan")}

    exact, half = energies("exact"), energies("half")
    assert half == energies("half-warm")  # a half-precision run reads back exactly what it computed with
    gaps = [abs(exact[key] - half[key]) for key in exact]
    assert max(gaps) <= bound
    assert max(gaps) > 0  # the factors really were rounded


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 40), st.integers(0, 2**31 - 1), st.integers(1, 64), st.data())
def test_blocked_gaussian_draw_has_the_bits_of_one_draw(m, width, seed, rows, data):
    k = data.draw(st.integers(1, width))
    one = torch.randn(m, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)[:, :k].float()
    assert torch.equal(linalg.seeded_gaussian_columns(m, width, k, seed, rows=rows), one)


def test_haar_frames_keep_todays_bits_at_a_real_embedding_height():
    m, width, k, seed = 151_936, 64, 40, 7  # more rows than one block holds: the blocked draw is used
    assert m > linalg.QR_BLOCK_ELEMENTS // width
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(m, width, generator=generator, dtype=torch.float64)[:, :k].float()
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    assert torch.equal(linalg.haar_frame(m, k, seed, width=width), q * signs)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA device (benchmarks/gpu_check.sh runs these on a GPU machine)")


@CUDA
def test_cuda_project_matches_cpu_within_1e5(cast, tmp_path):
    import csv

    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(project_args(cast, out, tmp_path / f"cache-{device}", "--device", device)) == 0
        with open(out / "energy.csv") as handle:
            runs[device] = list(csv.DictReader(handle))
    assert len(runs["cpu"]) == len(runs["cuda"])
    for a, b in zip(runs["cpu"], runs["cuda"]):
        assert (a["finetune"], a["subspace"], a["scheme"], a["name"]) == (b["finetune"], b["subspace"], b["scheme"], b["name"])
        if a["energy_kept"] not in ("", "nan"):
            assert abs(float(a["energy_kept"]) - float(b["energy_kept"])) <= 1e-5


@CUDA
def test_cuda_swap_matches_cpu_within_1e5(cast, tmp_path):
    from safety_subspaces.edits import EditInputs
    from safety_subspaces.edits.apply import edited_weight
    from safety_subspaces.edits.projections import Orthogonal

    base, aligned, useful = (Checkpoint(cast[r]) for r in ("base", "aligned", "useful"))
    weights = {}
    for device in ("cpu", "cuda"):
        subspaces = AlignmentSubspaces(base, aligned, cache_root=tmp_path / device, device=device)
        inputs = EditInputs(subspaces, useful)
        edit = Orthogonal("random", fraction=0.5)
        weights[device] = {n: edited_weight(edit, inputs, n, True).float() for n in aligned.names
                           if aligned.infos[n].dtype.is_floating_point}
    for name, value in weights["cpu"].items():
        assert weights["cuda"][name].device.type == "cpu"
        assert torch.allclose(weights["cuda"][name], value, atol=1e-5, rtol=1e-5), name


def test_reused_float64_buffers_give_the_bits_of_fresh_conversions():
    a, b = gaussian(3000, 2900, 5), gaussian(3000, 2900, 6)  # 8.7M entries: three chunks, the last one short
    fresh = math.fsum(float(x.double() @ y.double()) for x, y in linalg.flat_chunks(a, b))
    fresh_sq = math.fsum(float(x.double() @ x.double()) for (x,) in linalg.flat_chunks(a))
    assert linalg.inner(a, b) == fresh and linalg.frobenius_sq(a) == fresh_sq
    assert linalg.norm_sq_and_inner(a, b) == (fresh_sq, fresh)


@pytest.mark.parametrize("variable, value", [("SAFETY_SUBSPACES_CACHE_BUDGET", "lots"),
                                             ("SAFETY_SUBSPACES_CACHE_BUDGET", "-1"),
                                             ("SAFETY_SUBSPACES_CACHE_DTYPE", "int8")])
def test_bad_cache_settings_are_one_error_line_before_anything_is_written(cast, tmp_path, monkeypatch, capsys,
                                                                            variable, value):
    monkeypatch.setenv(variable, value)
    assert main(project_args(cast, tmp_path / "out", tmp_path / "cache")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and variable in err[-1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_eviction_and_clear_never_touch_directories_that_are_not_cache_entries(cast, tmp_path, monkeypatch):
    from safety_subspaces import spectra

    cache = tmp_path / "cache"
    monkeypatch.setenv(spectra.BUDGET_ENV, "0")  # everything not in use is over budget
    (cache / "notes").mkdir(parents=True)
    (cache / "notes" / "keep.txt").write_text("mine")
    assert main(project_args(cast, tmp_path / "out", cache)) == 0
    assert (cache / "notes" / "keep.txt").read_text() == "mine"
    assert len(spectra.cache_entries(cache)) == 1  # in use by this process: kept despite the budget
    monkeypatch.setattr(spectra, "_IN_USE", set())
    assert len(spectra.evict_to_budget(cache)) == 1 and spectra.cache_entries(cache) == []
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert (cache / "notes" / "keep.txt").exists()


# ---------------------------------------------------------------- row-block streaming (the worker's memory bound)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=3), st.integers(1, 300))
def test_row_blocks_cover_every_row_once_in_order(shape, block):
    blocks = linalg.row_blocks(shape, block)
    numel = math.prod(shape)
    if len(shape) < 2 or numel <= block:
        assert blocks == [slice(None)]
        return
    assert blocks[0].start == 0 and blocks[-1].stop == shape[0]
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    row = numel // shape[0]
    assert all((s.stop - s.start) * row <= max(block, row) for s in blocks)


def test_read_rows_is_the_slice_of_read_for_files_memos_and_adapters(cast, tmp_path):
    from safety_subspaces.adapters import AdapterFinetune, LoraAdapter

    plain, memoised = Checkpoint(cast["aligned"]), Checkpoint(cast["aligned"], keep_bytes=1 << 30)
    for name in plain.names:
        whole = plain.read(name)
        memoised.read(name)
        for rows in ([slice(None)] if whole.ndim == 0 else [slice(0, 1), slice(1, max(2, whole.shape[0] // 2)),
                                                              slice(whole.shape[0] - 1, whole.shape[0])]):
            assert torch.equal(plain.read_rows(name, rows), whole[rows]), (name, rows)
            assert torch.equal(memoised.read_rows(name, rows), whole[rows]), (name, rows)
    adapter_dir = write_lora_adapter(cast, tmp_path / "adapter")
    merged = AdapterFinetune(LoraAdapter(adapter_dir), plain)
    for name in merged.targets:
        whole = merged.read(name)
        assert torch.allclose(merged.read_rows(name, slice(2, 5)), whole[2:5], atol=1e-6), name


def write_lora_adapter(cast, out):
    """A LoRA adapter on the cast's q_proj and down_proj modules (PEFT layout), seeded."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cast["aligned"])
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    peft.save_pretrained(out)
    return out


def test_a_nan_in_a_streamed_row_block_is_named(cast, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(cast["useful"], broken)
    shard = next(broken.glob("*.safetensors"))
    tensors = load_file(shard)
    name = next(n for n, t in tensors.items() if "embed" in n)
    tensors[name][-1, 0] = float("nan")  # in the last row block only
    save_file(tensors, shard, metadata={"format": "pt"})
    monkeypatch.setattr(linalg, "STREAM_ELEMENTS", 64)
    args = ["project", "--quiet", "--base", str(cast["base"]), "--aligned", str(cast["aligned"]),
            "--finetuned", f"useful={broken}", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and name in err[0] and "NaN" in err[0]
    assert not (tmp_path / "out").exists()


def energy_cells(path) -> dict[tuple, float]:
    """Every numeric cell of an energy.csv by (row key, column)."""
    import csv

    cells = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["finetune"], row["subspace"], row["scheme"], row["fraction"], row["scope"], row["name"])
            for column in ("energy_kept", "cos_task_proj", "cos_task_align"):
                cells[key + (column,)] = float(row[column])
    return cells


def test_streamed_energy_table_equals_the_whole_tensor_one_within_1e6(cast, tmp_path, monkeypatch):
    args = ["project", "--quiet", "--base", str(cast["base"]), "--aligned", str(cast["aligned"]),
            "--finetuned", f"useful={cast['useful']}", "--finetuned", f"harmful={cast['harmful']}", "--device", "cpu"]
    assert main([*args, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "whole")]) == 0
    blocked = []
    original = linalg.row_blocks
    monkeypatch.setattr(linalg, "STREAM_ELEMENTS", 200)
    monkeypatch.setattr(linalg, "row_blocks", lambda *a, **k: blocked.append(len(original(*a, **k))) or original(*a, **k))
    assert main([*args, "--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "streamed")]) == 0
    assert max(blocked) > 10  # the embedding and the MLP matrices went in many row blocks
    whole, streamed = energy_cells(tmp_path / "whole" / "energy.csv"), energy_cells(tmp_path / "streamed" / "energy.csv")
    assert whole.keys() == streamed.keys()
    energies = [key for key in whole if key[-1] != "cos_task_proj"]
    assert max(abs(whole[key] - streamed[key]) for key in energies) <= 1e-6
    # cos(Δ_T, Δ̃) = sqrt(kept / total) moves by the energy's float32 error / (2 sqrt(kept · total)): compared where the
    # kept energy is not itself at round-off (an orthogonal projection at ϱ = 0.99 keeps ~1e-9 of Δ_T on this cast)
    kept = {key[:-1]: whole[key[:-1] + ("energy_kept",)] for key in whole}
    cosines = [key for key in whole if key[-1] == "cos_task_proj" and kept[key[:-1]] >= 1e-4]
    assert cosines and max(abs(whole[key] - streamed[key]) for key in cosines) <= 1e-6


@pytest.mark.parametrize("scheme, kind", [("parallel", "top_k"), ("orthogonal", "random_k"), ("opposite", "random")])
def test_streamed_swaps_equal_whole_tensor_swaps_and_restore_bit_for_bit(cast, tmp_path, monkeypatch, scheme, kind):
    from transformers import AutoModelForCausalLM

    from safety_subspaces.edits import EditInputs, ProjectionSpec
    from safety_subspaces.edits.apply import LiveModel, edited_weight

    base, aligned, useful = (Checkpoint(cast[r]) for r in ("base", "aligned", "useful"))
    subspaces = AlignmentSubspaces(base, aligned, seed=5, cache_root=tmp_path / "svd")
    spec = ProjectionSpec(scheme, kind, 0.5)
    names = [n for n in aligned.names if aligned.infos[n].dtype.is_floating_point]
    whole = {n: edited_weight(make(spec), EditInputs(subspaces, useful), n, True) for n in names}
    monkeypatch.setattr(linalg, "STREAM_ELEMENTS", 150)
    assert any(len(linalg.row_blocks(aligned.infos[n].shape)) > 1 for n in names)
    model = AutoModelForCausalLM.from_pretrained(cast["aligned"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    live = LiveModel(model, subspaces, aligned.names)
    live.apply(useful, spec)
    params = dict(model.named_parameters())
    for name in names:
        assert torch.allclose(params[name].detach(), whole[name], atol=1e-6, rtol=0), name
        assert torch.allclose(edited_weight(make(spec), EditInputs(subspaces, useful), name, True), whole[name],
                              atol=1e-6, rtol=0), name  # the written path streams the same way
    live.restore()
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def make(spec):
    """A fresh edit from a projection spec."""
    from safety_subspaces.edits import make_edit

    return make_edit(spec)
