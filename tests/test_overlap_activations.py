"""Activation capture and activation MSO on tiny real models: hidden-state indexing, padding/batch invariance,
token windows, streaming vs direct second moments, synthetic subspaces, and a full run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from support import factories
from safety_subspaces import linalg
from safety_subspaces.analyses.activation_overlap import ActivationOverlapConfig, run_activation_overlap, set_spectrum
from safety_subspaces.analyses.capture import (
    Moments,
    ResidualCapture,
    Window,
    capture,
    generated_mask,
    last_token_weights,
)
from safety_subspaces.analyses.common import mso_curve
from safety_subspaces.errors import UserError
from safety_subspaces.spectra import Spectrum

PROMPTS = [
    "how do i bake bread?", "what is 12 + 7?", "tell me how to pick a lock.", "write a poem about the sea.",
    "explain gravity.", "bake", "what is the answer? mix flour and water, then bake it.", "sea", "lock",
    "how do i write a poem about bread and the sea and gravity?", "tell me", "12 + 7",
]


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama (4 blocks) and its tokenizer."""
    return factories.tiny_model(layers=4).eval(), factories.tiny_tokenizer()


def test_window_parsing():
    assert Window.parse("last") == Window("last", 1) and Window.parse("last").label == "last"
    assert Window.parse("last:4") == Window("last", 4) and Window.parse("generated:8").label == "generated:8"
    for bad in ("first", "last:0", "last:-1", "generated", "last:x", "generated:2:3"):
        with pytest.raises(UserError, match="--window"):
            Window.parse(bad)


def test_last_token_weights_find_the_last_real_tokens_under_either_padding():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    right = left.flip(-1)
    expected_left = torch.tensor([[0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]], dtype=torch.float32)
    assert torch.equal(last_token_weights(left, 1), expected_left)
    # right padding: the last real token is not position −1 (the reference code's mistake)
    assert torch.equal(last_token_weights(right, 1), torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0.]]))
    two = last_token_weights(left, 2)
    assert torch.allclose(two, torch.tensor([[0, 0, 0, .5, .5], [0, 0, 0, .5, .5], [0, 0, 0, 0, 1]]))


def test_generated_mask_keeps_tokens_up_to_the_first_end():
    generated = torch.tensor([[5, 6, 7, 8], [5, 3, 0, 0], [3, 3, 3, 3]])
    assert generated_mask(generated, [3]).tolist() == [[True] * 4, [True, True, False, False], [True, False, False, False]]


