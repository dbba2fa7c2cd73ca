"""Property tests of the defences' mathematics (defence_math), each against an independent numpy computation.

The tested side gets its spectrum and frames the way the package does (linalg.left_singular, the registered subspace
kinds); the reference side uses numpy's SVD and forms C = V Vᵀ / ‖V‖_F, P_k, B A and I − C explicitly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from safety_subspaces import defence_math as dm
from safety_subspaces import linalg
from safety_subspaces.spectra import Spectrum
from safety_subspaces.subspaces import SUBSPACES, kind_frame

SETTINGS = settings(max_examples=30, deadline=None)
dims = st.integers(min_value=1, max_value=7)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
KINDS = tuple(SUBSPACES.names())
RHO = (0.01, 0.25, 0.5, 0.75, 0.99, 1.0)


def gaussian(m: int, n: int, seed: int) -> np.ndarray:
    """A seeded float64 Gaussian matrix (numpy)."""
    return np.random.default_rng(seed).standard_normal((m, n))


def low_rank(m: int, n: int, rank: int, seed: int) -> np.ndarray:
    """A seeded float64 matrix of the given rank (0 gives zeros)."""
    return gaussian(m, rank, seed) @ gaussian(rank, n, seed + 1)


def t(x: np.ndarray) -> torch.Tensor:
    """numpy -> torch (float64)."""
    return torch.from_numpy(np.ascontiguousarray(x))


def spectrum(v: np.ndarray) -> Spectrum:
    """V's spectrum laid out as the cache holds it (numerically zero directions left out), but kept in float64."""
    left, singular, _ = torch.linalg.svd(t(v), full_matrices=False)
    rank = linalg.numerical_rank(singular, v.shape)
    return Spectrum(left[:, :rank], singular[:rank], float((v**2).sum()), min(v.shape))


def frame(kind: str, spec: Spectrum, k: int, seed: int = 0) -> torch.Tensor:
    """The first k columns of a registered kind's frame (what AlignmentSubspaces.frame gives, for a given seed)."""
    return kind_frame(kind, spec, k, seed).double()


def c_operator(v: np.ndarray, kind: str = "top_k", seed: int = 0) -> dm.AlignmentOperator:
    """C (or its control) from V's spectrum."""
    spec = spectrum(v)
    return dm.alignment_matrix(frame(kind, spec, spec.rank, seed), spec.singular, spec.total)


def p_operator(v: np.ndarray, fraction: float, kind: str = "top_k", seed: int = 0) -> dm.AlignmentOperator:
    """P_k (or its control) at a rank fraction, k by the package's rule."""
    spec = spectrum(v)
    return dm.projector(frame(kind, spec, linalg.rank_from_fraction(fraction, spec.r, spec.rank), seed))


def operator(projector: str, v: np.ndarray, fraction: float = 0.5, kind: str = "top_k", seed: int = 0):
    """C or P_k."""
    return c_operator(v, kind, seed) if projector == "safe_lora" else p_operator(v, fraction, kind, seed)


def explicit_c(v: np.ndarray) -> np.ndarray:
    """Safe LoRA's model.py L78-80 in numpy: V Vᵀ / ‖V‖_F."""
    return v @ v.T / np.linalg.norm(v)


def numpy_cos(x: np.ndarray, y: np.ndarray) -> float:
    """Cosine of the flattened arrays."""
    return float(x.ravel() @ y.ravel() / (np.linalg.norm(x) * np.linalg.norm(y)))


def expected_rank(fraction: float, r: int) -> int:
    """k = max(1, round(ϱ r)) (docs/design.md §3), written out independently."""
    return min(r, max(1, int(round(fraction * r))))


# ------------------------------------------------------------------------------ alignment matrix and projector


