"""`defend`: each published defence against an independent numpy computation on a tiny Qwen2 cast with tied
embeddings (full fine-tunes and a PEFT LoRA adapter), its gating decisions, its defence.json, the subspace
controls' spectra, and bad options (one `error:` line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from support import factories
from safety_subspaces.checkpoints import Checkpoint
from safety_subspaces.cli import main
from safety_subspaces.subspaces import SUBSPACES, AlignmentSubspaces


@pytest.fixture(scope="module")
def cast(tmp_path_factory) -> dict[str, Path]:
    """base, aligned, safety and three fine-tunes of a tiny tied Qwen2, plus a LoRA adapter of the aligned model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("defend")
    paths = factories.make_cast(root / "cast")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(paths["aligned"]),
                           LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(root / "adapter")
    return {**paths, "adapter": root / "adapter", "root": root}


def run(capsys, *argv) -> tuple[int, str]:
    """Run the CLI; (exit code, stderr)."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def defend(capsys, cast, name: str, out: Path, *extra) -> dict:
    """Run defend NAME on the cast (aligned reference); its defence.json."""
    code, err = run(capsys, "defend", name, "--base", cast["base"], "--aligned", cast["aligned"], "--out", out,
                    "--cache-dir", cast["root"] / "svd", *extra)
    assert code == 0, err
    return json.loads((out / "defence.json").read_text())


def f64(tensors: dict, name: str) -> np.ndarray:
    """A stored tensor as a float64 numpy array."""
    return tensors[name].double().numpy()


def alignment_matrix(cast, name: str) -> np.ndarray:
    """Safe LoRA's C = V Vᵀ / ‖V‖_F of V = Δ_A, dense, by numpy."""
    v = f64(factories.state(cast["aligned"]), name) - f64(factories.state(cast["base"]), name)
    return v @ v.T / np.linalg.norm(v)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos over all entries, rounded to 5 decimals as the sources round it."""
    return float(np.round((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)), 5))


def assert_tied(out: Path, written: dict) -> None:
    """The written layout is the aligned one (tied: the embedding stored once) and loads with lm_head = embedding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings and "lm_head.weight" not in written
    assert torch.equal(model.lm_head.weight.detach(), written["model.embed_tokens.weight"])


def decoder_matrices(tensors: dict) -> list[str]:
    """2-D tensors inside decoder blocks."""
    return [n for n, t in tensors.items() if t.ndim == 2 and ".layers." in n]


def test_safe_lora_number_mode_on_a_full_finetune_is_numpys(cast, tmp_path, capsys):
    record = defend(capsys, cast, "safe_lora", tmp_path / "out", "--finetuned", cast["harmful"])
    aligned, harmful = factories.state(cast["aligned"]), factories.state(cast["harmful"])
    written = factories.state(tmp_path / "out")
    names = decoder_matrices(aligned)
    cosines = {n: cosine(alignment_matrix(cast, n) @ (f64(harmful, n) - f64(aligned, n)), f64(harmful, n) - f64(aligned, n))
               for n in names}
    cutoff = np.sort(list(cosines.values()))[:10][-1]
    chosen = {n for n in names if cosines[n] <= cutoff}
    assert len(chosen) == 10
    by_name = {m["name"]: m for m in record["modules"]}
    assert set(by_name) == set(names)
    for n in names:
        delta = f64(harmful, n) - f64(aligned, n)
        assert by_name[n]["cosine"] == pytest.approx(cosines[n], abs=2e-5)
        assert by_name[n]["edited"] == (n in chosen)
        if n in chosen:
            expected = alignment_matrix(cast, n) @ delta
            np.testing.assert_allclose(f64(written, n) - f64(aligned, n), expected, rtol=1e-4, atol=1e-6)
            assert by_name[n]["energy_kept"] == pytest.approx((expected**2).sum() / (delta**2).sum(), rel=1e-4)
        else:
            assert torch.equal(written[n], harmful[n]) and by_name[n]["energy_kept"] == 1.0
    for n in set(written) - set(names):  # embeddings (tied: lm_head is the same tensor), norms, biases: W_FT
        assert torch.equal(written[n], harmful[n])
    assert record["defence"] == "safe_lora" and record["options"]["num_layers"] == 10
    assert record["pooled"]["edited"] == 10 and record["pooled"]["modules"] == len(names)
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_safe_lora_threshold_gate_is_at_most_and_safemerge_strictly_below(cast, tmp_path, capsys):
    first = defend(capsys, cast, "safe_lora", tmp_path / "probe", "--finetuned", cast["harmful"])
    threshold = sorted(m["cosine"] for m in first["modules"])[5]  # a cosine that occurs: equality decides
    lora = defend(capsys, cast, "safe_lora", tmp_path / "le", "--finetuned", cast["harmful"],
                  "--edit-arg", "mode=threshold", "--edit-arg", f"threshold={threshold}")
    merge = defend(capsys, cast, "safemerge", tmp_path / "lt", "--finetuned", cast["harmful"],
                   "--safety-update", cast["safety"], "--edit-arg", f"threshold={threshold}")
    assert {m["name"] for m in lora["modules"] if m["edited"]} == {m["name"] for m in first["modules"]
                                                                 if m["cosine"] <= threshold}
    assert {m["name"] for m in merge["modules"] if m["edited"]} == {m["name"] for m in first["modules"]
                                                                  if m["cosine"] < threshold}
    assert sum(m["edited"] for m in lora["modules"]) == 6 and sum(m["edited"] for m in merge["modules"]) == 5