def hf_last_token_states(model, tokenizer, prompt: str) -> tuple[torch.Tensor, ...]:
    """HF's hidden states at the last token of one unpadded chat-formatted prompt."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model(**encoded, output_hidden_states=True)
    return tuple(h[0, -1] for h in out.hidden_states)


def test_capture_indices_match_hf_hidden_states_at_the_last_prompt_token(tiny):
    model, tokenizer = tiny
    moments = capture(model, tokenizer, PROMPTS, range(5), batch_size=8, keep=True)
    for row, prompt in enumerate(PROMPTS):
        reference = hf_last_token_states(model, tokenizer, prompt)
        for index in range(4):  # embedding output and block outputs 0 … 2
            torch.testing.assert_close(moments.stacked(index)[row], reference[index], atol=2e-5, rtol=1e-4)
        # index L is the last block's output before the final norm; HF's last hidden state applies the norm
        with torch.no_grad():
            normed = model.model.norm(moments.stacked(4)[row])
        torch.testing.assert_close(normed, reference[4], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,window", [("llama", "last"), ("qwen2", "last"), ("llama", "last:3"), ("llama", "generated:3")])
def test_captured_activations_do_not_depend_on_batch_size(arch, window):
    model, tokenizer = factories.tiny_model(arch, layers=2).eval(), factories.tiny_tokenizer()
    parsed = Window.parse(window)
    one = capture(model, tokenizer, PROMPTS, [1, 2], window=parsed, batch_size=1, keep=True)
    eight = capture(model, tokenizer, PROMPTS, [1, 2], window=parsed, batch_size=8, keep=True)
    assert one.count == eight.count == len(PROMPTS)
    for index in (1, 2):
        torch.testing.assert_close(one.stacked(index), eight.stacked(index), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(one.second[index], eight.second[index], atol=1e-6, rtol=1e-6)


def test_windows_average_the_right_positions(tiny):
    model, tokenizer = tiny
    last = capture(model, tokenizer, PROMPTS[:3], [2], window=Window("last", 1), keep=True).stacked(2)
    three = capture(model, tokenizer, PROMPTS[:3], [2], window=Window("last", 3), keep=True).stacked(2)
    for row, prompt in enumerate(PROMPTS[:3]):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        with torch.no_grad():
            states = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False), output_hidden_states=True).hidden_states[2][0]
        torch.testing.assert_close(last[row], states[-1], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(three[row], states[-3:].mean(0), atol=2e-5, rtol=1e-4)


def test_generated_window_averages_the_first_greedy_tokens(tiny):
    model, tokenizer = tiny
    prompt = PROMPTS[0]
    pooled = capture(model, tokenizer, [prompt], [3], window=Window("generated", 2), keep=True).stacked(3)[0]
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(2):  # greedy decoding by hand
            next_token = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_token.view(1, 1)], dim=1)
        states = model(input_ids=ids, output_hidden_states=True).hidden_states[3][0]
    torch.testing.assert_close(pooled, states[-2:].mean(0), atol=2e-5, rtol=1e-4)


def test_capture_stops_after_the_deepest_index(tiny):
    model, tokenizer = tiny
    calls = []
    handle = model.model.norm.register_forward_hook(lambda *args: calls.append(1))
    try:
        capture(model, tokenizer, PROMPTS[:2], [1, 2])
        assert calls == []  # no final norm, no logits: the forward pass ended after block 1
        capture(model, tokenizer, PROMPTS[:2], [4])
        assert calls == []
    finally:
        handle.remove()
    assert ResidualCapture(model, [3, 1, 3]).indices == [1, 3]


def test_streaming_moments_equal_direct_computation(tiny):
    model, tokenizer = tiny
    moments = capture(model, tokenizer, PROMPTS, [2, 3], batch_size=5, keep=True)
    for index in (2, 3):
        a = moments.stacked(index).double()
        torch.testing.assert_close(moments.second[index], a.T @ a, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(moments.total[index], a.sum(0), atol=1e-9, rtol=1e-9)
        centred = a - a.mean(0)
        for centered, matrix in ((False, a), (True, centred)):
            spectrum = set_spectrum(moments, index, centered)
            assert spectrum.total == pytest.approx(float((matrix**2).sum()), rel=1e-9)
            for eta in (0.3, 0.9, 0.99):
                # direct: the exact SVD of Aᵀ (d × n)
                direct = linalg.energy_basis(matrix.T.float(), eta)
                streamed = spectrum.left[:, : linalg.rank_from_energy(spectrum.singular, eta, spectrum.total)]
                assert abs(streamed.shape[1] - direct.shape[1]) <= 1  # a tie at the threshold may round either way
                k = min(streamed.shape[1], direct.shape[1])
                assert linalg.mso(streamed[:, :k], direct[:, :k]) == pytest.approx(1.0, abs=1e-4)


def synthetic_moments(vectors: torch.Tensor) -> Moments:
    """Moments of given pooled vectors at one index, fed in batches of 4."""
    moments = Moments(vectors.shape[1], [0])
    for start in range(0, len(vectors), 4):
        moments.add({0: vectors[start : start + 4]}, list(range(start, min(start + 4, len(vectors)))))
    return moments


def test_synthetic_activations_from_orthogonal_subspaces_give_zero_and_a_set_with_itself_one():
    d, frame = 16, linalg.haar_frame(16, 9, 0, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    first = (torch.randn(30, 4, generator=generator, dtype=torch.float64) + 2) @ frame[:, :4].T
    second = (torch.randn(30, 5, generator=generator, dtype=torch.float64) - 1) @ frame[:, 4:].T
    a, b = synthetic_moments(first), synthetic_moments(second)
    etas = [0.1, 0.5, 0.9, 1.0]
    for centered in (False, True):
        for row in mso_curve(set_spectrum(a, 0, centered), set_spectrum(b, 0, centered), etas):
            assert row["mso"] == pytest.approx(0.0, abs=1e-9) and row["d"] == d
        for row in mso_curve(set_spectrum(a, 0, centered), set_spectrum(a, 0, centered), etas):
            assert row["mso"] == pytest.approx(1.0, abs=1e-9)


def test_haar_random_activation_sets_land_within_monte_carlo_error_of_the_baseline():
    d, n, trials = 20, 5, 300
    values, baselines = [], []
    for t in range(trials):
        generator = torch.Generator().manual_seed(100 + t)
        a = synthetic_moments(torch.randn(n, d, generator=generator, dtype=torch.float64))
        b = synthetic_moments(torch.randn(n, d, generator=generator, dtype=torch.float64))
        row = mso_curve(set_spectrum(a, 0, False), set_spectrum(b, 0, False), [0.99])[0]
        values.append(row["mso"])
        baselines.append(row["mso_random"])
    sample = np.array(values)
    assert abs(sample.mean() - np.mean(baselines)) < 4 * sample.std(ddof=1) / math.sqrt(trials)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny) -> dict[str, Path]:
    """A saved tiny model (6 blocks) and prompt files."""
    root = tmp_path_factory.mktemp("activations")
    model = factories.tiny_model(layers=6)
    paths = {"model": factories.save(model, root / "model", tokenizer=tiny[1])}
    for name, prompts in (("a", PROMPTS), ("b", [p.upper() + " please" for p in PROMPTS])):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"prompt": p, "category": "even" if i % 2 == 0 else "odd"}) + "\n"
                                       for i, p in enumerate(prompts)))
    return paths


def test_run_gives_one_for_a_set_with_itself_band_means_and_saved_vectors(saved, tmp_path):
    config = ActivationOverlapConfig(
        models={"m": str(saved["model"])},
        prompts={"a": str(saved["a"]), "again": str(saved["a"]), "b": str(saved["b"]), "even": f"{saved['a']}@category=even"},
        out=tmp_path / "run", n=len(PROMPTS), allow_fewer=True, etas=[0.5, 0.99], all_layers=True, save_activations=True,
    )
    result = run_activation_overlap(config)
    assert result.bands == {"m": [4, 5]}  # L' = 7: floor(4.55) … floor(6.3) − 1
    assert result.counts == {"a": 12, "again": 12, "b": 12, "even": 6}
    assert any("'even' has 6 prompts" in note for note in result.notes)
    layers = [r for r in result.rows if r["scope"] == "layer"]
    assert sorted({r["layer"] for r in layers}) == list(range(7))
    same = [r for r in result.rows if r["pair"] == "a vs again"]
    # every prompt ends with the template's generation prompt: at index 0 (embeddings) all last-token vectors are equal,
    # so the centred second moment there is zero and its basis empty (MSO undefined); everywhere else MSO is 1
    constant = [r for r in same if r["layer"] == 0 and r["centered"]]
    assert constant and all(r["k_a"] == 0 and math.isnan(r["mso"]) for r in constant)
    assert all(r["mso"] == pytest.approx(1.0, abs=1e-6) for r in same if r not in constant)
    assert {r["centered"] for r in same} == {False, True}
    band = [r for r in result.rows if r["scope"] == "band"]
    assert {r["layer"] for r in band} == {"4-5"} and len(band) == 6 * 2 * 2  # pairs × centring × η
    for row in band:
        members = [r for r in layers if r["layer"] in (4, 5) and r["pair"] == row["pair"]
                   and r["centered"] == row["centered"] and r["eta"] == row["eta"]]
        assert row["mso"] == pytest.approx(sum(r["mso"] for r in members) / 2)
        assert row["mso_random"] == pytest.approx(sum(r["mso_random"] for r in members) / 2)
    from safetensors.torch import load_file

    vectors = load_file(str(tmp_path / "run" / "activations.safetensors"))
    assert vectors["m/a/5"].shape == (12, 32) and vectors["m/even/0"].shape == (6, 32)
    torch.testing.assert_close(vectors["m/even/3"], vectors["m/a/3"][::2])  # the filter kept prompts 0, 2, 4, ...
    for name in ("activation_overlap_uncentered.png", "activation_overlap_centered.png"):
        assert (tmp_path / "run" / "figures" / name).read_bytes()[:4] == b"\x89PNG"


def test_band_only_run_keeps_moments_of_the_band(saved, tmp_path):
    config = ActivationOverlapConfig(models={"m": str(saved["model"])}, prompts={"a": str(saved["a"]), "b": str(saved["b"])},
                                     out=tmp_path / "run", n=5, etas=[0.9])
    result = run_activation_overlap(config)
    assert sorted({r["layer"] for r in result.rows if r["scope"] == "layer"}) == [4, 5]
    assert result.counts == {"a": 5, "b": 5}


def test_a_set_without_spread_has_no_centred_basis_but_a_small_real_spread_counts():
    generator = torch.Generator().manual_seed(5)
    vector = torch.randn(1, 12, generator=generator, dtype=torch.float64) * 37.1
    identical = synthetic_moments(vector.repeat(10, 1))
    assert set_spectrum(identical, 0, True).total == 0.0
    assert mso_curve(set_spectrum(identical, 0, True), set_spectrum(identical, 0, True), [0.5])[0]["k_a"] == 0
    assert mso_curve(set_spectrum(identical, 0, False), set_spectrum(identical, 0, False), [0.5])[0]["k_a"] == 1
    spread = synthetic_moments(vector + 1e-4 * torch.randn(10, 12, generator=generator, dtype=torch.float64))
    assert mso_curve(set_spectrum(spread, 0, True), set_spectrum(spread, 0, True), [0.9])[0]["k_a"] > 1


def test_prompt_filters_match_text_lists_and_category_dicts(tmp_path):
    from safety_subspaces.analyses.activation_overlap import PromptSource, matches

    assert matches("violence", ["violence", "fraud"]) and not matches("fraud ", ["theft"])
    assert matches(["a", "violence"], ["violence"]) and not matches([], ["violence"])
    beavertails = {"violence,aiding_and_abetting,incitement": True, "privacy_violation": False, "self_harm": False}
    assert matches(beavertails, ["violence,aiding_and_abetting,incitement"]) and matches(beavertails, ["incitement"])
    assert not matches(beavertails, ["privacy_violation"]) and not matches(beavertails, ["violence,aiding"])
    assert not matches(None, ["x"])
    source = PromptSource.parse("file.jsonl@category=violence,aiding_and_abetting,incitement|self_harm")
    assert (source.source, source.field, source.values) == ("file.jsonl", "category",
                                                            ("violence,aiding_and_abetting,incitement", "self_harm"))
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "tags": {"x": i % 3 == 0, "y": i == 1}}) + "\n" for i in range(7)))
    assert PromptSource.parse(f"{path}@tags=x").load() == ["p0", "p3", "p6"]
    assert PromptSource.parse(f"{path}@tags=x|y").load() == ["p0", "p1", "p3", "p6"]
    with pytest.raises(UserError, match="no record has tags in z"):
        PromptSource.parse(f"{path}@tags=z").load()


def test_prompt_bootstrap_interval_covers_the_population_mso_and_unit_weights_are_the_sample():
    from safety_subspaces.analyses.activation_overlap import bootstrap_intervals, moment_spectrum, weighted_spectrum

    rng = np.random.default_rng(0)
    d, n = 12, 60
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    scales = np.array([3.0, 2.0, 1.0] + [0.2] * (d - 3))

    def sample(rotation):  # prompts whose activations spread along a few directions of `rotation`
        return torch.from_numpy((rng.standard_normal((n, d)) * scales) @ rotation.T)

    shared, tilted = sample(basis), sample(np.linalg.qr(basis + 0.3 * rng.standard_normal((d, d)))[0])
    full = weighted_spectrum(shared, torch.ones(n, dtype=torch.float64), centered=False)
    direct = moment_spectrum(shared.T @ shared, shared.sum(0), float(n), centered=False)
    assert torch.allclose(full.singular, direct.singular)
    vectors = {"a": {1: shared}, "b": {1: tilted}}
    bounds = bootstrap_intervals(vectors, [("a", "b")], [1], [0.5], replicates=200, seed=3)
    point = mso_curve(weighted_spectrum(shared, torch.ones(n, dtype=torch.float64), False),
                      weighted_spectrum(tilted, torch.ones(n, dtype=torch.float64), False), [0.5])[0]["mso"]
    low, high = bounds[("a vs b", 1, False, 0.5)]
    assert low <= point <= high and high - low > 0.01
    assert bounds[("a vs b", "band", False, 0.5)] == pytest.approx((low, high))  # a one-index band: the same draws
    again = bootstrap_intervals(vectors, [("a", "b")], [1], [0.5], replicates=200, seed=3)
    assert again == bounds


def test_mso_rows_carry_the_null_quantile_above_the_null_mean():
    rng = np.random.default_rng(1)
    a = Spectrum(torch.linalg.qr(torch.from_numpy(rng.standard_normal((30, 30))))[0], torch.linspace(5, 1, 30), 0.0)
    b = Spectrum(torch.linalg.qr(torch.from_numpy(rng.standard_normal((30, 30))))[0], torch.linspace(5, 1, 30), 0.0)
    a = Spectrum(a.left, a.singular, float((a.singular ** 2).sum()))
    b = Spectrum(b.left, b.singular, float((b.singular ** 2).sum()))
    for row in mso_curve(a, b, [0.2, 0.5, 0.9]):
        assert row["mso_random"] < row["mso_random_q95"] <= 1