@SETTINGS
@given(m=dims, n=dims, rank=st.integers(0, 7), p=dims, seed=seeds)
def test_alignment_matrix_from_spectrum_equals_explicit(m, n, rank, p, seed):
    v = low_rank(m, n, min(rank, m, n), seed)
    op = c_operator(v)
    x = gaussian(m, p, seed + 2)
    if min(rank, m, n) == 0:
        assert op.frame.shape == (m, 0)
        np.testing.assert_array_equal(op.apply(t(x)).numpy(), np.zeros((m, p)))
        return
    c = explicit_c(v)
    np.testing.assert_allclose(op.dense().numpy(), c, atol=1e-10 * max(1.0, np.abs(c).max()))
    np.testing.assert_allclose(op.apply(t(x)).numpy(), c @ x, atol=1e-10 * max(1.0, np.abs(c @ x).max()))


@pytest.mark.parametrize("method", ["svd", "gram", "qr"])
def test_alignment_matrix_from_the_fp32_cache(method):
    v = low_rank(48, 6, 4, 3)  # tall and rank-deficient (in float32 its last two directions are round-off)
    left, singular = linalg.left_singular(torch.from_numpy(v).float(), method=method)
    op = dm.alignment_matrix(left, singular, linalg.frobenius_sq(torch.from_numpy(v)))
    np.testing.assert_allclose(op.dense().double().numpy(), explicit_c(v), atol=2e-5 * np.abs(explicit_c(v)).max())


@SETTINGS
@given(m=dims, n=dims, scale=st.floats(0.1, 10.0), seed=seeds)
def test_alignment_matrix_spectrum_trace_and_not_idempotent(m, n, scale, seed):
    v = scale * gaussian(m, n, seed)
    op = c_operator(v)
    c = explicit_c(v)
    s = np.linalg.svd(v, compute_uv=False)
    eig = np.sort(np.linalg.eigvalsh(c))[::-1][: len(s)]
    np.testing.assert_allclose(eig, s**2 / np.linalg.norm(v), atol=1e-9 * max(1.0, eig.max()))
    np.testing.assert_allclose(np.trace(op.dense().numpy()), np.linalg.norm(v), rtol=1e-10)
    idempotent = np.allclose(c @ c, c, atol=1e-8)
    assert idempotent == bool(np.allclose(s**2 / np.linalg.norm(v), 1.0, atol=1e-6))
    np.testing.assert_allclose(c_operator(2 * v).dense().numpy(), 2 * op.dense().numpy(), atol=1e-9 * scale)  # C(2V) = 2C


@SETTINGS
@given(m=dims, n=dims, fraction=st.sampled_from(RHO), seed=seeds)
def test_exact_projector_matches_numpy(m, n, fraction, seed):
    v = gaussian(m, n, seed)
    op = p_operator(v, fraction)
    k = expected_rank(fraction, min(m, n))
    u = np.linalg.svd(v)[0][:, :k]
    x = gaussian(m, 3, seed + 1)
    assert op.frame.shape == (m, k)
    np.testing.assert_allclose(op.dense().numpy(), u @ u.T, atol=1e-8)
    np.testing.assert_allclose(op.apply(t(x)).numpy(), u @ u.T @ x, atol=1e-8)


def test_operators_refuse_mismatched_inputs():
    spec = spectrum(gaussian(3, 3, 0))
    with pytest.raises(ValueError, match="singular values"):
        dm.alignment_matrix(spec.left[:, :2], spec.singular)
    with pytest.raises(ValueError, match="size 3"):
        dm.alignment_matrix(spec.left, spec.singular).apply(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="disagree"):
        dm.AlignmentOperator(spec.left, spec.singular[:2])


# -------------------------------------------------------------------------------------------------- controls


@SETTINGS
@given(m=dims, n=dims, kind=st.sampled_from(KINDS), seed=seeds)
def test_control_alignment_matrix_keeps_the_spectrum(m, n, kind, seed):
    v = gaussian(m, n, seed)
    spec = spectrum(v)
    op = c_operator(v, kind, seed)
    scale = max(1.0, np.linalg.norm(v))
    np.testing.assert_allclose(np.linalg.eigvalsh(op.dense().numpy()), np.linalg.eigvalsh(explicit_c(v)), atol=1e-9 * scale)
    # it is Safe LoRA's C of the control update V_F = F Uᵀ V, which has V's singular values and right side
    v_f = dm.control_update(spec.left, op.frame, t(v)).numpy()
    np.testing.assert_allclose(explicit_c(v_f), op.dense().numpy(), atol=1e-9 * scale)
    np.testing.assert_allclose(np.linalg.svd(v_f, compute_uv=False), np.linalg.svd(v, compute_uv=False), atol=1e-9 * scale)
    np.testing.assert_allclose(v_f.T @ v_f, v.T @ v, atol=1e-9 * scale**2)