def test_safemerge_merges_the_gated_modules_linearly(cast, tmp_path, capsys):
    record = defend(capsys, cast, "safemerge", tmp_path / "out", "--finetuned", cast["harmful"], "--safety-update",
                    cast["safety"], "--edit-arg", "threshold=0.4")
    aligned, harmful, safety = (factories.state(cast[r]) for r in ("aligned", "harmful", "safety"))
    written = factories.state(tmp_path / "out")
    edited = [m["name"] for m in record["modules"] if m["edited"]]
    assert 0 < len(edited) < len(record["modules"])
    for m in record["modules"]:
        n = m["name"]
        if m["edited"]:
            assert m["cosine"] < 0.4
            expected = 0.8 * (f64(harmful, n) - f64(aligned, n)) + 0.2 * (f64(safety, n) - f64(aligned, n))
            np.testing.assert_allclose(f64(written, n) - f64(aligned, n), expected, rtol=1e-4, atol=1e-6)
        else:
            assert m["cosine"] >= 0.4 and torch.equal(written[n], harmful[n])


def test_resta_adds_the_safety_vector_to_every_tensor(cast, tmp_path, capsys):
    defend(capsys, cast, "resta", tmp_path / "out", "--finetuned", cast["harmful"], "--harmful", cast["contaminated"],
           "--edit-arg", "beta=0.5")
    aligned, harmful, bad = (factories.state(cast[r]) for r in ("aligned", "harmful", "contaminated"))
    written = factories.state(tmp_path / "out")
    for n in aligned:
        expected = f64(harmful, n) + 0.5 * (f64(aligned, n) - f64(bad, n))
        np.testing.assert_allclose(f64(written, n), expected, rtol=1e-5, atol=1e-6)
    assert_tied(tmp_path / "out", written)


def test_lox_extrapolates_the_top_k_of_delta_align(cast, tmp_path, capsys):
    record = defend(capsys, cast, "lox", tmp_path / "out", "--edit-arg", "k=2", "--edit-arg", "alpha=0.5")
    base, aligned = factories.state(cast["base"]), factories.state(cast["aligned"])
    written = factories.state(tmp_path / "out")
    for n in aligned:
        if aligned[n].ndim < 2:
            assert torch.equal(written[n], aligned[n])
            continue
        u, s, vt = np.linalg.svd(f64(aligned, n) - f64(base, n), full_matrices=False)
        expected = f64(aligned, n) + 0.5 * (u[:, :2] * s[:2]) @ vt[:2]
        np.testing.assert_allclose(f64(written, n), expected, rtol=1e-5, atol=1e-6)
    assert_tied(tmp_path / "out", written)
    assert record["kind"] == "transform" and record["when"] == "before fine-tuning"
    assert {m["k"] for m in record["modules"]} == {2} and "energy_added" in record["pooled"]


def test_safe_lora_on_a_lora_adapter_writes_an_adapter_peft_loads(cast, tmp_path, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    record = defend(capsys, cast, "safe_lora", tmp_path / "out", "--finetuned", cast["adapter"],
                    "--edit-arg", "num_layers=3")
    assert (tmp_path / "out" / "adapter_config.json").is_file() and not (tmp_path / "out" / "model.safetensors").exists()
    before, after = (load_file(str(p / "adapter_model.safetensors")) for p in (cast["adapter"], tmp_path / "out"))
    scaling = 8 / 2
    modules = {m["name"]: m for m in record["modules"]}
    assert len(modules) == 6  # q_proj, v_proj, down_proj of 2 layers: the adapter's targets by default
    cosines = {}
    for key in before:
        if ".lora_B." not in key:
            continue
        name = key.split("base_model.model.", 1)[1].split(".lora_B.")[0] + ".weight"
        b, a = before[key].double().numpy(), before[key.replace("lora_B", "lora_A")].double().numpy()
        cosines[name] = cosine(alignment_matrix(cast, name) @ b @ a, b @ a)
        assert modules[name]["cosine"] == pytest.approx(cosines[name], abs=2e-5)
        torch.testing.assert_close(after[key.replace("lora_B", "lora_A")], before[key.replace("lora_B", "lora_A")])
    chosen = {n for n, c in cosines.items() if c <= np.sort(list(cosines.values()))[:3][-1]}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cast["aligned"]), tmp_path / "out")
    merged = {n: p.detach() for n, p in model.merge_and_unload().named_parameters()}
    aligned = factories.state(cast["aligned"])
    for key in before:
        if ".lora_B." not in key:
            continue
        name = key.split("base_model.model.", 1)[1].split(".lora_B.")[0] + ".weight"
        b, a = before[key].double().numpy(), before[key.replace("lora_B", "lora_A")].double().numpy()
        update = scaling * (alignment_matrix(cast, name) @ b @ a if name in chosen else b @ a)
        assert modules[name]["edited"] == (name in chosen)
        np.testing.assert_allclose(merged[name].double().numpy(), f64(aligned, name) + update, rtol=1e-4, atol=1e-5)


def test_an_adapter_defended_without_an_adapter_form_is_a_merged_checkpoint(cast, tmp_path, capsys):
    defend(capsys, cast, "resta", tmp_path / "out", "--finetuned", cast["adapter"], "--harmful", cast["contaminated"])
    from transformers import AutoModelForCausalLM

    assert (tmp_path / "out" / "model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize("kind", [k for k in SUBSPACES.names() if k != "top_k"])
def test_controls_keep_the_spectrum_of_c_and_of_loxs_term(cast, kind, tmp_path):
    base, aligned = Checkpoint(cast["base"], role="base"), Checkpoint(cast["aligned"], role="aligned")
    subspaces = AlignmentSubspaces(base, aligned, seed=3, cache_root=tmp_path / "svd")
    name = "model.layers.1.self_attn.q_proj.weight"
    published = subspaces.operator(name, "safe_lora", "top_k").dense().double().numpy()
    control = subspaces.operator(name, "safe_lora", kind).dense().double().numpy()
    np.testing.assert_allclose(np.linalg.eigvalsh(control), np.linalg.eigvalsh(published), atol=1e-6)
    np.testing.assert_allclose(published, alignment_matrix(cast, name), atol=1e-6)
    assert np.abs(control - published).max() > 1e-3  # another subspace
    from safety_subspaces.transforms.lox import Lox

    top, other = Lox(alpha=1.0, k=3), Lox(alpha=1.0, k=3, subspace=kind)
    added = [(lox.weight(subspaces, name).double() - aligned.read(name).double()).numpy() for lox in (top, other)]
    np.testing.assert_allclose(np.linalg.svd(added[1], compute_uv=False)[:3],
                               np.linalg.svd(added[0], compute_uv=False)[:3], rtol=1e-4)


@pytest.mark.parametrize("argv,needle", [
    (["safe_lora", "--finetuned", "{harmful}", "--edit-arg", "thresold=0.5"], "unknown option 'thresold' for edit 'safe_lora'"),
    (["safe_lora", "--finetuned", "{harmful}", "--edit-arg", "num_layers=many"], "num_layers"),
    (["safe_lora", "--finetuned", "{harmful}", "--edit-arg", "mode=sometimes"], "mode"),
    (["safe_lora", "--finetuned", "{harmful}", "--edit-arg", "projector=exact"], "projector exact needs fraction"),
    (["safe_lora"], "safe_lora edits a fine-tune: give --finetuned"),
    (["resta", "--finetuned", "{harmful}"], "resta needs --harmful"),
    (["safemerge", "--finetuned", "{harmful}"], "safemerge needs --safety-update"),
    (["safe_lora", "--finetuned", "{harmful}", "--harmful", "{contaminated}"], "--harmful is not read by safe_lora"),
    (["lox", "--finetuned", "{harmful}"], "lox changes the aligned model before fine-tuning; it takes no --finetuned"),
    (["lox", "--edit-arg", "k=-1"], "lox: k must be 0"),
    (["asft"], "use finetune --constraint asft"),
    (["shield"], "unknown defence 'shield'"),
])
def test_bad_options_are_one_error_line(cast, tmp_path, capsys, argv, needle):
    argv = [a.format(**{k: str(v) for k, v in cast.items()}) for a in argv]
    out = tmp_path / "out"
    code, err = run(capsys, "defend", *argv[:1], "--base", cast["base"], "--aligned", cast["aligned"], "--out", out,
                    *argv[1:])
    assert code == 2 and needle in err, err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_project_refuses_an_edit_that_reads_other_checkpoints(cast, tmp_path, capsys):
    code, err = run(capsys, "project", "--base", cast["base"], "--aligned", cast["aligned"], "--finetuned",
                    f"harmful={cast['harmful']}", "--out", tmp_path / "run", "--edit", "safemerge",
                    "--models-out", tmp_path / "models", "--subspaces", "top_k", "--fractions", "0.5")
    assert code == 2 and err.count("\n") == 1
    assert "--edit safemerge reads safety_update" in err and "safety-subspaces defend safemerge" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "models").exists()