@SETTINGS
@given(m=dims, n=dims, fraction=st.sampled_from(RHO), kind=st.sampled_from(KINDS), seed=seeds)
def test_exact_control_is_a_rank_k_orthogonal_projector(m, n, fraction, kind, seed):
    p = p_operator(gaussian(m, n, seed), fraction, kind, seed).dense().numpy()
    k = expected_rank(fraction, min(m, n))
    np.testing.assert_allclose(p @ p, p, atol=1e-10)
    np.testing.assert_allclose(p, p.T, atol=1e-12)
    assert np.linalg.matrix_rank(p, tol=1e-8) == k
    np.testing.assert_allclose(np.trace(p), k, atol=1e-10)


@SETTINGS
@given(m=dims, n=dims, k=st.integers(1, 7), seed=seeds)
def test_random_k_uses_k_distinct_columns_of_u(m, n, k, seed):
    spec = spectrum(gaussian(m, n, seed))
    k = min(k, spec.rank)
    chosen_frame = frame("random_k", spec, k, seed).numpy()
    u = spec.left.numpy()
    chosen = [int(np.flatnonzero((u == chosen_frame[:, [j]]).all(axis=0))[0]) for j in range(k)]
    assert len(set(chosen)) == k
    np.testing.assert_array_equal(frame("top_k", spec, k, seed).numpy(), u[:, :k])


@SETTINGS
@given(m=st.integers(2, 7), n=st.integers(2, 7), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**30))
def test_control_operators_are_seeded_and_nested(m, n, kind, seed):
    v = gaussian(m, n, seed)
    spec = spectrum(v)
    full = c_operator(v, kind, seed).frame
    np.testing.assert_array_equal(full.numpy(), c_operator(v, kind, seed).frame.numpy())
    np.testing.assert_allclose((full.T @ full).numpy(), np.eye(spec.rank), atol=1e-12)
    for k in range(1, spec.rank + 1):  # the P_k control's frame is the first k columns of the C control's frame
        np.testing.assert_allclose(dm.projector(frame(kind, spec, k, seed)).frame.numpy(), full[:, :k].numpy(), atol=1e-12)
    if kind == "random":
        assert not np.allclose(np.abs(full.numpy()), np.abs(c_operator(v, kind, seed + 1).frame.numpy()))


def test_random_frame_is_haar_and_random_k_uniform():
    m, k, draws = 6, 2, 400
    v = gaussian(m, 4, 0)
    u = spectrum(v).left.numpy()
    mean_haar = np.mean([p_operator(v, 0.5, "random", s).dense().numpy() for s in range(draws)], 0)
    mean_rk = np.mean([p_operator(v, 0.5, "random_k", s).dense().numpy() for s in range(draws)], 0)
    np.testing.assert_allclose(mean_haar, (k / m) * np.eye(m), atol=0.06)  # E[F Fᵀ] = k/m I for a Haar k-frame
    np.testing.assert_allclose(mean_rk, (k / 4) * (u @ u.T), atol=0.08)  # each of U's 4 columns chosen w.p. k/4


# ------------------------------------------------------------------------------------------------- cosines


@SETTINGS
@given(m=dims, n=dims, kind=st.sampled_from(KINDS), projector=st.sampled_from(dm.PROJECTORS), seed=seeds)
def test_module_cosine_matches_numpy(m, n, kind, projector, seed):
    v, x = gaussian(m, n, seed), gaussian(m, n + 1, seed + 1)
    op = operator(projector, v, 0.5, kind, seed)
    reference = numpy_cos(op.dense().numpy() @ x, x)
    if kind == "top_k" and projector == "safe_lora":
        assert math.isclose(reference, numpy_cos(explicit_c(v) @ x, x), abs_tol=1e-10)
    value = dm.module_cosine(op, t(x), decimals=None)
    assert math.isclose(value, reference, abs_tol=1e-10)
    assert dm.module_cosine(op, t(x)) == float(np.round(value, 5))


@SETTINGS
@given(m=dims, n=dims, r=st.integers(1, 4), scaling=st.floats(0.1, 8.0), seed=seeds)
def test_lora_cosine_is_the_cosine_of_the_merged_update(m, n, r, scaling, seed):
    v, b, a = gaussian(m, n, seed), gaussian(m, r, seed + 1), gaussian(r, n, seed + 2)
    reference = numpy_cos(explicit_c(v) @ b @ a, b @ a)  # Safe LoRA model.py L95-100: C·B·A vs B·A, flattened
    assert math.isclose(dm.module_cosine(c_operator(v), t(scaling * b @ a), decimals=None), reference, abs_tol=1e-10)


def test_cosine_of_a_zero_update_or_a_zero_alignment_is_zero():
    op = c_operator(gaussian(4, 3, 0))
    assert dm.module_cosine(op, torch.zeros(4, 3, dtype=torch.float64)) == 0.0
    zero = c_operator(np.zeros((4, 3)))
    assert zero.frame.shape == (4, 0)
    assert dm.module_cosine(zero, t(gaussian(4, 3, 1))) == 0.0


# --------------------------------------------------------------------------------------------------- gating


def test_threshold_equality_safe_lora_le_safemerge_lt():
    cosines = {"below": 0.34999, "equal": 0.35, "above": 0.35001}
    assert dm.gate_threshold(cosines, 0.35, strict=False) == {"below": True, "equal": True, "above": False}
    assert dm.gate_threshold(cosines, 0.35, strict=True) == {"below": True, "equal": False, "above": False}
    assert dm.Gating(mode="threshold", threshold=0.35, strict=True).decide(cosines)["equal"] is False
    assert dm.Gating(mode="threshold", threshold=0.35).decide(cosines)["equal"] is True


def test_number_mode_ties_select_more():
    cosines = {"a": 0.1, "b": 0.2, "c": 0.2, "d": 0.3}
    assert dm.gate_number(cosines, 1) == {"a": True, "b": False, "c": False, "d": False}
    assert dm.gate_number(cosines, 2) == {"a": True, "b": True, "c": True, "d": False}
    assert all(dm.gate_number(cosines, 4).values()) and all(dm.gate_number(cosines, 10).values())
    assert not any(dm.gate_number(cosines, 0).values())


@SETTINGS
@given(values=st.lists(st.sampled_from([-0.2, 0.0, 0.1, 0.25, 0.5, 0.9, 1.0]), min_size=1, max_size=12),
       n=st.integers(1, 14))
def test_number_mode_replicates_the_safe_lora_code(values, n):
    cosines = {f"layer{i}": c for i, c in enumerate(values)}
    cos = np.array(values)
    thrs = np.sort(cos)[:n][-1]  # model.py L47-50, then the cos <= thrs pass of L103
    decisions = dm.gate_number(cosines, n)
    assert list(decisions.values()) == [bool(c <= thrs) for c in cos]
    assert sum(decisions.values()) >= min(n, len(values))
    if len(set(values)) == len(values):
        assert sum(decisions.values()) == min(n, len(values))


def test_gating_refuses_bad_input():
    with pytest.raises(ValueError, match="gate mode"):
        dm.Gating(mode="top")
    with pytest.raises(ValueError, match="layer1"):
        dm.gate_threshold({"layer0": 0.1, "layer1": float("nan")}, 0.5, strict=False)
    with pytest.raises(ValueError, match="num_layers"):
        dm.gate_number({"a": 0.1}, -1)
    with pytest.raises(ValueError, match="threshold"):
        dm.gate_threshold({"a": 0.1}, float("inf"), strict=True)


# ------------------------------------------------------------------------------------------------ Safe LoRA


def safe_lora_reference(modules, aligned, base, select_type, threshold, num_layers):
    """A numpy replica of IBM/SafeLoRA model.py L43-114 (cosines from the untouched copy, B <- C B if cos <= thrs)."""
    cs = [explicit_c(aligned[name] - base[name]) for name in modules]
    cos = [float(np.round(numpy_cos(c @ b @ a, b @ a), 5)) for c, (b, a) in zip(cs, modules.values())]
    thrs = threshold if select_type == "threshold" else np.sort(cos)[:num_layers][-1]
    return {name: (c @ b if value <= thrs else b) for (name, (b, a)), c, value in zip(modules.items(), cs, cos)}


@pytest.mark.parametrize("select_type,threshold,num_layers", [("number", 0.5, 3), ("threshold", 0.4, 10),
                                                               ("number", 0.5, 10)])
def test_safe_lora_on_adapters_replicates_the_reference(select_type, threshold, num_layers):
    seed, out, inp, r = 11, 6, 5, 2
    names = [f"layers.{i}.q_proj" for i in range(7)]
    base = {name: gaussian(out, inp, seed + 3 * i) for i, name in enumerate(names)}
    aligned = {name: base[name] + low_rank(out, inp, 1 + i % 3, seed + 3 * i + 1) for i, name in enumerate(names)}
    modules = {name: (gaussian(out, r, 100 + i), gaussian(r, inp, 200 + i)) for i, name in enumerate(names)}
    expected = safe_lora_reference(modules, aligned, base, select_type, threshold, num_layers)

    operators = {name: c_operator(aligned[name] - base[name]) for name in names}
    cosines = {name: dm.module_cosine(operators[name], t(4.0 * b @ a)) for name, (b, a) in modules.items()}
    decisions = dm.Gating(mode=select_type, threshold=threshold, num_layers=num_layers).decide(cosines)
    assert 0 < sum(decisions.values())
    for name, (b, a) in modules.items():
        new_b = operators[name].apply(t(b)) if decisions[name] else t(b)
        np.testing.assert_allclose(new_b.numpy(), expected[name], atol=1e-10)


@SETTINGS
@given(m=dims, n=dims, projector=st.sampled_from(dm.PROJECTORS), fraction=st.sampled_from(RHO), seed=seeds)
def test_safe_lora_on_a_full_update(m, n, projector, fraction, seed):
    v, delta = gaussian(m, n, seed), gaussian(m, n, seed + 1)
    op = operator(projector, v, fraction)
    if projector == "safe_lora":
        matrix = explicit_c(v)
    else:
        u = np.linalg.svd(v)[0][:, : expected_rank(fraction, min(m, n))]
        matrix = u @ u.T
    np.testing.assert_allclose(op.apply(t(delta)).numpy(), matrix @ delta, atol=1e-9 * (1 + np.abs(v).max() ** 2))


def test_operators_keep_the_shape_of_3d_tensors():
    v, delta = gaussian(4, 6, 0), gaussian(4, 6, 1)
    out = c_operator(v).apply(t(delta).reshape(4, 2, 3))
    assert out.shape == (4, 2, 3)
    np.testing.assert_allclose(out.reshape(4, 6).numpy(), explicit_c(v) @ delta, atol=1e-10)


# ------------------------------------------------------------------------------------------------ SafeMERGE


@SETTINGS
@given(m=dims, n=dims, w=st.floats(-1.0, 2.0), seed=seeds)
def test_linear_merge(m, n, w, seed):
    d_t, d_s = gaussian(m, n, seed), gaussian(m, n, seed + 1)
    np.testing.assert_allclose(dm.merge_updates([t(d_t), t(d_s)], [1 - w, w]).double().numpy(), (1 - w) * d_t + w * d_s,
                               rtol=1e-5, atol=1e-5)


def test_dare_linear_merges():
    d_t, d_s = t(gaussian(6, 5, 0)), t(gaussian(6, 5, 1))
    linear = dm.merge_updates([d_t, d_s], [0.8, 0.2])
    np.testing.assert_array_equal(
        dm.merge_updates([d_t, d_s], [0.8, 0.2], combination="dare_linear", density=1.0, seeds=[1, 2]).numpy(), linear.numpy())
    once = dm.merge_updates([d_t, d_s], [0.8, 0.2], combination="dare_linear", density=0.5, seeds=[1, 2])
    again = dm.merge_updates([d_t, d_s], [0.8, 0.2], combination="dare_linear", density=0.5, seeds=[1, 2])
    np.testing.assert_array_equal(once.numpy(), again.numpy())
    # with weights [1, 0] every entry is 0 or Δ_T / density: only the fine-tuned update survives, DARE'd
    only_ft = dm.merge_updates([d_t, d_s], [1.0, 0.0], combination="dare_linear", density=0.5, seeds=[3, 4]).double()
    kept = only_ft != 0
    assert 0 < int(kept.sum()) < kept.numel()
    np.testing.assert_allclose(only_ft[kept].numpy(), (d_t[kept] / 0.5).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="seed"):
        dm.merge_updates([d_t, d_s], [0.8, 0.2], combination="dare_linear", seeds=[1])
    with pytest.raises(ValueError, match="merge weights"):
        dm.merge_updates([d_t, d_s], [1.0])
    with pytest.raises(ValueError, match="combination"):
        dm.merge_updates([d_t, d_s], [0.8, 0.2], combination="ties")


# ---------------------------------------------------------------------------------------------------- RESTA


@SETTINGS
@given(m=dims, n=dims, beta=st.floats(0.0, 3.0), seed=seeds)
def test_resta_is_the_weight_arithmetic(m, n, beta, seed):
    w_a, w_ft, w_h = gaussian(m, n, seed), gaussian(m, n, seed + 1), gaussian(m, n, seed + 2)
    new = w_a + dm.resta_delta(t(w_ft - w_a), t(w_h - w_a), beta=beta).double().numpy()
    np.testing.assert_allclose(new, w_ft + beta * (w_a - w_h), atol=1e-5 * (1 + beta))


def test_resta_dare_drops_only_from_the_task_update():
    d_t, d_h = t(gaussian(20, 10, 0)), t(gaussian(20, 10, 1))
    out = dm.resta_delta(d_t, d_h, beta=0.5, density=0.3, seed=9).double()
    task_part = out + 0.5 * d_h.float().double()
    kept = task_part.abs() > 1e-6
    assert 0.15 < kept.double().mean() < 0.45
    np.testing.assert_allclose(task_part[kept].numpy(), (d_t[kept] / 0.3).numpy(), rtol=1e-5)
    np.testing.assert_allclose(task_part[~kept].numpy(), 0.0, atol=1e-6)
    np.testing.assert_array_equal(dm.resta_delta(d_t, d_h, beta=1.0, density=1.0).numpy(),
                                  dm.resta_delta(d_t, d_h, beta=1.0).numpy())
    with pytest.raises(ValueError, match="differ"):
        dm.resta_delta(d_t, d_h[:3], beta=1.0)


# ------------------------------------------------------------------------------------------------------ LoX


@SETTINGS
@given(m=dims, n=dims, rank=st.integers(1, 7), k=st.integers(1, 7), alpha=st.floats(0.0, 2.0), seed=seeds)
def test_lox_matches_the_numpy_truncated_svd(m, n, rank, k, alpha, seed):
    rank = min(rank, m, n)
    v = low_rank(m, n, rank, seed)
    spec = spectrum(v)
    k = min(k, spec.rank)
    u, s, vt = np.linalg.svd(v, full_matrices=False)
    s[k:] = 0  # LoX.py L34-37
    update = dm.lox_update(spec.left, frame("top_k", spec, k), t(v), alpha=alpha).numpy()
    np.testing.assert_allclose(update, alpha * (u * s) @ vt, atol=1e-9 * (1 + np.abs(v).max()))


def test_lox_at_full_rank_adds_the_whole_alignment_update_and_keeps_3d_shapes():
    v = gaussian(5, 8, 0)
    spec = spectrum(v)
    np.testing.assert_allclose(dm.lox_update(spec.left, spec.left, t(v), alpha=1.25).numpy(), 1.25 * v, atol=1e-12)
    v3 = gaussian(6, 12, 3)
    spec3 = spectrum(v3)
    u, s, vt = np.linalg.svd(v3, full_matrices=False)
    out = dm.lox_update(spec3.left, spec3.left[:, :3], t(v3).reshape(6, 3, 4), alpha=2.0)
    assert out.shape == (6, 3, 4)
    np.testing.assert_allclose(out.reshape(6, 12).numpy(), 2.0 * (u[:, :3] * s[:3]) @ vt[:3], atol=1e-10)


@SETTINGS
@given(m=st.integers(2, 7), n=st.integers(2, 7), k=st.integers(1, 7), kind=st.sampled_from(KINDS), seed=seeds)
def test_lox_controls_keep_the_top_k_spectrum(m, n, k, kind, seed):
    v = gaussian(m, n, seed)
    spec = spectrum(v)
    k = min(k, spec.rank)
    s = np.linalg.svd(v, compute_uv=False)
    chosen = frame(kind, spec, k, seed)
    update = dm.lox_update(spec.left, chosen, t(v), alpha=1.5).numpy()
    np.testing.assert_allclose(np.linalg.svd(update, compute_uv=False)[:k], 1.5 * s[:k], atol=1e-9 * (1 + s[0]))
    f = chosen.numpy()
    np.testing.assert_allclose(f @ f.T @ update, update, atol=1e-9 * (1 + s[0]))  # its columns lie in span(F_k)


# ----------------------------------------------------------------------------------------------------- AsFT


def complement_matrix(op: dm.AlignmentOperator, v: np.ndarray, projector: str) -> np.ndarray:
    """I − C (numpy, from V directly) or I − P_k (numpy SVD)."""
    m = v.shape[0]
    if projector == "safe_lora":
        return np.eye(m) - explicit_c(v)
    u = np.linalg.svd(v)[0][:, : op.frame.shape[1]]
    return np.eye(m) - u @ u.T


@SETTINGS
@given(m=dims, n=dims, r=st.integers(1, 3), lam=st.floats(0.01, 5.0), scaling=st.floats(0.5, 4.0),
       projector=st.sampled_from(dm.PROJECTORS), seed=seeds)
def test_asft_penalty_value_and_gradient(m, n, r, lam, scaling, projector, seed):
    v, delta, b, a = gaussian(m, n, seed), gaussian(m, n, seed + 1), gaussian(m, r, seed + 2), gaussian(r, n, seed + 3)
    op = operator(projector, v, 0.5)
    k_mat = complement_matrix(op, v, projector)
    tol = 1e-8 * (1 + np.abs(v).max()) ** 4

    d = t(delta).clone().requires_grad_(True)
    penalty = dm.asft_penalty(op, d, weight=lam)
    penalty.backward()
    assert math.isclose(float(penalty.detach()), lam * np.linalg.norm(k_mat @ delta) ** 2, rel_tol=1e-9, abs_tol=tol)
    np.testing.assert_allclose(d.grad.numpy(), 2 * lam * k_mat.T @ k_mat @ delta, atol=tol)

    tb, ta = t(b).clone().requires_grad_(True), t(a).clone().requires_grad_(True)
    lora = dm.asft_lora_penalty(op, tb, ta, weight=lam, scaling=scaling)
    lora.backward()
    ba = scaling * b @ a  # AsFT_train_utils.py L99-117 with the product formed explicitly
    assert math.isclose(float(lora.detach()), lam * np.linalg.norm(k_mat @ ba) ** 2, rel_tol=1e-9, abs_tol=tol)
    kk = k_mat.T @ k_mat
    np.testing.assert_allclose(tb.grad.numpy(), 2 * lam * scaling**2 * kk @ b @ a @ a.T, atol=tol)
    np.testing.assert_allclose(ta.grad.numpy(), 2 * lam * scaling**2 * b.T @ kk @ b @ a, atol=tol)


def outside_energy(delta: np.ndarray, basis: np.ndarray) -> float:
    """‖(I − Q Qᵀ) Δ‖²_F for Q an orthonormal basis of C's range."""
    return float(np.linalg.norm(delta - basis @ (basis.T @ delta)) ** 2)


def test_asft_larger_lambda_keeps_less_energy_outside_c():
    torch.manual_seed(0)
    m, n, p = 6, 5, 40
    v = low_rank(m, n, 2, 1)  # C has a 2-dimensional range in R^6
    op = c_operator(v)
    basis = np.linalg.svd(v)[0][:, :2]
    x = t(gaussian(n, p, 2))
    target = t(gaussian(m, n, 3))
    y = target @ x
    kk = complement_matrix(op, v, "safe_lora")
    full, lora = [], []
    for lam in [0.0, 0.3, 3.0]:
        delta = torch.zeros(m, n, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=0.1)
        for _ in range(250):
            opt.zero_grad()
            loss = ((delta @ x - y) ** 2).sum() / p + dm.asft_penalty(op, delta, weight=lam)
            loss.backward()
            opt.step()
        found = delta.detach().numpy()
        # closed form of min ‖(Δ − T) X‖²/p + λ ‖K Δ‖²:  Δ G + λ K² Δ = T G with G = X Xᵀ / p (a Sylvester equation)
        g = (x @ x.T).numpy() / p
        system = np.kron(np.eye(m), g.T) + lam * np.kron(kk.T @ kk, np.eye(n))
        exact = np.linalg.solve(system, (target.numpy() @ g).ravel()).reshape(m, n)
        np.testing.assert_allclose(found, exact, atol=1e-3)
        full.append(outside_energy(found, basis))

        b = torch.zeros(m, 2, dtype=torch.float64, requires_grad=True)
        a = (0.1 * torch.randn(2, n, dtype=torch.float64)).requires_grad_(True)
        opt = torch.optim.Adam([b, a], lr=0.1)
        for _ in range(250):
            opt.zero_grad()
            loss = ((b @ a @ x - y) ** 2).sum() / p + dm.asft_lora_penalty(op, b, a, weight=lam)
            loss.backward()
            opt.step()
        lora.append(outside_energy((b @ a).detach().numpy(), basis))
    assert all(later < earlier for earlier, later in zip(full, full[1:])), full
    assert full[-1] < 0.1 * full[0], full
    assert all(later < earlier for earlier, later in zip(lora, lora[1:])), lora
    assert lora[-1] < 0.1 * lora[0], lora


# ----------------------------------------------------------------------------------------------------- DARE


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_keeps_with_probability_density_and_rescales(density):
    x = torch.rand(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    out = dm.dare(x, density, seed=4)
    kept = out != 0
    n = x.numel()
    assert abs(float(kept.double().mean()) - density) < 5 * math.sqrt(density * (1 - density) / n)
    np.testing.assert_allclose(out[kept].numpy(), (x[kept] / density).numpy(), rtol=1e-12)
    raw = dm.dare(x, density, seed=4, rescale=False)
    assert torch.equal(raw != 0, kept)
    np.testing.assert_array_equal(raw[kept].numpy(), x[kept].numpy())


def test_dare_preserves_the_expectation():
    x = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64)
    x = x[x != 0]
    draws, density = 4000, 0.3
    mean = torch.stack([dm.dare(x, density, seed=s) for s in range(draws)]).mean(0)
    z = ((mean - x) / (x.abs() * math.sqrt((1 - density) / (density * draws)))).numpy()
    dof = z.size
    assert np.abs(z).max() < 5
    assert abs(float((z**2).sum()) - dof) < 5 * math.sqrt(2 * dof)  # Σ z² ~ χ²(dof)
    # without the rescale (PEFT 0.14's discarded torch.div) the expectation shrinks to density · x
    raw = torch.stack([dm.dare(x, density, seed=s, rescale=False) for s in range(draws)]).mean(0)
    np.testing.assert_allclose(raw.numpy(), density * x.numpy(), atol=5 * math.sqrt(density * (1 - density) / draws) * 2)


def test_dare_is_seeded_and_checks_density():
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dm.dare(x, 0.5, seed=1), dm.dare(x, 0.5, seed=1))
    assert not torch.equal(dm.dare(x, 0.5, seed=1), dm.dare(x, 0.5, seed=2))
    assert torch.equal(dm.dare(x, 1.0, seed=1), x)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density"):
            dm.dare(x, bad, seed=1)
